"""The errors a user or a neighbour can cause.

``assert`` is kept for internal invariants; everything a person or a remote
peer can trigger raises a :class:`GossipError`, whose message is one line that
the command-line entry points print without a traceback.
"""

from __future__ import annotations


class GossipError(Exception):
    """Base class: a problem with input, configuration or the environment."""


class ConfigError(GossipError):
    """A configuration file or override is invalid (the message names the key)."""


class DataError(GossipError):
    """A data set is missing or unreadable (the message says where to put it)."""


class PeerError(GossipError):
    """A peer cannot start or talk to its swarm (port in use, bad neighbour, ...)."""


class ProtocolError(GossipError):
    """A message from a neighbour is malformed or hostile.

    ``reason`` is a short snake_case code (``bad_version``, ``zlib_bomb``, ...)
    that peers count and log; the message adds detail for humans.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class CheckpointError(GossipError):
    """A checkpoint is corrupt, truncated or from an incompatible run."""
