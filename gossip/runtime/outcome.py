"""What a peer counts while it runs, and the result file it leaves.

:class:`Counters` is written by the loop's parts (dispatcher, membership, outbox) and read
for telemetry and the result; :func:`counters` turns it, with the transport's byte counts
and the worker's progress, into the figures every report uses; :func:`write_result` writes
``peer-<id>.result.json`` atomically (a crash never leaves half a file).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gossip.observe.log import get_logger
from gossip.runtime.progress import Progress

log = get_logger(__name__)


@dataclass
class Counters:
    rejected: dict[str, int] = field(default_factory=dict)  # by ProtocolError reason
    duplicates: int = 0
    updates_sent: int = 0          # frames of updates put on links (ours and relayed)
    triggers: dict[str, int] = field(default_factory=dict)  # our updates by the trigger that fired
    updates_lost: int = 0          # given up after timeouts.silence_s (lossy links, crashes)
    skipped_before_state: int = 0  # arrived while catching up: already in the adopted state

    def reject(self, reason: str, sender: int | None, detail: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        log.warning("update_rejected", reason=reason, sender=sender, detail=detail[:200])

    def triggered(self, reason: str) -> None:
        self.triggers[reason] = self.triggers.get(reason, 0) + 1


class ByteCounts(Protocol):
    """What :func:`counters` reads of :class:`gossip.runtime.transport.Transport`."""

    @property
    def bytes_sent(self) -> int: ...
    @property
    def bytes_received(self) -> int: ...
    bytes_sent_by_epoch: dict[int, int]


def counters(c: Counters, tr: ByteCounts, progress: Progress, numel: int,
             resend_counts: dict[str, int]) -> dict[str, Any]:
    """The traffic and filtering figures of telemetry and of the result."""
    dense = c.updates_sent * numel * 4
    epochs_seen = max(1, len([e for e, b in tr.bytes_sent_by_epoch.items() if b > 0]))
    return {
        "bytes_sent": tr.bytes_sent, "bytes_received": tr.bytes_received,
        "updates_sent": c.updates_sent,
        "updates_applied": progress.updates_applied,
        "updates_rejected": sum(c.rejected.values()) + progress.updates_rejected_by_policy,
        "rejected_by_reason": dict(c.rejected), "duplicates": c.duplicates, **resend_counts,
        "triggers": dict(c.triggers),
        "dense_equivalent_bytes": dense,
        "compression_ratio": dense / tr.bytes_sent if tr.bytes_sent else None,
        "mb_per_epoch": tr.bytes_sent / 1e6 / epochs_seen,
    }


def write_result(run_dir: Path, peer_id: int, result: dict[str, Any]) -> None:
    path = run_dir / f"peer-{peer_id}.result.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(path)
    log.info("peer_result", **{k: v for k, v in result.items() if k not in ("history", "links")})
