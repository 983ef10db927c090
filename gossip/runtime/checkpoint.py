"""Checkpoints of one peer: atomic, verified, and complete enough to resume exactly.

Where: ``RUN_DIR/checkpoints/peer-<id>/ckpt-e<epoch>-s<step>.pt``, where (epoch, step) is the
*data position to resume at* (an epoch-end checkpoint of epoch 4 is ``e0005-s000000``; a
graceful stop in the middle of epoch 2 after 17 batches is ``e0002-s000017``). Names sort in
training order; the newest ``checkpoint.keep`` files are kept.

When: at the end of every ``checkpoint.every_epochs``-th epoch (0: never) and on a graceful
stop (SIGINT/SIGTERM), both written by the training thread between two batches.

What: the state dict the caller hands in (:meth:`gossip.runtime.worker.Worker.state_dict`:
each component's own ``state_dict()`` — trainer, error feedback, encoder, trigger, ledger,
aggregation policy, attack, progress — plus the data position and the next sequence number).
This module knows nothing about what is inside: it only writes, verifies, lists and finds files.

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
from typing import Any

import torch

from gossip.config import CheckpointConfig
from gossip.errors import CheckpointError
from gossip.observe.log import get_logger

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
    """``MAGIC + sha256(payload) + payload`` of ``state`` (stamped with this ``FORMAT``)."""
    buf = io.BytesIO()
    torch.save({**state, "format": FORMAT}, buf)
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


# ---------------------------------------------------------------- one peer's checkpoints


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

    def save(self, state: dict[str, Any], epoch: int, step: int, reason: str) -> Path:
        """Write ``state`` as the checkpoint at data position (epoch, step)."""
        path = save(self.directory, epoch, step, state, self.cfg.keep)
        log.info("checkpoint_saved", path=str(path), epoch=epoch, step=step, reason=reason,
                 bytes=path.stat().st_size, seq=state.get("seq"))
        return path

    def reserve(self, seq: int) -> None:
        """Make sure ``seq`` is below the persisted lease before it goes on the wire."""
        if seq >= self.leased:
            self.leased = seq + SEQ_LEASE
            write_lease(self.directory, self.leased)

    def latest(self) -> tuple[Path, dict[str, Any]] | None:
        return latest(self.directory)
