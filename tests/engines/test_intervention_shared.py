"""Measures on shared images equal the same measures taken one by one.

The callback measures every concept's removal curve on one stream of samples, only at the logged
unit counts, and the ACE with the insertion on the images they share; each must give the numbers
of the plain functions, which the brute-force references of ``test_intervention`` hold.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from gan_dissect_callbacks.engines.intervention import (
    ConceptAbsentError,
    NoInsertionSiteError,
    average_causal_effect,
    causal_effects,
    insertion_effect,
    insertion_values,
    patch_locations,
    removal_curve,
    removal_curves,
)
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
