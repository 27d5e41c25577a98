"""Extra TensorBoard runs (one coloured line per layer or concept) and the unit timeline."""

from __future__ import annotations

import io
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import (
    STORE_EVERYTHING_SIZE_GUIDANCE,
    EventAccumulator,
)
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from gan_dissect_callbacks.demos.scenes import SCENE_VOCABULARY
from gan_dissect_callbacks.engines.dissection import (
    DissectionReport,
    LayerReport,
    UnitExamples,
    UnitReport,
)
from gan_dissect_callbacks.reporting.artifacts import log_artifacts
from gan_dissect_callbacks.reporting.charts import category_chart
from gan_dissect_callbacks.reporting.dissection import log_dissection, summarise, unit_galleries
from gan_dissect_callbacks.reporting.evolution import (
    NO_LABEL,
    timeline_image,
    timeline_markdown,
    unit_timeline,
)
from gan_dissect_callbacks.reporting.images import ImageLog
from gan_dissect_callbacks.reporting.intervention import (
    concept_run_scalars,
    intervention_grid,
    intervention_scalars,
    log_intervention,
    removal_chart,
)
from gan_dissect_callbacks.reporting.writing import RunWriters


def read(folder: Path) -> EventAccumulator:
    events = EventAccumulator(str(folder), size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE)
    events.Reload()
    return events


def writer_threads() -> int:
    return sum(t.is_alive() for t in threading.enumerate())


# --------------------------------------------------------------------------------- runs


def test_run_writers_are_lazy_shared_and_closed(tmp_path: Path) -> None:
    parent = SummaryWriter(str(tmp_path))
    runs = RunWriters()
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # nothing before the first write
    before = writer_threads()
    a = runs.writer(parent, "dissection/g.l3")
    assert a is runs.writer(parent, "dissection/g.l3") and len(runs) == 1
    a.add_scalar("dissection/mean_best_iou", 0.5, 3)
    runs.flush()
    assert (
        read(tmp_path / "dissection" / "g.l3").Scalars("dissection/mean_best_iou")[0].value == 0.5
    )
    runs.close()
    assert len(runs) == 0 and writer_threads() <= before  # its file and thread are gone
    assert runs.writer(object(), "dissection/x") is None  # not a SummaryWriter: no runs
    for bad in ("", "/abs", "../up"):
        with pytest.raises(ValueError, match="`run` to be a relative folder"):
            runs.writer(parent, bad)
    parent.close()


def layer(name: str, labels: list[str | None], ious: list[float]) -> LayerReport:
    units = [
        UnitReport(
            u,
            label or "sky",
            SCENE_VOCABULARY.category_of(label or "sky"),
            iou,
            1.0,
            0.1,
            label is not None,
        )
        for u, (label, iou) in enumerate(zip(labels, ious, strict=True))
    ]
    return LayerReport(name, len(units), units, [])


def report(step: int, layers: dict[str, LayerReport]) -> DissectionReport:
    return DissectionReport(layers, SCENE_VOCABULARY, 8, 0, "quantile", 0.99, 0.04, [], step=step)


def test_log_dissection_writes_one_run_per_layer_and_category_and_closes_its_own(
    tmp_path: Path,
) -> None:
    first = report(
        0, {"a": layer("a", ["sky", None], [0.3, 0.01]), "b": layer("b", ["tree"], [0.2])}
    )
    summary = summarise(first)
    writer = SummaryWriter(str(tmp_path))
    before = writer_threads()
    log_dissection(writer, first, summary)  # no runs given: opened and closed here
    writer.close()
    assert writer_threads() <= before
    runs = sorted(p.parent.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("events.out.*"))
    categories = ["material", "object", "part", "total"]
    assert runs == sorted(
        [".", "dissection/a", "dissection/b"] + [f"dissection/categories/{c}" for c in categories]
    )
    a = read(tmp_path / "dissection" / "a")
    assert a.Scalars("dissection/interpretable_units/total")[0].value == 1.0
    assert a.Scalars("dissection/mean_best_iou")[0].value == pytest.approx(0.155)
    objects = read(tmp_path / "dissection" / "categories" / "object")
    assert {t: objects.Scalars(t)[0].value for t in objects.Tags()["scalars"]} == {
        "dissection/a/interpretable_units": 1.0,  # sky
        "dissection/b/interpretable_units": 1.0,  # tree
    }


def report_with_examples(step: int) -> DissectionReport:
    g = torch.Generator().manual_seed(step)
    images = torch.rand(8, 3, 12, 12, generator=g) * 2 - 1
    layers = {"a": layer("a", ["sky", None, "tree", "sky"], [0.3, 0.01, 0.2, 0.25])}
    examples = [
        UnitExamples(u, images[2 * u : 2 * u + 2], images[2 * u : 2 * u + 2, 0] > 0)
        for u in range(4)
    ]
    return DissectionReport(
        layers,
        SCENE_VOCABULARY,
        8,
        0,
        "quantile",
        0.99,
        0.04,
        [],
        step=step,
        examples={"a": examples},
    )


def decoded_images(folder: Path) -> dict[tuple[str, int], np.ndarray]:
    events = read(folder)
    return {
        (tag, event.step): np.asarray(
            Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB")
        )
        for tag in events.Tags()["images"]
        for event in events.Images(tag)
    }


def test_log_dissection_stores_the_very_pixels_add_image_would(tmp_path: Path) -> None:
    history: list[dict] = []
    writer = SummaryWriter(str(tmp_path / "ours"))
    reference = SummaryWriter(str(tmp_path / "add_image"))
    for step in (0, 5):
        r = report_with_examples(step)
        history.append(summarise(r, history[-1] if history else None))
        log_dissection(writer, r, history[-1], history=history, timeline_units=3)
        # What log_dissection wrote before it encoded PNGs itself: add_image of float images.
        for page, gallery in enumerate(unit_galleries(r)["a"]):
            reference.add_image(f"dissection/a/gallery/{page}", gallery, step)
        chart = category_chart(r.layers["a"], SCENE_VOCABULARY).image()
        reference.add_image("dissection/a/unit_classes", chart, step)
        timeline = timeline_image(unit_timeline(history, "a", top_n=3))
        reference.add_image("dissection/a/unit_timeline", timeline, step)
    writer.close()
    reference.close()
    ours, theirs = decoded_images(tmp_path / "ours"), decoded_images(tmp_path / "add_image")
    assert sorted(ours) == sorted(theirs) and len(ours) == 2 * (2 + 1 + 1)  # 2 gallery pages
    for key, pixels in theirs.items():
        assert np.array_equal(ours[key], pixels), key
    events = read(tmp_path / "ours")
    stored = events.Images("dissection/a/gallery/0")[0]
    assert (stored.height, stored.width) == ours[("dissection/a/gallery/0", 0)].shape[:2]


class RecordingWriter:
    """Not a SummaryWriter: gets the float images through ``add_image``."""

    def __init__(self) -> None:
        self.images: dict[str, Tensor] = {}

    def add_image(self, tag: str, image: Tensor, global_step: int) -> None:
        self.images[tag] = image

    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        pass  # scalars, histograms, text: not looked at here

    add_histogram = add_text = add_custom_scalars = add_scalar


def test_log_dissection_gives_other_writers_the_float_images() -> None:
    r = report_with_examples(0)
    history = [summarise(r)]
    writer = RecordingWriter()
    log_dissection(writer, r, history[0], history=history, timeline_units=3)
    pages = unit_galleries(r)["a"]
    assert [t for t in writer.images if "/gallery/" in t] == [
        "dissection/a/gallery/0",
        "dissection/a/gallery/1",
    ]
    assert all(
        torch.equal(writer.images[f"dissection/a/gallery/{i}"], p) for i, p in enumerate(pages)
    )
    chart = category_chart(r.layers["a"], SCENE_VOCABULARY).image()
    assert torch.equal(writer.images["dissection/a/unit_classes"], chart)
    timeline = timeline_image(unit_timeline(history, "a", top_n=3))
    assert torch.equal(writer.images["dissection/a/unit_timeline"], timeline)


def test_a_summary_writer_with_its_own_add_image_gets_it_called(tmp_path: Path) -> None:
    class Watermarking(SummaryWriter):
        def add_image(
            self, tag: str, img_tensor: Any, global_step: Any = None, *args: Any, **kwargs: Any
        ) -> None:
            seen.append((tag, img_tensor.shape[0]))
            super().add_image(tag, img_tensor, global_step, *args, **kwargs)

    seen: list[tuple[str, int]] = []
    r = report_with_examples(0)
    writer = Watermarking(str(tmp_path))
    log_dissection(writer, r, summarise(r))
    writer.close()
    assert seen == [
        ("dissection/a/unit_classes", 3),
        ("dissection/a/gallery/0", 3),
        ("dissection/a/gallery/1", 3),
    ]


def test_log_intervention_writes_one_run_per_concept_and_labels_the_grid(tmp_path: Path) -> None:
    def numbers(removed: list[float], ace: float, units: list[int]) -> dict:
        curve = {"removed": removed, "random_mean": [0.1, 0.2], "points": [1, 5]}
        return {"removal": curve, "ace": {"ace": ace, "units": units}, "insertion": None}

    entry = {
        "step": 7,
        "layer": "g.l3",
        "concepts": {"tree": numbers([0.5, 0.9], 0.7, [4, 2]), "sun": None,
                     "cloud": numbers([0.2, 0.4], 0.1, [1])},
    }  # fmt: skip
    shots = {k: torch.zeros(2, 3, 16, 16) for k in ("original", "ablated", "inserted")}
    writer = SummaryWriter(str(tmp_path))
    runs = RunWriters()
    log_intervention(writer, entry, {"tree": shots}, runs=runs)
    assert len(runs) == 2  # the caller's: kept open for the next step
    runs.close()
    writer.close()
    main = intervention_scalars(entry, [1, 5])
    for concept in ("tree", "cloud"):
        events = read(tmp_path / "intervention" / concept)
        logged = {t: events.Scalars(t)[0] for t in events.Tags()["scalars"]}
        assert {e.step for e in logged.values()} == {7}
        expected = {
            t.replace(f"intervention/{concept}/", "intervention/"): v
            for t, v in main.items()
            if t.startswith(f"intervention/{concept}/")
        }
        assert {t: e.value for t, e in logged.items()} == pytest.approx(expected)
    assert not (tmp_path / "intervention" / "sun").exists()
    assert concept_run_scalars(entry)["intervention/tree"]["intervention/ace"] == 0.7
    assert "intervention/tree/images" in read(tmp_path).Tags()["images"]


def test_log_intervention_stores_the_very_pixels_add_image_would(tmp_path: Path) -> None:
    curve = {"removed": [0.5, 0.9], "random_mean": [0.1, 0.2], "points": [1, 5]}
    numbers = {"removal": curve, "ace": {"ace": 0.7, "units": [4, 2]}, "insertion": None}
    entry = {"step": 3, "layer": "g.l3", "concepts": {"tree": numbers}}
    g = torch.Generator().manual_seed(0)
    shots = {k: torch.rand(2, 3, 16, 16, generator=g) * 2 - 1 for k in ("original", "ablated")}
    shots["inserted"] = torch.zeros(2, 3, 16, 16)
    writer = SummaryWriter(str(tmp_path / "ours"))
    log_intervention(writer, entry, {"tree": shots})
    writer.close()
    # What log_intervention wrote before it encoded PNGs itself: add_image of float images.
    reference = SummaryWriter(str(tmp_path / "add_image"))
    chart = removal_chart("tree", numbers, "g.l3").image()
    reference.add_image("intervention/tree/removal_curve", chart, 3)
    reference.add_image("intervention/tree/images", intervention_grid(shots, units=[4, 2]), 3)
    reference.close()
    ours, theirs = decoded_images(tmp_path / "ours"), decoded_images(tmp_path / "add_image")
    tags = [("intervention/tree/images", 3), ("intervention/tree/removal_curve", 3)]
    assert sorted(ours) == sorted(theirs) == tags
    for key, pixels in theirs.items():
        assert np.array_equal(ours[key], pixels), key


def test_log_artifacts_stores_the_very_pixels_add_image_would(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    grids = {"before_after": torch.rand(3, 20, 30, generator=g) * 1.2 - 0.1}  # clipped too
    ablation = {"improvement_se": 0.5, "swd": [30.0], "swd_ablated": [28.0],
                "mean_improvement": -2.0, "seeds": [0, 1]}  # fmt: skip
    entry = {"step": 9, "ablation": ablation, "candidates": [2], "accepted": False,
             "pruned": [], "rolled_back": [], "pruned_units": [], "score_baseline": 1.0,
             "scores": [1.0, None, 2.5]}  # fmt: skip
    writer = SummaryWriter(str(tmp_path / "ours"))
    log_artifacts(writer, entry, layer="g.l3", prefix="artifacts", grids=grids)
    writer.close()
    reference = SummaryWriter(str(tmp_path / "add_image"))
    reference.add_image("artifacts/before_after", grids["before_after"], 9)
    reference.close()
    ours, theirs = decoded_images(tmp_path / "ours"), decoded_images(tmp_path / "add_image")
    key = ("artifacts/before_after", 9)
    assert sorted(ours) == sorted(theirs) == [key]
    assert np.array_equal(ours[key], theirs[key])


def test_image_log_refuses_what_is_not_rgb_pixels_when_it_is_given(tmp_path: Path) -> None:
    writer = SummaryWriter(str(tmp_path))
    with ImageLog(writer) as log:
        for bad in (np.zeros((4, 4, 1), np.uint8), np.zeros((4, 4, 3), np.float32)):
            with pytest.raises(ValueError, match=r"'views/x' as \[H, W, 3\] uint8 RGB pixels"):
                log.add("views/x", bad, 0)
    writer.close()


def test_image_log_lets_the_error_of_its_block_through(tmp_path: Path) -> None:
    writer = SummaryWriter(str(tmp_path))

    def failing_block() -> None:
        with ImageLog(writer) as log:
            log.add("views/ok", np.zeros((2, 2, 3), np.uint8), 0)
            assert log._encoder is not None
            broken = log._encoder.submit(int, "x")  # its encoding fails (ValueError)
            log._pending.append(("views/broken", (2, 2, 3), 0, broken))
            raise KeyError("the block's own")

    with pytest.raises(KeyError, match="the block's own"):
        failing_block()
    writer.close()


# --------------------------------------------------------------------------------- timeline


def history_of(steps_labels_ious: list[tuple[int, list[str | None], list[float]]]) -> list[dict]:
    history: list[dict] = []
    for step, labels, ious in steps_labels_ious:
        r = report(step, {"l": layer("l", labels, ious)})
        history.append(summarise(r, history[-1] if history else None))
    return history


def test_unit_timeline_is_the_history_of_the_best_units_by_latest_iou() -> None:
    history = history_of(
        [
            (0, [None, None, None], [0.01, 0.02, 0.0]),
            (500, ["sky", None, "tree"], [0.3, 0.03, 0.2]),
            (1000, ["sky", "sun", None], [0.1, 0.4, 0.02]),
        ]
    )
    timeline = unit_timeline(history, "l", top_n=2)
    assert timeline.steps == [0, 500, 1000]
    assert timeline.units == [1, 0]  # by IoU at step 1000: 0.4, 0.1
    assert timeline.labels == [[None, None, "sun"], [None, "sky", "sky"]]
    assert timeline.ious == [[0.02, 0.03, 0.4], [0.01, 0.3, 0.1]]
    assert timeline_markdown(timeline).splitlines() == [
        "| unit | step 0 | step 500 | step 1000 |",
        "|---:|:---|:---|:---|",
        f"| 1 | {NO_LABEL} 0.020 | {NO_LABEL} 0.030 | sun 0.400 |",
        f"| 0 | {NO_LABEL} 0.010 | sky 0.300 | sky 0.100 |",
    ]
    # Each cell is coloured by its IoU: viridis from 0 to the table's largest IoU.
    image = (timeline_image(timeline) * 255).round().to(torch.uint8).permute(1, 2, 0)
    colours = {tuple(c) for c in image.reshape(-1, 3).tolist()}
    viridis = colormaps["viridis"]
    for row in timeline.ious:
        for iou in row:
            assert tuple(round(255 * c) for c in viridis(iou / 0.4)[:3]) in colours
    assert unit_timeline(history, "l", max_steps=2).steps == [500, 1000]


def test_unit_timeline_of_an_old_history_without_ious_and_bad_arguments() -> None:
    history = [
        {"step": 0, "layers": {"l": {"labels": [None, "sky"]}}},
        {"step": 2, "layers": {"l": {"labels": ["tree", "sky"], "ious": [0.2, math.nan]}}},
    ]
    timeline = unit_timeline(history, "l")
    assert timeline.units == [0, 1]  # a NaN IoU ranks last
    assert timeline.ious == [[None, 0.2], [None, None]]
    assert "| 1 | sky | sky |" in timeline_markdown(timeline)
    grey = (timeline_image(timeline) * 255).round() == 204  # unknown IoUs: grey cells
    assert grey.all(dim=0).any()
    with pytest.raises(ValueError, match=r"dissection of layer 'm' in `history`.*\['l'\]"):
        unit_timeline(history, "m")
    with pytest.raises(ValueError, match=r"`top_n` to be an integer ≥ 1, but got 0"):
        unit_timeline(history, "l", top_n=0)


def test_a_run_folder_that_cannot_be_made_warns_and_gives_no_writer(tmp_path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    from gan_dissect_callbacks.reporting.writing import RunWriters

    parent = SummaryWriter(str(tmp_path))
    (tmp_path / "dissection").write_text("a file where the run folders should be")
    runs = RunWriters()
    with pytest.warns(UserWarning, match=r"Could not open the TensorBoard run .*dissection"):
        assert runs.writer(parent, "dissection/layer3") is None
    assert len(runs) == 0
    parent.close()
