"""``python -m gossip.bench SUBCOMMAND [options]``: the project's benchmarks, one entry point.

=========  =====================================================================
codec      encode/decode throughput and wire size of the codecs (gossip.experiments.bench_codec)
swarm      a swarm against the centralized baseline, end to end (gossip.experiments.bench_swarm)
robust     robust aggregation against simulated attackers (gossip.experiments.bench_robust)
shaper     the bandwidth cap on the wire in network namespaces (gossip.experiments.bench_shaper)
scale      8 and 16 peers on a ring and a torus: accuracy and bytes per peer (gossip.experiments.bench_scale)
=========  =====================================================================

A subcommand is a module with ``main(argv: list[str] | None) -> int``; add one by
adding a line to :data:`SUBCOMMANDS`. ``python -m gossip.bench SUBCOMMAND -h``
lists its options.
"""

from __future__ import annotations

import importlib
import sys

from gossip.cli import guarded

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "codec": ("gossip.experiments.bench_codec", "codec throughput and bytes on the wire"),
    "swarm": ("gossip.experiments.bench_swarm", "a swarm against the centralized baseline"),
    "robust": ("gossip.experiments.bench_robust", "robust aggregation against simulated attackers"),
    "shaper": ("gossip.experiments.bench_shaper", "the bandwidth cap on the wire, second by second (root)"),
    "scale": ("gossip.experiments.bench_scale", "8 and 16 peers on a ring and a torus"),
}


def usage() -> str:
    lines = ["usage: python -m gossip.bench SUBCOMMAND [options]", "", "subcommands:"]
    lines += [f"  {name:8} {summary}" for name, (_, summary) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    if args[0] not in SUBCOMMANDS:
        print(f"error: unknown subcommand {args[0]!r}\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[args[0]][0])
    return int(guarded(lambda: module.main(args[1:])))


if __name__ == "__main__":
    raise SystemExit(main())
