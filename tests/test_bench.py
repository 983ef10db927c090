"""The benchmark entry point: dispatcher, and the codec benchmark on a small real model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from ports import free_port_block

from gossip import bench
from gossip.experiments import bench_codec as codec_bench


def test_dispatcher_lists_and_rejects(capsys):
    assert bench.main(["--help"]) == 0
    assert "codec" in capsys.readouterr().out
    assert bench.main([]) == 2
    assert bench.main(["nope"]) == 2
    assert "unknown subcommand" in capsys.readouterr().err


def test_codec_bench_json_on_a_small_model(capsys):
    code = bench.main(["codec", "--models", "mnist_tiny", "--densities", "0.01", "--repeats", "2", "--json"])
    result = json.loads(capsys.readouterr().out)
    rows = result["rows"]
    default = [r for r in rows if r["default"]]
    assert len(default) == 1 and default[0]["select"] == "sampled_topk" and default[0]["values"] == "int8"
    main = default[0]
    assert main["bytes_per_kept"] <= main["wire_target"] and result["checks"]["mnist_tiny@0.01 wire"]
    assert main["compression_ratio"] > 50 and main["encode_gbps"] > 0 and main["decode_gbps"] > 0
    assert main["value_rel_error"] < 0.05 and 0 < main["residual_rel_error"] < 1
    by_codec = {(r["select"], r["values"], r["chunk"]): r for r in rows if r["index"] == "auto"}
    chunk = main["chunk"]
    fp32 = by_codec[("sampled_topk", "fp32", chunk)]
    assert fp32["value_rel_error"] < 1e-6 and fp32["bytes_per_kept"] > main["bytes_per_kept"]
    assert by_codec[("powersgd", "fp32", chunk)]["kept"] == main["numel"]
    one_scale = by_codec[("sampled_topk", "int8", 0 if chunk else 256)]
    assert (one_scale["value_rel_error"] > main["value_rel_error"]) == (chunk > 0)
    crossover = result["index_crossover"]["mnist_tiny"]
    assert [r["density"] for r in crossover] == list(codec_bench.CROSSOVER_DENSITIES)
    for r in crossover:  # auto is never worse than plain rice, and close to the best coder
        assert r["auto"] <= r["rice"] + 1e-9
        assert r["auto"] <= 1.1 * min(r["rice"], r["rice_zlib"], r["delta_zlib"], r["bitmap_zlib"]) + 0.1
    ref = result["reference"]["mnist_tiny@0.01"]
    assert main["encode_vs_topk"] == pytest.approx(main["encode_gbps"] / ref["torch_topk_gbps"])
    assert ref["encode_vs_topk"] == main["encode_vs_topk"] and "mnist_tiny@0.01 encode" in result["checks"]
    assert len(result["load_average"]["before"]) in (0, 3) and isinstance(result["kernel"], bool)
    assert code in (0, 1)  # throughput targets depend on the machine; the figures are what counts


def test_cli_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "gossip.bench", "codec", "--quick", "--models", "mnist_tiny",
                           "--densities", "0.01", "--repeats", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 1), proc.stderr
    assert "sampled_topk/int8" in proc.stdout and "target mnist_tiny@0.01 wire" in proc.stdout
    assert "x torch.topk" in proc.stdout and "load average" in proc.stdout
    encode = next(line for line in proc.stdout.splitlines() if line.startswith("target mnist_tiny@0.01 encode"))
    assert (">= 1.25 GB/s" in encode) and encode.split()[3] in ("PASS", "FAIL")


def test_every_subcommand_module_has_a_main():
    import importlib

    for module, _ in bench.SUBCOMMANDS.values():
        assert callable(importlib.import_module(module).main)


def test_scale_bench_gives_every_peer_the_same_local_steps_whatever_n():
    from gossip.experiments.bench_scale import SCALE_RECIPE, epochs_for

    assert [epochs_for(2, n) for n in (4, 8, 16, 32)] == [1, 2, 4, 8]
    assert "communication.peer_batch=16" in SCALE_RECIPE  # the 4-peer swarm's per-peer batch, fixed


@pytest.mark.slow
def test_scale_bench_quick_runs_8_peers_on_a_ring_and_a_torus(capsys, data_root, tmp_path):
    base = free_port_block(40)
    code = bench.main(["scale", "--quick", "--out", str(tmp_path), "--json", f"data.root={data_root}",
                       f"topology.base_port={base}", f"dashboard.telemetry_port={base + 20}"])
    figures = json.loads(capsys.readouterr().out)
    rows = {r["topology"]: r for r in figures["rows"]}
    assert set(rows) == {"ring", "torus"} and all(r["peers"] == 8 for r in rows.values())
    assert rows["ring"]["degree"] == 2 and rows["torus"]["degree"] == 3  # a 2 x 4 torus: up and down are one peer
    assert rows["torus"]["mb_per_epoch"] > rows["ring"]["mb_per_epoch"] > 0  # more neighbours, more bytes
    assert all(r["accuracy_mean"] > 0.3 for r in rows.values())  # 1 epoch, 1,000 samples per peer
    assert code == 0 and figures["checks"] == {"ring_bytes_flat": True, "torus_bytes_flat": True}
