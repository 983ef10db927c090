"""The swarm deciding together: an ensemble vote of the peers and their consensus model.

A swarm run with ``checkpoint.save_final: true`` leaves each peer's final weights in
``DIR/peer-<id>.final.pt`` (a ``state_dict``). From those, :func:`evaluate_swarm` scores
two ways of using the swarm as one classifier on the test split:

* **ensemble** — a *confidence-weighted vote*: for each test sample, each peer's softmax
  vector is weighted by that peer's own confidence *on that sample* (its max-softmax
  probability), ``p(x) = Σ_i c_i(x)·p_i(x) / Σ_i c_i(x)``, and the class with the largest
  combined probability wins. A peer that is unsure about a sample (typically a class it
  rarely saw under a non-IID split) counts less for that sample, while a per-peer
  constant weight could not tell its strong classes from its weak ones. The plain mean
  of the softmax vectors is reported next to it (``ensemble_uniform``) for reference.
* **consensus** — one model whose parameters are the average of the peers' parameters.
  BatchNorm running statistics (buffers, not gossiped) are averaged as well; integer
  buffers (``num_batches_tracked``) take the largest value.

With the sum-of-deltas runtime and a final flush, peers end close to each other, so both
numbers sit near the mean peer accuracy; they separate when peers drift apart (sparse
topologies, low bandwidth, non-IID shards), which is what they are there to show.

``agreement`` is the fraction of test samples on which every peer predicts the same
class: 1.0 means the swarm has converged to one function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gossip.config import Config
from gossip.errors import CheckpointError
from gossip.observe.log import get_logger
from gossip.training.data import Dataset, Split, load_dataset
from gossip.training.models import build_model
from gossip.training.trainer import Trainer, resolve_device

log = get_logger(__name__)


def final_model_path(run_dir: Path, peer_id: int) -> Path:
    return run_dir / f"peer-{peer_id}.final.pt"


def load_final_states(run_dir: Path, peers: int) -> list[dict[str, torch.Tensor]]:
    """Every peer's final ``state_dict``; CheckpointError naming the first missing or unreadable one."""
    states = []
    for p in range(peers):
        path = final_model_path(run_dir, p)
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (run the swarm with checkpoint.save_final=true)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file: torch raises many types
            raise CheckpointError(f"{path}: unreadable ({type(exc).__name__})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{path}: not a state_dict of tensors")
        states.append(state)
    return states


def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The consensus model: floating tensors averaged, integer buffers take the maximum."""
    if not states:
        raise CheckpointError("consensus: no peer models to average")
    keys = list(states[0])
    for i, s in enumerate(states[1:], 1):
        if list(s) != keys or any(s[k].shape != states[0][k].shape for k in keys):
            raise CheckpointError(f"consensus: peer {i}'s model differs in layout from peer 0's")
    out = {}
    for k in keys:
        stack = torch.stack([s[k] for s in states])
        out[k] = stack.float().mean(0).to(stack.dtype) if stack.is_floating_point() else stack.max(0).values
    return out


def confidence_vote(probas: list[torch.Tensor]) -> torch.Tensor:
    """Combine per-peer softmax outputs [N, C] with per-sample max-softmax weights."""
    stack = torch.stack(probas)  # [P, N, C]
    weight = stack.amax(dim=2, keepdim=True)  # [P, N, 1]: each peer's confidence per sample
    return (stack * weight).sum(0) / weight.sum(0).clamp_min(1e-12)


def _scores(proba: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    nll = F.nll_loss(proba.clamp_min(1e-12).log(), labels).item()
    return {"accuracy": float((proba.argmax(1) == labels).float().mean()), "loss": nll}


def _trainer(cfg: Config, state: dict[str, torch.Tensor], dataset: Dataset, device: torch.device) -> Trainer:
    model = build_model(cfg.model.name, dataset.num_classes, dataset.in_channels)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"model.name {cfg.model.name!r} does not match the saved weights "
                              f"({str(exc).splitlines()[0]})") from None
    # Trainer wants a non-empty training split; the test split is only moved, never trained on.
    return Trainer(cfg, model, dataset.test, dataset, device=device, seed=cfg.seed)


def evaluate_swarm(cfg: Config, run_dir: str | Path, dataset: Dataset | None = None) -> dict[str, Any]:
    """Score the ensemble vote and the consensus model of a finished swarm run on the test split."""
    run_dir = Path(run_dir)
    states = load_final_states(run_dir, cfg.peers)
    dataset = dataset or load_dataset(cfg.data)
    device = resolve_device(cfg.device)
    test: Split = dataset.test
    labels = test.labels
    probas = [_trainer(cfg, s, dataset, device).predict_proba(test) for s in states]
    peer_acc = [float((p.argmax(1) == labels).float().mean()) for p in probas]
    preds = torch.stack([p.argmax(1) for p in probas])
    agreement = float((preds == preds[0]).all(0).float().mean())
    consensus = _trainer(cfg, average_states(states), dataset, device).evaluate(test)
    result: dict[str, Any] = {
        "peers": cfg.peers, "test_samples": len(test),
        "peer_accuracy": peer_acc, "agreement": agreement,
        "ensemble": {"method": "confidence_weighted_vote", **_scores(confidence_vote(probas), labels)},
        "ensemble_uniform": _scores(torch.stack(probas).mean(0), labels),
        "consensus": {"method": "parameter_average", **consensus},
    }
    log.info("swarm_ensemble_evaluated", run_dir=str(run_dir), ensemble=result["ensemble"]["accuracy"],
             consensus=consensus["accuracy"], agreement=agreement)
    return result
