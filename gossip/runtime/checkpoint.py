"""Checkpoints of one peer: atomic, verified, and complete enough to resume exactly.

Where: ``RUN_DIR/checkpoints/peer-<id>/ckpt-e<epoch>-s<step>.pt``, where (epoch, step) is the
*data position to resume at* (an epoch-end checkpoint of epoch 4 is ``e0005-s000000``; a
graceful stop in the middle of epoch 2 after 17 batches is ``e0002-s000017``). Names sort in
training order; the newest ``checkpoint.keep`` files are kept.

When: at the end of every ``checkpoint.every_epochs``-th epoch (0: never) and on a graceful
stop (SIGINT/SIGTERM), both written by the training thread between two batches.

What (:func:`capture`): the model's flat parameters, the optimizer's velocity, the LR
schedule position, the RNG states (torch; the encoder's numpy generator), the data position,
the error-feedback residual, the trigger's state, the encoder's state, this peer's own next
sequence number, which ``(node_id, seq)`` updates are folded into these weights (so nothing is
applied twice after a resume), the aggregation policy's state, and the progress counters.
Updates received but not yet folded in are not in it; a resumed peer gives up waiting for
them after ``timeouts.silence_s`` (see :mod:`gossip.runtime.node`).

How: ``MAGIC + sha256(payload) + payload`` where the payload is ``torch.save`` of plain
tensors and Python values, written to a temporary file, fsynced, renamed over the final
name, and the directory fsynced: a crash leaves either the old file or the new one, never a
torn one. Loading checks the digest first and then uses ``torch.load(weights_only=True)``
(no arbitrary pickles); a corrupt or truncated file is reported with its reason and the
previous checkpoint is used.

Sequence-number lease: a restarted peer must never reuse a sequence number its neighbours
have already seen (they would drop the new update as a duplicate), and it may have sent
updates after its last checkpoint. So before sending seq ``s`` at or past the lease, the
peer writes ``seq.lease`` = ``s + SEQ_LEASE``; a resumed peer continues from the lease and
first sends empty updates for the numbers between its checkpoint and the lease, so its
neighbours' bookkeeping has no hole (see :meth:`gossip.runtime.worker.Worker.fill_seq_gap`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gossip.config import CheckpointConfig
from gossip.errors import CheckpointError
from gossip.observe.log import get_logger

if TYPE_CHECKING:
    from gossip.runtime.ledger import Ledger
    from gossip.runtime.worker import Worker

log = get_logger(__name__)

FORMAT = 1
MAGIC = b"GOSSIPCK"  # 8 bytes, then the 32-byte sha256 of the payload, then the payload
DIGEST_BYTES = 32
SEQ_LEASE = 64  # sequence numbers reserved per lease write (one tiny fsync'd file per 64 updates)
_NAME = re.compile(r"^ckpt-e(\d{4,})-s(\d{6,})\.pt$")


def peer_dir(run_dir: str | Path, peer_id: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"peer-{peer_id}"


def checkpoint_name(epoch: int, step: int) -> str:
    return f"ckpt-e{epoch:04d}-s{step:06d}.pt"


# ---------------------------------------------------------------- files


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def encode(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    return MAGIC + hashlib.sha256(payload).digest() + payload


def decode(data: bytes, where: str = "checkpoint") -> dict[str, Any]:
    """The state in ``data``; CheckpointError when it is truncated, corrupt or not a checkpoint."""
    head = len(MAGIC) + DIGEST_BYTES
    if len(data) < head or not data.startswith(MAGIC):
        raise CheckpointError(f"{where}: not a gossip checkpoint (truncated to {len(data)} bytes or wrong magic)")
    payload = data[head:]
    if hashlib.sha256(payload).digest() != data[len(MAGIC):head]:
        raise CheckpointError(f"{where}: checksum mismatch (truncated or corrupt, {len(data)} bytes)")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # a valid digest over an unloadable payload: written by something else
        raise CheckpointError(f"{where}: unreadable payload ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{where}: unknown checkpoint format {state.get('format') if isinstance(state, dict) else '?'}")
    return state


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror})") from None
    return decode(data, str(path))


def listing(directory: Path) -> list[Path]:
    """Checkpoint files in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _NAME.match(p.name))


def save(directory: Path, epoch: int, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write one checkpoint atomically and delete all but the newest ``keep``."""
    path = directory / checkpoint_name(epoch, step)
    write_atomic(path, encode(state))
    for old in listing(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def latest(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint (skipping corrupt ones, each logged), or None if there is none.

    Raises CheckpointError when checkpoints exist but none of them can be read.
    """
    files = listing(directory)
    errors = []
    for path in reversed(files):
        try:
            return path, load(path)
        except CheckpointError as exc:
            errors.append(str(exc))
            log.warning("checkpoint_corrupt", path=str(path), reason=str(exc),
                        fallback="previous checkpoint" if path != files[0] else "none left")
    if files:
        raise CheckpointError(f"all {len(files)} checkpoints in {directory} are unreadable; last: {errors[-1]}")
    return None


# ---------------------------------------------------------------- sequence-number lease


def read_lease(directory: Path) -> int:
    path = directory / "seq.lease"
    try:
        return int(json.loads(path.read_text())["next_free"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def write_lease(directory: Path, next_free: int) -> None:
    write_atomic(directory / "seq.lease", json.dumps({"next_free": next_free}).encode())


# ---------------------------------------------------------------- ledger snapshots


def ledger_state(ledger: Ledger) -> dict[int, list[int]]:
    """``{origin: [floor, *seen seqs above it]}``: which updates of each origin are accounted for."""
    return {p: [v.floor, *sorted(v.above)] for p, v in ledger.views.items()}


def load_ledger(ledger: Ledger, state: dict[int, list[int]]) -> None:
    for origin, (floor, *above) in state.items():
        if ledger.known(int(origin)):
            view = ledger.views[int(origin)]
            view.floor, view.above = int(floor), {int(s) for s in above}


# ---------------------------------------------------------------- a worker's state


class Checkpointer:
    """Saves and finds one peer's checkpoints and keeps its sequence-number lease ahead."""

    def __init__(self, run_dir: str | Path, peer_id: int, cfg: CheckpointConfig, *, resume: bool = False) -> None:
        self.directory = peer_dir(run_dir, peer_id)
        self.cfg = cfg
        # a fresh run starts at seq 0 whatever an old run left here; a resumed one continues the lease
        self.leased = read_lease(self.directory) if resume else 0

    def due(self, epochs_done: int) -> bool:
        every = self.cfg.every_epochs
        return every > 0 and epochs_done % every == 0

    def save(self, worker: Worker, epoch: int, step: int, reason: str) -> Path:
        path = save(self.directory, epoch, step, capture(worker, epoch, step), self.cfg.keep)
        log.info("checkpoint_saved", path=str(path), epoch=epoch, step=step, reason=reason,
                 bytes=path.stat().st_size, seq=worker.seq)
        return path

    def reserve(self, seq: int) -> None:
        """Make sure ``seq`` is below the persisted lease before it goes on the wire."""
        if seq >= self.leased:
            self.leased = seq + SEQ_LEASE
            write_lease(self.directory, self.leased)

    def latest(self) -> tuple[Path, dict[str, Any]] | None:
        return latest(self.directory)


def capture(worker: Worker, epoch: int, step: int) -> dict[str, Any]:
    """Everything :func:`restore` needs to continue ``worker`` at data position (epoch, step)."""
    p = worker.progress
    policy = worker.policy
    return {
        "format": FORMAT,
        "peer_id": worker.peer_id,
        "schema_hash": worker.layout.schema_hash,
        "position": {"epoch": epoch, "step": step, "global_step": p.global_step},
        "trainer": worker.trainer.state_dict(),
        "feedback": worker.feedback.state_dict(),
        "encoder": worker.encoder.state_dict(),
        "trigger": worker.trigger.state_dict(),
        "seq": worker.seq,
        "adopted": list(worker.adopted),
        "applied": ledger_state(worker.applied),
        "policy": policy.state_dict() if hasattr(policy, "state_dict") else {},
        "attack": worker.attack.state_dict() if worker.attack is not None else {},
        "progress": {
            "updates_originated": p.updates_originated, "updates_applied": p.updates_applied,
            "updates_rejected_by_policy": p.updates_rejected_by_policy,
            "applied_by_origin": dict(p.applied_by_origin), "history": list(p.history),
            "test_accuracy": p.test_accuracy,
        },
    }


def restore(worker: Worker, state: dict[str, Any]) -> tuple[int, int]:
    """Load ``state`` into ``worker``; returns the data position (epoch, step) to continue at."""
    if state.get("peer_id") != worker.peer_id:
        raise CheckpointError(f"checkpoint of peer {state.get('peer_id')}, not of peer {worker.peer_id}")
    if state.get("schema_hash") != worker.layout.schema_hash:
        raise CheckpointError("checkpoint of a different model (schema hash differs): same model.name needed")
    try:
        worker.trainer.load_state_dict(state["trainer"])
        worker.feedback.load_state_dict(state["feedback"])
        worker.encoder.load_state_dict(state["encoder"])
        worker.trigger.load_state_dict(state["trigger"])
        worker.seq = int(state["seq"])
        worker.adopt_shards(tuple(int(p) for p in state.get("adopted", [])))
        load_ledger(worker.applied, state["applied"])
        if state.get("policy") and hasattr(worker.policy, "load_state_dict"):
            worker.policy.load_state_dict(state["policy"])
        if state.get("attack") and worker.attack is not None:
            worker.attack.load_state_dict(state["attack"])
        pos, prog, p = state["position"], state["progress"], worker.progress
        p.global_step = int(pos["global_step"])
        p.epoch, p.step = int(pos["epoch"]), int(pos["step"])
        p.updates_originated = int(prog["updates_originated"])
        p.updates_applied = int(prog["updates_applied"])
        p.updates_rejected_by_policy = int(prog["updates_rejected_by_policy"])
        p.applied_by_origin = {int(k): int(v) for k, v in prog["applied_by_origin"].items()}
        p.history = list(prog["history"])
        p.test_accuracy = prog["test_accuracy"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint: missing or malformed field ({type(exc).__name__}: {exc})") from None
    return int(pos["epoch"]), int(pos["step"])
