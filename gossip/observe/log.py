"""Structured JSON logging shared by every module.

Each module takes ``log = get_logger(__name__)`` and emits snake_case events
(``update_sent``, ``epoch_end``) with keyword fields. :func:`configure` (a whole
process) or :func:`run_logging` (one run, restored afterwards) routes them as one
JSON object per line to a run's ``*.jsonl`` file (and optionally to stderr).
The process-wide ``peer_id`` is stamped on every event by a processor rather
than by ``bind`` so that the training thread and the asyncio loop both carry it
without passing loggers around.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import IO, Any

import structlog

_state: dict[str, Any] = {"peer_id": None, "sinks": [], "level": "info", "threshold": 20}
_lock = threading.Lock()


_LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40, "exception": 40,
           "critical": 50, "fatal": 50}


def _filter(_: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # the level is checked here, not by the bound logger's class: module loggers are built once,
    # at import, and must follow the level of whichever run is current
    if _LEVELS.get(method, 20) < _state["threshold"]:
        raise structlog.DropEvent
    return event


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


def _install(sinks: list[IO[str]], peer_id: int | None, level: str) -> None:
    with _lock:
        _state.update(sinks=sinks, peer_id=peer_id, level=level, threshold=_LEVELS[level.lower()])
    structlog.configure(
        processors=[
            _filter,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _stamp,
            structlog.processors.format_exc_info,
            _write,
        ],
        wrapper_class=structlog.make_filtering_bound_logger("debug"),
        logger_factory=structlog.ReturnLoggerFactory(),
        cache_logger_on_first_use=False,
    )


def _open_sinks(log_path: str | Path | None, stderr: bool) -> list[IO[str]]:
    sinks: list[IO[str]] = []
    if log_path is not None:
        path = Path(log_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        sinks.append(path.open("a", encoding="utf-8"))
    if stderr:
        sinks.append(sys.stderr)
    return sinks


def _close(sinks: list[IO[str]]) -> None:
    for sink in sinks:
        if sink not in (sys.stderr, sys.stdout):
            sink.close()


def configure(
    log_path: str | Path | None = None,
    *,
    peer_id: int | None = None,
    stderr: bool = False,
    level: str = "info",
) -> None:
    """Send every event to ``log_path`` (appended, JSON lines) and/or stderr, for the rest of the process.

    For one run inside a longer process (an experiment's arms) use :func:`run_logging` instead.
    """
    old = _state["sinks"]
    _install(_open_sinks(log_path, stderr), peer_id, level)
    _close(old)


@contextlib.contextmanager
def run_logging(
    log_path: str | Path | None,
    *,
    peer_id: int | None = None,
    stderr: bool = False,
    level: str = "info",
) -> Iterator[None]:
    """Route events to ``log_path`` for the ``with`` block, then back to where they went before.

    Runs nest (an experiment's log, then one arm's ``launch.jsonl`` inside it); the binding is
    process-wide, like :func:`configure`, because a process runs one run at a time.
    """
    previous = (_state["sinks"], _state["peer_id"], _state["level"])
    mine = _open_sinks(log_path, stderr)
    _install(mine, peer_id, level)
    try:
        yield
    finally:
        _install(*previous)
        _close(mine)


def get_logger(name: str) -> Any:
    """A logger for one module; its events carry ``logger=<module>``."""
    return structlog.get_logger(name).bind(logger=name)


# Until a run configures a destination, events go nowhere: libraries stay quiet.
configure()
