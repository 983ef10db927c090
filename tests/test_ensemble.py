"""gossip.experiments.ensemble: the confidence-weighted vote, parameter averaging, and scoring saved peer models."""

import pytest
import torch

from gossip import config
from gossip.errors import CheckpointError
from gossip.experiments import ensemble
from gossip.training.data import load_dataset
from gossip.training.models import build_model
from gossip.training.trainer import Trainer


def test_confidence_vote_weights_each_sample_by_its_peer_confidence():
    sure = torch.tensor([[0.9, 0.1], [0.5, 0.5]])
    unsure = torch.tensor([[0.4, 0.6], [0.2, 0.8]])
    vote = ensemble.confidence_vote([sure, unsure])
    # sample 0: weights 0.9 and 0.6 -> class 0 wins (a plain mean would say 0.65 vs 0.35 too)
    assert torch.allclose(vote[0], (0.9 * sure[0] + 0.6 * unsure[0]) / 1.5)
    # sample 1: weights 0.5 and 0.8 -> the confident peer pulls harder than in a plain mean
    assert torch.allclose(vote[1], (0.5 * sure[1] + 0.8 * unsure[1]) / 1.3)
    assert vote[1, 1] > (sure[1, 1] + unsure[1, 1]) / 2
    assert torch.allclose(vote.sum(1), torch.ones(2))


def test_average_states_floats_and_counters():
    a = {"w": torch.tensor([1.0, 3.0]), "bn.running_mean": torch.tensor([0.0]), "bn.num_batches_tracked": torch.tensor(5)}
    b = {"w": torch.tensor([3.0, 5.0]), "bn.running_mean": torch.tensor([2.0]), "bn.num_batches_tracked": torch.tensor(7)}
    avg = ensemble.average_states([a, b])
    assert avg["w"].tolist() == [2.0, 4.0] and avg["bn.running_mean"].tolist() == [1.0]
    assert avg["bn.num_batches_tracked"].item() == 7 and avg["bn.num_batches_tracked"].dtype == torch.int64
    with pytest.raises(CheckpointError, match="differs in layout"):
        ensemble.average_states([a, {**b, "w": torch.zeros(3)}])
    with pytest.raises(CheckpointError):
        ensemble.average_states([])


def test_missing_and_corrupt_final_models(tmp_path):
    with pytest.raises(CheckpointError, match="peer-0.final.pt: missing.*save_final"):
        ensemble.load_final_states(tmp_path, 1)
    (tmp_path / "peer-0.final.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="unreadable"):
        ensemble.load_final_states(tmp_path, 1)
    torch.save([1, 2], tmp_path / "peer-0.final.pt")
    with pytest.raises(CheckpointError, match="not a state_dict"):
        ensemble.load_final_states(tmp_path, 1)


@pytest.fixture(scope="module")
def mnist(data_root):
    cfg = config.load(None, ["model.name=mnist_tiny", "data.limit_train=1000", "data.limit_test=300",
                             "device=cpu", "peers=2", "train.epochs=1"])
    return cfg, load_dataset(cfg.data)


def trained_state(cfg, dataset, seed, steps):
    torch.manual_seed(seed)
    model = build_model("mnist_tiny", dataset.num_classes, dataset.in_channels)
    trainer = Trainer(cfg, model, dataset.train, dataset, device=torch.device("cpu"), seed=seed)
    for _, (x, y) in zip(range(steps), trainer.batches(0), strict=False):
        trainer.step(x, y)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, trainer.evaluate(dataset.test)


def test_scores_saved_peer_models_on_real_data(tmp_path, mnist):
    cfg, dataset = mnist
    good, good_metrics = trained_state(cfg, dataset, 0, 15)
    torch.save(good, tmp_path / "peer-0.final.pt")
    torch.save(good, tmp_path / "peer-1.final.pt")
    same = ensemble.evaluate_swarm(cfg, tmp_path, dataset)
    assert same["agreement"] == 1.0 and same["test_samples"] == 300
    assert same["peer_accuracy"] == [pytest.approx(good_metrics["accuracy"])] * 2
    for key in ("ensemble", "ensemble_uniform", "consensus"):  # two copies of one model are that model
        assert same[key]["accuracy"] == pytest.approx(good_metrics["accuracy"])
    assert same["consensus"]["loss"] == pytest.approx(good_metrics["loss"], rel=1e-4)

    other, other_metrics = trained_state(cfg, dataset, 1, 3)
    torch.save(other, tmp_path / "peer-1.final.pt")
    mixed = ensemble.evaluate_swarm(cfg, tmp_path, dataset)
    assert mixed["peer_accuracy"][1] == pytest.approx(other_metrics["accuracy"])
    assert mixed["agreement"] < 1.0 and mixed["ensemble"]["method"] == "confidence_weighted_vote"
    assert 0.0 < mixed["ensemble"]["accuracy"] <= 1.0 and mixed["consensus"]["method"] == "parameter_average"

    wrong = config.replace(cfg, ["model.name=mnist_cnn"])
    with pytest.raises(CheckpointError, match="does not match the saved weights"):
        ensemble.evaluate_swarm(wrong, tmp_path, dataset)
