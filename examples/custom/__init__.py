"""A small custom CNN on a custom tensor data set, trained by a gossip swarm (see README.md here)."""
