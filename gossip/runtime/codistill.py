"""The training thread's side of ``communication.mode: codistill`` (:mod:`gossip.training.distill`).

Under codistill a peer never sends a delta and never folds one in: per batch it takes one
local step on cross-entropy plus the distillation term towards its teachers, and every
``distill.snapshots_per_epoch``-th of an epoch it puts a ``ModelSnapshot`` of its parameters
on the bridge (:class:`gossip.runtime.bridge.SnapshotOut`; the loop sends it to every
neighbour, best effort: a lost one is superseded by the next). Snapshots that arrive become
teachers, or are refused and counted (``stale_snapshot``, ``empty_snapshot``, ``norm_bound``)
like a refused update. The rest of the runtime (Hello, heartbeats, Done, link watch, rate
limits, CURVE) is the same as when averaging; Done carries ``last_seq = -1``.
"""

from __future__ import annotations

from typing import Any

from gossip.observe.log import get_logger
from gossip.protocol import wire
from gossip.protocol.codec.dense import encode_dense
from gossip.runtime.bridge import SnapshotOut
from gossip.training.distill import Distiller

log = get_logger(__name__)


class Codistill:
    # worker: the gossip.runtime.worker.Worker that owns this (not imported: it imports us)
    def __init__(self, worker: Any) -> None:
        self.worker = worker
        tr = worker.trainer
        self.distiller = Distiller(worker.cfg, tr.model, tr.flat, tr.steps_per_epoch)
        self.version = 0  # our next snapshot's number

    def train_batch(self, x: Any, y: Any, step: int) -> float:
        """One step on labels + teachers; a snapshot out when one is due. Returns the loss."""
        w = self.worker
        p = w.progress
        stats = w.trainer.step(x, y, extra=self.distiller.term(p.global_step))
        p.step, p.global_step = step + 1, p.global_step + 1
        if stats.skipped:
            w.note_non_finite(stats)
        else:
            p.loss, p.confidence = stats.loss, stats.confidence
        if p.global_step % self.distiller.every == 0:
            self.send_snapshot()
            self.distiller.forget_stale(p.global_step)
        return stats.loss

    def send_snapshot(self) -> None:
        w = self.worker
        weights = encode_dense(w.trainer.flat, w.cfg.distill.values, w.cfg.codec.chunk or 256)
        data = wire.pack_snapshot(weights, node_id=w.peer_id, version=self.version, step=w.progress.global_step,
                                  epoch=w.progress.epoch, schema_hash=w.layout.schema_hash)
        w.bridge.to_loop(SnapshotOut(self.version, data))
        self.version += 1

    def offer(self, snapshots: list[wire.Snapshot]) -> None:
        """Neighbours' snapshots from the loop: each becomes that neighbour's teacher, or is refused."""
        w = self.worker
        for snap in snapshots:
            reason = self.distiller.offer(snap.node_id, snap.version, snap.step, snap.values, w.progress.global_step)
            if reason is None:
                w.progress.snapshots_applied += 1
            else:
                p = w.progress
                p.updates_rejected_by_policy += 1
                p.rejected_by_policy[reason] = p.rejected_by_policy.get(reason, 0) + 1
                w.rejects.note(reason, snap.node_id, "snapshot", node_id=snap.node_id, seq=snap.version)

    def summary(self) -> None:
        d = self.distiller
        log.info("codistill_summary", snapshots_sent=self.version, teachers=sorted(d.teachers),
                 snapshots_applied=d.applied, refused=dict(d.refused), every_batches=d.every)

    def state_dict(self) -> dict[str, object]:
        return {"version": self.version, "distiller": self.distiller.state_dict()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        version = state.get("version", 0)
        self.version = int(version) if isinstance(version, int) else 0
        distiller = state.get("distiller")
        if isinstance(distiller, dict):
            self.distiller.load_state_dict(distiller)
