"""``python -m gossip.launch CONFIG --run-dir DIR``: every peer of a swarm on this host.

The code lives in :mod:`gossip.runtime.launch`; ``from gossip import launch; launch.run(cfg, dir)``
is the Python entry point (notebooks).
"""

from gossip.runtime.launch import main, run

__all__ = ["main", "run"]

if __name__ == "__main__":
    raise SystemExit(main())
