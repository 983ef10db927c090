"""gossip: a decentralized swarm-training runtime.

Peers train small models in a thread and gossip compressed ``GradUpdate``
messages to their neighbours over ZeroMQ, with no coordinator anywhere.
"""

__version__ = "0.1.0"
