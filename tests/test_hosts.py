"""topology.hosts from a hostfile, Slurm's node list or torchrun's environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from gossip.config import hosts
from gossip.errors import ConfigError


@pytest.mark.parametrize(("nodelist", "expected"), [
    ("node1", ["node1"]),
    ("node[01-03,07],gpu5", ["node01", "node02", "node03", "node07", "gpu5"]),
    ("rack1-n[8-10]", ["rack1-n8", "rack1-n9", "rack1-n10"]),
    ("a[1-2]b[3-4]", ["a1b3", "a1b4", "a2b3", "a2b4"]),
    ("x[009-011]", ["x009", "x010", "x011"]),
])
def test_slurm_node_lists_expand_like_scontrol(nodelist: str, expected: list[str]):
    assert hosts.expand_nodelist(nodelist) == expected


@pytest.mark.parametrize("bad", ["node[1-", "node]1[", "n[3-1]", "n[a-b]", ""])
def test_bad_node_lists_are_one_line_errors(bad: str):
    with pytest.raises(ConfigError, match="topology.hosts"):
        hosts.expand_nodelist(bad)


def test_tasks_per_node():
    assert hosts.expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    with pytest.raises(ConfigError):
        hosts.expand_tasks_per_node("2(y3)")


def test_slurm_blocks_give_each_task_its_node():
    env = {"SLURM_JOB_NODELIST": "n[1-2]", "SLURM_TASKS_PER_NODE": "2(x2)"}
    assert hosts.resolve("slurm", 4, env=env) == ["n1", "n1", "n2", "n2"]
    with pytest.raises(ConfigError, match="2 slots for 4 peers"):
        hosts.resolve("slurm", 4, env={"SLURM_JOB_NODELIST": "n[1-2]"})
    with pytest.raises(ConfigError, match="SLURM_JOB_NODELIST"):
        hosts.resolve("slurm", 4, env={})


def test_hostfile_slots_comments_and_relative_paths(tmp_path: Path):
    (tmp_path / "hosts.txt").write_text("# my cluster\n10.0.0.1 slots=2\n\nbox-b:1  # the other one\nbox-c\n")
    assert hosts.resolve("hostfile:hosts.txt", 4, base=tmp_path) == ["10.0.0.1", "10.0.0.1", "box-b", "box-c"]
    assert hosts.resolve("hostfile:hosts.txt", 3, base=tmp_path) == ["10.0.0.1", "10.0.0.1", "box-b"]
    (tmp_path / "bad.txt").write_text("a b c\n")
    with pytest.raises(ConfigError, match=r"bad.txt:1: expected 'host'"):
        hosts.resolve("hostfile:bad.txt", 1, base=tmp_path)
    with pytest.raises(ConfigError, match="cannot read hostfile"):
        hosts.resolve("hostfile:missing.txt", 1, base=tmp_path)


def test_env_prefers_slurm_then_single_node_torchrun():
    assert hosts.resolve("env", 4, env={"SLURM_JOB_NODELIST": "n1", "SLURM_TASKS_PER_NODE": "4"}) == ["n1"] * 4
    assert hosts.resolve("env", 4, env={"MASTER_ADDR": "127.0.0.1", "WORLD_SIZE": "4",
                                        "LOCAL_WORLD_SIZE": "4"}) == ["127.0.0.1"]
    with pytest.raises(ConfigError, match="hostfile"):
        hosts.resolve("env", 4, env={"MASTER_ADDR": "10.1.1.1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"})


def test_lists_pass_through_and_unknown_strings_are_refused():
    assert hosts.resolve(["a", "b"], 2) == ["a", "b"]
    with pytest.raises(ConfigError, match="expected a list of hosts"):
        hosts.resolve("somewhere", 2)
