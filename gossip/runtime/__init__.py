"""One peer at run time: the training thread, the asyncio loop, sockets, membership and state."""
