"""``python -m gossip.analyze``: results tables rebuilt from JSONL logs (the code lives in :mod:`gossip.experiments.analyze`)."""

from gossip.experiments.analyze import main

if __name__ == "__main__":
    raise SystemExit(main())
