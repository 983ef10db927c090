"""A peer's progress counters: written by the training thread, read by the loop for telemetry.

Plain attributes (a torn read of one counter is harmless). The counters that must survive a
restart are in :meth:`Progress.state_dict`; the position (epoch, step, global step) is part of
the worker's checkpoint too, but the worker sets it from the data position it resumes at.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    state: str = "starting"
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    loss: float = float("nan")
    confidence: float = 0.0
    test_accuracy: float | None = None
    updates_originated: int = 0
    updates_applied: int = 0
    updates_rejected_by_policy: int = 0
    rejected_by_policy: dict[str, int] = field(default_factory=dict)  # by reason (norm_bound, aggregation_policy)
    raw_bytes_originated: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    applied_by_origin: dict[int, int] = field(default_factory=dict)  # folded-in updates per originator
    snapshots_applied: int = 0  # neighbours' snapshots taken as teachers (communication.mode: codistill)
    non_finite_steps: int = 0  # local steps skipped: their loss or gradient was NaN or infinite

    def state_dict(self) -> dict[str, Any]:
        return {
            "updates_originated": self.updates_originated, "updates_applied": self.updates_applied,
            "updates_rejected_by_policy": self.updates_rejected_by_policy,
            "rejected_by_policy": dict(self.rejected_by_policy),
            "applied_by_origin": dict(self.applied_by_origin), "history": list(self.history),
            "test_accuracy": self.test_accuracy, "snapshots_applied": self.snapshots_applied,
            "non_finite_steps": self.non_finite_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates_originated = int(state["updates_originated"])
        self.updates_applied = int(state["updates_applied"])
        self.updates_rejected_by_policy = int(state["updates_rejected_by_policy"])
        self.rejected_by_policy = {str(k): int(v) for k, v in state.get("rejected_by_policy", {}).items()}
        self.applied_by_origin = {int(k): int(v) for k, v in state["applied_by_origin"].items()}
        self.history = list(state["history"])
        self.test_accuracy = state["test_accuracy"]
        self.snapshots_applied = int(state.get("snapshots_applied", 0))
        self.non_finite_steps = int(state.get("non_finite_steps", 0))
