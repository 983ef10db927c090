"""gossip.cli: the event loop never hides the run's own error; every entry point's GossipError is one line."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

from gossip import cli
from gossip.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


async def _raise_import_error() -> None:
    await asyncio.sleep(0)
    raise ImportError("no module named 'inside_the_run'")


def test_an_import_error_inside_the_run_surfaces() -> None:
    with pytest.raises(ImportError, match="inside_the_run"):
        cli.run_async(_raise_import_error())


def test_without_uvloop_it_runs_on_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    async def answer() -> int:
        return 42

    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError
    assert cli.run_async(answer()) == 42
    with pytest.raises(ImportError, match="inside_the_run"):  # and the run's own error still surfaces
        cli.run_async(_raise_import_error())


def _entry_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    from gossip import analyze, bench
    from gossip.experiments import baseline, experiment
    from gossip.observe import dashboard
    from gossip.runtime import curve, launch

    bad = "train.lr=fast"

    def no_keys(directory: str, peers: int) -> None:
        raise ConfigError(f"{directory}: not writable")

    monkeypatch.setattr(curve, "create", no_keys)  # making keys has no bad input of its own to give
    return {
        "launch": lambda: launch.main(["configs/mnist_4peers.yaml", "--run-dir", str(tmp_path), bad]),
        "dashboard": lambda: dashboard.main([bad]),
        "baseline": lambda: baseline.main(["--config", "configs/mnist_baseline.yaml", "--run-dir",
                                           str(tmp_path), bad]),
        "experiment": lambda: experiment.main(["configs/compare_mnist.yaml", "--out", str(tmp_path), bad]),
        "analyze": lambda: analyze.main([str(tmp_path / "missing")]),
        "curve": lambda: curve.main([str(tmp_path / "keys"), "--peers", "2"]),
        "bench": lambda: bench.main(["robust", bad]),
    }


@pytest.mark.parametrize("name", ["launch", "dashboard", "baseline", "experiment", "analyze", "curve", "bench"])
def test_every_entry_point_reports_a_gossip_error_in_one_line(name: str, tmp_path: Path, capsys: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exc:
        _entry_points(tmp_path, monkeypatch)[name]()
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
