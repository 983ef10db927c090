"""Structured JSON logging shared by every module.

Each module takes ``log = get_logger(__name__)`` and emits snake_case events
(``update_sent``, ``epoch_end``) with keyword fields. :func:`configure` routes
them as one JSON object per line to a run's ``*.jsonl`` file (and optionally to
stderr). The process-wide ``peer_id`` is stamped on every event by a processor
rather than by ``bind`` so that the training thread and the asyncio loop both
carry it without passing loggers around.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import IO, Any

import structlog

_state: dict[str, Any] = {"peer_id": None, "sinks": []}
_lock = threading.Lock()


def _stamp(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event.setdefault("ts", round(time.time(), 6))
    if _state["peer_id"] is not None:
        event.setdefault("peer_id", _state["peer_id"])
    return event


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy and torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def _write(_: Any, __: str, event: MutableMapping[str, Any]) -> str:
    line = json.dumps(event, default=_jsonable, separators=(",", ":"))
    with _lock:
        for sink in _state["sinks"]:
            sink.write(line + "\n")
            sink.flush()
    return line


def configure(
    log_path: str | Path | None = None,
    *,
    peer_id: int | None = None,
    stderr: bool = False,
    level: str = "info",
) -> None:
    """Send every event to ``log_path`` (appended, JSON lines) and/or stderr."""
    for sink in _state["sinks"]:
        if sink not in (sys.stderr, sys.stdout):
            sink.close()
    sinks: list[IO[str]] = []
    if log_path is not None:
        path = Path(log_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        sinks.append(path.open("a", encoding="utf-8"))
    if stderr:
        sinks.append(sys.stderr)
    _state["sinks"] = sinks
    _state["peer_id"] = peer_id
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _stamp,
            structlog.processors.format_exc_info,
            _write,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.ReturnLoggerFactory(),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    """A logger for one module; its events carry ``logger=<module>``."""
    return structlog.get_logger(name).bind(logger=name)


# Until a run configures a destination, events go nowhere: libraries stay quiet.
configure()
