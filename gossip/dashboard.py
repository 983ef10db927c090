"""``python -m gossip.dashboard``: the live dashboard (the code lives in :mod:`gossip.observe.dashboard`)."""

from gossip.observe.dashboard import main

if __name__ == "__main__":
    raise SystemExit(main())
