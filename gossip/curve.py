"""``python -m gossip.curve``: make CurveZMQ key pairs for a swarm (the code lives in :mod:`gossip.runtime.curve`)."""

from gossip.runtime.curve import main

if __name__ == "__main__":
    raise SystemExit(main())
