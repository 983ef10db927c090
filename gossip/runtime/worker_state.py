"""A peer's training-thread checkpoint: each component's own state, and loading it back.

:func:`save` is what :class:`gossip.runtime.checkpoint.Checkpointer` writes for
:class:`gossip.runtime.worker.Worker` at an epoch end or a stop; :func:`load` continues from it
(bit-exact: tests/test_checkpoint.py). Updates received but not folded in yet are not in it:
the neighbours' resend machinery and ledgers account for them.
"""

from __future__ import annotations

from typing import Any

from gossip.errors import CheckpointError

Worker = Any  # gossip.runtime.worker.Worker, which imports this module


def save(w: Worker, epoch: int, step: int) -> dict[str, Any]:
    """Everything :func:`load` needs to continue at data position (epoch, step):
    each component's own state. Updates received but not folded in yet are not in it."""
    return {
        "peer_id": w.peer_id, "schema_hash": w.layout.schema_hash,
        "position": {"epoch": epoch, "step": step, "global_step": w.progress.global_step},
        "trainer": w.trainer.state_dict(), "feedback": w.feedback.state_dict(),
        "encoder": w.encoder.state_dict(), "trigger": w.trigger.state_dict(),
        "seq": w.seq, "adopted": list(w.adopted), "applied": w.applied.state_dict(),
        "policy": w.policy.state_dict(), "bound": w.bound.state_dict(),
        "attack": w.attack.state_dict() if w.attack is not None else {},
        "progress": w.progress.state_dict(),
        "codistill": w.codistill.state_dict() if w.codistill is not None else {},
        "outer": w.outer.state_dict() if w.outer is not None else {},
    }


def load(w: Worker, state: dict[str, Any]) -> tuple[int, int]:
    """Continue from ``state``; returns its data position (epoch, step). CheckpointError when
    it is another peer's, another model's, or malformed."""
    if state.get("peer_id") != w.peer_id:
        raise CheckpointError(f"checkpoint of peer {state.get('peer_id')}, not of peer {w.peer_id}")
    if state.get("schema_hash") != w.layout.schema_hash:
        raise CheckpointError("checkpoint of a different model (schema hash differs): same model.name needed")
    try:
        w.trainer.load_state_dict(state["trainer"])
        w.feedback.load_state_dict(state["feedback"])
        w.encoder.load_state_dict(state["encoder"])
        w.trigger.load_state_dict(state["trigger"])
        w.seq = int(state["seq"])
        w.adopt_shards(tuple(int(p) for p in state.get("adopted", [])))
        w.applied.load_state_dict(state["applied"])
        if state.get("policy"):
            w.policy.load_state_dict(state["policy"])
        if state.get("bound"):
            w.bound.load_state_dict(state["bound"])
        if state.get("attack") and w.attack is not None:
            w.attack.load_state_dict(state["attack"])
        if state.get("codistill") and w.codistill is not None:
            w.codistill.load_state_dict(state["codistill"])
        if state.get("outer") and w.outer is not None:
            w.outer.load_state_dict(state["outer"])
        pos, p = state["position"], w.progress
        p.load_state_dict(state["progress"])
        p.global_step, p.epoch, p.step = int(pos["global_step"]), int(pos["epoch"]), int(pos["step"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint: missing or malformed field ({type(exc).__name__}: {exc})") from None
    return int(pos["epoch"]), int(pos["step"])
