"""Run one peer: ``python -m gossip.peer --id 2 --config configs/mnist_4peers.yaml``.

The id may also come from ``RANK`` (torchrun) or ``SLURM_PROCID`` (Slurm), so the same
command starts peers across machines. Trailing ``key=value`` arguments override the config.
Nothing imports this module: it is the thin entry point around :class:`gossip.runtime.node.Peer`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gossip import config as config_mod
from gossip.cli import guarded, run_async
from gossip.errors import ConfigError
from gossip.observe.log import configure


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m gossip.peer",
        description="Run one peer of a gossip swarm: train on this peer's shard and exchange "
        "compressed updates with the neighbours named by the config's topology. Peers may start in "
        "any order; each waits timeouts.startup_s for its neighbours.",
        epilog="example: python -m gossip.peer --id 2 --config configs/mnist_4peers.yaml --run-dir runs/x "
        "train.epochs=1",
    )
    ap.add_argument("--id", type=int, default=None,
                    help="this peer's id, 0..peers-1 (default: $RANK or $SLURM_PROCID)")
    ap.add_argument("--config", required=True, help="YAML config shared by all peers")
    ap.add_argument("--run-dir", default="runs/peer", help="where peer-<id>.jsonl and the result go")
    ap.add_argument("--quiet", action="store_true", help="do not echo log events to stderr")
    ap.add_argument("--resume", action="store_true",
                    help="continue from this peer's newest checkpoint in --run-dir (and catch up with the "
                    "swarm if it is an epoch or more ahead)")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=0.1")
    return ap.parse_intermixed_args(argv)


def peer_id_from(args: argparse.Namespace) -> int:
    if args.id is not None:
        return int(args.id)
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    raise ConfigError("--id: give --id N (or set RANK / SLURM_PROCID)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def go() -> int:
        cfg = config_mod.load(args.config, args.overrides)
        peer_id = peer_id_from(args)
        run_dir = Path(args.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        configure(run_dir / f"peer-{peer_id}.jsonl", peer_id=peer_id, stderr=not args.quiet, level="info")
        from gossip.runtime.node import Peer  # heavy imports (torch) after argument checks

        result = run_async(Peer(cfg, peer_id, run_dir, resume=args.resume).run())
        acc = result.get("test_accuracy")
        summary = f"peer {peer_id}: " + (f"test accuracy {acc:.4f}" if acc is not None else "stopped")
        print(summary, file=sys.stderr)
        return 0

    return guarded(go)


if __name__ == "__main__":
    code = main()
    # Results, checkpoints and logs are on disk and every socket is closed: skip the interpreter's
    # teardown of torch and the data set, which takes seconds on a loaded host (a graceful stop
    # should exit promptly; errors above still exit the normal way).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
