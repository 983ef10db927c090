"""Error feedback: the explicit memory of what a peer has applied to itself but not yet sent.

Each local optimizer step's parameter delta is added to :attr:`ErrorFeedback.residual`;
the encoder picks part of the residual, sends it and subtracts *exactly* what the
receivers will decode. So at any time::

    own model = init + every delta delivered to everyone + own residual

and nothing is ever lost, only delayed (Stich et al., 2018; Karimireddy et al., 2019).

``momentum`` (> 0) enables Deep Gradient Compression's momentum correction: deltas
first go into a velocity ``u = momentum * u + delta`` and the velocity is added to
the residual; the encoder zeroes the velocity where it sent (momentum factor
masking). Leave it at 0 when the deltas already come from a momentum optimizer
(the default runtime), or momentum is applied twice.
"""

from __future__ import annotations

from typing import Any

import torch

from gossip.config import CodecConfig
from gossip.errors import CheckpointError


class ErrorFeedback:
    def __init__(self, numel: int, device: torch.device | str = "cpu", *, momentum: float = 0.0) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.numel = int(numel)
        self.momentum = float(momentum)
        self.residual = torch.zeros(self.numel, dtype=torch.float32, device=device)
        self.velocity: torch.Tensor | None = (
            torch.zeros_like(self.residual) if self.momentum > 0 else None)

    @classmethod
    def for_config(cls, cfg: CodecConfig, numel: int, device: torch.device | str = "cpu", *,
                   momentum: float = 0.9) -> ErrorFeedback:
        """The memory ``codec`` asks for: momentum-corrected (DGC) when ``codec.momentum_correction``."""
        return cls(numel, device, momentum=momentum if cfg.momentum_correction else 0.0)

    def add(self, delta: torch.Tensor) -> None:
        """Accumulate one parameter delta (1-D, ``numel`` fp32 values)."""
        if delta.shape != self.residual.shape:
            raise ValueError(f"delta has shape {tuple(delta.shape)}, expected ({self.numel},)")
        if self.velocity is None:
            self.residual.add_(delta)
        else:
            self.velocity.mul_(self.momentum).add_(delta)
            self.residual.add_(self.velocity)

    def norm(self) -> float:
        return float(self.residual.norm())

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"residual": self.residual.detach().cpu().clone(), "momentum": self.momentum}
        if self.velocity is not None:
            state["velocity"] = self.velocity.detach().cpu().clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        residual = state.get("residual")
        if not isinstance(residual, torch.Tensor) or residual.shape != self.residual.shape:
            raise CheckpointError(f"error-feedback residual does not match a model of {self.numel} elements")
        self.residual.copy_(residual)
        velocity = state.get("velocity")
        if self.velocity is not None:
            if not isinstance(velocity, torch.Tensor) or velocity.shape != self.velocity.shape:
                raise CheckpointError("error-feedback velocity missing or of the wrong size")
            self.velocity.copy_(velocity)
