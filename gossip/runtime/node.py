"""One peer of the swarm: startup → main loop → graceful shutdown (:meth:`Peer.run`).

Startup: decide the security mode (:func:`gossip.runtime.curve.startup`: CURVE with this peer's
keys; without keys only on loopback or with ``security.insecure``), build the training side
(:mod:`gossip.runtime.factory`: data shard, model with the same initial weights on every peer,
worker), bind the inbox, connect to the neighbours and
wait for them to say hello (``timeouts.startup_s``; none at all is an error, some missing is
a warning), and catch up from a neighbour's state when far behind (:mod:`gossip.runtime.catchup`).
A neighbour running a different model (schema hash) stops both with a one-line error.

Main loop (every task owned here and cancelled on exit):

* ``receive`` — every inbound frame through :class:`gossip.runtime.dispatch.Dispatcher`
  (validation, spoof checks, de-duplication, relay, to the training thread);
* ``outbox`` — what the training thread put on the bridge (:data:`gossip.runtime.bridge.ToLoop`):
  our updates to every neighbour, state replies, Done, epoch marks;
* ``tick`` — heartbeats, liveness and the finish (:mod:`gossip.runtime.membership`), requests
  for updates a lossy link dropped (:mod:`gossip.runtime.resend`), telemetry;
* the training thread itself (:class:`gossip.runtime.worker.Worker`).

Shutdown: SIGINT/SIGTERM only set a flag; the thread stops after its batch, queues are
flushed for at most a second, sockets close, and the peer's result is written
(:mod:`gossip.runtime.outcome`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch

from gossip.config import Config, config_hash, parse_bandwidth, to_dict
from gossip.errors import PeerError
from gossip.observe.log import get_logger
from gossip.observe.telemetry import TelemetryPublisher
from gossip.protocol import wire
from gossip.runtime import adapt, checkpoint, curve, stall, topology
from gossip.runtime.bridge import (
    FINISHED,
    Bridge,
    EpochStarted,
    Outgoing,
    SnapshotOut,
    StateReply,
    TrainingDone,
)
from gossip.runtime.catchup import CatchUp, StateServer
from gossip.runtime.dispatch import Dispatcher
from gossip.runtime.factory import build_peer_worker
from gossip.runtime.ledger import Ledger
from gossip.runtime.linkwatch import LinkWatch
from gossip.runtime.membership import Membership
from gossip.runtime.outcome import Counters, counters, write_result
from gossip.runtime.resend import Resender
from gossip.runtime.stall import Stall
from gossip.runtime.transport import Transport
from gossip.runtime.trigger import FINAL
from gossip.runtime.worker import Worker
from gossip.training.models import count_params

log = get_logger(__name__)

HELLO_EVERY_S = 0.5
HEARTBEAT_EVERY_S = 1.0  # also how often a finished peer repeats its Done (a lossy link may eat one)


class Peer:
    def __init__(self, cfg: Config, peer_id: int, run_dir: Path, *, resume: bool = False) -> None:
        if not 0 <= peer_id < cfg.peers:
            raise PeerError(f"--id {peer_id}: this config has peers 0..{cfg.peers - 1}")
        topology.check_connected(cfg)
        # startup check: CURVE with this peer's keys, or insecure only where curve.startup allows it
        cfg = curve.startup(cfg, peer_id, topology.inbox_address(cfg, peer_id))
        self.cfg = cfg
        self.peer_id = peer_id
        self.run_dir = run_dir
        self.resume = resume
        self.neighbours = topology.neighbours(cfg, peer_id)
        self.t_start = time.monotonic()
        self.ledger = Ledger(peer_id, cfg.peers, self.t_start)
        self.counters = Counters()
        self.resend = Resender(peer_id)
        self.fatal: PeerError | None = None
        self.stall = Stall()  # this process's loop lag and inbox backlog: told in heartbeats (adapt)
        self.lead_stuck: set[int] = set()  # neighbours whose step stood still too long: holding nobody

    # ================================================================ the whole life
    async def run(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        self.bridge = Bridge(loop)
        for sig in (signal.SIGINT, signal.SIGTERM):
            # only the main thread may own signal handlers; elsewhere (tests) there are none
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._request_stop, sig)
        worker = await asyncio.to_thread(self._build)
        self.transport = Transport(self.cfg, self.peer_id, self.neighbours)
        self.transport.on_refused = curve.Refusals(self.counters.rejected)  # before start: ZAP uses it
        await self.transport.start()
        if self.cfg.security.curve:
            log.info("security_on", keys=str(curve.keys_dir(self.cfg)), telemetry=self.cfg.security.telemetry)
        self.telemetry = TelemetryPublisher(self.cfg, self.peer_id)
        self.assemble(worker, self.bridge, self.transport)
        tasks: list[asyncio.Task[Any]] = [asyncio.create_task(coro, name=name) for name, coro in (
            ("receive", self.dispatcher.receive(self._recv)), ("outbox", self._outbox()),
            ("tick", self._tick()), ("stall", self.stall.watch()))]
        try:
            await self._meet_neighbours()
            self.states.thread_starts()  # state requests now queue for the thread (catchup)
            await self.catchup.run(worker, self.bridge, self.dispatcher, resume=self.resume,
                                   timeout_s=max(5.0, 2 * self.cfg.timeouts.silence_s))
            train = asyncio.create_task(asyncio.to_thread(self._guarded_run), name="train")
            tasks.append(train)
            outcome = await train
            self.states.thread_ended()
            if self.fatal is not None:
                raise self.fatal
            await self.membership.linger(self.bridge.stop, self.cfg.timeouts.finish_s)
            result = self._result(outcome)
            if self.cfg.checkpoint.save_final and not outcome.get("stopped"):  # for experiments' ensembles
                state = {k: v.detach().cpu().clone() for k, v in worker.trainer.model.state_dict().items()}
                torch.save(state, self.run_dir / f"peer-{self.peer_id}.final.pt")
            return result
        finally:
            self.bridge.stop.set()
            worker.progress.state = "done"
            self._publish()
            await self.transport.flush(timeout=1.0)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.transport.close()
            self.telemetry.close()

    # ================================================================ startup
    def _build(self) -> Worker:
        cfg = self.cfg
        log.info("config_resolved", config=to_dict(cfg), config_hash=config_hash(cfg))
        worker = build_peer_worker(cfg, self.peer_id, self.bridge)
        worker.down_peers = lambda: {p for p, view in self.ledger.views.items() if view.down}
        worker.checkpointer = checkpoint.Checkpointer(self.run_dir, self.peer_id, cfg.checkpoint,
                                                      resume=self.resume)
        if self.resume:
            self._resume(worker)
        return worker

    def assemble(self, worker: Worker, bridge: Any, transport: Any) -> None:
        """Wire the loop's parts around ``worker``, ``bridge`` and ``transport`` (``send``,
        ``broadcast``, ``links``, ``epoch``): tests pass in-memory ones (gossip.runtime.testing)."""
        cfg = self.cfg
        self.worker, self.transport = worker, transport
        self.layout = worker.layout
        self.params = count_params(worker.trainer.model)
        self.limits = wire.Limits(numel=self.layout.numel, schema_hash=self.layout.schema_hash,
                                  max_bytes=cfg.security.max_message_bytes, peers=cfg.peers)
        self.membership = Membership(self.peer_id, self.ledger, transport.broadcast, self.counters,
                                     silence_s=cfg.timeouts.silence_s, partition_wait_s=cfg.timeouts.partition_wait_s,
                                     on_all_delivered=lambda: bridge.to_thread(FINISHED), t_start=self.t_start)
        self.catchup = CatchUp(self.peer_id, self.ledger, self.counters, transport.send,
                               numel=self.layout.numel, schema_hash=self.layout.schema_hash)
        self.states = StateServer(worker, bridge, interval_s=cfg.security.state_answer_interval_s)
        self.dispatcher = Dispatcher(
            self.peer_id, self.neighbours, relay=cfg.topology.kind != "full", limits=self.limits,
            config_hash=config_hash(cfg), ledger=self.ledger, counters=self.counters,
            membership=self.membership, catchup=self.catchup, resend=self.resend, link=transport,
            deliver=bridge.to_thread, ask_state=self.states.asked, on_fatal=self._on_fatal,
            security=cfg.security, greet=self.greet, on_heartbeat=self._link_report,
            own_step=lambda: worker.progress.global_step, on_step=self.refresh_lead,
            relay_to=topology.relay_targets(cfg, self.peer_id) if cfg.topology.relay == "shortest_paths" else None)
        reconnect = getattr(transport, "reconnect", None)  # in-memory links (tests) never die
        self.link_watch = None if reconnect is None else LinkWatch(
            transport.queued_to, reconnect, after_s=cfg.timeouts.silence_s / 2)

    def _resume(self, worker: Worker) -> None:
        """Continue from this peer's newest readable checkpoint, and never reuse a sequence number."""
        ckpt = worker.checkpointer
        assert ckpt is not None
        found = ckpt.latest()
        if found is None:
            log.warning("resume_without_checkpoint", directory=str(ckpt.directory))
        else:
            path, state = found
            epoch, step = worker.load_state_dict(state)
            worker.start_epoch, worker.start_step = epoch, step
            self.ledger.load_state_dict(state["applied"])
            log.info("resumed", path=str(path), epoch=epoch, step=step, seq=worker.seq,
                     global_step=worker.progress.global_step)
        worker.seq = max(worker.seq, ckpt.leased - checkpoint.SEQ_LEASE)
        filled = worker.fill_seq_gap(ckpt.leased)
        if filled:
            log.info("seq_gap_filled", empty_updates=filled, next_seq=worker.seq)

    def _hello(self) -> bytes:
        return wire.pack_hello(node_id=self.peer_id, schema_hash=self.layout.schema_hash,
                               config_hash=config_hash(self.cfg),
                               address=topology.inbox_address(self.cfg, self.peer_id),
                               epochs=self.cfg.train.epochs, step=self.worker.progress.global_step)

    async def _meet_neighbours(self) -> None:
        heard = self.dispatcher.heard
        deadline = time.monotonic() + self.cfg.timeouts.startup_s
        while set(self.neighbours) - heard and time.monotonic() < deadline:
            for nbr in set(self.neighbours) - heard:
                self.transport.send(nbr, self._hello())
            await asyncio.sleep(HELLO_EVERY_S)
            if self.fatal is not None:
                raise self.fatal
        missing = sorted(set(self.neighbours) - heard)
        if missing and len(missing) == len(self.neighbours):
            addrs = ", ".join(topology.inbox_address(self.cfg, p) for p in missing)
            raise PeerError(f"peer {self.peer_id}: no neighbour answered within "
                            f"{self.cfg.timeouts.startup_s:g}s ({addrs}); are the other peers running?")
        if missing:
            log.warning("neighbours_missing", missing=missing)
        log.info("neighbours_met", heard=sorted(heard), seconds=round(time.monotonic() - self.t_start, 3))

    # ================================================================ signals and faults: flags only
    def _guarded_run(self) -> dict[str, Any]:
        threading.current_thread().name = f"train-{self.peer_id}"
        return self.worker.run()

    def _request_stop(self, sig: int) -> None:
        log.info("stop_requested", signal=signal.Signals(sig).name)
        self.bridge.stop.set()

    def _on_fatal(self, error: PeerError) -> None:
        self.fatal = error
        self.bridge.stop.set()

    # ================================================================ main loop
    async def _outbox(self) -> None:
        while True:
            self.on_outgoing(await self.bridge.outbox.get())

    def on_outgoing(self, item: Any) -> None:
        """One item the training thread put on the bridge."""
        if isinstance(item, Outgoing):
            self.counters.triggered(item.reason)
            self.counters.updates_sent += self.transport.broadcast(item.data)
            self.resend.sent(item.seq, item.data)
            if item.reason == FINAL and self.cfg.link.drop > 0:  # a lossy link: the flush carries the
                self.transport.broadcast(item.data)  # whole residual, so it goes twice (dropped if both arrive)
            log.debug("update_sent", seq=item.seq, bytes=len(item.data), trigger=item.reason)
        elif isinstance(item, TrainingDone):
            self.membership.training_done(item.last_seq)
        elif isinstance(item, EpochStarted):
            self.transport.epoch = item.epoch
            self._publish()
        elif isinstance(item, SnapshotOut):
            self.counters.snapshots_sent += self.transport.broadcast(item.data)
        elif isinstance(item, StateReply) and item.requester in self.transport.links:
            for chunk in item.chunks:
                self.transport.send(item.requester, chunk)

    async def _recv(self) -> tuple[int | None, list[bytes]]:
        got = await self.transport.recv()
        self.stall.inbox(self.transport.inbox_waiting())
        return got

    async def _tick(self) -> None:
        last_beat = 0.0
        while True:
            now = time.monotonic()
            if now - last_beat >= HEARTBEAT_EVERY_S:
                last_beat = now
                self.beat()
                self.membership.heartbeat(now)
            self.membership.check_down(now)
            self.pace()
            if not self.catchup.active:  # the awaited state holds what is missing now
                self.resend.ask(self.ledger, [n for n in self.neighbours if not self.ledger.views[n].down],
                                self.transport.send)
            self._publish()
            await asyncio.sleep(min(self.cfg.dashboard.interval_s, HEARTBEAT_EVERY_S))

    def pace(self) -> None:
        """Feed the links' counters to the density controller and the slowest live neighbour's
        step to the lead bound (gossip.runtime.adapt); the thread reads both between batches."""
        views = self.ledger.views
        down = frozenset(str(n) for n in self.neighbours if views[n].down)
        stats: dict[str, dict[str, int]] = getattr(self.transport, "link_stats", dict)()  # in-memory links: none
        self.worker.adapter.observe(stats, down, own_stall=self.stall.recent(), stalled=self.stalled(time.monotonic()))
        self.refresh_lead()

    def refresh_lead(self) -> None:
        """The slowest live, unfinished neighbour's step for the lead bound (a finished or down
        neighbour holds nobody, nor one whose step stood still for the silence period: see
        adapt.lead_holders): at every pace, and whenever a neighbour's own update tells a newer step."""
        views, d = self.ledger.views, self.dispatcher
        slowest, stuck = adapt.lead_holders(d.neighbour_step, d.step_moved_at, time.monotonic(),
                                            self.cfg.timeouts.silence_s,
                                            lambda n: not views[n].down and views[n].last_seq is None)
        for n in sorted(stuck - self.lead_stuck):
            log.warning("lead_neighbour_stuck", neighbour=n, step=d.neighbour_step.get(n),
                        still_s=round(time.monotonic() - d.step_moved_at.get(n, 0.0), 1))
        self.lead_stuck = stuck
        self.worker.lead.slowest = slowest

    def stalled(self, now: float) -> dict[str, float]:
        """Each neighbour's recent stall in seconds: what its heartbeats say (while the report covers),
        or how much longer than a heartbeat period it has been silent (a stalled peer says nothing;
        a slow link still brings its messages, only later)."""
        out = {}
        for n in self.neighbours:
            said, at = self.dispatcher.stalled.get(n, (0.0, -math.inf))
            silent = now - self.ledger.views[n].last_heard - HEARTBEAT_EVERY_S
            out[str(n)] = max(said if now - at <= stall.RECENT_S else 0.0, silent, 0.0)
        return out

    def beat(self) -> None:
        for nbr in self.neighbours:  # one each: it says what we heard from that neighbour
            self.greet(nbr)

    def greet(self, nbr: int) -> None:
        """A heartbeat to ``nbr`` now; also the answer to its Hello (a late joiner decides on it)."""
        p = self.worker.progress  # plain attributes the thread writes: no lock
        heard = getattr(self.transport, "heard_from", lambda n: 0)(nbr)
        met = self.dispatcher.met_at.get(nbr)  # not heard yet: say nothing (0), the beat may arrive late
        self.transport.send(nbr, wire.pack_heartbeat(node_id=self.peer_id, step=p.global_step, epoch=p.epoch,
                                                     heard_from_you=heard, step_when_met=0 if met is None else met + 1,
                                                     stalled_ms=self.stall.report_ms()))

    def _link_report(self, nbr: int, heard_from_you: int) -> None:
        if self.link_watch is not None:
            self.link_watch.report(nbr, heard_from_you)

    # ================================================================ reporting
    def _counters(self) -> dict[str, Any]:
        return counters(self.counters, self.transport, self.worker.progress, self.layout.numel, self.resend.counts)

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
            "links": self.transport.link_stats(), **self.worker.adapter.telemetry(),
            "lead_wait_s": round(self.worker.lead.waited_s, 3),
        })

    def _result(self, outcome: dict[str, Any]) -> dict[str, Any]:
        p, c = self.worker.progress, self.counters
        result = {
            "id": self.peer_id, **outcome, **self._counters(),
            "updates_originated": p.updates_originated, "params": self.params,
            "numel": self.layout.numel, "epochs": self.cfg.train.epochs,
            "bytes_sent_by_epoch": dict(self.transport.bytes_sent_by_epoch),
            "bytes_received_by_epoch": dict(self.transport.bytes_received_by_epoch),
            "links": self.transport.link_stats(), "history": p.history,
            "peers_down": self.ledger.down(), "wall_s": round(time.monotonic() - self.t_start, 3),
            "applied_by_origin": {str(k): v for k, v in sorted(p.applied_by_origin.items())},
            "updates_lost": c.updates_lost, "skipped_before_state": c.skipped_before_state,
            "non_finite_steps": p.non_finite_steps,
            "inbox_resets": self.transport.inbox_resets, "next_seq": self.worker.seq,
            "state_from": self.catchup.source, "finish_reason": self.membership.finish_reason,
            "adapt": {"density": self.worker.adapter.current_density, "changes": self.worker.adapter.changes,
                      "lowest_density": self.worker.adapter.settings(self.worker.adapter.lowest)[0],
                      "lead_waits": self.worker.lead.waits, "lead_wait_s": round(self.worker.lead.waited_s, 3),
                      "stalled_decisions": self.worker.adapter.stalled_decisions,
                      "worst_stall_s": round(self.stall.worst, 3)},
        }
        write_result(self.run_dir, self.peer_id, result)
        return result
