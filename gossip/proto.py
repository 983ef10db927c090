"""``python -m gossip.proto``: regenerate or check the generated protobuf code (the code lives in :mod:`gossip.protocol.generate`)."""

from gossip.protocol.generate import main

if __name__ == "__main__":
    raise SystemExit(main())
