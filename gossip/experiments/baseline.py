"""Centralized baseline: one model, all the training data, test accuracy every epoch.

    python -m gossip.baseline --config configs/mnist_baseline.yaml      # into runs/baseline
    python -m gossip.baseline --config configs/cifar10_baseline.yaml --run-dir runs/c10 train.epochs=5

Writes ``<run-dir>/baseline.jsonl`` (structured events: ``config_resolved``,
``epoch_end``, ...) and ``<run-dir>/result.json`` (``kind: "centralized"``, test
accuracy, per-epoch history). This is the reference the swarm is compared with;
:func:`run` does the same from Python. A run directory that holds a previous baseline is
refused unless ``--fresh`` (``fresh=True``) replaces it. torch is imported only once the
arguments are parsed, so ``--help`` and argument errors are instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from gossip import config as config_mod
from gossip.cli import guarded
from gossip.config import Config
from gossip.observe.log import get_logger, run_logging
from gossip.runtime import rundir

if TYPE_CHECKING:
    from gossip.training.trainer import StepStats

DEFAULT_RUN_DIR = "runs/baseline"

log = get_logger("gossip.experiments.baseline")  # not __name__: it is "__main__" under -m

# on_step(epoch, step, steps_per_epoch, stats, None) after each step; (epoch, -1, steps, None, record)
# at an epoch's end (record: that epoch's figures)
StepCallback = Callable[[int, int, int, "StepStats | None", dict[str, Any] | None], None]


def run(cfg: Config, run_dir: str | Path, *, progress: StepCallback | None = None,
        fresh: bool = False) -> dict[str, Any]:
    """Train ``cfg.model`` on all of ``cfg.data`` and write ``run_dir/result.json``; returns the result.

    A ``run_dir`` that holds a previous run raises :class:`~gossip.errors.ConfigError` unless
    ``fresh`` (then that run's files are removed first).
    """
    run_dir = Path(run_dir)
    rundir.claim(run_dir, markers=rundir.BASELINE_MARKERS, leftovers=(), fresh=fresh, can_resume=False)
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_logging(run_dir / "baseline.jsonl"):
        return _train(cfg, run_dir, progress)


def _train(cfg: Config, run_dir: Path, progress: StepCallback | None) -> dict[str, Any]:
    import torch  # here, not at the top: the CLI parses its arguments without waiting for torch

    from gossip.training.data import load_dataset
    from gossip.training.models import build_model, count_params
    from gossip.training.trainer import Trainer, resolve_device, set_threads, warn_non_finite

    log.info("config_resolved", config=config_mod.to_dict(cfg), config_hash=config_mod.config_hash(cfg))
    start, cpu_start = time.perf_counter(), time.process_time()

    threads = set_threads(cfg.train.threads)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)  # initial weights depend on the seed only
    dataset = load_dataset(cfg.data)
    model = build_model(cfg.model.name, dataset.num_classes, dataset.in_channels)
    params = count_params(model)
    trainer = Trainer(cfg, model, dataset.train, dataset, device=device, seed=cfg.seed)
    log.info("baseline_start", dataset=dataset.name, model=cfg.model.name, params=params,
             device=str(device), threads=threads, epochs=trainer.epochs,
             steps_per_epoch=trainer.steps_per_epoch)

    history: list[dict[str, Any]] = []
    train_start = time.perf_counter()
    non_finite = 0  # steps Trainer.step skipped: a NaN or infinite loss or gradient
    for epoch in range(trainer.epochs):
        epoch_start, epoch_cpu = time.perf_counter(), time.process_time()
        loss_sum, conf_sum, samples = 0.0, 0.0, 0
        for step, (x, y) in enumerate(trainer.batches(epoch)):
            stats = trainer.step(x, y)
            if stats.skipped:
                non_finite += 1
                warn_non_finite(non_finite, stats, epoch=epoch, step=step)
                continue
            loss_sum += stats.loss * stats.batch_size
            conf_sum += stats.confidence * stats.batch_size
            samples += stats.batch_size
            if progress is not None:
                progress(epoch, step, trainer.steps_per_epoch, stats, None)
        train_s = time.perf_counter() - epoch_start
        test = trainer.evaluate(dataset.test)
        record = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / samples if samples else float("nan"),
            "train_confidence": conf_sum / samples if samples else float("nan"),
            "test_loss": test["loss"],
            "test_accuracy": test["accuracy"],
            "epoch_s": time.perf_counter() - epoch_start,
            "train_s": train_s,
            "epoch_cpu_s": time.process_time() - epoch_cpu,
            "lr": trainer.lr_at(trainer.step_count - 1),
        }
        history.append(record)
        log.info("epoch_end", **record)
        if progress is not None:
            progress(epoch, -1, trainer.steps_per_epoch, None, record)

    result = {
        "kind": "centralized",
        "dataset": dataset.name,
        "model": cfg.model.name,
        "params": params,
        "epochs": trainer.epochs,
        "batch_size": trainer.batch_size,
        "train_samples": len(dataset.train),
        "test_samples": len(dataset.test),
        "device": str(device),
        "threads": threads,
        "seed": cfg.seed,
        "config_hash": config_mod.config_hash(cfg),
        "wall_s": time.perf_counter() - start,
        "cpu_s": time.process_time() - cpu_start,  # all threads; wall_s is inflated on a shared machine
        "train_wall_s": time.perf_counter() - train_start,
        "test_accuracy": history[-1]["test_accuracy"],
        "test_loss": history[-1]["test_loss"],
        "history": history,
        "non_finite_steps": non_finite,
    }
    tmp = run_dir / f".result.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    tmp.replace(run_dir / "result.json")
    log.info("baseline_done", test_accuracy=result["test_accuracy"], wall_s=result["wall_s"])
    return result


class TerminalProgress:
    """A tqdm bar per epoch on a TTY (steps, rate, time left, loss); one line per epoch otherwise (logs, CI)."""

    def __init__(self, epochs: int, stream: Any = sys.stderr) -> None:
        self.epochs, self.stream = epochs, stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.bar: tqdm[Any] | None = None

    def __call__(self, epoch: int, step: int, steps: int, stats: StepStats | None,
                 record: dict[str, Any] | None) -> None:
        if record is not None:
            if self.bar is not None:
                self.bar.close()  # leave=False: the bar's line is cleared for the epoch's summary
                self.bar = None
            self.stream.write(f"epoch {epoch + 1}/{self.epochs}  train_loss {record['train_loss']:.4f}  "
                              f"test_acc {record['test_accuracy']:.4f}  test_loss {record['test_loss']:.4f}  "
                              f"{record['epoch_s']:.1f}s\n")
            self.stream.flush()
        elif self.tty and stats is not None:
            if self.bar is None:
                self.bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch",
                                file=self.stream, leave=False, mininterval=0.25, dynamic_ncols=True)
            self.bar.set_postfix(loss=f"{stats.loss:.4f}", refresh=False)
            self.bar.update(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gossip.baseline",
        description="Train one model centrally on all the data (the reference for the swarm). "
                    "Writes RUN_DIR/baseline.jsonl and RUN_DIR/result.json.",
        epilog="Overrides: any config key as key.sub=value, e.g. train.epochs=3 train.lr=0.1 "
               "data.root=/path/to/data data.limit_train=5000 device=cpu train.threads=2",
    )
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument("--run-dir", default=DEFAULT_RUN_DIR,
                        help=f"output folder for baseline.jsonl and result.json (default: {DEFAULT_RUN_DIR}); "
                        "one that holds a previous baseline is refused unless --fresh")
    parser.add_argument("--fresh", action="store_true",
                        help="replace the previous run in RUN_DIR: delete its log and result first")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_args(argv)

    def go() -> int:
        cfg = config_mod.load(args.config, args.overrides)
        result = run(cfg, args.run_dir, progress=TerminalProgress(cfg.train.epochs), fresh=args.fresh)
        print(f"{result['dataset']} {result['model']} ({result['params']:,} params): "
              f"test accuracy {result['test_accuracy']:.4f} after {result['epochs']} epochs "
              f"in {result['wall_s']:.1f}s -> {Path(args.run_dir) / 'result.json'}")
        return 0

    return guarded(go)

if __name__ == "__main__":
    sys.exit(main())
