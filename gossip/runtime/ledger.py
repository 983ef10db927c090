"""Bookkeeping of the swarm as one peer sees it: who sent what, who is done, who is down.

Rules it enforces:

* **No update is applied twice.** An update is identified by ``(node_id, seq)``; sequence
  numbers start at 0 per sender and never repeat. :meth:`Ledger.first_time` is True once per
  pair. Memory stays bounded: everything below a per-sender *floor* (all seqs before it
  seen) is one integer, and a seq more than ``SEQ_WINDOW`` above the floor is refused (a
  flood of made-up sequence numbers cannot grow the set).
* **Finishing** is two-phase. A peer that ends its local training sends ``Done(last_seq)``.
  When every live peer is *done* and all its updates up to ``last_seq`` have arrived, this
  peer is *delivered* (its model has everything) and announces ``complete``. It keeps
  relaying until every live peer is complete, so nobody on a sparse topology is cut off by
  a neighbour leaving early. A peer that announced ``complete`` is still waited for: it has
  everything, but we may not have all of its updates yet (a lossy link; they are asked for
  again, see :mod:`gossip.runtime.resend`, and given up after ``timeouts.silence_s`` at the latest).
* **Liveness**: a peer not heard from (directly or via a relayed message) for
  ``timeouts.silence_s`` is *down*, and the others stop waiting for it; hearing from it
  again brings it back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SEQ_WINDOW = 100_000


@dataclass
class PeerView:
    floor: int = 0  # every seq below this has been seen
    above: set[int] = field(default_factory=set)  # seen seqs >= floor
    last_seq: int | None = None  # from its Done message
    complete: bool = False
    last_heard: float = 0.0
    down: bool = False
    ever_heard: bool = False

    def seen_count(self) -> int:
        return self.floor + len(self.above)


class Ledger:
    def __init__(self, peer_id: int, peers: int, now: float) -> None:
        self.peer_id = peer_id
        self.views = {p: PeerView(last_heard=now) for p in range(peers) if p != peer_id}

    def known(self, origin: int) -> bool:
        return origin in self.views

    def state_dict(self) -> dict[int, list[int]]:
        """``{origin: [floor, *seen seqs above it]}``: which updates of each origin are accounted for."""
        return {p: [v.floor, *sorted(v.above)] for p, v in self.views.items()}

    def load_state_dict(self, state: dict[int, list[int]]) -> None:
        """Take over which seqs are accounted for (liveness is not state: it restarts); origins
        this ledger does not know are ignored."""
        for origin, (floor, *above) in state.items():
            if self.known(int(origin)):
                view = self.views[int(origin)]
                view.floor, view.above = int(floor), {int(s) for s in above}

    def in_window(self, origin: int, seq: int) -> bool:
        view = self.views[origin]
        return seq < view.floor + SEQ_WINDOW

    def seen(self, origin: int, seq: int) -> bool:
        """Was ``(origin, seq)`` recorded already? (Nothing changes.)"""
        view = self.views[origin]
        return seq < view.floor or seq in view.above

    def first_time(self, origin: int, seq: int) -> bool:
        """Record ``(origin, seq)``; False when it was seen before (a duplicate or replay)."""
        view = self.views[origin]
        if seq < view.floor or seq in view.above:
            return False
        view.above.add(seq)
        while view.floor in view.above:
            view.above.remove(view.floor)
            view.floor += 1
        return True

    def heard(self, origin: int, now: float) -> bool:
        """Note a sign of life; True when the peer was down and is back."""
        view = self.views.get(origin)
        if view is None:
            return False
        view.last_heard = now
        view.ever_heard = True
        if view.down:
            view.down = False
            return True
        return False

    def top(self, origin: int) -> int:
        """The highest seq of ``origin`` seen (-1: none)."""
        view = self.views[origin]
        return max(view.above, default=view.floor - 1)

    def missing(self, origin: int, *, window: int) -> list[int]:
        """Seqs of ``origin`` not seen though a later one was (or its ``Done`` announced them), oldest first.

        Only the newest ``window`` seqs of that span are looked at (a sender keeps only so many
        for resending, and the scan stays bounded whatever a neighbour claims).
        """
        view = self.views[origin]
        top = self.top(origin)
        if view.last_seq is not None:
            top = max(top, view.last_seq)
        lo = max(view.floor, top + 1 - window)
        return [s for s in range(lo, top + 1) if s not in view.above]

    def mark_done(self, origin: int, last_seq: int) -> bool:
        view = self.views[origin]
        first = view.last_seq is None
        view.last_seq = last_seq
        return first

    def mark_complete(self, origin: int) -> bool:
        view = self.views[origin]
        first = not view.complete
        view.complete = True
        return first

    def check_down(self, now: float, silence_s: float) -> list[int]:
        """Peers that just went silent past ``silence_s`` (finished ones are never down)."""
        newly = []
        for p, view in self.views.items():
            if not view.down and not view.complete and now - view.last_heard > silence_s:
                view.down = True
                newly.append(p)
        return newly

    def _delivered(self, view: PeerView) -> bool:
        return view.last_seq is not None and view.seen_count() >= view.last_seq + 1

    def give_up(self, origin: int) -> int:
        """Stop waiting for a finished origin's updates that were lost on the way; returns how many.

        Everything up to its ``last_seq`` counts as seen from now on (a straggler that still
        arrives is dropped as a duplicate), so a lossy link or a crash cannot hang the finish.
        """
        view = self.views[origin]
        if view.last_seq is None:
            return 0
        missing = max(0, view.last_seq + 1 - view.seen_count())
        self.skip_below(origin, view.last_seq + 1)
        return missing

    def skip_below(self, origin: int, seq: int) -> None:
        """Count every seq of ``origin`` below ``seq`` as seen (an adopted state already holds them)."""
        view = self.views[origin]
        view.floor = max(view.floor, seq)
        view.above = {s for s in view.above if s >= view.floor}
        while view.floor in view.above:
            view.above.remove(view.floor)
            view.floor += 1

    def all_delivered(self) -> bool:
        return all(v.down or self._delivered(v) for v in self.views.values())

    def all_complete(self) -> bool:
        return all(v.down or v.complete for v in self.views.values())

    def waiting_for(self) -> list[int]:
        return [p for p, v in self.views.items() if not (v.down or self._delivered(v))]

    def down(self) -> list[int]:
        return [p for p, v in self.views.items() if v.down]
