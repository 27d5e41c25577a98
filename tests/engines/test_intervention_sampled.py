"""The ACE and the insertion at a seeded subset of the locations of each sample.

``causal_effects(..., locations_per_sample=m)`` edits each sample at m of the L locations, drawn
by :func:`sampled_locations` from the seed and the sample's index. The references below edit the
``Painter``'s featuremap pair by pair at exactly those pairs, and the subset must not depend on
how samples are batched or split across processes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import Tensor

from gan_dissect_callbacks.engines.intervention import (
    ACEResult,
    InsertionResult,
    NoInsertionSiteError,
    causal_effects,
    insertion_values,
    patch_locations,
)
from gan_dissect_callbacks.engines.intervention.effects import sampled_locations
from tests.engines.test_intervention import (
    RED,
    H,
    Painter,
    W,
    all_latents,
    concept_mask,
    featuremap,
    segmenter,
    upsample_region,
)

ABSENT = 0.25


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _effects(
    m: int | None, *, num_samples: int = 8, batch_size: int = 3, seed: int = 1
) -> tuple[ACEResult, InsertionResult, Tensor]:
    model, seg = Painter(), segmenter()
    kw = {"num_samples": num_samples, "batch_size": batch_size, "seed": seed}
    k_all = insertion_values(model, "features", seg, "red", **kw)
    ace, insertion = causal_effects(
        model, "features", seg, "red", [0, 1], k_all, locations=patch_locations((H, W), 1),
        absent_fraction=ABSENT, num_random=2, locations_per_sample=m, **kw,
    )  # fmt: skip
    assert not isinstance(insertion, NoInsertionSiteError)
    return ace, insertion, k_all


def _brute(z: Tensor, measured: Tensor, units: list[int], k: list[float]) -> dict[str, float]:
    """ACE sums and insertion sums over the measured (sample, P) pairs, one edit at a time."""
    places = patch_locations((H, W), 1)
    out = dict.fromkeys(["inserted", "ablated", "original", "gained", "before"], 0.0)
    pairs = absent = 0
    for i in range(z.shape[0]):
        for p_index in measured[i].nonzero().flatten().tolist():
            p = places[p_index]
            region = upsample_region(p)
            original = concept_mask(featuremap(z[i]), RED)[region]
            r_i, r_a = featuremap(z[i]), featuremap(z[i])
            for u, value in zip(units, k):
                r_i[u][p] = value
                r_a[u][p] = 0.0
            after = concept_mask(r_i, RED)[region]
            out["inserted"] += after.float().mean().item()
            out["ablated"] += concept_mask(r_a, RED)[region].float().mean().item()
            out["original"] += original.float().mean().item()
            pairs += 1
            if original.float().mean() <= ABSENT:
                out["gained"] += (after.sum() - original.sum()).item() / region.sum().item()
                out["before"] += original.float().mean().item()
                absent += 1
    return {
        "inserted": out["inserted"] / pairs,
        "ablated": out["ablated"] / pairs,
        "original": out["original"] / pairs,
        "fraction_gained": out["gained"] / absent,
        "fraction_before": out["before"] / absent,
        "pairs": pairs,
        "absent": absent,
    }


def test_sampled_locations_are_distinct_seeded_per_sample_and_balanced() -> None:
    whole = sampled_locations(torch.arange(400), 16, 4, seed=3)
    assert whole.dtype == torch.bool and whole.shape == (400, 16)
    assert whole.sum(1).eq(4).all()  # m distinct locations per sample
    # A sample's subset depends on its index alone: any batch, any process, any order.
    for indices in ([5, 6, 7], [399, 0], list(range(1, 400, 2))):
        assert torch.equal(sampled_locations(torch.tensor(indices), 16, 4, seed=3), whole[indices])
    assert not torch.equal(sampled_locations(torch.arange(400), 16, 4, seed=4), whole)
    # Each group of 16 / 4 consecutive samples covers every location exactly once.
    assert whole.view(100, 4, 16).sum(1).eq(1).all()
    # Uniform per sample: over the 100 groups, sample 0 of its group sees each location ~25 times.
    first = whole.view(100, 4, 16)[:, 0].sum(0)
    assert first.sum() == 400 and first.min() >= 10 and first.max() <= 40
    # L not a multiple of m: 3 samples of 3 per group, 9 of 10 locations covered, none twice.
    odd = sampled_locations(torch.arange(30), 10, 3, seed=0)
    assert odd.sum(1).eq(3).all() and odd.view(10, 3, 10).sum(1).le(1).all()
    assert sampled_locations(torch.arange(3), 16, None, seed=3).all()
    assert sampled_locations(torch.arange(3), 16, 16, seed=3).all()
    assert sampled_locations(torch.arange(3), 16, 40, seed=3).all()


def test_every_location_gives_exactly_the_numbers_of_no_subset() -> None:
    ace, insertion, _ = _effects(None)
    for m in (16, 99):  # m ≥ L measures every pair, in the same order
        ace_m, insertion_m, _ = _effects(m)
        assert ace_m == ace
        assert insertion_m == insertion


@pytest.mark.parametrize("batch_size", [2, 5, 8])
def test_subset_estimator_equals_brute_force_over_the_chosen_pairs(batch_size: int) -> None:
    m, num_samples, seed = 3, 8, 1
    ace, insertion, k_all = _effects(m, num_samples=num_samples, batch_size=batch_size, seed=seed)
    z = all_latents(Painter(), num_samples, batch_size, seed)
    measured = sampled_locations(torch.arange(num_samples), H * W, m, seed)
    want = _brute(z, measured, [0, 1], insertion.values)
    assert ace.inserted == pytest.approx(want["inserted"], abs=1e-9)
    assert ace.ablated == pytest.approx(want["ablated"], abs=1e-9)
    assert ace.original == pytest.approx(want["original"], abs=1e-9)
    assert ace.ace == pytest.approx(want["inserted"] - want["ablated"], abs=1e-9)
    assert ace.num_locations == H * W
    assert insertion.num_candidates == num_samples * m == want["pairs"]
    assert insertion.num_pairs == want["absent"] > 0
    assert insertion.fraction_gained == pytest.approx(want["fraction_gained"], abs=1e-9)
    assert insertion.fraction_before == pytest.approx(want["fraction_before"], abs=1e-9)
    for units, gained in zip(insertion.random_units, insertion.random_fraction_gained):
        baseline = _brute(z, measured, units, k_all[units].tolist())
        assert gained == pytest.approx(baseline["fraction_gained"], abs=1e-6)


def test_subset_numbers_do_not_depend_on_the_batch_size() -> None:
    # The Painter's latents are one standard-normal stream, the same in any batching.
    ace, insertion, _ = _effects(3, batch_size=8)
    for batch_size in (1, 3):
        ace_b, insertion_b, _ = _effects(3, batch_size=batch_size)
        assert ace_b.ace == pytest.approx(ace.ace, abs=1e-9)
        assert insertion_b.num_pairs == insertion.num_pairs
        assert insertion_b.fraction_gained == pytest.approx(insertion.fraction_gained, abs=1e-9)


def test_a_bad_locations_per_sample_names_the_argument() -> None:
    model, seg = Painter(), segmenter()
    with pytest.raises(ValueError, match=r"`locations_per_sample` to be None or an int ≥ 1"):
        causal_effects(model, "features", seg, "red", [0], [1.0] * 6,
                       locations=patch_locations((H, W), 1), locations_per_sample=0)  # fmt: skip


def _distributed_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ace, insertion, _ = _effects(3, num_samples=7, batch_size=2)
        if rank == 0:
            torch.save({"ace": ace.to_dict(), "ins": insertion.to_dict()}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_measure_the_pairs_of_one() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.pt")
        port = 29500 + (os.getpid() + 500) % 1000
        mp.spawn(_distributed_worker, args=(2, port, out), nprocs=2, join=True)
        split = torch.load(out, weights_only=False)
    ace, insertion, _ = _effects(3, num_samples=7, batch_size=2)
    assert split["ace"]["ace"] == pytest.approx(ace.ace, abs=1e-9)
    assert split["ace"]["original"] == pytest.approx(ace.original, abs=1e-9)
    assert split["ins"]["num_pairs"] == insertion.num_pairs
    assert split["ins"]["num_candidates"] == insertion.num_candidates == 7 * 3
    assert split["ins"]["fraction_gained"] == pytest.approx(insertion.fraction_gained, abs=1e-9)
