"""ArtifactPruningCallback and QualityMonitor: harmless when not pruning, prune what is verified,
keep the mask through checkpoints and at inference, roll it back when it hurts, log it all."""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import (
    STORE_EVERYTHING_SIZE_GUIDANCE,
    EventAccumulator,
)
from torch import Tensor

from gan_dissect_callbacks.callbacks import ArtifactPruningCallback, QualityMonitor
from gan_dissect_callbacks.demos.gan import SceneGAN
from gan_dissect_callbacks.demos.pretrained import load_pretrained_scene_gan
from gan_dissect_callbacks.demos.scenes import render_scenes
from gan_dissect_callbacks.demos.train import SceneDataModule
from gan_dissect_callbacks.engines.artifacts import apply_pruning_from_checkpoint
from gan_dissect_callbacks.engines.sampling import iterate_samples
from gan_dissect_callbacks.instrumentation import UnitEdit, edit_activations
from gan_dissect_callbacks.metrics.quality import DiscriminatorScore
from gan_dissect_callbacks.metrics.swd import SlicedWassersteinDistance

LAYER = "generator.layer3"
PLANTED = [3, 12, 21]
FAST = {"num_descriptors_per_image": 16, "num_projections": 32, "batch_size": 16}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_gan() -> SceneGAN:
    # SceneGAN seeds its weights but leaves convolution biases to the global RNG.
    torch.manual_seed(0)
    return SceneGAN(latent_dim=16, width=8, sample_every_n_batches=0)


def planted_gan() -> SceneGAN:
    """The shipped trained GAN, three layer-3 units painting checkerboards, frozen (lr 0)."""
    gan = load_pretrained_scene_gan()
    gan.hparams["lr"] = 0.0
    gan.hparams["sample_every_n_batches"] = 0
    checker = (-1.0) ** (torch.arange(4)[:, None] + torch.arange(4)[None])
    with torch.no_grad():
        for u in PLANTED:
            gan.generator.layer4[0].weight[u] = 0.3 * checker
            gan.generator.layer3[1].bias[u] -= 1.0
    return gan.train()


def fit(
    root: Path,
    model: pl.LightningModule,
    callbacks: list[pl.Callback],
    batches: int,
    *,
    logger: Any = True,
    ckpt_path: str | None = None,
) -> pl.Trainer:
    pl.seed_everything(0, verbose=False)
    if logger is True:
        logger = TensorBoardLogger(str(root), name="run")
    trainer = pl.Trainer(
        max_steps=2 * batches,
        logger=logger,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        default_root_dir=str(root),
    )
    trainer.fit(
        model, datamodule=SceneDataModule(num_scenes=64, batch_size=8, seed=0), ckpt_path=ckpt_path
    )
    return trainer


def no_hooks(model: torch.nn.Module) -> bool:
    return not any(m._forward_hooks for m in model.modules())


# ---------------------------------------------------------------------------------- harmless


def test_training_is_bit_for_bit_the_same_with_both_callbacks_and_pruning_off(tmp_path) -> None:
    plain = tiny_gan()
    fit(tmp_path / "a", plain, [], batches=6)
    watched = tiny_gan()
    artifacts = ArtifactPruningCallback(
        LAYER,
        every_n_train_steps=2,
        num_samples=16,
        top_k=2,
        num_seeds=2,
        **FAST,
        max_overhead=None,
    )
    quality = QualityMonitor(
        every_n_train_steps=3, on_train_start=True, num_samples=16, **FAST, max_overhead=None
    )
    fit(tmp_path / "b", watched, [artifacts, quality], batches=6)
    assert [h["step"] for h in artifacts.history] == [2, 4, 6]
    assert [h["step"] for h in quality.history] == [0, 3, 6]
    assert all(not h["pruned"] for h in artifacts.history)  # prune=False: measured only
    for (name, a), (_, b) in zip(plain.state_dict().items(), watched.state_dict().items()):
        assert torch.equal(a, b), name
    assert no_hooks(watched)


# ---------------------------------------------------------------------------------- pruning


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two batches on the planted GAN; the check after batch 2 prunes."""
    root = tmp_path_factory.mktemp("pruned")
    real, _ = render_scenes(64, 32, generator=torch.Generator().manual_seed(1))
    callback = ArtifactPruningCallback(
        LAYER, real_images=real, every_n_train_steps=2, num_samples=64, top_k=8, top_n=3,
        prune=True, num_seeds=3, num_images=8, **FAST,
     max_overhead=None)  # fmt: skip
    model = planted_gan()
    trainer = fit(root, model, [callback], batches=2)
    checkpoint = root / "pruned.ckpt"
    trainer.save_checkpoint(checkpoint)
    return {"root": root, "model": model, "callback": callback, "trainer": trainer,
            "checkpoint": checkpoint, "real": real}  # fmt: skip


def test_the_verified_planted_units_are_pruned_and_stay_pruned_after_fit(pruned_run) -> None:
    callback, model = pruned_run["callback"], pruned_run["model"]
    (entry,) = callback.history
    assert sorted(entry["candidates"]) == PLANTED
    assert entry["accepted"] and sorted(entry["pruned"]) == PLANTED
    assert entry["ablation"]["mean_improvement"] > 10
    assert callback.mask.units(LAYER) == PLANTED
    # Inference after fit: the hook is still on the module and ablates the planted units.
    assert len(model.generator.layer3._forward_hooks) == 1
    z = torch.randn(4, 64, generator=torch.Generator().manual_seed(9))
    model.eval()
    with torch.no_grad():
        pruned = model(z)
        callback.mask.remove()
        with edit_activations(model, {LAYER: UnitEdit.ablation(PLANTED, 32)}):
            expected = model(z)
        unpruned = model(z)
        callback.mask.apply(model)
    torch.testing.assert_close(pruned, expected)
    assert not torch.allclose(pruned, unpruned)


def test_the_mask_is_in_the_checkpoint_and_reapplied_to_a_freshly_loaded_model(pruned_run) -> None:
    checkpoint = torch.load(pruned_run["checkpoint"], weights_only=True)
    state = checkpoint["callbacks"][pruned_run["callback"].state_key]
    assert state["pruning_mask"] == {"units": {LAYER: PLANTED}}
    fresh = SceneGAN.load_from_checkpoint(pruned_run["checkpoint"]).eval()
    mask = apply_pruning_from_checkpoint(fresh, pruned_run["checkpoint"])
    assert mask.units(LAYER) == PLANTED
    model = pruned_run["model"].eval()
    z = torch.randn(4, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(fresh(z), model(z))
    mask.remove()


def test_tensorboard_gets_scores_units_grids_and_swd_with_and_without(pruned_run) -> None:
    log_dir = pruned_run["trainer"].logger.log_dir
    events = EventAccumulator(log_dir, size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE)
    events.Reload()
    tags = events.Tags()
    for name in ("swd", "swd_ablated", "improvement", "improvement_se", "accepted",
                 "pruned_units", "score_baseline", "top_score"):  # fmt: skip
        assert f"artifacts/{name}" in tags["scalars"], name
    assert [e.step for e in events.Scalars("artifacts/swd")] == [2]
    assert events.Scalars("artifacts/pruned_units")[0].value == 3.0
    ablation = pruned_run["callback"].history[0]["ablation"]
    assert events.Scalars("artifacts/swd_ablated")[0].value == pytest.approx(
        sum(ablation["swd_ablated"]) / 3, rel=1e-6
    )
    assert "artifacts/unit_scores" in tags["histograms"]
    assert "artifacts/chosen_units/text_summary" in tags["tensors"]  # how text is stored
    for grid in ("before", "after", "candidates"):
        assert f"artifacts/{grid}" in tags["images"], grid
    text = (
        events.Tensors("artifacts/chosen_units/text_summary")[0].tensor_proto.string_val[0].decode()
    )
    assert "**pruned** [3, 12, 21]" in text
    # The check's entry is written as JSON beside the events, as the other analyses do.
    folder = Path(log_dir) / "artifacts"
    assert sorted(p.name for p in folder.glob("*.json")) == ["latest.json", "step_0000002.json"]
    report = json.loads((folder / "latest.json").read_text())
    assert report == json.loads(json.dumps(pruned_run["callback"].history[0]))
    assert report["pruned"] == PLANTED


def test_resume_reinstalls_the_mask_and_a_check_that_shows_it_hurts_rolls_it_back(
    pruned_run, tmp_path
) -> None:
    # Real images drawn by the planted GAN itself: now the checkerboards are what "real" looks
    # like, so keeping the planted units pruned makes samples worse.
    source = planted_gan().eval()
    with torch.no_grad():
        real = source(torch.randn(64, 64, generator=torch.Generator().manual_seed(4)))
    resumed = ArtifactPruningCallback(
        LAYER, real_images=real, every_n_train_steps=2, num_samples=64, top_k=8, top_n=3,
        prune=True, num_seeds=3, num_images=0, **FAST,
     max_overhead=None)  # fmt: skip

    class Probe(pl.Callback):
        hooked_at_start: bool | None = None

        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.hooked_at_start = bool(pl_module.generator.layer3._forward_hooks)

    probe = Probe()
    model = planted_gan()
    fit(tmp_path, model, [resumed, probe], batches=4, ckpt_path=str(pruned_run["checkpoint"]))
    assert probe.hooked_at_start  # re-installed from the checkpoint before training went on
    assert [h["step"] for h in resumed.history] == [2, 4]
    last = resumed.history[-1]
    assert last["mask_check"] is not None and last["rolled_back"] == PLANTED
    assert not set(last["candidates"]) & set(PLANTED)  # rolled-back units are not retried
    assert resumed.mask.units(LAYER) == sorted(last["pruned"])
    if not last["pruned"]:
        assert no_hooks(model)


def test_the_pruning_budget_caps_the_candidates(tmp_path) -> None:
    callback = ArtifactPruningCallback(
        LAYER, every_n_train_steps=1, num_samples=16, top_k=2, top_n=5, max_pruned_units=1,
        num_seeds=2, prune=True, **FAST,
     max_overhead=None)  # fmt: skip
    fit(tmp_path, tiny_gan(), [callback], batches=1, logger=False)
    assert len(callback.history[0]["candidates"]) == 1


def test_the_real_side_is_made_at_the_first_check_and_kept_for_the_next(
    tmp_path, monkeypatch
) -> None:
    import gan_dissect_callbacks.callbacks.artifact_pruning as module

    made = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        made.append(module_prepare(*args, **kwargs))
        return made[-1]

    module_prepare = module.prepare_real
    monkeypatch.setattr(module, "prepare_real", counted)
    callback = ArtifactPruningCallback(
        LAYER, every_n_train_steps=1, num_samples=16, top_k=2, num_seeds=2, **FAST,
        max_overhead=None,
    )  # fmt: skip
    fit(tmp_path, tiny_gan(), [callback], batches=2, logger=False)
    assert len(callback.history) == 2 and len(made) == 1
    assert callback._real_side is made[0]
    # One side serves both steps; the scores' 128 directions are capped at the verification's.
    assert made[0].num_projections == FAST["num_projections"] == callback.score_projections
    wider = ArtifactPruningCallback(LAYER, num_projections=512, score_projections=128)
    assert wider.score_projections == 128


def test_the_candidates_grid_shows_the_scored_top_images_without_running_the_model(
    pruned_run,
) -> None:
    callback = pruned_run["callback"]
    scores, ablation = callback.last_scores, callback.last_ablation
    assert scores is not None and scores.images is not None and ablation is not None
    from gan_dissect_callbacks.reporting.artifacts import check_grids
    from gan_dissect_callbacks.reporting.images import image_grid

    grids = check_grids(ablation, scores, 8)
    expected = image_grid(torch.cat([scores.top_images(u, 8) for u in ablation.units]), nrow=8)
    torch.testing.assert_close(grids["candidates"], expected)
    assert grids["before"].shape == grids["after"].shape


def test_an_outside_generator_is_pruned_by_its_own_layer_names(tmp_path) -> None:
    real, _ = render_scenes(64, 32, generator=torch.Generator().manual_seed(1))
    gan = planted_gan()
    ema = copy.deepcopy(gan.generator).eval()  # an EMA copy kept outside the LightningModule
    callback = ArtifactPruningCallback(
        "layer3", generator=ema, real_images=real, every_n_train_steps=2, num_samples=64,
        top_k=8, top_n=3, prune=True, num_seeds=3, num_images=0, raise_on_error=True, **FAST,
     max_overhead=None)  # fmt: skip
    fit(tmp_path, gan, [callback], batches=2, logger=False)
    (entry,) = callback.history
    assert entry["accepted"] and sorted(entry["pruned"]) == PLANTED
    assert callback.mask.units("layer3") == PLANTED
    assert len(ema.layer3._forward_hooks) == 1 and no_hooks(gan)  # on the module that runs
    z = torch.randn(4, 64, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        pruned = ema(z)
        callback.mask.remove()
        with edit_activations(ema, {"layer3": UnitEdit.ablation(PLANTED, 32)}):
            expected = ema(z)
    torch.testing.assert_close(pruned, expected)
    bad = ArtifactPruningCallback(LAYER, generator=ema, max_overhead=None)
    with pytest.raises(ValueError, match=r"Valid layers: .*layer3"):
        fit(tmp_path / "bad", tiny_gan(), [bad], 1, logger=False)


def test_two_named_checks_keep_their_own_tags_reports_and_state(tmp_path) -> None:
    settings = {"every_n_train_steps": 1, "num_samples": 8, "top_k": 2, "num_seeds": 2, **FAST}
    checks = [
        ArtifactPruningCallback(LAYER, name="artifacts_g", **settings, max_overhead=None),
        # The same layer, named relative to the generator the second one analyses.
        ArtifactPruningCallback(
            "layer3", name="artifacts_ema", generator="generator", **settings, max_overhead=None
        ),
    ]
    monitors = [
        QualityMonitor(every_n_train_steps=1, num_samples=8, name=n, **FAST, max_overhead=None)
        for n in ("quality_a", "quality_b")
    ]
    keys = [c.state_key for c in [*checks, *monitors]]
    assert len(set(keys)) == 4
    trainer = fit(tmp_path, tiny_gan(), [*checks, *monitors], batches=1)
    log_dir = Path(trainer.logger.log_dir)
    for folder in ("artifacts_g", "artifacts_ema"):
        assert sorted(p.name for p in (log_dir / folder).glob("*.json")) == [
            "latest.json",
            "step_0000001.json",
        ]
    assert not (log_dir / "artifacts").exists() and not (log_dir / "quality_a").exists()
    events = EventAccumulator(str(log_dir), size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE)
    events.Reload()
    scalars = events.Tags()["scalars"]
    for prefix in ("artifacts_g", "artifacts_ema"):
        assert [e.step for e in events.Scalars(f"{prefix}/swd")] == [1]
        assert f"{prefix}/chosen_units/text_summary" in events.Tags()["tensors"]
    for prefix in ("quality_a", "quality_b"):
        assert [e.step for e in events.Scalars(f"{prefix}/swd_avg")] == [1]
    assert not any(tag.startswith(("artifacts/", "quality/")) for tag in scalars)
    trainer.save_checkpoint(tmp_path / "both.ckpt")
    saved = torch.load(tmp_path / "both.ckpt", weights_only=True)["callbacks"]
    assert set(keys) <= set(saved)
    assert [h["step"] for h in saved[checks[1].state_key]["history"]] == [1]


def test_two_checks_of_one_name_and_layer_clash_as_lightning_says(tmp_path) -> None:
    for twins in (
        [
            ArtifactPruningCallback(LAYER, name="same", max_overhead=None),
            ArtifactPruningCallback(LAYER, name="same", max_overhead=None),
        ],
        [
            QualityMonitor(name="same", max_overhead=None),
            QualityMonitor(name="same", max_overhead=None),
        ],
    ):
        with pytest.raises(RuntimeError, match="more than one stateful callback"):
            fit(tmp_path, tiny_gan(), twins, batches=1, logger=False)


# ---------------------------------------------------------------------------------- quality


def test_quality_monitor_takes_its_arguments_by_keyword_as_the_other_callbacks() -> None:
    real = torch.zeros(2, 3, 32, 32)
    with pytest.raises(TypeError, match="positional"):
        QualityMonitor(real)  # type: ignore[misc]
    assert QualityMonitor(real_images=real).real_images is real


def test_quality_monitor_logs_the_swd_and_discriminator_score_of_the_model(tmp_path) -> None:
    real, _ = render_scenes(16, 32, generator=torch.Generator().manual_seed(3))
    monitor = QualityMonitor(
        real_images=real,
        every_n_train_steps=2,
        on_train_start=True,
        num_samples=16,
        **FAST,
        max_overhead=None,
    )
    trainer = fit(tmp_path, tiny_gan(), [monitor], batches=2)
    # Step 0 measured the untrained model: recompute it from a fresh copy of it.
    model = tiny_gan().eval()
    swd = SlicedWassersteinDistance(32, max_descriptors=16 * 16, num_descriptors_per_image=16,
                                    num_projections=32)  # fmt: skip
    score = DiscriminatorScore()
    swd.update(real, real=True)
    with torch.no_grad():
        for batch in iterate_samples(model.sample_latents, 16, 16, seed=0):
            images = model(batch.latents)
            swd.update(images, real=False)
            score.update(model.discriminator(images))
    expected = {k: float(v) for k, v in swd.compute().items()}
    first = monitor.history[0]
    assert first["step"] == 0
    for name, value in expected.items():
        assert first[name] == pytest.approx(value, rel=1e-5), name
    assert first["discriminator_score"] == pytest.approx(float(score.compute()), rel=1e-5)
    events = EventAccumulator(trainer.logger.log_dir, size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE)
    events.Reload()
    for tag in (
        "quality/swd_avg",
        "quality/swd_32",
        "quality/swd_16",
        "quality/discriminator_score",
    ):
        assert [e.step for e in events.Scalars(tag)] == [0, 2], tag


def test_quality_monitor_history_survives_a_checkpoint(tmp_path) -> None:
    monitor = QualityMonitor(
        every_n_train_steps=1, num_samples=8, on_train_start=False, **FAST, max_overhead=None
    )
    trainer = fit(tmp_path, tiny_gan(), [monitor], batches=1, logger=False)
    state = trainer.callbacks[0].state_dict() if trainer.callbacks[0] is monitor else None
    assert state is not None and [h["step"] for h in state["history"]] == [1]
    restored = QualityMonitor(max_overhead=None)
    restored.load_state_dict(state)
    assert restored.history == monitor.history


# ---------------------------------------------------------------------------------- failures


def test_a_failing_analysis_warns_and_training_goes_on_unchanged(tmp_path) -> None:
    def broken(n: int, generator: torch.Generator) -> Tensor:
        raise RuntimeError("no real images today")

    plain = tiny_gan()
    fit(tmp_path / "a", plain, [], batches=2, logger=False)
    model = tiny_gan()
    callback = ArtifactPruningCallback(
        LAYER, real_images=broken, every_n_train_steps=1, prune=True, num_seeds=2, max_overhead=None
    )
    with pytest.warns(UserWarning, match="no real images today"):
        fit(tmp_path / "b", model, [callback], batches=2, logger=False)
    assert callback.history == [] and no_hooks(model)
    for (name, a), (_, b) in zip(plain.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), name
    strict = ArtifactPruningCallback(
        LAYER, real_images=broken, every_n_train_steps=1, raise_on_error=True, max_overhead=None
    )
    with pytest.raises(RuntimeError, match="no real images today"):
        fit(tmp_path / "c", tiny_gan(), [strict], batches=1, logger=False)


def test_environment_problems_are_raised_in_setup(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"Valid layers: .*generator\.layer3"):
        fit(
            tmp_path,
            tiny_gan(),
            [ArtifactPruningCallback("generator.layer9", max_overhead=None)],
            1,
            logger=False,
        )
    with pytest.raises(ValueError, match="Valid layers"):
        fit(
            tmp_path,
            tiny_gan(),
            [QualityMonitor(discriminator="critic", max_overhead=None)],
            1,
            logger=False,
        )
    no_critic = tiny_gan()
    del no_critic.discriminator
    needy = ArtifactPruningCallback(LAYER, method="discriminator", max_overhead=None)
    with pytest.raises(ValueError, match="needs a discriminator"):
        fit(tmp_path, no_critic, [needy], 1, logger=False)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every_n_train_steps": 0}, "every_n_train_steps"),
        ({"num_seeds": 1}, "num_seeds"),
        ({"top_k": 300}, "top_k"),
        ({"top_n": 0}, "top_n"),
        ({"method": "fid"}, "method"),
        ({"num_se": -1.0}, "num_se"),
        ({"min_improvement": "big"}, "min_improvement"),
        ({"prune": "yes"}, "prune"),
        ({"max_pruned_units": -1}, "max_pruned_units"),
        ({"name": ""}, "name"),
        ({"num_images": -1}, "num_images"),
        ({"score_projections": 0}, "score_projections"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ArtifactPruningCallback(LAYER, **kwargs, max_overhead=None)


def test_bad_real_images_and_monitor_arguments_are_named() -> None:
    with pytest.raises(TypeError, match="`real_images`"):
        ArtifactPruningCallback(LAYER, real_images=[1, 2], max_overhead=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`layer`"):
        ArtifactPruningCallback("", max_overhead=None)
    with pytest.raises(ValueError, match="num_samples"):
        QualityMonitor(num_samples=0, max_overhead=None)
    with pytest.raises(TypeError, match="`real_images`"):
        QualityMonitor(real_images="scenes", max_overhead=None)  # type: ignore[arg-type]


def test_no_warnings_from_a_healthy_run(tmp_path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(
            tmp_path, tiny_gan(),
            [ArtifactPruningCallback(LAYER, every_n_train_steps=1, num_samples=8, top_k=2,
                                     num_seeds=2, **FAST, max_overhead=None)],
            batches=1,
        )  # fmt: skip
    mine = [w for w in caught if "ArtifactPruningCallback" in str(w.message)]
    assert not mine, [str(w.message) for w in mine]


# ---------------------------------------------------------------------------------- DDP


class RecordMask(pl.Callback):
    """Each rank writes what its module ends with: the pruned units and whether the hook is on."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        callback = next(c for c in trainer.callbacks if isinstance(c, ArtifactPruningCallback))
        record = {
            "units": callback.mask.units(LAYER),
            "hooked": bool(pl_module.generator.layer3._forward_hooks),
            "history": [h["step"] for h in callback.history],
        }
        Path(self.folder, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


@pytest.mark.slow
def test_under_ddp_rank_zero_decides_and_every_rank_prunes_the_same_units(tmp_path) -> None:
    real, _ = render_scenes(64, 32, generator=torch.Generator().manual_seed(1))
    callback = ArtifactPruningCallback(
        LAYER, real_images=real, every_n_train_steps=2, num_samples=64, top_k=8, top_n=3,
        prune=True, num_seeds=3, num_images=4, raise_on_error=True, **FAST,
     max_overhead=None)  # fmt: skip
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        max_steps=4, accelerator="cpu", devices=2, strategy="ddp_spawn_find_unused_parameters_true",
        logger=TensorBoardLogger(str(tmp_path), name="ddp"), callbacks=[callback,
        RecordMask(str(tmp_path))], enable_progress_bar=False, enable_checkpointing=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(planted_gan(), datamodule=SceneDataModule(num_scenes=64, batch_size=8, seed=0))
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert records[0] == records[1]
    assert records[0] == {"units": PLANTED, "hooked": True, "history": [2]}
    # Only rank 0 wrote TensorBoard events.
    assert len(list((tmp_path / "ddp").rglob("events.out.tfevents.*"))) == 1
