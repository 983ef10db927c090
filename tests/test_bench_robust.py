"""``python -m gossip.bench robust`` on a tiny real setting: its cells are deterministic, in or out of process."""

from __future__ import annotations

import json

import pytest

from gossip.experiments import bench_robust

pytestmark = pytest.mark.slow

TINY = ["peers=4", "data.limit_train=1200", "data.limit_test=300", "train.threads=1"]


def run(tmp_path, name, *args):
    out = tmp_path / name
    assert bench_robust.main(["--attacks", "none,sign_flip", "--policies", "uniform,clip", "--attackers", "1",
                              "--out", str(out), *args, *TINY]) == 0
    return json.loads((out / "robust.json").read_text())


def test_parallel_cells_match_serial_ones(data_root, tmp_path):
    serial = run(tmp_path, "serial")
    parallel = run(tmp_path, "parallel", "--jobs", "2")
    key = lambda c: (c["attack"], c["policy"])  # noqa: E731
    assert [key(c) for c in serial["cells"]] == [key(c) for c in parallel["cells"]]
    for a, b in zip(serial["cells"], parallel["cells"], strict=True):
        assert 0.0 < a["honest_mean"] <= 1.0
        assert a["honest_mean"] == b["honest_mean"] and a["honest_min"] == b["honest_min"]
    assert (tmp_path / "parallel" / "robust.md").read_text().startswith("Honest peers'")


def test_bad_jobs_is_a_usage_error():
    with pytest.raises(SystemExit) as exc:
        bench_robust.main(["--jobs", "0"])
    assert exc.value.code == 2
