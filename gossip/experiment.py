"""``python -m gossip.experiment``: the whole comparison, report and plots (the code lives in :mod:`gossip.experiments.experiment`)."""

from gossip.experiments.experiment import main

if __name__ == "__main__":
    raise SystemExit(main())
