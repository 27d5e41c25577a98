"""Measures on shared images equal the same measures taken one by one.

The callback measures every concept's removal curve on one stream of samples, only at the logged
unit counts, and the ACE with the insertion on the images they share; each must give the numbers
of the plain functions, which the brute-force references of ``test_intervention`` hold.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from gan_dissect_callbacks.engines.intervention import (
    ConceptAbsentError,
    ConceptEffects,
    NoInsertionSiteError,
    average_causal_effect,
    causal_effects,
    concept_effects,
    insertion_effect,
    insertion_values,
    patch_locations,
    removal_curve,
    removal_curves,
)
from gan_dissect_callbacks.engines.intervention._prepared import Originals, prepared
from gan_dissect_callbacks.segmenters.base import GroundTruthSegmenter
from tests.engines.test_intervention import (
    RED,
    H,
    Painter,
    W,
    all_latents,
    brute_removal,
    segmenter,
)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_removal_curve_at_points_is_the_full_curve_at_those_points() -> None:
    model, seg = Painter(), segmenter()
    full = removal_curve(model, "features", seg, "red", [0, 3, 1, 2], num_random=2, num_samples=9,
                         batch_size=4, seed=3)  # fmt: skip
    some = removal_curve(model, "features", seg, "red", [0, 3, 1, 2], num_random=2, num_samples=9,
                         batch_size=4, seed=3, points=[3, 1, 7])  # fmt: skip
    assert full.points == [1, 2, 3, 4]
    assert some.points == [1, 3, 4]  # 7 > N is left out; N itself always ends the curve
    z = all_latents(model, 9, 4, seed=3)
    reference = brute_removal(z, [0, 3, 1, 2], RED)
    assert some.removed == pytest.approx([reference[n - 1] for n in some.points], abs=1e-12)
    for name in ("removed", "net_removed", "random_mean"):
        at = [getattr(full, name)[n - 1] for n in some.points]
        assert getattr(some, name) == at, name
    assert some.random_units == full.random_units
    assert some.removed_at(3) == full.removed_at(3)
    with pytest.raises(ValueError, match=r"one of the curve's unit counts \[1, 3, 4\]"):
        some.removed_at(2)
    with pytest.raises(ValueError, match=r"`points` to be None or a list of ints ≥ 1"):
        removal_curve(model, "features", seg, "red", [0, 1], points=[0])


def test_removal_curves_of_several_concepts_equal_each_alone() -> None:
    model, seg = Painter(), segmenter()
    rankings = {"red": [0, 1, 3], "green": [2, 0, 4, 5], "never": [0, 1]}
    kw = {"max_units": 3, "num_random": 3, "num_samples": 7, "batch_size": 5, "seed": 2}
    shared = removal_curves(model, "features", seg, rankings, points=[1, 3], **kw)
    assert list(shared) == ["red", "green", "never"]
    for concept in ("red", "green"):
        alone = removal_curve(model, "features", seg, concept, rankings[concept], points=[1, 3],
                              **kw)  # fmt: skip
        assert shared[concept] == alone
    assert isinstance(shared["never"], ConceptAbsentError)
    with pytest.raises(ConceptAbsentError, match="'never' is absent"):
        removal_curve(model, "features", seg, "never", [0, 1], **kw)
    short = removal_curves(model, "features", seg, {"red": [0, 1], "green": [2, 0, 4]}, **kw)
    # A shorter ranking's random orders are prefixes of the longer one's.
    assert short["red"] == removal_curve(model, "features", seg, "red", [0, 1], **kw)
    assert short["green"].random_units[0][:2] == short["red"].random_units[0]


def test_causal_effects_equal_the_ace_and_the_insertion_effect() -> None:
    model, seg = Painter(), segmenter()
    places = patch_locations((H, W), 2)
    kw = {"num_samples": 8, "batch_size": 3, "seed": 1}
    k_all = insertion_values(model, "features", seg, "red", **kw)
    ace, insertion = causal_effects(model, "features", seg, "red", [0, 1], k_all, locations=places,
                                    absent_fraction=0.25, num_random=2, **kw)  # fmt: skip
    alone = average_causal_effect(model, "features", seg, "red", [0, 1], values=k_all[[0, 1]],
                                  locations=places, **kw)  # fmt: skip
    assert ace == alone
    expected = insertion_effect(model, "features", seg, "red", [0, 1], locations=places,
                                absent_fraction=0.25, num_random=2, **kw)  # fmt: skip
    assert not isinstance(insertion, NoInsertionSiteError)
    got, want = insertion.to_dict(), expected.to_dict()
    for name in ("fraction_gained", "pixels_gained", "fraction_before"):
        assert got.pop(name) == pytest.approx(want.pop(name), abs=1e-9), (
            name
        )  # summed in another order
    assert got.pop("random_fraction_gained") == pytest.approx(
        want.pop("random_fraction_gained"), abs=1e-9
    )
    assert got == want
    assert insertion.num_pairs == expected.num_pairs > 0


def test_causal_effects_hand_back_the_no_insertion_site_error() -> None:
    model, seg = Painter(), segmenter()
    k_all = insertion_values(model, "features", seg, "red", num_samples=4)
    # Red covers at least one pixel of the whole image in every sample, and no share is allowed.
    ace, insertion = causal_effects(model, "features", seg, "red", [0], k_all, locations=None,
                                    num_random=0, num_samples=4)  # fmt: skip
    assert isinstance(insertion, NoInsertionSiteError)
    assert ace == average_causal_effect(model, "features", seg, "red", [0], values=k_all[[0]],
                                        num_samples=4)  # fmt: skip


class CountingSegmenter(GroundTruthSegmenter):
    """The test segmenter, counting the images it segments."""

    def __init__(self) -> None:
        base = segmenter()
        super().__init__(base.vocabulary, base.segment, base.soft_segment)
        self.images = 0

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        self.images += int(images.shape[0])
        return super().segment(images)


RANKINGS = {"red": [0, 1, 3, 2], "green": [2, 0, 4, 5], "never": [0, 1]}


def one_by_one(seg: GroundTruthSegmenter, kw: dict[str, int]) -> dict[str, Any]:
    """What the callback measured before: the engine functions called concept by concept."""
    model, places = Painter(), patch_locations((H, W), 2)
    sampled = {k: kw[k] for k in ("num_samples", "batch_size", "seed")}
    curves = removal_curves(model, "features", seg, RANKINGS, max_units=3, num_random=2,
                            points=[1, 3], **sampled)  # fmt: skip
    out: dict[str, Any] = {}
    for concept, curve in curves.items():
        if isinstance(curve, ConceptAbsentError):
            out[concept] = curve
            continue
        k_all = insertion_values(model, "features", seg, concept, **sampled)
        ace, insertion = causal_effects(
            model, "features", seg, concept, RANKINGS[concept][:2], k_all, locations=places,
            absent_fraction=0.25, num_random=1, locations_per_sample=2, **sampled,
        )  # fmt: skip
        out[concept] = (curve, k_all, ace, insertion)
    return out


@pytest.mark.parametrize("batch_size", [16, 3])  # originals held in memory / generated per pass
def test_concept_effects_equal_the_measures_one_by_one_exactly(batch_size: int) -> None:
    kw = {"num_samples": 8, "batch_size": batch_size, "seed": 4}
    shared = concept_effects(
        Painter(), "features", segmenter(), RANKINGS, locations=patch_locations((H, W), 2),
        top_n=2, max_units=3, num_random=2, points=[1, 3], absent_fraction=0.25,
        insertion_random=1, locations_per_sample=2, **kw,
    )  # fmt: skip
    alone = one_by_one(segmenter(), kw)
    assert list(shared) == list(RANKINGS)
    assert isinstance(shared["never"], ConceptAbsentError)
    assert str(shared["never"]) == str(alone["never"])
    for concept in ("red", "green"):
        got = shared[concept]
        assert isinstance(got, ConceptEffects)
        curve, k_all, ace, insertion = alone[concept]
        assert got.removal == curve
        assert torch.equal(got.values, k_all)
        assert got.ace == ace
        assert got.insertion == insertion  # the same images, in the same chunks: bit for bit


def test_concept_effects_segment_each_original_once() -> None:
    """Every unedited sample is segmented once for all concepts and measures; the edits alike."""
    num_samples = 8
    kw = {"num_samples": num_samples, "batch_size": 16, "seed": 4}
    shared_seg, alone_seg = CountingSegmenter(), CountingSegmenter()
    concept_effects(
        Painter(), "features", shared_seg, RANKINGS, locations=patch_locations((H, W), 2),
        top_n=2, max_units=3, num_random=2, points=[1, 3], absent_fraction=0.25,
        insertion_random=1, locations_per_sample=2, **kw,
    )  # fmt: skip
    before = alone_seg.images
    one_by_one(alone_seg, kw)
    measured = 2  # red and green; "never" is absent, as for the callback
    # One by one, insertion_values and causal_effects segment the originals again per concept.
    assert alone_seg.images - before - shared_seg.images == 2 * measured * num_samples


def test_originals_give_a_process_its_rows_of_a_held_batch() -> None:
    model, seg = Painter(), segmenter()
    with prepared(model, "features", seg, "red", seed=2) as s:
        originals = Originals(s, num_samples=6, batch_size=6)
        whole = next(iter(s.generator.samples(6, 6, seed=2)))
        held, held_maps = originals.of(whole)
        (share,) = list(s.generator.samples(6, 6, seed=2, rank=1, world_size=2))
        rows, maps = originals.of(share)
        fresh = seg.segment(s.images(share.latents))
    assert share.indices.tolist() == [1, 3, 5]
    assert torch.equal(rows, held[[1, 3, 5]]) and torch.equal(rows, fresh)
    assert torch.equal(maps, held_maps[[1, 3, 5]])
    assert torch.equal(maps, share.latents.view(3, 6, H, W))


def _concept_effects_of(batch_size: int) -> dict[str, Any]:
    effects = concept_effects(
        Painter(), "features", segmenter(), RANKINGS, locations=patch_locations((H, W), 2),
        top_n=2, max_units=3, num_random=2, points=[1, 3], absent_fraction=0.25,
        insertion_random=1, locations_per_sample=2, num_samples=7, seed=4, batch_size=batch_size,
    )  # fmt: skip
    out: dict[str, Any] = {}
    for concept, got in effects.items():
        if isinstance(got, ConceptEffects):
            insertion = got.insertion
            out[concept] = {
                "removal": got.removal.to_dict(),
                "values": got.values.tolist(),
                "ace": got.ace.to_dict(),
                "insertion": None if isinstance(insertion, Exception) else insertion.to_dict(),
            }
        else:
            out[concept] = type(got).__name__
    return out


def _distributed_worker(rank: int, world: int, port: int, out: str, batch_size: int) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = _concept_effects_of(batch_size=batch_size)
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [8, 3])  # a process's rows of held originals / its own
def test_concept_effects_on_two_processes_equal_one(batch_size: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.pt")
        port = 29600 + (os.getpid() + batch_size) % 1000
        mp.spawn(_distributed_worker, args=(2, port, out, batch_size), nprocs=2, join=True)
        split = torch.load(out, weights_only=False)
    alone = _concept_effects_of(batch_size=batch_size)
    assert split["never"] == alone["never"] == "ConceptAbsentError"
    for concept in ("red", "green"):
        got, want = split[concept], alone[concept]
        assert got["removal"] == want["removal"]  # integer counts: exactly equal
        assert got["values"] == want["values"]  # every process computes k on every sample
        for measure in ("ace", "insertion"):
            for name, value in want[measure].items():
                if isinstance(value, float):
                    assert got[measure][name] == pytest.approx(value, abs=1e-9), (measure, name)
                else:
                    assert got[measure][name] == value, (measure, name)
