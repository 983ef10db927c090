"""One run per run directory: a second run never appends to the first one's logs.

Logs are opened in append mode (a resumed run continues them), so reusing a folder by mistake
would mix two runs in one ``peer-*.jsonl`` and :mod:`gossip.experiments.analyze` would read
both. :func:`claim` is called before anything is written: a folder that holds a run is refused
unless the caller resumes it or asked for a fresh start, which removes only the files a run writes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from gossip.errors import ConfigError

# Files that show a run produced output here (a peer ran, or a baseline trained).
SWARM_MARKERS = ("peer-*.jsonl", "peer-*.result.json", "result.json", "checkpoints")
BASELINE_MARKERS = ("baseline.jsonl", "result.json")
# Everything a launch or a baseline writes, removed by ``fresh`` (and nothing else in the folder).
RUN_OUTPUTS = ("peer-*", "result.json", "launch.jsonl", "dashboard.log", "config.yaml", "checkpoints",
               "baseline.jsonl", "telemetry.jsonl", ".result.json.tmp*")
# What a launch that never started a peer leaves (the dashboard's port was taken, ...): nothing to mix.
LEFTOVERS = ("launch.jsonl", "dashboard.log", "config.yaml")


def previous_run(run_dir: Path, markers: tuple[str, ...]) -> list[Path]:
    """The files in ``run_dir`` that show an earlier run (empty when there is none)."""
    if not run_dir.is_dir():
        return []
    return sorted(p for pattern in markers for p in run_dir.glob(pattern))


def _remove(run_dir: Path, patterns: tuple[str, ...]) -> None:
    for pattern in patterns:
        for path in run_dir.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


def claim(run_dir: Path, *, markers: tuple[str, ...] = SWARM_MARKERS, leftovers: tuple[str, ...] = LEFTOVERS,
          resume: bool = False, fresh: bool = False, can_resume: bool = True) -> None:
    """Make ``run_dir`` ready for a new run, or raise a one-line :class:`ConfigError` if it holds one.

    ``resume``: the run continues, its files stay. ``fresh``: the previous run's files are removed.
    """
    if resume:
        return
    if previous_run(run_dir, markers) and not fresh:
        hint = "use --resume to continue it, --fresh to replace it" if can_resume else "use --fresh to replace it"
        raise ConfigError(f"{run_dir}: holds a previous run; {hint}, or another --run-dir")
    _remove(run_dir, RUN_OUTPUTS if fresh else leftovers)
