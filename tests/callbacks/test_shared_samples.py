"""Analyses due at one step share one pass over their samples: the generator and the segmenter run
once per batch for all of them, the answers are those of separate passes, an analysis that
changes the generator makes the later ones draw again, and one analysis's failure stays its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

import gan_dissect_callbacks.callbacks._sharing as sharing
import gan_dissect_callbacks.callbacks.quality as quality
import gan_dissect_callbacks.engines.artifacts.scoring as scoring
import gan_dissect_callbacks.engines.dissection as dissection
from gan_dissect_callbacks.callbacks import (
    ArtifactPruningCallback,
    DissectionCallback,
    QualityMonitor,
)
from gan_dissect_callbacks.callbacks._schedule import ScheduledAnalysis
from gan_dissect_callbacks.demos.gan import SceneGAN
from gan_dissect_callbacks.demos.segmenter import load_toy_segmenter
from gan_dissect_callbacks.demos.train import SceneDataModule

pytestmark = pytest.mark.slow

COMMON = {"every_n_train_steps": 3, "on_train_end": False, "num_samples": 16, "batch_size": 8}
SWD = {"num_projections": 16, "num_descriptors_per_image": 16}


def analyses(raise_on_error: bool = True, **quality_kwargs: Any) -> list[ScheduledAnalysis]:
    segmenter = load_toy_segmenter()
    return [
        DissectionCallback(
            ["generator.layer2"], segmenter, top_k=2, top_n=2, **COMMON, max_overhead=None,
            raise_on_error=True,
        ),
        ArtifactPruningCallback(
            "generator.layer2", top_k=2, num_seeds=2, num_images=2, **SWD, **COMMON,
            max_overhead=None, raise_on_error=True,
        ),
        QualityMonitor(**SWD, **COMMON, max_overhead=None, raise_on_error=raise_on_error,
                       **quality_kwargs),
    ]  # fmt: skip


class Separator(pl.Callback):
    """A callback of the user's between two analyses: they no longer share their samples."""


def apart(callbacks: list[ScheduledAnalysis]) -> list[pl.Callback]:
    out: list[pl.Callback] = []
    for callback in callbacks:
        out += [callback, Separator()]
    return out


def fit(root: Path, callbacks: list[pl.Callback]) -> SceneGAN:
    pl.seed_everything(0, verbose=False)
    model = SceneGAN(latent_dim=16, width=8, sample_every_n_batches=0)
    trainer = pl.Trainer(
        max_steps=2 * 6,
        max_epochs=-1,
        logger=TensorBoardLogger(str(root), name="run"),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=SceneDataModule(32, batch_size=8))
    return model


@pytest.fixture
def passes(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The consumers of every pass over samples, in order, by class name."""
    calls: list[list[str]] = []
    for module in (sharing, quality, scoring, dissection):
        real = module.run_sample_pass

        def spy(g, consumers, real=real):
            calls.append([type(c).__name__ for c in consumers])
            return real(g, consumers)

        monkeypatch.setattr(module, "run_sample_pass", spy)
    return calls


def test_analyses_due_at_one_step_draw_their_samples_once(tmp_path, passes) -> None:
    callbacks = analyses()
    fit(tmp_path, callbacks)
    shared = ["DissectionSamples", "TopActivatingSamples", "_GeneratedQuality"]
    assert passes == [shared, shared]  # steps 3 and 6, nothing drawn again
    assert [[e["step"] for e in c.history] for c in callbacks] == [[3, 6]] * 3
    for callback in callbacks:  # each is charged its part of the shared pass
        assert callback.budget.last_cost_s > 0


def test_shared_passes_give_the_answers_of_separate_ones_and_leave_training_alone(
    tmp_path, passes
) -> None:
    together, separate = analyses(), analyses()
    trained_together = fit(tmp_path / "together", together)
    assert len(passes) == 2
    trained_apart = fit(tmp_path / "apart", apart(separate))
    assert len(passes) == 2 + 2 * 3  # each analysis drew its own
    plain = fit(tmp_path / "plain", [])
    for a, b in zip(together, separate, strict=True):
        assert a.history == b.history
    assert together[0].last_report.to_dict() == separate[0].last_report.to_dict()
    for model in (trained_together, trained_apart):
        for key, value in plain.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), key


class Brighten(ScheduledAnalysis):
    """Changes the generator at its steps when told to, as a pruning would, and says so."""

    _declares_generator_changes = True

    def __init__(self, change: bool) -> None:
        super().__init__(every_n_train_steps=3, raise_on_error=True)
        self.change = change

    def _may_change_generator(self) -> bool:
        return True

    def _analyse(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        self.history.append({"step": step})
        if self.change:
            with torch.no_grad():
                pl_module.generator.layer4[0].bias.add_(0.25)
            self._changed_step = step


@pytest.mark.parametrize("change", [False, True])
def test_an_analysis_that_changes_the_generator_makes_the_later_ones_draw_again(
    tmp_path, passes, change
) -> None:
    first, _, monitor = analyses()
    fit(tmp_path / "shared", [first, Brighten(change), monitor])
    drawn = list(passes)
    passes.clear()
    alone_first, _, alone_monitor = analyses()
    fit(tmp_path / "apart", [alone_first, Brighten(change), Separator(), alone_monitor])
    assert monitor.history == alone_monitor.history  # it saw the generator as it was then
    assert first.history == alone_first.history
    shared = ["DissectionSamples", "_GeneratedQuality"]
    redrawn = [["_GeneratedQuality"]] if change else []
    assert drawn == [shared, *redrawn] * 2


def test_a_failure_in_one_analysis_of_a_shared_pass_is_its_own(tmp_path, passes) -> None:
    def broken(images: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the discriminator broke")

    callbacks = analyses(raise_on_error=False, discriminator=broken)
    separate = analyses()[:2]
    with pytest.warns(UserWarning, match="the check at step 3 failed(.|\n)*discriminator broke"):
        fit(tmp_path / "shared", callbacks)
    fit(tmp_path / "apart", apart(separate))
    assert callbacks[2].history == []
    assert [c.history for c in callbacks[:2]] == [c.history for c in separate]


def test_a_failing_shared_generation_lets_each_analysis_draw_its_own(tmp_path, passes) -> None:
    segmenter = load_toy_segmenter()
    dissect_ = DissectionCallback(
        ["generator.layer2"], segmenter, top_k=2, top_n=2, **COMMON, max_overhead=None,
        raise_on_error=True,
    )  # fmt: skip
    # A discriminator layer does not run while generating: the shared pass fails on it.
    scoring_ = ArtifactPruningCallback(
        "discriminator.main.0", top_k=2, num_seeds=2, num_images=2, **SWD, **COMMON,
        max_overhead=None,
    )  # fmt: skip
    with pytest.warns(UserWarning, match="did not run while generating"):
        fit(tmp_path / "shared", [dissect_, scoring_])
    alone = analyses()[0]
    fit(tmp_path / "alone", [alone])
    assert dissect_.history == alone.history and scoring_.history == []
    tried = ["DissectionSamples", "TopActivatingSamples"]
    assert passes[:3] == [tried, ["DissectionSamples"], ["TopActivatingSamples"]]


def test_an_analysis_takes_part_in_one_pass_a_step(tmp_path, passes) -> None:
    # The pruning check cannot join the dissection's pass (another batch size); when it runs,
    # the quality monitor has its pass already and must not be asked again.
    segmenter = load_toy_segmenter()
    common = {**COMMON, "max_overhead": None, "raise_on_error": True}

    def three() -> list[ScheduledAnalysis]:
        return [
            DissectionCallback(["generator.layer2"], segmenter, top_k=2, top_n=2, **common),
            ArtifactPruningCallback(
                "generator.layer2", top_k=2, num_seeds=2, num_images=2, **SWD,
                **{**common, "batch_size": 4},
            ),
            QualityMonitor(**SWD, **common),
        ]  # fmt: skip

    shared, separate = three(), three()
    fit(tmp_path / "shared", shared)
    assert passes[:2] == [["DissectionSamples", "_GeneratedQuality"], ["TopActivatingSamples"]]
    assert len(passes) == 4  # two steps
    fit(tmp_path / "apart", apart(separate))
    for a, b in zip(shared, separate, strict=True):
        assert a.history == b.history


class Undeclared(ScheduledAnalysis):
    """A user's analysis that says nothing of what it does to the generator."""

    def _analyse(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        self.history.append({"step": step})


def test_an_analysis_that_does_not_declare_its_changes_ends_the_chain(tmp_path, passes) -> None:
    first, _, monitor = analyses()
    fit(tmp_path, [first, Undeclared(every_n_train_steps=3), monitor])
    assert passes == [["DissectionSamples"], ["_GeneratedQuality"]] * 2
