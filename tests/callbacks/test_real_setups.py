"""Every callback in the setups real GAN training uses: harmless, also with a data loader that owns
its RNG and under bf16 autocast; several callbacks of one kind; an EMA generator; a DDP fault."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from gan_dissect_callbacks.callbacks import (
    ArtifactPruningCallback,
    DissectionCallback,
    InterventionCallback,
    QualityMonitor,
)
from gan_dissect_callbacks.demos.gan import SceneGAN
from gan_dissect_callbacks.demos.segmenter import load_toy_segmenter
from gan_dissect_callbacks.demos.train import SceneDataModule

pytestmark = pytest.mark.slow

SMALL = {"every_n_train_steps": 3, "num_samples": 16, "batch_size": 8, "raise_on_error": True}


@pytest.fixture(scope="module")
def segmenter():
    return load_toy_segmenter()


class OwnGeneratorData(SceneDataModule):
    """A common pattern: one ``torch.Generator`` kept for the whole run shuffles every epoch."""

    def __init__(self) -> None:
        super().__init__(num_scenes=32, batch_size=8, seed=0)
        self.g = torch.Generator().manual_seed(123)

    def train_dataloader(self) -> DataLoader:
        assert self.dataset is not None
        return DataLoader(self.dataset, 8, shuffle=True, drop_last=True, generator=self.g)


def make_callbacks(kind: str, segmenter: Any) -> list[pl.Callback]:
    if kind == "dissection":
        return [
            DissectionCallback(
                ["generator.layer2"], segmenter, top_k=2, top_n=2, **SMALL, max_overhead=None
            )
        ]
    if kind == "intervention":
        return [
            InterventionCallback(
                "generator.layer2",
                ["sky"],
                segmenter,
                max_ablated_units=2,
                num_random=1,
                dissect_samples=16,
                num_images=2,
                **SMALL,
                max_overhead=None,
            )
        ]
    if kind == "artifacts":
        return [
            ArtifactPruningCallback(
                "generator.layer2",
                top_k=2,
                num_seeds=2,
                num_projections=16,
                num_images=2,
                num_descriptors_per_image=16,
                **SMALL,
                max_overhead=None,
            )
        ]
    return [
        QualityMonitor(num_projections=16, num_descriptors_per_image=16, **SMALL, max_overhead=None)
    ]


def fit(
    tmp_path: Path, callbacks: list[pl.Callback], data: str = "plain", **trainer_kwargs: Any
) -> tuple[SceneGAN, pl.Trainer]:
    pl.seed_everything(0, verbose=False)
    model = SceneGAN(latent_dim=16, width=8, sample_every_n_batches=0)
    datamodule = (
        OwnGeneratorData() if data == "own_generator" else SceneDataModule(32, batch_size=8)
    )
    trainer = pl.Trainer(
        max_steps=2 * 8,  # 8 batches: two epochs of 4
        max_epochs=-1,
        logger=TensorBoardLogger(str(tmp_path), name="run"),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        **trainer_kwargs,
    )
    trainer.fit(model, datamodule=datamodule)
    return model, trainer


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not differ, f"{len(differ)} state-dict tensors differ, e.g. {differ[:3]}"


SETUPS = {
    "plain": ({}, "plain"),
    "own_generator": ({}, "own_generator"),
    "bf16_mixed": ({"precision": "bf16-mixed"}, "plain"),
}


@pytest.mark.parametrize("setup", list(SETUPS))
@pytest.mark.parametrize("kind", ["dissection", "intervention", "artifacts", "quality"])
def test_training_is_bit_for_bit_the_same_with_the_callback(tmp_path, segmenter, kind, setup):
    trainer_kwargs, data = SETUPS[setup]
    plain, _ = fit(tmp_path / "without", [], data, **trainer_kwargs)
    callbacks = make_callbacks(kind, segmenter)
    with_cb, _ = fit(tmp_path / "with", callbacks, data, **trainer_kwargs)
    assert_same_weights(plain, with_cb)
    assert [e["step"] for e in callbacks[0].history] == [3, 6, 8]  # it ran (and on_train_end)


def test_two_dissections_of_one_kind_keep_apart(tmp_path, segmenter):
    a = DissectionCallback(
        ["generator.layer2"], segmenter, top_k=2, top_n=2, **SMALL, max_overhead=None
    )
    b = DissectionCallback(
        ["generator.layer2"],
        segmenter,
        top_k=2,
        top_n=2,
        name="dissection_b",
        **SMALL,
        max_overhead=None,
    )
    assert a.state_key != b.state_key
    _, trainer = fit(tmp_path, [a, b])
    log_dir = Path(trainer.logger.log_dir)
    for name in ("dissection", "dissection_b"):
        assert json.loads((log_dir / name / "latest.json").read_text())["step"] == 8


def test_the_ema_generator_is_dissected_when_named(tmp_path, segmenter):
    class EMAGAN(SceneGAN):
        def __init__(self) -> None:
            super().__init__(latent_dim=16, width=8, sample_every_n_batches=0)
            self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)

    pl.seed_everything(0, verbose=False)
    model = EMAGAN()
    with torch.no_grad():  # an EMA that differs from the live generator
        for p in model.generator_ema.parameters():
            p.mul_(0.5)
    callback = DissectionCallback(
        ["layer2"],
        segmenter,
        generator="generator_ema",
        top_k=2,
        top_n=0,
        **SMALL,
        max_overhead=None,
    )
    trainer = pl.Trainer(
        max_steps=6, logger=False, callbacks=[callback], enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False, default_root_dir=str(tmp_path),
    )  # fmt: skip
    trainer.fit(model, datamodule=SceneDataModule(32, batch_size=8))
    from gan_dissect_callbacks.engines import AnalysedGenerator, dissect

    expected = dissect(
        AnalysedGenerator.of(model, "generator_ema"), ["layer2"], segmenter,
        num_samples=16, batch_size=8, top_k=2,
    )  # fmt: skip
    assert callback.last_report is not None
    assert callback.last_report.layers["layer2"] == expected.layers["layer2"]


class FailOnRankOne:
    """The toy segmenter, failing on its third call on rank 1 only."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    @property
    def vocabulary(self) -> Any:
        return self.inner.vocabulary

    def segmentation_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        return self.inner.segmentation_size(image_size)

    def soft_segment(self, images: torch.Tensor) -> torch.Tensor:
        return self.inner.soft_segment(images)

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if dist.is_initialized() and dist.get_rank() == 1 and self.calls == 3:
            raise RuntimeError("segmenter failed on rank 1")
        return self.inner.segment(images)


def _ddp_fit(root: Path, callbacks: list[pl.Callback]) -> SceneGAN:
    pl.seed_everything(0, verbose=False)
    model = SceneGAN(latent_dim=16, width=8, sample_every_n_batches=0)
    trainer = pl.Trainer(
        max_steps=2 * 6, accelerator="cpu", devices=2,
        strategy="ddp_spawn_find_unused_parameters_true",
        logger=TensorBoardLogger(str(root), name="r"), callbacks=callbacks,
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, datamodule=SceneDataModule(num_scenes=64, batch_size=8))
    return model


@pytest.mark.parametrize("kind", ["dissection", "intervention"])
def test_a_failure_on_one_ddp_rank_is_skipped_by_every_rank(tmp_path, segmenter, kind):
    failing = FailOnRankOne(segmenter)
    common = {"every_n_train_steps": 2, "num_samples": 24, "batch_size": 8}
    if kind == "dissection":
        callback: pl.Callback = DissectionCallback(
            ["generator.layer2", "generator.layer3"], failing, **common, max_overhead=None
        )
    else:
        callback = InterventionCallback(
            "generator.layer3", ["sky"], failing, max_ablated_units=2, num_random=1,
            dissect_samples=16, num_images=0, **common,
         max_overhead=None)  # fmt: skip
    trained = _ddp_fit(tmp_path / "with", [callback])  # must not abort or hang
    plain = _ddp_fit(tmp_path / "without", [])
    assert_same_weights(plain, trained)
    written = sorted(p.name for p in (tmp_path / "with" / "r" / "version_0" / kind).glob("step_*"))
    # The analysis at step 2 failed on rank 1; rank 0 skipped it too, the later ones ran.
    assert written == ["step_0000004.json", "step_0000006.json"]


@pytest.mark.parametrize("order", ["intervention_first", "dissection_first"])
def test_an_intervention_ranks_by_the_dissection_of_its_own_step(tmp_path, segmenter, order):
    dissection = DissectionCallback(
        ["generator.layer2"], segmenter, top_k=2, top_n=0, **SMALL, max_overhead=None
    )
    intervention = InterventionCallback(
        "generator.layer2",
        ["sky", "ground"],
        segmenter,
        dissection=dissection,
        max_ablated_units=2,
        num_random=1,
        num_images=0,
        **{**SMALL, "raise_on_error": False},
        max_overhead=None,
    )
    callbacks = [intervention, dissection]
    if order == "dissection_first":
        callbacks.reverse()
    fit(tmp_path, callbacks)
    assert [e["step"] for e in dissection.history] == [3, 6, 8]  # each step dissected once
    assert [e["source"] for e in intervention.history] == [
        f"DissectionCallback (step {step})" for step in (3, 6, 8)
    ]


@pytest.mark.parametrize("kind", ["dissection", "intervention", "artifacts", "quality"])
def test_every_callback_warns_when_the_trainer_has_no_logger(tmp_path, segmenter, kind):
    callbacks = make_callbacks(kind, segmenter)
    trainer = pl.Trainer(
        max_steps=2, logger=False, callbacks=callbacks, enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False, default_root_dir=str(tmp_path),
    )  # fmt: skip
    with pytest.warns(
        UserWarning, match=f"{type(callbacks[0]).__name__}: the trainer has no logger"
    ):
        trainer.fit(
            SceneGAN(latent_dim=16, width=8, sample_every_n_batches=0),
            datamodule=SceneDataModule(32, batch_size=8),
        )


def test_the_quality_monitor_measures_the_named_generator(tmp_path):
    real = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    settings = {
        "real_images": real, "every_n_train_steps": None, "on_train_start": True,
        "on_train_end": False, "num_samples": 16, "batch_size": 8, "num_projections": 16,
        "num_descriptors_per_image": 16, "discriminator": None, "raise_on_error": True,
    }  # fmt: skip
    pl.seed_everything(0, verbose=False)
    with_ema = SceneGAN(latent_dim=16, width=8, sample_every_n_batches=0)
    with_ema.generator_ema = copy.deepcopy(with_ema.generator).requires_grad_(False)
    with torch.no_grad():
        for p in with_ema.generator_ema.parameters():
            p.mul_(0.5)
    twin = SceneGAN(latent_dim=16, width=8, sample_every_n_batches=0)
    twin.generator = copy.deepcopy(with_ema.generator_ema)  # the EMA as the live generator
    values = []
    for model, generator in ((with_ema, "generator_ema"), (twin, None), (with_ema, None)):
        monitor = QualityMonitor(generator=generator, **settings, max_overhead=None)
        trainer = pl.Trainer(
            max_steps=2, logger=False, callbacks=[monitor], enable_progress_bar=False,
            enable_checkpointing=False, enable_model_summary=False,
            default_root_dir=str(tmp_path),
        )  # fmt: skip
        trainer.fit(model, datamodule=SceneDataModule(32, batch_size=8))
        values.append(monitor.history[0]["swd_avg"])
    assert values[0] == values[1]  # the EMA was measured, exactly as if it were the generator
    assert values[0] != values[2]  # and not the live generator


def test_an_intervention_refuses_a_dissection_it_cannot_use(tmp_path, segmenter):
    dissection = DissectionCallback(["generator.layer2"], segmenter, **SMALL, max_overhead=None)
    alone = InterventionCallback(
        "generator.layer2", ["sky"], segmenter, dissection=dissection, **SMALL, max_overhead=None
    )
    with pytest.raises(ValueError, match="not in the Trainer's callbacks"):
        fit(tmp_path / "a", [alone])
    ema_dissection = DissectionCallback(
        ["layer2"], segmenter, generator=copy.deepcopy(SceneGAN(16, 8).generator), **SMALL,
        max_overhead=None,
    )  # fmt: skip
    other = InterventionCallback(
        "generator.layer2", ["sky"], segmenter, dissection=ema_dissection, **SMALL,
        max_overhead=None,
    )  # fmt: skip
    with pytest.raises(ValueError, match="dissection of another"):
        fit(tmp_path / "b", [ema_dissection, other])
    with pytest.raises(TypeError, match="a DissectionCallback"):
        InterventionCallback("generator.layer2", ["sky"], segmenter, dissection=object())
