"""DissectionCallback: harmless to training, logs what it says, resumes, fails softly."""

import json
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import (
    STORE_EVERYTHING_SIZE_GUIDANCE,
    EventAccumulator,
)

from gan_dissect_callbacks.callbacks.dissection import DissectionCallback
from gan_dissect_callbacks.demos.gan import SceneGAN
from gan_dissect_callbacks.demos.scenes import SCENE_VOCABULARY
from gan_dissect_callbacks.demos.segmenter import load_toy_segmenter
from gan_dissect_callbacks.demos.train import SceneDataModule
from gan_dissect_callbacks.segmenters.base import GroundTruthSegmenter

LAYERS = ["generator.layer2", "generator.layer3"]


@pytest.fixture(scope="module")
def segmenter():
    return load_toy_segmenter()


def tiny_gan():
    return SceneGAN(latent_dim=16, width=8, sample_every_n_batches=0)


def fit(tmp_path, callbacks, batches=6, logger=True, **kwargs):
    pl.seed_everything(0, verbose=False)
    model = tiny_gan()
    if logger is True:
        logger = TensorBoardLogger(str(tmp_path), name="run")
    trainer = pl.Trainer(
        max_steps=2 * batches,
        logger=logger,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        default_root_dir=str(tmp_path),
        **kwargs,
    )
    trainer.fit(model, datamodule=SceneDataModule(num_scenes=64, batch_size=8, seed=0))
    return model, trainer


def callback(segmenter, **kwargs):
    defaults = {"every_n_train_steps": 2, "num_samples": 24, "batch_size": 12, "top_k": 2}
    defaults.update(kwargs)
    return DissectionCallback(LAYERS, segmenter, **defaults)


def test_training_is_bit_for_bit_the_same_with_the_callback(tmp_path, segmenter):
    plain, _ = fit(tmp_path / "a", [])
    watched, trainer = fit(tmp_path / "b", [callback(segmenter)])
    assert len(trainer.callbacks[0].history) >= 3  # it did run: start, batches 2, 4, 6
    for (name, a), (_, b) in zip(plain.state_dict().items(), watched.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(
        torch.tensor(plain.trainer.fit_loop.total_batch_idx),
        torch.tensor(trainer.fit_loop.total_batch_idx),
    )


def test_tensorboard_gets_scalars_images_histograms_and_text_on_the_batch_axis(tmp_path, segmenter):
    cb = callback(
        segmenter, iou_cutoff=0.0
    )  # every unit with any overlap counts: stability is defined
    _, trainer = fit(tmp_path, [cb], batches=4)
    events = EventAccumulator(trainer.logger.log_dir, size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE)
    events.Reload()
    tags = events.Tags()
    for layer in LAYERS:
        prefix = f"dissection/{layer}"
        for category in SCENE_VOCABULARY.categories:
            assert f"{prefix}/interpretable_units/{category}" in tags["scalars"]
        assert f"{prefix}/interpretable_units/total" in tags["scalars"]
        assert f"{prefix}/distinct_concepts" in tags["scalars"]
        assert f"{prefix}/label_stability" in tags["scalars"]
        assert f"{prefix}/gallery" in tags["images"]
        assert f"{prefix}/unit_classes" in tags["images"]
        assert f"{prefix}/best_iou" in tags["histograms"]
        assert f"{prefix}/units/text_summary" in tags["tensors"]  # how text is stored
        steps = [e.step for e in events.Scalars(f"{prefix}/interpretable_units/total")]
        assert steps == [0, 2, 4]
        totals = [e.value for e in events.Scalars(f"{prefix}/interpretable_units/total")]
        history = [h["layers"][layer]["total"] for h in cb.history]
        assert totals == history
    # The JSON reports on disk match.
    folder = Path(trainer.logger.log_dir) / "dissection"
    assert sorted(p.name for p in folder.glob("step_*.json")) == [
        "step_0000000.json",
        "step_0000002.json",
        "step_0000004.json",
    ]
    latest = json.loads((folder / "latest.json").read_text())
    assert latest["step"] == 4
    assert latest["layers"][LAYERS[0]]["num_units"] == 16


def test_other_loggers_get_scalars_and_no_logger_still_writes_json(tmp_path, segmenter):
    csv = CSVLogger(str(tmp_path), name="csv")
    tb = TensorBoardLogger(str(tmp_path), name="tb")
    fit(tmp_path, [callback(segmenter)], logger=[tb, csv])
    rows = (Path(csv.log_dir) / "metrics.csv").read_text()
    assert "dissection/generator.layer2/interpretable_units/total" in rows

    with pytest.warns(UserWarning, match="no logger"):
        fit(tmp_path / "nolog", [callback(segmenter)], logger=False)
    assert (tmp_path / "nolog" / "dissection" / "latest.json").is_file()


def test_fast_dev_run_is_tolerated(tmp_path, segmenter):
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        fast_dev_run=2,
        callbacks=[callback(segmenter)],
        enable_progress_bar=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(tiny_gan(), datamodule=SceneDataModule(num_scenes=32, batch_size=8))
    assert trainer.callbacks[0].history  # it ran, with the dummy logger


def test_a_failing_analysis_warns_and_training_goes_on(tmp_path):
    def broken(images):
        raise RuntimeError("segmenter exploded")

    bad = GroundTruthSegmenter(SCENE_VOCABULARY, broken)
    plain, _ = fit(tmp_path / "a", [])
    with pytest.warns(UserWarning, match="exploded"):
        model, trainer = fit(tmp_path / "b", [callback(bad)])
    assert trainer.fit_loop.total_batch_idx == 5
    for (name, a), (_, b) in zip(plain.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), name
    assert not any(m._forward_hooks for m in model.modules())
    with pytest.raises(RuntimeError, match="exploded"):
        fit(tmp_path / "c", [callback(bad, raise_on_error=True)])


def test_history_survives_checkpoint_and_resume(tmp_path, segmenter):
    cb = callback(segmenter)
    _, trainer = fit(tmp_path, [cb], batches=4)
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=False)["callbacks"][cb.state_key]
    assert [h["step"] for h in state["history"]] == [0, 2, 4]

    resumed = callback(segmenter)
    pl.seed_everything(0, verbose=False)
    trainer2 = pl.Trainer(
        max_steps=12,
        callbacks=[resumed],
        enable_progress_bar=False,
        enable_checkpointing=False,
        logger=TensorBoardLogger(str(tmp_path), name="resumed"),
        enable_model_summary=False,
    )
    trainer2.fit(
        tiny_gan(), datamodule=SceneDataModule(num_scenes=64, batch_size=8), ckpt_path=ckpt
    )
    assert [h["step"] for h in resumed.history] == [0, 2, 4, 6]
    # Stability after resume compares with the restored previous labels.
    assert resumed.history[-1]["layers"][LAYERS[0]]["label_stability"] is not None or not any(
        resumed.history[-2]["layers"][LAYERS[0]]["labels"]
    )


def test_unknown_layer_is_refused_in_setup_with_the_valid_names(tmp_path, segmenter):
    cb = DissectionCallback(["generator.layer9"], segmenter)
    with pytest.raises(ValueError, match=r"generator\.layer3"):
        fit(tmp_path, [cb], batches=1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every_n_train_steps": 0}, "every_n_train_steps"),
        ({"every_n_epochs": -1}, "every_n_epochs"),
        ({"rule": "best"}, "rule"),
        ({"quantile": 0.0}, "quantile"),
        ({"iou_cutoff": 1.5}, "iou_cutoff"),
        ({"num_samples": 0}, "num_samples"),
    ],
)
def test_bad_arguments_are_named(segmenter, kwargs, match):
    with pytest.raises(ValueError, match=match):
        DissectionCallback(LAYERS, segmenter, **kwargs)


def test_a_string_for_layers_or_a_non_segmenter_is_refused(segmenter):
    with pytest.raises(ValueError, match="layers"):
        DissectionCallback("generator.layer2", segmenter)
    with pytest.raises(TypeError, match="Segmenter protocol"):
        DissectionCallback(LAYERS, object())


def test_no_warning_storm_from_a_healthy_run(tmp_path, segmenter):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(tmp_path, [callback(segmenter)], batches=2)
    mine = [w for w in caught if "DissectionCallback" in str(w.message)]
    assert not mine
