"""InterventionCallback: harmless to training, logs its tags, reads the dissection it is given."""

from __future__ import annotations

import copy
import json
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
from torch.utils.data import DataLoader, TensorDataset

from gan_dissect_callbacks.callbacks.dissection import DissectionCallback
from gan_dissect_callbacks.callbacks.intervention import ACE_LOCATIONS, InterventionCallback
from gan_dissect_callbacks.demos.gan import SceneGAN
from gan_dissect_callbacks.engines.intervention import (
    NoInsertionSiteError,
    average_causal_effect,
    causal_effects,
    insertion_effect,
    insertion_values,
    removal_curve,
)
from gan_dissect_callbacks.reporting.intervention import GRID_ROWS, intervention_grid
from gan_dissect_callbacks.segmenters.base import GroundTruthSegmenter
from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary

LAYER = "generator.layer2"
VOCAB = ConceptVocabulary.from_pairs(
    [("reddish", "color"), ("bluish", "color"), ("never", "color")]
)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny convolutions run far faster on one thread than on two busy shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def segmenter() -> GroundTruthSegmenter:
    """Exact masks: red above its image mean in the left half; blue likewise in the top half.

    The untrained GAN draws almost flat images, so concepts relative to each image's mean
    occur everywhere; restricting them to half the image leaves places to insert them.
    """

    def scores(images: Tensor) -> Tensor:
        centred = images - images.mean((2, 3), keepdim=True)
        left = (torch.arange(32, device=images.device) < 16).float()
        reddish = torch.sigmoid(1e4 * centred[:, 0]) * left.view(1, 1, 32)
        bluish = torch.sigmoid(1e4 * centred[:, 2]) * left.view(1, 32, 1)
        return torch.stack([reddish, bluish, torch.zeros_like(reddish)], 1)

    def hard(images: Tensor) -> Tensor:
        return scores(images) > 0.5

    def soft(images: Tensor) -> Tensor:
        return scores(images)

    return GroundTruthSegmenter(VOCAB, hard, soft)


def small_gan() -> SceneGAN:
    return SceneGAN(latent_dim=16, width=8, sample_every_n_batches=0)


def loader() -> DataLoader:
    images = torch.rand(32, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return DataLoader(TensorDataset(images), batch_size=8, shuffle=True)


def fit(
    callbacks: list[pl.Callback], root: Path, batches: int = 4
) -> tuple[SceneGAN, Tensor, TensorBoardLogger]:
    pl.seed_everything(7, verbose=False)
    model = small_gan()
    logger = TensorBoardLogger(str(root), name="run", version=0)
    trainer = pl.Trainer(
        max_steps=2 * batches,  # two optimizer steps per batch
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
    )
    trainer.fit(model, train_dataloaders=loader())
    return model, torch.get_rng_state(), logger


def callback(layer: str = LAYER, **kwargs: Any) -> InterventionCallback:
    options: dict[str, Any] = {
        "every_n_train_steps": 2,
        "on_train_end": False,
        "num_samples": 8,
        "batch_size": 16,
        "max_ablated_units": 3,
        "num_random": 1,
        "log_points": (1, 3),
        "top_n": 2,
        "num_images": 2,
        "dissect_samples": 16,
        "raise_on_error": True,
    }
    options.update(kwargs)
    return InterventionCallback(
        layer, ["reddish", "bluish"], segmenter(), **options, max_overhead=None
    )


def read_events(logger: TensorBoardLogger) -> EventAccumulator:
    events = EventAccumulator(logger.log_dir, size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE)
    events.Reload()
    return events


def test_harmless_and_logs_its_tags(tmp_path: Path) -> None:
    plain, plain_rng, _ = fit([], tmp_path / "plain")
    watched = callback(alpha_steps=2)
    model, rng, logger = fit([watched], tmp_path / "watched")

    # Training is bit-for-bit the same, and so are the RNG streams after it.
    assert torch.equal(rng, plain_rng)
    reference = plain.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference[key]), key
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks

    assert [e["step"] for e in watched.history] == [2, 4]
    assert watched.history[0]["source"] == "dissect"
    events = read_events(logger)
    scalars = set(events.Tags()["scalars"])
    for concept in ("reddish", "bluish"):
        for tag in (
            "removed_at_n1",
            "removed_at_n3",
            "random_removed_at_n1",
            "alpha_removed_at_n3",
            "ace",
            "inserted_fraction",
            "random_inserted_fraction",
        ):
            assert f"intervention/{concept}/{tag}" in scalars
        assert [e.step for e in events.Scalars(f"intervention/{concept}/ace")] == [2, 4]
        images = events.Tags()["images"]
        assert f"intervention/{concept}/removal_curve" in images
        grid = events.Images(f"intervention/{concept}/images")[-1]
        # 3 labelled rows (original / ablated / inserted) of the 2 logged samples.
        expected = intervention_grid(
            {row: torch.zeros(2, 3, 32, 32) for row in GRID_ROWS}, units=[0, 1]
        )
        assert (grid.height, grid.width) == tuple(expected.shape[1:])

    logged = events.Scalars("intervention/reddish/removed_at_n3")[-1].value
    entry = watched.history[-1]["concepts"]["reddish"]
    assert entry["removal"]["points"] == [1, 3]  # only the logged unit counts are ablated
    assert logged == pytest.approx(entry["removal"]["removed"][1], abs=1e-6)
    on_disk = json.loads((Path(logger.log_dir) / "intervention" / "latest.json").read_text())
    assert on_disk["step"] == 4
    assert on_disk["concepts"]["reddish"]["ranking"] == entry["ranking"]
    assert (Path(logger.log_dir) / "intervention" / "step_0000002.json").is_file()


def test_takes_the_ranking_from_the_dissection_it_is_given(tmp_path: Path) -> None:
    dissection = DissectionCallback(
        [LAYER], segmenter(), every_n_train_steps=2, on_train_start=False, on_train_end=False,
        num_samples=16, top_k=0, top_n=0,
     max_overhead=None)  # fmt: skip
    watched = callback(num_images=0, dissection=dissection)
    # A DissectionCallback among the trainer's callbacks is not looked for: only one given is read.
    alone = callback(num_images=0, name="intervention_alone")
    fit([dissection, watched, alone], tmp_path, batches=2)
    assert watched.history[-1]["source"] == "DissectionCallback (step 2)"
    assert alone.history[-1]["source"] == "dissect"
    assert dissection.last_report is not None
    layer = dissection.last_report.layers[LAYER]
    c = VOCAB.index("bluish")
    by_iou = sorted(range(layer.num_units), key=lambda u: (-layer.iou[u][c], u))
    assert watched.history[-1]["concepts"]["bluish"]["ranking"] == by_iou[:3]


def test_absent_concept_is_skipped_with_a_warning(tmp_path: Path) -> None:
    watched = InterventionCallback(
        LAYER, ["never", "reddish"], segmenter(), every_n_train_steps=2, on_train_end=False,
        num_samples=8, max_ablated_units=2, num_random=0, num_images=0, dissect_samples=8,
     max_overhead=None)  # fmt: skip
    with pytest.warns(UserWarning, match=r"concept 'never' is absent"):
        fit([watched], tmp_path, batches=2)
    concepts = watched.history[-1]["concepts"]
    assert concepts["never"] is None and concepts["reddish"] is not None


def test_failure_warns_and_training_goes_on(tmp_path: Path) -> None:
    def broken(z: Tensor) -> Tensor:
        raise RuntimeError("generator exploded")

    watched = callback(generate=broken, raise_on_error=False)
    with pytest.warns(UserWarning, match=r"(?s)failed and was skipped.*generator exploded"):
        fit([watched], tmp_path, batches=2)
    assert watched.history == []
    strict = callback(generate=broken)
    with pytest.raises(RuntimeError, match="generator exploded"):
        fit([strict], tmp_path / "strict", batches=2)


def test_bad_arguments() -> None:
    seg = segmenter()
    with pytest.raises(ValueError, match=r"Unknown concept\(s\) \['sky'\].*reddish, bluish"):
        InterventionCallback(LAYER, ["sky"], seg, max_overhead=None)
    with pytest.raises(ValueError, match=r"`every_n_train_steps` to be None or an int ≥ 1"):
        InterventionCallback(LAYER, ["reddish"], seg, every_n_train_steps=0, max_overhead=None)
    with pytest.raises(ValueError, match=r"`concepts` to be a non-empty list"):
        InterventionCallback(LAYER, "reddish", seg, max_overhead=None)
    with pytest.raises(TypeError, match=r"Segmenter protocol"):
        InterventionCallback(LAYER, ["reddish"], object(), max_overhead=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`rule` to be one of"):
        InterventionCallback(LAYER, ["reddish"], seg, rule="median", max_overhead=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`top_n` to be an int ≥ 1, but got 0"):
        InterventionCallback(LAYER, ["reddish"], seg, top_n=0, max_overhead=None)
    with pytest.raises(TypeError, match=r"`dissection` to be None or a DissectionCallback"):
        InterventionCallback(LAYER, ["reddish"], seg, dissection=object(), max_overhead=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`ace_locations` to be None or an int ≥ 1, but got 0"):
        InterventionCallback(LAYER, ["reddish"], seg, ace_locations=0, max_overhead=None)


def test_unknown_layer_fails_in_setup(tmp_path: Path) -> None:
    watched = InterventionCallback("generator.layer9", ["reddish"], segmenter(), max_overhead=None)
    with pytest.raises(ValueError, match=r"Unknown layer 'generator.layer9'"):
        fit([watched], tmp_path, batches=1)


def test_state_dict_round_trip() -> None:
    first = callback()
    first.history.append({"step": 6, "layer": LAYER, "source": "dissect", "concepts": {}})
    second = callback()
    second.load_state_dict(first.state_dict())
    assert second.history == first.history
    assert second._last_step == 6
    assert first.state_key == second.state_key


def test_two_named_callbacks_write_two_reports_and_tag_sets(tmp_path: Path) -> None:
    first = callback(num_images=0, name="intervention_a")
    second = InterventionCallback(
        LAYER, ["bluish"], segmenter(), every_n_train_steps=2, on_train_end=False, num_samples=8,
        max_ablated_units=2, num_random=0, top_n=2, num_images=0, dissect_samples=8,
        raise_on_error=True, name="intervention_b",
     max_overhead=None)  # fmt: skip
    assert first.state_key != callback(num_images=0).state_key  # a name makes the key distinct
    _, _, logger = fit([first, second], tmp_path, batches=2)
    for name, concept in (("intervention_a", "reddish"), ("intervention_b", "bluish")):
        report = json.loads((Path(logger.log_dir) / name / "latest.json").read_text())
        assert report["step"] == 2 and concept in report["concepts"]
    scalars = set(read_events(logger).Tags()["scalars"])
    assert "intervention_a/reddish/ace" in scalars and "intervention_b/bluish/ace" in scalars
    assert not any(tag.startswith("intervention/") for tag in scalars)
    assert not (Path(logger.log_dir) / "intervention").exists()


def test_same_name_twice_is_lightnings_duplicate_state_error(tmp_path: Path) -> None:
    twins = [callback(name="same"), callback(name="same")]
    with pytest.raises(RuntimeError, match="more than one stateful callback"):
        fit(twins, tmp_path, batches=1)


def test_intervenes_on_a_generator_kept_outside_the_module(tmp_path: Path) -> None:
    outside = copy.deepcopy(small_gan().generator)  # an EMA copy, say: not a submodule
    outside.eval()
    state = {k: v.clone() for k, v in outside.state_dict().items()}
    watched = callback("layer3", generator=outside)  # a layer name of the outside module itself
    _, _, logger = fit([watched], tmp_path, batches=2)
    assert [e["step"] for e in watched.history] == [2]
    assert watched.history[-1]["concepts"]["reddish"]["removal"]["layer"] == "layer3"
    assert "intervention/reddish/images" in read_events(logger).Tags()["images"]
    assert not outside.training  # its mode restored
    for key, value in outside.state_dict().items():
        assert torch.equal(value, state[key]), key

    wrong = InterventionCallback(
        LAYER, ["reddish"], segmenter(), generator=outside, max_overhead=None
    )
    with pytest.raises(ValueError, match=r"Unknown layer 'generator.layer2'.*Valid layers: layer1"):
        fit([wrong], tmp_path / "wrong", batches=1)


def test_logged_numbers_equal_the_engine_functions_one_by_one(tmp_path: Path) -> None:
    """Shared images and logged-only unit counts change no number the callback records."""
    watched = callback(num_random=2, log_points=(1, 2), num_images=0, ace_locations=None)
    fit([watched], tmp_path, batches=2)  # one analysis, of the trained model
    g = watched.analysed_generator
    places, _ = watched._patches()
    sampled: dict[str, Any] = {"num_samples": 8, "batch_size": 16, "seed": 0}
    for concept in ("reddish", "bluish"):
        numbers = watched.history[-1]["concepts"][concept]
        ranking = numbers["ranking"]
        curve = removal_curve(g, LAYER, segmenter(), concept, ranking, max_units=3, num_random=2,
                              **sampled)  # fmt: skip
        removal = numbers["removal"]
        assert removal["points"] == [1, 2, 3]
        assert removal["removed"] == curve.removed and removal["net_removed"] == curve.net_removed
        assert removal["random_mean"] == curve.random_mean
        assert removal["random_units"] == curve.random_units
        k_all = insertion_values(g, LAYER, segmenter(), concept, **sampled)
        top = ranking[:2]
        ace = average_causal_effect(g, LAYER, segmenter(), concept, top, values=k_all[top],
                                    locations=places, **sampled)  # fmt: skip
        assert numbers["ace"] == ace.to_dict()
        insertion = insertion_effect(g, LAYER, segmenter(), concept, top, locations=places,
                                     **sampled).to_dict()  # fmt: skip
        logged = numbers["insertion"]
        for name in ("fraction_gained", "pixels_gained", "fraction_before"):
            assert logged.pop(name) == pytest.approx(insertion.pop(name), abs=1e-9), name
        gains = logged.pop("random_fraction_gained")
        assert gains == pytest.approx(insertion.pop("random_fraction_gained"), abs=1e-9)
        assert logged == insertion


def test_by_default_the_ace_samples_ace_locations_patches_per_sample(tmp_path: Path) -> None:
    watched = callback(num_images=0)
    assert watched.ace_locations == ACE_LOCATIONS
    fit([watched], tmp_path, batches=2)
    g = watched.analysed_generator
    places, _ = watched._patches()
    assert places.shape[0] > ACE_LOCATIONS  # the subset is a proper one
    sampled: dict[str, Any] = {"num_samples": 8, "batch_size": 16, "seed": 0}
    for concept in ("reddish", "bluish"):
        numbers = watched.history[-1]["concepts"][concept]
        top = numbers["ranking"][:2]
        k_all = insertion_values(g, LAYER, segmenter(), concept, **sampled)
        ace, insertion = causal_effects(g, LAYER, segmenter(), concept, top, k_all,
                                        locations=places, locations_per_sample=ACE_LOCATIONS,
                                        **sampled)  # fmt: skip
        assert numbers["ace"] == ace.to_dict()
        assert not isinstance(insertion, NoInsertionSiteError)
        assert numbers["insertion"] == insertion.to_dict()
        assert insertion.num_candidates == 8 * ACE_LOCATIONS
