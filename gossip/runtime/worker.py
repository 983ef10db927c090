"""The training thread of a peer: train, fold in neighbours' deltas, hand updates to the loop.

Per batch, in this order:

1. **fold in** every neighbour update the loop has decoded since the last batch
   (:mod:`gossip.aggregation` policy: weights, then ``flat += w × delta``, or a robust fold);
2. **train**: one local optimizer step on this peer's shard;
3. **accumulate**: the step's parameter delta goes into the error-feedback residual. Under
   ``communication.consensus: local`` (default) the peer keeps its own step, so its model is
   the swarm's average plus its own unsent residual. Under ``exact`` the step is undone: the
   model moves only by compressed updates, so every peer holds the same model up to in-flight
   messages (as in Deep Gradient Compression);
4. **trigger**: when a sync trigger fires, the codec compresses the residual (subtracting
   exactly what it sends); under ``exact`` the peer applies the decoded bytes to itself, and
   the bytes go to the loop for the neighbours.

At the end: a last ``final`` update flushes the residual, ``done`` tells the loop the last
sequence number, and the thread keeps folding in updates until the loop says everything from
every live peer has arrived; then it evaluates on the test split.

This module touches no socket: everything crosses :class:`gossip.runtime.bridge.Bridge`.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from gossip._proto import gossip_pb2 as pb
from gossip.aggregation import Local, apply, make_policy
from gossip.aggregation.bound import NormBound
from gossip.config import Config
from gossip.observe.log import get_logger
from gossip.protocol import wire
from gossip.protocol.codec import ErrorFeedback, Layout, Sent, UpdateEncoder, make_encoder
from gossip.runtime import worker_state
from gossip.runtime.adapt import Adapter, LeadBound
from gossip.runtime.bridge import (
    FINISHED,
    Bridge,
    EpochStarted,
    Outgoing,
    StateAsked,
    StateReply,
    ToThread,
    TrainingDone,
)
from gossip.runtime.checkpoint import Checkpointer
from gossip.runtime.codistill import Codistill
from gossip.runtime.ledger import Ledger
from gossip.runtime.outcome import RejectLog
from gossip.runtime.progress import Progress
from gossip.runtime.trigger import FINAL, Trigger
from gossip.sim import attacks
from gossip.training.data import Dataset, Split
from gossip.training.outer import make_outer
from gossip.training.partition import partition, share_of_down
from gossip.training.trainer import StepStats, Trainer, warn_non_finite

log = get_logger(__name__)

__all__ = ["FINISHED", "Progress", "Worker"]  # FINISHED (loop -> thread) lives in gossip.runtime.bridge
EPOCH_EVAL_SAMPLES = 2000  # test samples scored at the end of each epoch but the last
WAIT_POLL_S = 0.1


class Worker:
    def __init__(self, cfg: Config, peer_id: int, trainer: Trainer, dataset: Dataset,
                 bridge: Bridge, layout: Layout, start_epoch: int = 0) -> None:
        self.cfg = cfg
        self.peer_id = peer_id
        self.trainer = trainer
        self.dataset = dataset
        self.bridge = bridge
        self.layout = layout
        # seeded per peer: under codec.select=randomk peers must not all pick the same elements
        self.encoder: UpdateEncoder = make_encoder(cfg.codec, layout, seed=cfg.seed, peer=peer_id)
        # With codec.momentum_correction (DGC) the residual accumulates a velocity of the deltas;
        # pair it with train.momentum=0 so momentum is applied once, in the residual.
        self.feedback = ErrorFeedback.for_config(cfg.codec, layout.numel, trainer.flat.device,
                                                 momentum=cfg.train.momentum)
        self.trigger = Trigger(cfg.communication)
        # the loop measures the links and sets the density scale; the thread reads it (gossip.runtime.adapt)
        self.adapter = Adapter(cfg.communication, cfg.codec.density, values=cfg.codec.values)
        self.lead = LeadBound(cfg.communication.max_lead_steps)  # the loop writes lead.slowest
        self.policy = make_policy(cfg.communication)
        self.policy.bind_direction(self.feedback.residual)  # a robust policy judges updates by it
        self.bound = NormBound(cfg.communication)  # whatever the policy: no one update decides the run
        self.bound.bind(self.feedback.residual)
        self.rejects = RejectLog(cfg.security.reject_log_interval_s)
        self.progress = Progress()
        self.start_epoch = start_epoch
        self.exact = cfg.communication.consensus == "exact"
        # Every delta counts 1/N on every model, so the swarm follows the *average* of its peers'
        # steps (a peer's own unsent residual is the exception under "local" consensus).
        self.mix = 1.0 / cfg.peers
        self.own_weight = self.mix if self.exact else self.mix - 1.0
        self.limits = wire.Limits(numel=layout.numel, schema_hash=layout.schema_hash,
                                  max_bytes=cfg.security.max_message_bytes, peers=cfg.peers)
        self.start_step = 0  # batches of start_epoch already done (a resumed mid-epoch checkpoint)
        self.seq = 0
        self.stopped = False
        self.applied = Ledger(peer_id, cfg.peers, 0.0)  # (node_id, seq) folded into trainer.flat
        self.attack = attacks.make_attack(cfg, peer_id, layout)  # None unless security.attackers has us
        # a simulated hostile peer lies on the wire but keeps its own model honest (gossip.sim.attacks)
        self.encoder = attacks.wrap_encoder(self.encoder, self.attack, self._header)
        self.checkpointer: Checkpointer | None = None  # set by the node when it has a run dir
        # held while the model changes (fold in, step, checkpoint). The loop never waits for it:
        # while this thread runs it answers StateAsked itself between batches (take); only once
        # the thread is not running may the loop answer, taking the free lock without blocking.
        self.state_lock = threading.Lock()
        # The node sets this to read which peers its ledger has marked down (the default: nobody,
        # as in the lock-step bench). At each epoch start their shards are shared out (adopt_shards).
        self.down_peers: Callable[[], set[int]] = set
        self.adopted: tuple[int, ...] = ()  # the down peers whose shards this epoch trains on too
        self._prev = torch.empty_like(trainer.flat)
        self._delta = torch.empty_like(trainer.flat)
        self.codistill = Codistill(self) if cfg.communication.mode == "codistill" else None
        comm = cfg.communication
        self.outer = make_outer(comm.outer, layout.numel, trainer.flat.device, lr=comm.outer_lr,
                                momentum=comm.outer_momentum)

    # ------------------------------------------------------------ the thread body
    def run(self) -> dict[str, Any]:
        tr, cfg = self.trainer, self.cfg
        self.progress.state = "training"
        for epoch in range(self.start_epoch, cfg.train.epochs):
            self.progress.epoch = epoch
            if not (epoch == self.start_epoch and self.start_step > 0):  # a resumed epoch keeps its pool
                self.adopt_shards(tuple(sorted(self.down_peers() - {self.peer_id})))
            self.bridge.to_loop(EpochStarted(epoch))
            loss_sum, batches, t0 = 0.0, 0, time.monotonic()
            for step, (x, y) in enumerate(tr.batches(epoch)):
                if epoch == self.start_epoch and step < self.start_step:
                    continue  # resumed mid-epoch: the same batches, in the same order, were done before
                if self.bridge.stop.is_set():
                    return self._stop(epoch, step)
                self.lead.wait(lambda: self.progress.global_step, self._pause, self.bridge.stop.is_set)
                with self.state_lock:
                    self.take(self.bridge.drain())
                    loss = self.train_batch(x, y, step)
                if math.isfinite(loss):  # a skipped step (Trainer.step) is no sample of the loss
                    loss_sum, batches = loss_sum + loss, batches + 1
            self._end_epoch(epoch, loss_sum / batches if batches else float("nan"), time.monotonic() - t0)
            if self.checkpointer is not None and self.checkpointer.due(epoch + 1):
                with self.state_lock:
                    self.take(self.bridge.drain())  # what has arrived is in the checkpoint
                    self.checkpointer.save(self.state_dict(epoch + 1, 0), epoch + 1, 0, reason="epoch")
        return self._finish()

    def train_batch(self, x: torch.Tensor, y: torch.Tensor, step: int) -> float:
        """Steps 2-4 of the module docstring for batch ``step`` of the epoch; returns its loss."""
        if self.codistill is not None:  # no delta: a step towards labels and teachers (gossip.runtime.codistill)
            return self.codistill.train_batch(x, y, step)
        tr = self.trainer
        self._prev.copy_(tr.flat)
        stats = tr.step(x, y)
        p = self.progress
        p.step, p.global_step = step + 1, p.global_step + 1
        if stats.skipped:  # the weights did not move: no delta, and no NaN for the trigger's averages
            self.note_non_finite(stats)
            return stats.loss
        torch.sub(tr.flat, self._prev, out=self._delta)
        if self.exact:  # the model moves only by what is sent (see send_update)
            tr.flat.copy_(self._prev)
        self.feedback.add(self._delta)
        p.loss, p.confidence = stats.loss, stats.confidence
        reason = self.trigger.observe(stats.confidence, stats.grad_norm, self.adapter.min_gap, self.adapter.holding())
        if reason is not None:
            self.send_update(reason)
        return stats.loss

    def note_non_finite(self, stats: StepStats) -> None:
        """Count a step Trainer.step skipped (NaN/inf loss or gradient): a corrupt sample costs one
        batch. Many in a row mean weights an overflow broke, which this does not repair."""
        p = self.progress
        p.non_finite_steps += 1
        warn_non_finite(p.non_finite_steps, stats, epoch=p.epoch, step=p.step)

    def adopt_shards(self, down: tuple[int, ...]) -> None:
        """Train this epoch on our share of the ``down`` peers' shards too (``data.adopt_down_shards``).

        A peer that dies mid-run takes its data with it; the live peers, dealing its shard among
        them (:func:`gossip.training.partition.share_of_down`), keep the swarm training on the whole data
        set. A peer that comes back is dropped again at the next epoch start.
        """
        if not self.cfg.data.adopt_down_shards:
            down = ()
        if down == self.adopted:
            return
        self.adopted = down
        if not down:
            self.trainer.set_extra(None)
            log.info("shards_released")
            return
        shards = partition(self.dataset.train.labels, self.cfg.peers, self.cfg.data, self.cfg.seed)
        idx = share_of_down(shards, self.peer_id, set(down))
        self.trainer.set_extra(Split(self.dataset.train.images[idx], self.dataset.train.labels[idx]))
        log.info("shards_adopted", down=list(down), samples=len(idx))

    def take(self, items: list[ToThread]) -> bool:
        """Handle what the loop sent: fold in the updates, then answer every StateAsked (so the
        state sent holds everything received so far); True when FINISHED was among them."""
        finished = self.fold_in(items)
        for item in items:
            if isinstance(item, StateAsked):
                self.answer_state(item.requester)
        return finished

    def fold_in(self, items: list[Any]) -> bool:
        """Apply decoded neighbour updates; True when the loop said FINISHED among them."""
        finished = FINISHED in items
        if self.codistill is not None:
            self.codistill.offer([s for s in items if isinstance(s, wire.Snapshot)])
        updates = [u for u in items if isinstance(u, wire.DecodedUpdate) and self._first_fold(u)]
        self._fold(self.bound.admit(updates, self._count_rejected))
        return finished

    def _fold(self, updates: list[wire.DecodedUpdate]) -> None:
        by = self.progress.applied_by_origin
        for update in updates:
            by[update.node_id] = by.get(update.node_id, 0) + 1
        local = Local(step=self.progress.global_step, confidence=self.progress.confidence)
        rejected: list[wire.DecodedUpdate] = []
        with torch.no_grad():  # a windowed policy may buffer them, or close a window now
            with self.outer.track(self.trainer.flat) if self.outer is not None else contextlib.nullcontext():
                self.policy.fold(self.trainer.flat, updates, local, weight=self.mix, reject=rejected.append)
            if self.outer is not None:
                self.outer.step(self.trainer.flat)
        for update in rejected:
            self._count_rejected(update)
        self.progress.updates_applied += len(updates) - len(rejected)

    def _first_fold(self, update: wire.DecodedUpdate) -> bool:
        """Second line of defence after the node's ledger: an (origin, seq) is folded in at most once."""
        if not self.applied.first_time(update.node_id, update.seq):
            log.error("update_refolded", node_id=update.node_id, seq=update.seq)
            return False
        return True

    def _count_rejected(self, update: wire.DecodedUpdate, reason: str = "aggregation_policy",
                        detail: str = "") -> None:
        p = self.progress
        p.updates_rejected_by_policy += 1
        p.rejected_by_policy[reason] = p.rejected_by_policy.get(reason, 0) + 1
        self.rejects.note(reason, update.from_id, detail, node_id=update.node_id, seq=update.seq)

    def answer_state(self, requester: int) -> None:
        """Send ``requester`` what this peer has published: ``flat - residual`` (see gossip.runtime.catchup).

        Called by whoever owns the model at the time: this thread between batches, or the loop
        once the thread is not running (never both: see ``state_lock``).
        """
        with torch.no_grad():  # under "exact" consensus the model holds no unsent residual
            public = self.trainer.flat.clone() if self.exact else self.trainer.flat - self.feedback.residual
        chunks = wire.pack_state_chunks(public, node_id=self.peer_id, seq=self.seq - 1,
                                        step=self.progress.global_step, epoch=self.progress.epoch,
                                        schema_hash=self.layout.schema_hash, applied=self.applied.state_dict())
        self.bridge.to_loop(StateReply(requester, tuple(chunks)))
        log.info("state_sent", to=requester, chunks=len(chunks), step=self.progress.global_step)

    def fill_seq_gap(self, upto: int) -> int:
        """Send empty updates for seqs ``self.seq .. upto-1`` (numbers possibly used before a crash).

        Neighbours drop the ones they saw as duplicates and count the others, so their
        bookkeeping of this peer has no hole; nothing is added to any model.
        """
        sent = 0
        while self.seq < upto:
            empty = pb.GradUpdate(selection=pb.SELECTION_TOPK, value_codec=pb.VALUE_CODEC_FP32,
                                  numel=self.layout.numel)
            self._send(empty, "seq_fill", final=False, step=self.progress.global_step,
                       confidence=0.0)
            sent += 1
        return sent

    def send_update(self, reason: str, *, final: bool = False) -> None:
        # The final flush sends the whole residual with the run's value codec (int8 by default):
        # an fp32 flush would be lossless but cost 4 bytes per parameter per neighbour, more than
        # a whole epoch of sparse updates for small models; int8 leaves ~0.5% of the residual.
        # (A 1- or 4-bit value codec is too coarse for the flush: it falls back to int8.)
        flush_values = self.cfg.codec.values if self.cfg.codec.values in ("int8", "fp16", "fp32") else "int8"
        density, values = self.adapter.encode_settings(self.encoder)  # None: the encoder's own (the link keeps up)
        encoded = (self.encoder.encode(self.feedback, density=1.0, values=flush_values) if final
                   else self.encoder.encode(self.feedback, density=density, values=values))
        step, confidence = self._header()
        self._send(encoded.msg, reason, final=final, step=step if encoded.step is None else encoded.step,
                   confidence=confidence if encoded.confidence is None else encoded.confidence, sent=encoded.sent)

    def _pause(self) -> None:
        """Wait for the neighbours without the model lock, still folding in what arrives."""
        items = self.bridge.wait(WAIT_POLL_S)
        with self.state_lock:
            self.take(items)

    def _header(self) -> tuple[int, float]:
        """The (step, confidence) our next update's header carries."""
        return self.progress.global_step, min(1.0, max(0.0, self.progress.confidence))

    def _send(self, update: pb.GradUpdate, reason: str, *, final: bool, step: int, confidence: float,
              sent: Sent | None = None) -> None:
        """Put ``update`` on the wire; ``sent``: what it adds on a receiver (None: nothing)."""
        if self.checkpointer is not None:
            self.checkpointer.reserve(self.seq)  # never reuse a seq after a crash (gossip.runtime.checkpoint)
        header: dict[str, Any] = {"node_id": self.peer_id, "seq": self.seq, "step": step, "epoch": self.progress.epoch,
                  "confidence": confidence, "schema_hash": self.layout.schema_hash, "final": final}
        data = wire.pack_update(update, **header)
        if self.own_weight != 0.0 and sent is not None:  # weigh our own sent delta exactly as every neighbour will
            with torch.no_grad():
                mine = wire.DecodedUpdate(**{k: v for k, v in header.items() if k != "schema_hash"},
                                          indices=sent.indices, values=sent.values, wire_bytes=len(data),
                                          from_id=self.peer_id)
                apply(self.trainer.flat, mine, self.own_weight)
                if self.outer is not None:  # the consensus part of it: what every neighbour adds
                    self.outer.add(sent.indices, sent.values, self.mix)
                self.policy.observe_own(mine, self.trainer.flat.numel())  # clip keeps our final flush
                self.bound.observe_own(mine)
        self.bridge.to_loop(Outgoing(self.seq, data, reason))
        self.seq += 1
        self.progress.updates_originated += 1

    # ------------------------------------------------------------ epochs and the end
    def _end_epoch(self, epoch: int, train_loss: float, seconds: float) -> None:
        last = epoch == self.cfg.train.epochs - 1
        record: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss, "seconds": round(seconds, 3)}
        if self.progress.non_finite_steps:
            record["non_finite_steps"] = self.progress.non_finite_steps  # so far, all epochs
        if not last:
            test = self.dataset.test
            n = min(EPOCH_EVAL_SAMPLES, len(test.labels))
            metrics = self.trainer.evaluate(Split(test.images[:n], test.labels[:n]))
            record.update(test_accuracy=metrics["accuracy"], test_samples=n)
            self.progress.test_accuracy = metrics["accuracy"]
        self.progress.history.append(record)
        log.info("epoch_end", **record, triggers=dict(self.trigger.fired))

    def _finish(self) -> dict[str, Any]:
        self.progress.state = "finishing"
        if self.cfg.communication.final_flush and self.codistill is None:  # codistill has no residual
            self.trigger.mark_synced(FINAL)
            self.send_update(FINAL, final=True)
        self.bridge.to_loop(TrainingDone(self.seq - 1))
        while not self.bridge.stop.is_set():
            items = self.bridge.wait(WAIT_POLL_S)
            with self.state_lock:
                if self.take(items):
                    break
        with self.state_lock:
            self.take(self.bridge.drain())  # anything that raced the FINISHED marker
            self._fold(self.bound.settle(self._count_rejected))  # updates the bound deferred
        with torch.no_grad():  # a windowed policy may still hold updates
            self.policy.flush(self.trainer.flat, weight=self.mix)
        if self.policy.stats:  # what a robust policy dropped or limited
            log.info("robust_summary", policy=self.cfg.communication.aggregation, **self.policy.stats)
        log.info("norm_bound_summary", factor=self.bound.factor, peak=round(self.bound.peak, 4), **self.bound.stats)
        self.rejects.flush(force=True)
        self.adapter.summary()
        if self.codistill is not None:
            self.codistill.summary()
        self.lead.flush(self.progress.global_step)
        if self.cfg.communication.bn_recalibrate_batches:  # statistics for the averaged weights
            layers = self.trainer.recalibrate_bn(self.cfg.communication.bn_recalibrate_batches)
            log.info("bn_recalibrated", layers=layers, batches=self.cfg.communication.bn_recalibrate_batches)
        metrics = self.trainer.evaluate(self.dataset.test)
        self.progress.test_accuracy = metrics["accuracy"]
        self.progress.epoch = self.cfg.train.epochs
        self.progress.state = "done"
        if self.progress.history:
            self.progress.history[-1]["test_accuracy"] = metrics["accuracy"]
        log.info("peer_evaluated", test_accuracy=metrics["accuracy"], test_loss=metrics["loss"],
                 residual_norm=float(self.feedback.residual.norm()))
        return {"test_accuracy": metrics["accuracy"], "test_loss": metrics["loss"], "stopped": False}

    def _stop(self, epoch: int, step: int) -> dict[str, Any]:
        self.stopped = True
        self.progress.state = "done"
        log.info("training_stopped", epoch=self.progress.epoch, step=self.progress.step)
        if self.checkpointer is not None and self.cfg.checkpoint.every_epochs > 0:
            with self.state_lock:
                self.take(self.bridge.drain())
                self.checkpointer.save(self.state_dict(epoch, step), epoch, step, reason="stop")
        return {"test_accuracy": None, "test_loss": None, "stopped": True}

    # ------------------------------------------------------------ checkpoints (gossip.runtime.worker_state)
    def state_dict(self, epoch: int, step: int) -> dict[str, Any]:
        """Everything :meth:`load_state_dict` needs to continue at data position (epoch, step)."""
        return worker_state.save(self, epoch, step)

    def load_state_dict(self, state: dict[str, Any]) -> tuple[int, int]:
        """Continue from ``state``; returns its data position (epoch, step) (CheckpointError if unfit)."""
        return worker_state.load(self, state)
