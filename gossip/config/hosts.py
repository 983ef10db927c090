"""Where each peer runs: ``topology.hosts`` as a list, a hostfile, or what Slurm / torchrun say.

``topology.hosts`` accepts

* a list: one host per peer, or one host for all (the default ``[127.0.0.1]``);
* ``"hostfile:PATH"``: an MPI-style hostfile, one ``host [slots=N]`` (or ``host:N``) per line, ``#``
  comments; peers fill the slots in order (peer 0..N-1 on the first host, ...). A relative PATH is
  taken from the config file's folder;
* ``"slurm"``: the job's nodes (``SLURM_JOB_NODELIST``, bracket ranges expanded as ``scontrol show
  hostnames`` does) with ``SLURM_TASKS_PER_NODE`` (``2(x3),1``) tasks on each, in Slurm's block order,
  so ``srun`` task ``SLURM_PROCID`` runs peer ``SLURM_PROCID`` on the right node;
* ``"env"``: ``"slurm"`` inside a Slurm job, else torchrun's single-node case (every peer on
  ``MASTER_ADDR``); torchrun across machines gives no peer a list of the others, so it needs a hostfile.

The expansion happens when the config is loaded, so every component sees a plain tuple.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from gossip.errors import ConfigError

KEY = "topology.hosts"


def _expand_ranges(body: str) -> list[str]:
    out: list[str] = []
    for part in body.split(","):
        lo, sep, hi = part.partition("-")
        if not sep:
            out.append(lo)
            continue
        if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
            raise ConfigError(f"{KEY}: bad Slurm range {part!r}")
        if int(hi) - int(lo) > 100_000:
            raise ConfigError(f"{KEY}: Slurm range {part!r} is too long")
        width = len(lo) if lo.startswith("0") else 0
        out += [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    return out


def expand_nodelist(nodelist: str) -> list[str]:
    """``"node[01-03,07],gpu5"`` -> ``["node01", "node02", "node03", "node07", "gpu5"]``."""
    names: list[str] = []
    depth, start = 0, 0
    items = []
    for i, ch in enumerate(nodelist + ","):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(nodelist[start:i].strip())
            start = i + 1
        if depth < 0 or depth > 1:
            raise ConfigError(f"{KEY}: bad Slurm node list {nodelist!r}")
    if depth != 0:
        raise ConfigError(f"{KEY}: bad Slurm node list {nodelist!r}")
    for item in filter(None, items):
        expanded = [""]
        for text, ranges in re.findall(r"([^\[\]]*)(?:\[([^\]]*)\])?", item):
            choices = _expand_ranges(ranges) if ranges else [""]
            expanded = [e + text + c for e in expanded for c in choices]
        names += [e for e in expanded if e]
    if not names:
        raise ConfigError(f"{KEY}: empty Slurm node list")
    return names


def expand_tasks_per_node(spec: str) -> list[int]:
    """``"2(x3),1"`` -> ``[2, 2, 2, 1]`` (Slurm's SLURM_TASKS_PER_NODE)."""
    out: list[int] = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not m:
            raise ConfigError(f"{KEY}: bad SLURM_TASKS_PER_NODE {spec!r}")
        out += [int(m.group(1))] * int(m.group(2) or 1)
    return out


def read_hostfile(path: Path) -> list[str]:
    """One entry per slot, in file order."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"{KEY}: cannot read hostfile {path} ({exc.strerror or exc})") from None
    hosts: list[str] = []
    for n, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-\[\]:]+?)(?::(\d+)|\s+slots\s*=\s*(\d+))?", line)
        if not m or (m.group(1).count(":") and not m.group(1).startswith("[")):
            raise ConfigError(f"{KEY}: {path}:{n}: expected 'host' or 'host slots=N', got {line!r}")
        slots = int(m.group(2) or m.group(3) or 1)
        if slots < 1:
            raise ConfigError(f"{KEY}: {path}:{n}: slots must be >= 1")
        hosts += [m.group(1).strip("[]")] * slots
    if not hosts:
        raise ConfigError(f"{KEY}: hostfile {path} lists no host")
    return hosts


def from_slurm(env: Mapping[str, str]) -> list[str]:
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise ConfigError(f"{KEY}: 'slurm' needs SLURM_JOB_NODELIST (run inside a Slurm job, e.g. under srun)")
    nodes = expand_nodelist(nodelist)
    per_node = expand_tasks_per_node(env["SLURM_TASKS_PER_NODE"]) if env.get("SLURM_TASKS_PER_NODE") else [1] * len(nodes)
    if len(per_node) != len(nodes):
        raise ConfigError(f"{KEY}: {len(nodes)} Slurm nodes but SLURM_TASKS_PER_NODE lists {len(per_node)}")
    return [node for node, n in zip(nodes, per_node, strict=True) for _ in range(n)]


def from_env(env: Mapping[str, str], peers: int) -> list[str]:
    if env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST"):
        return from_slurm(env)
    if env.get("MASTER_ADDR"):
        world, local = env.get("WORLD_SIZE"), env.get("LOCAL_WORLD_SIZE")
        if world and local and world != local:
            raise ConfigError(f"{KEY}: torchrun across machines tells no peer where the others run; "
                              "list them in a hostfile and set topology.hosts: hostfile:PATH")
        return [env["MASTER_ADDR"]]
    raise ConfigError(f"{KEY}: 'env' found neither SLURM_JOB_NODELIST nor MASTER_ADDR")


def resolve(value: object, peers: int, base: Path | None = None,
            env: Mapping[str, str] | None = None) -> object:
    """The hosts a config names, as a list; anything that is not one of the strings passes through."""
    if not isinstance(value, str):
        return value
    env = os.environ if env is None else env
    if value.startswith("hostfile:"):
        path = Path(value[len("hostfile:"):]).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        hosts = read_hostfile(path)
    elif value == "slurm":
        hosts = from_slurm(env)
    elif value == "env":
        hosts = from_env(env, peers)
    else:
        raise ConfigError(f"{KEY}: expected a list of hosts, 'hostfile:PATH', 'slurm' or 'env', got {value!r}")
    if len(hosts) == 1:
        return hosts
    if len(hosts) < peers:
        raise ConfigError(f"{KEY}: {value} gives {len(hosts)} slots for {peers} peers")
    return hosts[:peers]
