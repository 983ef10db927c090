"""``python -m gossip.analyze RUN_DIR [RUN_DIR] [--json] [--csv FILE] [--tensorboard DIR]``.

The results table of an experiment, a swarm run or a baseline run, rebuilt from its JSONL logs
(:mod:`gossip.experiments.analyze`, tables from :mod:`gossip.experiments.report`), and the per-epoch
scalars as CSV or TensorBoard event files (:mod:`gossip.experiments.export`).
"""

from __future__ import annotations

import argparse
import json
import sys

from gossip.cli import guarded


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m gossip.analyze",
        description="Rebuild the results table of an experiment, a swarm run or a baseline run from its "
        "JSONL logs; with two folders, show them side by side.",
        epilog="example: python -m gossip.analyze runs/compare_mnist runs/compare_mnist_ring --json",
    )
    ap.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="experiment or run folder(s)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--target", type=float, default=None, help="accuracy for the time-to-target column")
    ap.add_argument("--csv", metavar="FILE", help="also write every per-epoch scalar (per peer) to a CSV file")
    ap.add_argument("--tensorboard", metavar="DIR",
                    help="also write the per-epoch scalars as TensorBoard event files (tensorboard --logdir DIR)")
    args = ap.parse_args(argv)

    def go() -> int:
        # imported after parsing so that --help stays fast (numpy, the analysis)
        from gossip.experiments import analyze, export, report


        summaries = [analyze.summarize(analyze.load(d), args.target) for d in args.run_dirs]
        diff = analyze.compare(summaries[0], summaries[1]) if len(summaries) == 2 else None
        if args.csv or args.tensorboard:
            records = [r for d in args.run_dirs for r in export.rows(d)]
            if args.csv:
                print(f"wrote {export.write_csv(records, args.csv)}", file=sys.stderr)
            if args.tensorboard:
                folders = export.write_tensorboard(records, args.tensorboard)
                print(f"wrote {len(folders)} TensorBoard runs under {args.tensorboard}", file=sys.stderr)
        if args.json:
            print(json.dumps(report.finite({"runs": summaries, "compare": diff}), indent=2))
            return 0
        for s in summaries:
            print(f"## {s['dir']}\n")
            print(report.markdown_table(s["rows"], s["target_accuracy"]) + "\n")
        if diff is not None:
            print(f"## {summaries[1]['dir']} vs {summaries[0]['dir']}\n")
            print(report.compare_table(diff))
        return 0

    return guarded(go)


if __name__ == "__main__":
    sys.exit(main())
