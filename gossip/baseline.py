"""``python -m gossip.baseline``: the centralized reference run (the code lives in :mod:`gossip.experiments.baseline`)."""

from gossip.experiments.baseline import main

if __name__ == "__main__":
    raise SystemExit(main())
