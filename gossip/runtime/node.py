"""One peer of the swarm: startup → main loop → graceful shutdown.

Startup: load the data shard and the model (the same initial weights on every peer: the
model is built under ``seed``), bind the inbox, connect to the neighbours and wait for them
to say hello (``timeouts.startup_s``; none at all is an error, some missing is a warning).
A neighbour running a different model (schema hash) stops both with a one-line error.

Main loop (every task owned here and cancelled on exit):

* ``receive`` — validate each message (:func:`gossip.protocol.wire.unpack`; a bad one is counted and
  logged as ``update_rejected`` with its reason, never fatal), drop duplicates by
  ``(node_id, seq)``, relay new ones to the other neighbours on sparse topologies, and hand
  updates to the training thread;
* ``outbox`` — send what the training thread produced to every neighbour;
* ``tick`` — heartbeats, liveness (silent peers are marked down), requests for updates a lossy
  link dropped (:mod:`gossip.runtime.resend`), telemetry;
* the training thread itself (:class:`gossip.runtime.worker.Worker`).

Shutdown: SIGINT/SIGTERM only set a flag; the thread stops after its batch, queues are
flushed for at most a second, sockets close, and the peer's result is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch

from gossip.config import Config, config_hash, parse_bandwidth, to_dict
from gossip.errors import PeerError, ProtocolError
from gossip.observe.log import get_logger
from gossip.observe.telemetry import TelemetryPublisher
from gossip.protocol import wire
from gossip.protocol.codec import Layout
from gossip.runtime import checkpoint, topology
from gossip.runtime.bridge import Bridge
from gossip.runtime.ledger import Ledger
from gossip.runtime.resend import Resender
from gossip.runtime.transport import Transport
from gossip.runtime.trigger import FINAL
from gossip.runtime.worker import FINISHED, Worker
from gossip.training.data import Split, load_dataset
from gossip.training.models import build_model, count_params
from gossip.training.partition import label_histogram, partition
from gossip.training.trainer import Trainer, resolve_device, set_threads

log = get_logger(__name__)

HELLO_EVERY_S = 0.5
HEARTBEAT_EVERY_S = 1.0  # also how often a finished peer repeats its Done (a lossy link may eat one)
PROGRESS_WAIT_S = 1.5  # at startup, how long to wait for the neighbours' heartbeats (are we behind?)


class Peer:
    def __init__(self, cfg: Config, peer_id: int, run_dir: Path, *, resume: bool = False) -> None:
        if not 0 <= peer_id < cfg.peers:
            raise PeerError(f"--id {peer_id}: this config has peers 0..{cfg.peers - 1}")
        topology.check_connected(cfg)
        self.cfg = cfg
        self.peer_id = peer_id
        self.run_dir = run_dir
        self.neighbours = topology.neighbours(cfg, peer_id)
        self.relay = cfg.topology.kind != "full"
        self.ledger = Ledger(peer_id, cfg.peers, time.monotonic())
        self.rejected: dict[str, int] = {}
        self.duplicates = 0
        self.updates_sent = 0
        self.triggers: dict[str, int] = {}
        self.heard: set[int] = set()
        self.delivered_sent = False
        self.own_done = False
        self.t_start = time.monotonic()
        self.resume = resume
        self.neighbour_step: dict[int, int] = {}  # global step from each neighbour's heartbeats
        self.last_news: dict[int, float] = {}  # when each origin last sent a new update or Done
        self.updates_lost = 0  # given up after timeouts.silence_s (lossy links, crashes)
        self.resend = Resender(peer_id)
        self.catching_up = False  # waiting for a neighbour's state: updates are recorded, not applied
        self.skipped_before_state = 0
        self.state_chunks: dict[int, wire.StateChunk] = {}
        self.state_from: int | None = None
        self.unheard_since_state: set[int] = set()  # origins whose first seq after the state sets its floor

    # ================================================================ startup
    def _build(self) -> None:
        cfg = self.cfg
        log.info("config_resolved", config=to_dict(cfg), config_hash=config_hash(cfg))
        hosts_here = sum(topology.host(cfg, p) == topology.host(cfg, self.peer_id) for p in range(cfg.peers))
        threads = set_threads(cfg.train.threads, hosts_here)
        device = resolve_device(cfg.device)
        dataset = load_dataset(cfg.data)
        shards = partition(dataset.train.labels, cfg.peers, cfg.data, cfg.seed)
        idx = shards[self.peer_id]
        log.info("shard", samples=len(idx),
                 label_histogram=label_histogram(dataset.train.labels, idx, dataset.num_classes))
        torch.manual_seed(cfg.seed)  # the same initial weights on every peer
        model = build_model(cfg.model.name, dataset.num_classes, dataset.train.images.shape[1])
        shard = Split(dataset.train.images[idx], dataset.train.labels[idx])
        trainer = Trainer(cfg, model, shard, dataset, device=device, seed=cfg.seed * 1000 + self.peer_id,
                          lr_scale=cfg.communication.lr_scale)
        self.layout = Layout.from_shapes(trainer.layout)
        self.params = count_params(model)
        self.limits = wire.Limits(numel=self.layout.numel, schema_hash=self.layout.schema_hash,
                                  max_bytes=cfg.security.max_message_bytes, peers=cfg.peers)
        log.info("peer_built", model=cfg.model.name, params=self.params, device=str(device),
                 threads=threads, neighbours=self.neighbours, steps_per_epoch=trainer.steps_per_epoch)
        self.worker = Worker(cfg, self.peer_id, trainer, dataset, self.bridge, self.layout)
        self.worker.down_peers = lambda: {p for p, view in self.ledger.views.items() if view.down}
        self.worker.checkpointer = checkpoint.Checkpointer(self.run_dir, self.peer_id, cfg.checkpoint,
                                                           resume=self.resume)
        if self.resume:
            self._resume()

    def _resume(self) -> None:
        """Continue from this peer's newest readable checkpoint, and never reuse a sequence number."""
        ckpt = self.worker.checkpointer
        assert ckpt is not None
        found = ckpt.latest()
        if found is None:
            log.warning("resume_without_checkpoint", directory=str(ckpt.directory))
        else:
            path, state = found
            epoch, step = checkpoint.restore(self.worker, state)
            self.worker.start_epoch, self.worker.start_step = epoch, step
            checkpoint.load_ledger(self.ledger, state["applied"])
            log.info("resumed", path=str(path), epoch=epoch, step=step, seq=self.worker.seq,
                     global_step=self.worker.progress.global_step)
        self.worker.seq = max(self.worker.seq, ckpt.leased - checkpoint.SEQ_LEASE)
        filled = self.worker.fill_seq_gap(ckpt.leased)
        if filled:
            log.info("seq_gap_filled", empty_updates=filled, next_seq=self.worker.seq)

    def _hello(self) -> bytes:
        return wire.pack_hello(node_id=self.peer_id, schema_hash=self.layout.schema_hash,
                               config_hash=config_hash(self.cfg),
                               address=topology.inbox_address(self.cfg, self.peer_id),
                               epochs=self.cfg.train.epochs)

    async def _meet_neighbours(self) -> None:
        deadline = time.monotonic() + self.cfg.timeouts.startup_s
        while set(self.neighbours) - self.heard and time.monotonic() < deadline:
            for nbr in set(self.neighbours) - self.heard:
                self.transport.send(nbr, self._hello())
            await asyncio.sleep(HELLO_EVERY_S)
            if self.fatal is not None:
                raise self.fatal
        missing = sorted(set(self.neighbours) - self.heard)
        if missing and len(missing) == len(self.neighbours):
            addrs = ", ".join(topology.inbox_address(self.cfg, p) for p in missing)
            raise PeerError(f"peer {self.peer_id}: no neighbour answered within "
                            f"{self.cfg.timeouts.startup_s:g}s ({addrs}); are the other peers running?")
        if missing:
            log.warning("neighbours_missing", missing=missing)
        log.info("neighbours_met", heard=sorted(self.heard), seconds=round(time.monotonic() - self.t_start, 3))

    # ================================================================ main loop
    async def run(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        self.bridge = Bridge(loop)
        self.fatal: PeerError | None = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            # only the main thread may own signal handlers; elsewhere (tests) there are none
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._request_stop, sig)
        await asyncio.to_thread(self._build)
        self.transport = Transport(self.cfg, self.peer_id, self.neighbours)
        await self.transport.start()
        self.telemetry = TelemetryPublisher(self.cfg, self.peer_id)
        tasks: list[asyncio.Task[Any]] = [asyncio.create_task(coro, name=name) for name, coro in (
            ("receive", self._receive()), ("outbox", self._outbox()), ("tick", self._tick()))]
        try:
            await self._meet_neighbours()
            await self._catch_up()
            train = asyncio.create_task(asyncio.to_thread(self._guarded_run), name="train")
            tasks.append(train)
            outcome = await train
            if self.fatal is not None:
                raise self.fatal
            await self._linger()
            result = self._result(outcome)
            if self.cfg.checkpoint.save_final and not outcome.get("stopped"):  # for gossip.experiments.experiment's ensembles
                state = {k: v.detach().cpu().clone() for k, v in self.worker.trainer.model.state_dict().items()}
                torch.save(state, self.run_dir / f"peer-{self.peer_id}.final.pt")
            return result
        finally:
            self.bridge.stop.set()
            self.worker.progress.state = "done"
            self._publish()
            await self.transport.flush(timeout=1.0)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.transport.close()
            self.telemetry.close()

    # ---------------------------------------------------------------- catching up
    async def _catch_up(self) -> None:
        """A late joiner a full epoch behind its most advanced neighbour, or a resumed peer a
        quarter of an epoch behind (it missed whatever was sent while it was down), loads that
        neighbour's published state (its parameters minus its unsent residual) and continues
        from the neighbour's position (epoch, step, LR schedule).

        Updates that arrive before the state are recorded as seen but not applied: the
        neighbour's state already holds them (approximately: one in flight at snapshot time
        may be missed or counted twice).
        """
        deadline = time.monotonic() + PROGRESS_WAIT_S
        while self.heard - set(self.neighbour_step) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        own = self.worker.progress.global_step
        ahead = {p: s for p, s in self.neighbour_step.items() if p in self.heard}
        if not ahead:
            return
        source = max(ahead, key=lambda p: ahead[p])
        lag = self.worker.trainer.steps_per_epoch
        if self.resume:
            lag = max(1, lag // 4)
        if ahead[source] - own < lag:
            return
        log.info("catch_up_start", source=source, their_step=ahead[source], own_step=own)
        self.catching_up, self.state_from = True, source
        self.transport.send(source, wire.pack_state_request(node_id=self.peer_id,
                                                            schema_hash=self.layout.schema_hash))
        deadline = time.monotonic() + max(5.0, 2 * self.cfg.timeouts.silence_s)
        try:
            while not self._state_complete():
                if time.monotonic() > deadline or self.bridge.stop.is_set():
                    log.warning("catch_up_failed", source=source, chunks=len(self.state_chunks))
                    return
                await asyncio.sleep(0.02)
            self._adopt_state()
        finally:
            self.catching_up = False

    def _state_complete(self) -> bool:
        return sum(c.values.numel() for c in self.state_chunks.values()) == self.layout.numel

    def _adopt_state(self) -> None:
        w, tr = self.worker, self.worker.trainer
        first = next(iter(self.state_chunks.values()))
        with torch.no_grad():
            for chunk in self.state_chunks.values():
                tr.flat[chunk.offset:chunk.offset + chunk.values.numel()].copy_(chunk.values)
            w.feedback.residual.zero_()  # what we had not sent is in the neighbour's state or lost
        for item in self.bridge.drain():  # queued before the state: already in it
            if isinstance(item, wire.StateRequest):
                w.answer_state(item.node_id)
            else:
                self.skipped_before_state += 1
        self._skip_what_the_state_holds(first)
        checkpoint.load_ledger(w.applied, checkpoint.ledger_state(self.ledger))
        spe = tr.steps_per_epoch
        w.start_epoch = first.epoch
        w.start_step = min(spe, max(0, first.step - first.epoch * spe))
        tr.step_count = w.progress.global_step = first.step
        log.info("state_adopted", source=self.state_from, epoch=first.epoch, step=first.step,
                 skipped_updates=self.skipped_before_state)

    def _skip_what_the_state_holds(self, first: wire.StateChunk) -> None:
        """Older updates are in the adopted state: neither wait nor ask for them (nor apply them).

        Of each origin, that is everything below the newest seq seen while catching up, or, for
        one not heard yet, below the first seq that arrives (approximate, like the state itself).
        """
        for origin in self.ledger.views:
            top = self.ledger.top(origin)
            if top >= 0:
                self.ledger.skip_below(origin, top + 1)
            else:
                self.unheard_since_state.add(origin)
        self.ledger.skip_below(first.node_id, first.seq + 1)  # exact: the source's own last seq
        self.unheard_since_state.discard(first.node_id)

    def _guarded_run(self) -> dict[str, Any]:
        threading.current_thread().name = f"train-{self.peer_id}"
        return self.worker.run()

    def _request_stop(self, sig: int) -> None:
        log.info("stop_requested", signal=signal.Signals(sig).name)
        self.bridge.stop.set()

    async def _linger(self) -> None:
        """Keep relaying until every live peer has everything (two-phase finish, see ledger)."""
        deadline = time.monotonic() + self.cfg.timeouts.finish_s
        while not self.bridge.stop.is_set() and not self.ledger.all_complete():
            if time.monotonic() > deadline:
                log.warning("finish_timeout", waiting_for=[p for p, v in self.ledger.views.items()
                                                           if not (v.down or v.complete)])
                break
            await asyncio.sleep(0.05)

    # ---------------------------------------------------------------- receiving
    async def _receive(self) -> None:
        while True:
            sender, frames = await self.transport.recv()
            try:
                self._handle(sender, frames)
            except ProtocolError as exc:
                self._reject(exc.reason, sender, str(exc))

    def _reject(self, reason: str, sender: int | None, detail: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        log.warning("update_rejected", reason=reason, sender=sender, detail=detail[:200])

    def _handle(self, sender: int | None, frames: list[bytes]) -> None:
        if len(frames) != 1:
            raise ProtocolError("bad_frames", f"{len(frames)} frames, expected 1")
        data = frames[0]
        msg = wire.unpack(data, self.limits)
        if sender is None or sender not in self.neighbours:
            raise ProtocolError("unknown_sender", f"identity is not a configured neighbour of {self.peer_id}")
        now = time.monotonic()
        if self.ledger.heard(sender, now):
            log.info("peer_up", peer=sender)
        self.heard.add(sender)
        if getattr(msg, "from_id", sender) != sender:
            raise ProtocolError("spoofed_node_id", f"neighbour {sender} sent from_id {msg.from_id}")  # type: ignore[union-attr]
        if isinstance(msg, wire.DecodedUpdate):
            self._on_update(sender, msg, data, now)
        elif isinstance(msg, wire.Heartbeat):
            if msg.node_id == sender:
                self.neighbour_step[sender] = msg.step
        elif isinstance(msg, wire.StateRequest):
            if msg.node_id != sender:
                raise ProtocolError("spoofed_node_id", f"neighbour {sender} asked state for {msg.node_id}")
            log.info("state_requested", by=sender)
            if hasattr(self, "worker"):
                self.worker.answer_state_now(sender)  # waits for at most the batch in progress
        elif isinstance(msg, wire.ResendRequest):
            if msg.node_id != sender:
                raise ProtocolError("spoofed_node_id", f"neighbour {sender} asked resend for {msg.node_id}")
            self.resend.answer(msg, self.transport.send)
        elif isinstance(msg, wire.StateChunk):
            if self.catching_up and sender == self.state_from == msg.node_id:
                self.state_chunks[msg.offset] = msg
        elif isinstance(msg, wire.Hello):
            if msg.schema_hash != self.layout.schema_hash:
                self.fatal = PeerError(
                    f"peer {sender} runs a different model (schema hash {msg.schema_hash:#x}, "
                    f"ours {self.layout.schema_hash:#x}): use the same model.name and data on every peer")
                self.bridge.stop.set()
            elif msg.config_hash != config_hash(self.cfg):
                log.warning("config_differs", peer=sender, their_hash=msg.config_hash)
        elif isinstance(msg, wire.Done):
            self._on_done(sender, msg, data)

    def _check_origin(self, sender: int, origin: int) -> None:
        if origin == self.peer_id or not self.ledger.known(origin):
            raise ProtocolError("bad_node_id", f"node_id {origin} is not another peer")
        if not self.relay and origin != sender:
            raise ProtocolError("spoofed_node_id", f"neighbour {sender} sent node_id {origin} on a full mesh")

    def _on_update(self, sender: int, update: wire.DecodedUpdate, data: bytes, now: float) -> None:
        if update.node_id == self.peer_id and self.relay:
            return  # our own update coming back around a cycle
        self._check_origin(sender, update.node_id)
        if not self.ledger.in_window(update.node_id, update.seq):
            raise ProtocolError("seq_out_of_window", f"seq {update.seq} from {update.node_id}")
        if update.node_id in self.unheard_since_state:
            self.unheard_since_state.discard(update.node_id)
            self.ledger.skip_below(update.node_id, update.seq)
        if not self.ledger.first_time(update.node_id, update.seq):
            self.duplicates += 1
            log.debug("update_duplicate", node_id=update.node_id, seq=update.seq, sender=sender)
            return
        self.ledger.heard(update.node_id, now)
        self.last_news[update.node_id] = now
        self.resend.arrived(update.node_id, update.seq)
        if self.relay:
            self.updates_sent += self.transport.broadcast(wire.relay(data, from_id=self.peer_id),
                                                          exclude=(sender, update.node_id))
        if self.catching_up:
            self.skipped_before_state += 1
        else:
            self.bridge.to_thread(update)
        self._check_finish()

    def _on_done(self, sender: int, done: wire.Done, data: bytes) -> None:
        if done.node_id == self.peer_id and self.relay:
            return
        self._check_origin(sender, done.node_id)
        if done.complete:  # carries last_seq too: every earlier Done may have been lost on the way
            self.ledger.mark_done(done.node_id, done.last_seq)
        first = (self.ledger.mark_complete(done.node_id) if done.complete
                 else self.ledger.mark_done(done.node_id, done.last_seq))
        if first:
            self.last_news[done.node_id] = time.monotonic()
        if first:
            log.info("peer_complete" if done.complete else "peer_done", peer=done.node_id,
                     last_seq=done.last_seq)
            if self.relay:
                self.transport.broadcast(wire.relay(data, from_id=self.peer_id), exclude=(sender, done.node_id))
        self._check_finish()

    def _check_finish(self) -> None:
        if self.own_done and not self.delivered_sent and self.ledger.all_delivered():
            self.delivered_sent = True
            self.bridge.to_thread(FINISHED)
            self.transport.broadcast(wire.pack_done(node_id=self.peer_id, last_seq=self.worker.seq - 1,
                                                    complete=True))
            log.info("all_delivered", seconds=round(time.monotonic() - self.t_start, 3))

    # ---------------------------------------------------------------- sending
    async def _outbox(self) -> None:
        while True:
            item = await self.bridge.outbox.get()
            kind = item[0]
            if kind == "update":
                _, seq, data, reason = item
                self.triggers[reason] = self.triggers.get(reason, 0) + 1
                self.updates_sent += self.transport.broadcast(data)
                self.resend.sent(seq, data)
                if reason == FINAL and self.cfg.link.drop > 0:  # a lossy link: the flush carries the
                    self.transport.broadcast(data)  # whole residual, so it goes twice (dropped if both arrive)
                log.debug("update_sent", seq=seq, bytes=len(data), trigger=reason)
            elif kind == "done":
                self.own_done = True
                self.transport.broadcast(wire.pack_done(node_id=self.peer_id, last_seq=item[1], complete=False))
                log.info("training_done", last_seq=item[1], waiting_for=self.ledger.waiting_for())
                self._check_finish()
            elif kind == "epoch":
                self.transport.epoch = item[1]
                self._publish()
            elif kind == "state":
                _, requester, chunks = item
                if requester in self.transport.links:
                    for chunk in chunks:
                        self.transport.send(requester, chunk)

    async def _tick(self) -> None:
        last_beat = 0.0
        while True:
            now = time.monotonic()
            if now - last_beat >= HEARTBEAT_EVERY_S:
                last_beat = now
                p = self.worker.progress if hasattr(self, "worker") else None
                beat = wire.pack_heartbeat(node_id=self.peer_id, step=p.global_step if p else 0,
                                           epoch=p.epoch if p else 0)
                self.transport.broadcast(beat)
                if self.own_done:
                    self._repeat_done()
                    self._give_up_lost(now)
            for peer in self.ledger.check_down(now, self.cfg.timeouts.silence_s):
                log.warning("peer_down", peer=peer, silent_s=self.cfg.timeouts.silence_s)
                self._check_finish()
            if not self.catching_up:  # the awaited state holds what is missing now
                self.resend.ask(self.ledger, [n for n in self.neighbours if not self.ledger.views[n].down],
                                self.transport.send)
            self._publish()
            await asyncio.sleep(min(self.cfg.dashboard.interval_s, HEARTBEAT_EVERY_S))

    def _repeat_done(self) -> None:
        """Say Done again every heartbeat: one lost on a lossy link must not hang anybody."""
        self.transport.broadcast(wire.pack_done(node_id=self.peer_id, last_seq=self.worker.seq - 1,
                                                complete=self.delivered_sent))

    def _give_up_lost(self, now: float) -> None:
        """Updates of a finished peer still missing after ``timeouts.silence_s`` are lost: stop waiting."""
        for peer in self.ledger.waiting_for():
            if self.ledger.views[peer].last_seq is None:
                continue
            if now - self.last_news.get(peer, self.t_start) > self.cfg.timeouts.silence_s:
                missing = self.ledger.give_up(peer)
                self.updates_lost += missing
                log.warning("updates_lost", peer=peer, missing=missing)
        self._check_finish()

    # ---------------------------------------------------------------- reporting
    def _counters(self) -> dict[str, Any]:
        tr = self.transport
        numel = self.layout.numel
        dense = self.updates_sent * numel * 4
        epochs_seen = max(1, len([e for e, b in tr.bytes_sent_by_epoch.items() if b > 0]))
        return {
            "bytes_sent": tr.bytes_sent, "bytes_received": tr.bytes_received,
            "updates_sent": self.updates_sent,
            "updates_applied": self.worker.progress.updates_applied,
            "updates_rejected": sum(self.rejected.values()) + self.worker.progress.updates_rejected_by_policy,
            "rejected_by_reason": dict(self.rejected), "duplicates": self.duplicates, **self.resend.counts,
            "triggers": dict(self.triggers),
            "dense_equivalent_bytes": dense,
            "compression_ratio": dense / tr.bytes_sent if tr.bytes_sent else None,
            "mb_per_epoch": tr.bytes_sent / 1e6 / epochs_seen,
        }

    def _publish(self) -> None:
        if not hasattr(self, "telemetry") or not hasattr(self, "worker"):
            return
        p = self.worker.progress
        self.telemetry.publish({
            "state": p.state, "epoch": p.epoch, "epochs": self.cfg.train.epochs, "step": p.step,
            "steps_per_epoch": self.worker.trainer.steps_per_epoch, "loss": p.loss,
            "test_accuracy": p.test_accuracy, **self._counters(),
            "bandwidth_cap_bps": parse_bandwidth(self.cfg.link.bandwidth),
            "neighbours": self.neighbours, "neighbours_down": [n for n in self.ledger.down() if n in self.neighbours],
            "links": self.transport.link_stats(),
        })

    def _result(self, outcome: dict[str, Any]) -> dict[str, Any]:
        p = self.worker.progress
        result = {
            "id": self.peer_id, **outcome, **self._counters(),
            "updates_originated": p.updates_originated, "params": self.params,
            "numel": self.layout.numel, "epochs": self.cfg.train.epochs,
            "bytes_sent_by_epoch": dict(self.transport.bytes_sent_by_epoch),
            "bytes_received_by_epoch": dict(self.transport.bytes_received_by_epoch),
            "links": self.transport.link_stats(), "history": p.history,
            "peers_down": self.ledger.down(), "wall_s": round(time.monotonic() - self.t_start, 3),
            "applied_by_origin": {str(k): v for k, v in sorted(p.applied_by_origin.items())},
            "updates_lost": self.updates_lost, "skipped_before_state": self.skipped_before_state,
            "inbox_resets": self.transport.inbox_resets, "next_seq": self.worker.seq,
            "state_from": self.state_from,
        }
        path = self.run_dir / f"peer-{self.peer_id}.result.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(path)
        log.info("peer_result", **{k: v for k, v in result.items() if k not in ("history", "links")})
        return result
