"""DissectionCallback: harmless to training, logs what it says, resumes, fails softly."""

import copy
import io
import json
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import (
    STORE_EVERYTHING_SIZE_GUIDANCE,
    EventAccumulator,
)

from gan_dissect_callbacks.callbacks.dissection import DissectionCallback
from gan_dissect_callbacks.demos.gan import SceneGAN
from gan_dissect_callbacks.demos.scenes import SCENE_VOCABULARY
from gan_dissect_callbacks.demos.segmenter import load_toy_segmenter
from gan_dissect_callbacks.demos.train import SceneDataModule
from gan_dissect_callbacks.engines.dissection import dissect
from gan_dissect_callbacks.engines.generator import AnalysedGenerator
from gan_dissect_callbacks.reporting.evolution import timeline_markdown, unit_timeline
from gan_dissect_callbacks.reporting.layouts import custom_scalars_layout
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
    defaults = {
        "every_n_train_steps": 2,
        "on_train_start": True,
        "num_samples": 24,
        "batch_size": 12,
        "top_k": 2,
    }
    defaults.update(kwargs)
    return DissectionCallback(LAYERS, segmenter, **defaults, max_overhead=None)


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
        assert f"{prefix}/gallery/0" in tags["images"]
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

    # Only TensorBoard gets the extra runs (folders with event files), not the CSV logger.
    assert not [p for p in Path(csv.log_dir).rglob("*") if p.is_dir()]
    assert (Path(tb.log_dir) / "dissection" / LAYERS[0]).is_dir()

    with pytest.warns(UserWarning, match="no logger"):
        fit(tmp_path / "nolog", [callback(segmenter)], logger=False)
    assert (tmp_path / "nolog" / "dissection" / "latest.json").is_file()
    assert not [p for p in (tmp_path / "nolog" / "dissection").iterdir() if p.is_dir()]


def read_run(folder):
    events = EventAccumulator(str(folder), size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE)
    events.Reload()
    return events


def test_each_layer_and_category_is_a_run_so_one_chart_draws_a_line_per_layer(tmp_path, segmenter):
    cb = callback(segmenter, iou_cutoff=0.0)  # every unit with any overlap: stability defined
    _, trainer = fit(tmp_path, [cb], batches=4)
    log_dir = Path(trainer.logger.log_dir)
    assert len(cb._runs) == 0  # the runs' writers were closed at teardown
    categories = [*SCENE_VOCABULARY.categories, "total"]
    for layer in LAYERS:  # one run per layer, holding the same tags as the other layers' runs
        events = read_run(log_dir / "dissection" / layer)
        assert sorted(events.Tags()["scalars"]) == sorted(
            [f"dissection/interpretable_units/{c}" for c in categories]
            + ["dissection/distinct_concepts", "dissection/label_stability"]
            + ["dissection/mean_best_iou"]
        )
        assert not events.Tags()["images"]  # the pictures stay in the main run
        totals = events.Scalars("dissection/interpretable_units/total")
        assert [(e.step, e.value) for e in totals] == [
            (h["step"], h["layers"][layer]["total"]) for h in cb.history
        ]
        stability = events.Scalars("dissection/label_stability")
        assert [e.step for e in stability] == [2, 4]  # unknown at the first dissection
        for e, h in zip(stability, cb.history[1:], strict=True):
            assert e.value == pytest.approx(h["layers"][layer]["label_stability"])
    for category in categories:  # one run per category, one tag per layer
        events = read_run(log_dir / "dissection" / "categories" / category)
        assert sorted(events.Tags()["scalars"]) == sorted(
            f"dissection/{layer}/interpretable_units" for layer in LAYERS
        )
        for layer in LAYERS:
            key = "total" if category == "total" else None
            counts = [
                h["layers"][layer]["total"]
                if key
                else h["layers"][layer]["interpretable_units"][category]
                for h in cb.history
            ]
            logged = events.Scalars(f"dissection/{layer}/interpretable_units")
            assert [e.value for e in logged] == counts
    # The main run keeps its per-layer tags, and the layout points at the runs' tags.
    main = read_run(log_dir)
    assert "dissection/generator.layer2/interpretable_units/total" in main.Tags()["scalars"]
    assert "dissection/interpretable_units/total" not in main.Tags()["scalars"]
    from tensorboard.plugins.custom_scalar import layout_pb2

    (config,) = main.Tensors("custom_scalars__config__")
    read = layout_pb2.Layout.FromString(config.tensor_proto.string_val[0])
    assert {
        c.title: {ch.title: ["Multiline", list(ch.multiline.tag)] for ch in c.chart}
        for c in read.category
    } == custom_scalars_layout(LAYERS, SCENE_VOCABULARY.categories)


def test_the_unit_timeline_shows_each_top_unit_at_every_dissection(tmp_path, segmenter):
    cb = callback(segmenter, top_n=4)
    _, trainer = fit(tmp_path, [cb], batches=4)
    events = read_run(trainer.logger.log_dir)
    for layer in LAYERS:
        images = events.Images(f"dissection/{layer}/unit_timeline")
        assert [e.step for e in images] == [0, 2, 4]
        texts = events.Tensors(f"dissection/{layer}/unit_timeline_table/text_summary")
        assert [e.step for e in texts] == [0, 2, 4]
        for i, event in enumerate(texts):  # each the table of the history so far
            expected = timeline_markdown(unit_timeline(cb.history[: i + 1], layer, top_n=4))
            assert event.tensor_proto.string_val[0].decode() == expected
        # The last table's cells are the history's labels and IoUs of the 4 best units.
        timeline = unit_timeline(cb.history, layer, top_n=4)
        latest = cb.history[-1]["layers"][layer]
        best = sorted(range(len(latest["ious"])), key=lambda u: (-latest["ious"][u], u))[:4]
        assert timeline.units == best
        assert timeline.steps == [0, 2, 4]
        for unit, ious, labels in zip(timeline.units, timeline.ious, timeline.labels, strict=True):
            assert ious == [h["layers"][layer]["ious"][unit] for h in cb.history]
            assert labels == [h["layers"][layer]["labels"][unit] for h in cb.history]
        assert latest["ious"] == [u.iou for u in cb.last_report.layers[layer].units]


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
    # The unit timeline after the resume still shows the dissections from before it.
    events = EventAccumulator(trainer2.logger.log_dir, size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE)
    events.Reload()
    (table,) = events.Tensors(f"dissection/{LAYERS[0]}/unit_timeline_table/text_summary")
    header = table.tensor_proto.string_val[0].decode().splitlines()[0]
    assert header == "| unit | step 0 | step 2 | step 4 | step 6 |"
    # Stability after resume compares with the restored previous labels.
    assert resumed.history[-1]["layers"][LAYERS[0]]["label_stability"] is not None or not any(
        resumed.history[-2]["layers"][LAYERS[0]]["labels"]
    )


def test_unknown_layer_is_refused_in_setup_with_the_valid_names(tmp_path, segmenter):
    cb = DissectionCallback(["generator.layer9"], segmenter, max_overhead=None)
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
        ({"top_k": -1}, "top_k"),
        ({"top_n": -1}, "top_n"),
        ({"name": "a/b"}, "name"),
    ],
)
def test_bad_arguments_are_named(segmenter, kwargs, match):
    with pytest.raises(ValueError, match=match):
        DissectionCallback(LAYERS, segmenter, **kwargs, max_overhead=None)


def test_a_string_for_layers_or_a_non_segmenter_is_refused(segmenter):
    with pytest.raises(TypeError, match="layers"):
        DissectionCallback("generator.layer2", segmenter, max_overhead=None)
    with pytest.raises(TypeError, match="Segmenter protocol"):
        DissectionCallback(LAYERS, object(), max_overhead=None)


def test_no_warning_storm_from_a_healthy_run(tmp_path, segmenter):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(tmp_path, [callback(segmenter)], batches=2)
    mine = [w for w in caught if "DissectionCallback" in str(w.message)]
    assert not mine


def test_two_named_dissections_write_their_own_reports_and_tags(tmp_path, segmenter):
    late = callback(segmenter, every_n_train_steps=None, on_train_end=False)
    early = DissectionCallback(
        ["generator.layer2"], segmenter, every_n_train_steps=None, on_train_start=True,
        on_train_end=False, num_samples=24, batch_size=12, top_k=2, name="early",
     max_overhead=None)  # fmt: skip
    assert late.state_key != early.state_key
    _, trainer = fit(tmp_path, [late, early], batches=1)
    log_dir = Path(trainer.logger.log_dir)
    for folder, layers in (("dissection", LAYERS), ("early", ["generator.layer2"])):
        assert sorted(p.name for p in (log_dir / folder).glob("*.json")) == [
            "latest.json",
            "step_0000000.json",
        ]
        assert list(json.loads((log_dir / folder / "latest.json").read_text())["layers"]) == layers
    events = EventAccumulator(str(log_dir), size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE)
    events.Reload()
    scalars, images = events.Tags()["scalars"], events.Tags()["images"]
    for prefix, layers in (("dissection", LAYERS), ("early", ["generator.layer2"])):
        for layer in layers:
            assert f"{prefix}/{layer}/interpretable_units/total" in scalars
            assert f"{prefix}/{layer}/gallery/0" in images
    assert not any(tag.startswith("early/generator.layer3") for tag in scalars)


def test_two_dissections_of_one_name_and_layers_clash_as_lightning_says(tmp_path, segmenter):
    twins = [callback(segmenter, name="same"), callback(segmenter, name="same")]
    with pytest.raises(RuntimeError, match="more than one stateful callback"):
        fit(tmp_path, twins, batches=1)


def test_an_ema_copy_outside_the_module_is_dissected(tmp_path, segmenter):
    pl.seed_everything(0, verbose=False)
    gan = tiny_gan()
    ema = copy.deepcopy(gan.generator)
    with torch.no_grad():
        ema.layer3[0].weight.mul_(-1)  # an EMA that differs from the trained generator
    cb = DissectionCallback(
        ["layer3"], segmenter, generator=ema, every_n_train_steps=None, on_train_start=True,
        on_train_end=False, num_samples=24, batch_size=12, top_k=2, raise_on_error=True,
     max_overhead=None)  # fmt: skip
    trainer = pl.Trainer(
        max_steps=2, logger=False, callbacks=[cb], enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False, default_root_dir=str(tmp_path),
    )  # fmt: skip
    with pytest.warns(UserWarning, match="no logger"):
        trainer.fit(gan, datamodule=SceneDataModule(num_scenes=16, batch_size=8, seed=0))
    expected = dissect(ema, ["layer3"], segmenter, num_samples=24, batch_size=12, top_k=2, step=0)
    assert cb.last_report == expected
    trained = dissect(gan.generator, ["layer3"], segmenter, num_samples=24, batch_size=12, top_k=2)
    assert cb.last_report.layers["layer3"] != trained.layers["layer3"]
    assert AnalysedGenerator.of(gan, ema).module is ema

    wrong = DissectionCallback(["generator.layer3"], segmenter, generator=ema, max_overhead=None)
    with pytest.raises(
        ValueError, match=r"Unknown layer 'generator\.layer3'.*Valid layers: layer1"
    ):
        wrong.setup(trainer, gan, "fit")


def test_the_tensorboard_gallery_is_the_brute_force_redraw_of_the_top_samples(tmp_path, segmenter):
    """The gallery logged is, pixel for pixel, the top samples redrawn from the latents."""
    from torch.utils.tensorboard.summary import image as image_summary

    from gan_dissect_callbacks.engines.sampling import latents_for, resolve_latent_sampler
    from gan_dissect_callbacks.functional.upsample import upsample_activations
    from gan_dissect_callbacks.instrumentation import capture_activations
    from gan_dissect_callbacks.reporting.galleries import GalleryRow, unit_gallery

    cb = callback(segmenter, every_n_train_steps=None, on_train_end=False, top_n=3, batch_size=5)
    _, trainer = fit(tmp_path, [cb], batches=1)
    report = cb.last_report
    pl.seed_everything(0, verbose=False)
    untrained = tiny_gan().eval()  # the weights of the step-0 dissection
    sampler = resolve_latent_sampler(untrained)
    events = EventAccumulator(trainer.logger.log_dir, size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE)
    events.Reload()
    for name, layer in report.layers.items():
        chosen = sorted(layer.units, key=lambda u: (not u.interpretable, -u.iou))[:3]
        rows = []
        for u in chosen:
            z = latents_for(sampler, u.top_samples, report.num_samples, 5, seed=report.seed)
            with torch.no_grad(), capture_activations(untrained, [name]) as acts:
                images = untrained(z)
            up = upsample_activations(acts[name][:, u.unit : u.unit + 1], images.shape[-2:])
            label = u.concept if u.interpretable else f"({u.concept})"
            title = f"{name} #{u.unit} {label} IoU {u.iou:.2f}"
            rows.append(GalleryRow(title, images, up[:, 0] > u.threshold))
        gallery = image_summary("x", unit_gallery(rows), dataformats="CHW")  # 3 units: page 0
        expected = gallery.value[0].image.encoded_image_string
        logged = events.Images(f"dissection/{name}/gallery/0")
        assert [e.step for e in logged] == [0]
        # The PNG files differ (another zlib level), their pixels are the same.
        decoded = [
            np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
            for png in (expected, logged[0].encoded_image_string)
        ]
        assert np.array_equal(*decoded), name
        assert f"dissection/{name}/gallery/1" not in events.Tags()["images"]
