"""What a peer counts while it runs, and the result file it leaves.

:class:`Counters` is written by the loop's parts (dispatcher, membership, outbox) and read
for telemetry and the result; :class:`RejectLog` keeps a flood of rejected frames to two log
lines per reason per interval (the first, then a count); :func:`counters` turns it, with the transport's byte counts
and the worker's progress, into the figures every report uses; :func:`write_result` writes
``peer-<id>.result.json`` atomically (a crash never leaves half a file).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gossip.observe.log import get_logger
from gossip.runtime.progress import Progress

log = get_logger(__name__)


class RejectLog:
    """``update_rejected`` aggregated: per reason, the first rejection of an interval is logged
    as it happens, the rest of that interval as one ``update_rejected_summary`` line with a
    count (``interval_s`` 0: every rejection on its own line)."""

    def __init__(self, interval_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.open: dict[str, tuple[float, int, set[int | None]]] = {}  # reason -> (since, suppressed, senders)

    def note(self, reason: str, sender: int | None, detail: str, **fields: Any) -> None:
        now = self.clock()
        self.flush(now)
        window = self.open.get(reason)
        if window is None or self.interval_s <= 0:
            if self.interval_s > 0:
                self.open[reason] = (now, 0, set())
            log.warning("update_rejected", reason=reason, sender=sender, detail=detail[:200], **fields)
            return
        since, suppressed, senders = window
        if len(senders) < 64:  # senders are neighbours (or None): bounded anyway
            senders.add(sender)
        self.open[reason] = (since, suppressed + 1, senders)

    def flush(self, now: float | None = None, *, force: bool = False) -> None:
        """Write the summary of every interval that has ended (``force``: of every open one)."""
        now = self.clock() if now is None else now
        for reason, (since, suppressed, senders) in list(self.open.items()):
            if force or now - since >= self.interval_s:
                del self.open[reason]
                if suppressed:
                    log.warning("update_rejected_summary", reason=reason, count=suppressed,
                                senders=sorted(senders, key=lambda s: -1 if s is None else s),
                                seconds=round(now - since, 3))


@dataclass
class Counters:
    rejected: dict[str, int] = field(default_factory=dict)  # by ProtocolError reason
    duplicates: int = 0
    updates_sent: int = 0          # frames of updates put on links (ours and relayed)
    triggers: dict[str, int] = field(default_factory=dict)  # our updates by the trigger that fired
    updates_lost: int = 0          # given up after timeouts.silence_s (lossy links, crashes)
    skipped_before_state: int = 0  # arrived while catching up: already in the adopted state
    snapshots_sent: int = 0        # ModelSnapshot frames put on links (communication.mode: codistill)
    rate_limited: dict[str, int] = field(default_factory=dict)  # frames dropped by kind (gossip.runtime.ratelimit)
    log: RejectLog = field(default_factory=RejectLog)

    def reject(self, reason: str, sender: int | None, detail: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        self.log.note(reason, sender, detail)

    def limited(self, kind: str, sender: int | None) -> None:
        """A frame dropped by the rate limits: counted by kind, logged like a rejection."""
        self.rate_limited[kind] = self.rate_limited.get(kind, 0) + 1
        self.log.note("rate_limited", sender, f"{kind} over its rate", kind=kind)

    def triggered(self, reason: str) -> None:
        self.triggers[reason] = self.triggers.get(reason, 0) + 1


class ByteCounts(Protocol):
    """What :func:`counters` reads of :class:`gossip.runtime.transport.Transport`."""

    @property
    def bytes_sent(self) -> int: ...
    @property
    def bytes_received(self) -> int: ...
    @property
    def bytes_queued(self) -> int: ...
    @property
    def bytes_unsent(self) -> int: ...
    @property
    def wire_bytes_sent(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    bytes_sent_by_epoch: dict[int, int]


def counters(c: Counters, tr: ByteCounts, progress: Progress, numel: int,
             resend_counts: dict[str, int]) -> dict[str, Any]:
    """The traffic and filtering figures of telemetry and of the result."""
    dense = (c.updates_sent + c.snapshots_sent) * numel * 4  # what fp32 updates / snapshots would take
    epochs_seen = max(1, len([e for e, b in tr.bytes_sent_by_epoch.items() if b > 0]))
    return {
        "bytes_sent": tr.bytes_sent, "bytes_received": tr.bytes_received,
        # gossip.runtime.link says what each means; bytes_unsent is known once the transport closed
        "bytes_queued": tr.bytes_queued, "bytes_unsent": tr.bytes_unsent, "wire_bytes_sent": tr.wire_bytes_sent,
        "messages_dropped": tr.dropped,
        "updates_sent": c.updates_sent,
        "updates_applied": progress.updates_applied,
        "updates_rejected": sum(c.rejected.values()) + progress.updates_rejected_by_policy,
        "rejected_by_reason": _merged(c.rejected, progress.rejected_by_policy),
        "rate_limited": dict(c.rate_limited), "duplicates": c.duplicates, **resend_counts,
        "triggers": dict(c.triggers),
        "snapshots_sent": c.snapshots_sent, "snapshots_applied": progress.snapshots_applied,
        "dense_equivalent_bytes": dense,
        "compression_ratio": dense / tr.bytes_sent if tr.bytes_sent else None,
        "mb_per_epoch": tr.bytes_sent / 1e6 / epochs_seen,
    }


def _merged(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in (*a, *(k for k in b if k not in a))}


def write_result(run_dir: Path, peer_id: int, result: dict[str, Any]) -> None:
    path = run_dir / f"peer-{peer_id}.result.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(path)
    log.info("peer_result", **{k: v for k, v in result.items() if k not in ("history", "links")})
