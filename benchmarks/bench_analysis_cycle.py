"""Seconds per analysis of the demo's callbacks, and of the views each one logs.

Trains the shipped toy GAN for ``--batches`` batches with the demo's callbacks
(:func:`~gan_dissect_callbacks.demos.train.default_callbacks`) firing every ``--every`` batches,
and prints, as JSON, the median seconds of each callback's analysis and of each view writer
(``log_dissection``, ``log_intervention``, ``log_artifacts``) over every analysis but the
first (which also prepares what later ones keep). A callback's seconds are those its overhead
budget is charged: its own analysis, plus its part of a pass of samples shared with the
analyses due at the same step, less any analysis it ran inside (docs/callbacks.md); the
``"cycle"`` entry is all four together at a step where all four ran. ``generator_batches`` is
how many batches the generator ran for the analyses of such a step (forward passes without
gradients; the demo's training runs none). It is the quick way to compare two versions
of the code side by side: run it alternately against each checkout, e.g.

    PYTHONPATH=/path/to/old/checkout python benchmarks/bench_analysis_cycle.py
    python benchmarks/bench_analysis_cycle.py

(the script's own folder comes first on ``sys.path``, then ``PYTHONPATH``, then the installed
package). ``benchmarks/run_all.py`` measures the same analyses against plain training.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger

import gan_dissect_callbacks
import gan_dissect_callbacks.callbacks.artifact_pruning as artifact_pruning
import gan_dissect_callbacks.callbacks.dissection as dissection
import gan_dissect_callbacks.callbacks.intervention as intervention
from gan_dissect_callbacks.callbacks._schedule import ScheduledAnalysis
from gan_dissect_callbacks.demos.pretrained import load_pretrained_scene_gan
from gan_dissect_callbacks.demos.train import SceneDataModule, default_callbacks

VIEWS = (
    (dissection, "log_dissection"),
    (intervention, "log_intervention"),
    (artifact_pruning, "log_artifacts"),
)


def _timed(record: list[float], fn: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            record.append(time.perf_counter() - start)

    return run


def charged_by_step(
    record: dict[int, float], fn: Callable[[float, int], Any]
) -> Callable[[float, int], Any]:
    """``fn`` (a budget's ``record_analysis``) that also adds each charge to ``record[step]``."""

    def charge(seconds: float, step: int) -> Any:
        record[step] = record.get(step, 0.0) + seconds
        return fn(seconds, step)

    return charge


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=20, help="training batches (default 20)")
    parser.add_argument("--every", type=int, default=5, help="analysis cadence (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    times: dict[str, list[float]] = {}
    for module, name in VIEWS:  # the callbacks look these names up in their own modules
        setattr(module, name, _timed(times.setdefault(name, []), getattr(module, name)))
    callbacks = default_callbacks(every_n_batches=args.every)
    charged: dict[str, dict[int, float]] = {}
    for callback in callbacks:
        assert isinstance(callback, ScheduledAnalysis)
        callback.raise_on_error = True
        callback.budget.record_analysis = charged_by_step(  # type: ignore[assignment,method-assign]
            charged.setdefault(type(callback).__name__, {}), callback.budget.record_analysis
        )
    gan = load_pretrained_scene_gan()
    batches: dict[int, int] = {}

    def count(*_: Any) -> None:
        if not torch.is_grad_enabled():
            step = trainer.fit_loop.total_batch_idx + 1 if trainer.training else 0
            batches[step] = batches.get(step, 0) + 1

    gan.generator.register_forward_hook(count)
    trainer = pl.Trainer(
        max_steps=2 * args.batches,  # two optimizer steps per batch
        max_epochs=-1,
        accelerator="cpu",
        logger=TensorBoardLogger(tempfile.mkdtemp(prefix="bench_cycle_")),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    data = SceneDataModule(num_scenes=64 * (args.batches + 2), batch_size=64, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(gan, datamodule=data)
    for name, per_step in charged.items():
        times[name] = list(per_step.values())
    full = sorted(set.intersection(*(set(per_step) for per_step in charged.values())))
    times["cycle"] = [sum(per_step[s] for per_step in charged.values()) for s in full]
    medians = {k: round(statistics.median(v[1:] or v), 3) for k, v in times.items() if v}
    generated = statistics.median(batches.get(s, 0) for s in full[1:] or full)
    print(
        json.dumps(
            {
                "code": gan_dissect_callbacks.__file__,
                "median_s": medians,
                "generator_batches": generated,
            }
        )
    )


if __name__ == "__main__":
    main()
