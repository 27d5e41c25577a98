"""The ACE and the insertion effect of one set of units, and every measure of several concepts.

:func:`average_causal_effect` inserts the units at every (sample, location P) pair and
:func:`insertion_effect` inserts the same units, at the same k, at the pairs where the concept was
absent: those images are the same. :func:`causal_effects` generates and segments them once, with
the originals, and gives both results. It may also measure, per sample, a seeded random subset of
the locations (:func:`sampled_locations`): P is drawn uniformly and independently of z, so the
mean over those pairs estimates the same δ and the same insertion fractions without bias, and
groups of samples cover the locations evenly, which keeps its noise near the full grid's.

:func:`concept_effects` serves the callback: the removal curves, the insertion values k, the ACE
and the insertion of several concepts from one generation and segmentation of the unedited
samples (:class:`~._prepared.Originals`), with the numbers of the functions called one by one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
from torch import Tensor

from gan_dissect_callbacks.arguments import check_fraction, check_int
from gan_dissect_callbacks.engines.distributed import all_reduce_sum, dist_info
from gan_dissect_callbacks.engines.generator import GeneratorLike
from gan_dissect_callbacks.engines.intervention._prepared import (
    Originals,
    PreparedAnalysis,
    check_values,
    chunks,
    full_vector,
    prepared,
    region_means,
)
from gan_dissect_callbacks.engines.intervention.ace import ace_result, inserted_then_ablated
from gan_dissect_callbacks.engines.intervention.insertion import (
    insertion_result,
    insertion_sets,
    insertion_stats,
)
from gan_dissect_callbacks.engines.intervention.removal import (
    check_points,
    removal_counts,
    removal_plan,
    removal_results,
)
from gan_dissect_callbacks.engines.intervention.results import (
    ACEResult,
    ConceptAbsentError,
    ConceptEffects,
    InsertionResult,
    NoInsertionSiteError,
    absent_error,
)
from gan_dissect_callbacks.engines.intervention.values import concept_mean_values
from gan_dissect_callbacks.instrumentation import UnitEdit
from gan_dissect_callbacks.segmenters.base import Segmenter

__all__ = ["causal_effects", "concept_effects", "sampled_locations"]


def causal_effects(
    generator: GeneratorLike,
    layer: str,
    segmenter: Segmenter,
    concept: str,
    units: Sequence[int] | Tensor,
    values: Sequence[float] | Tensor,
    *,
    locations: Tensor,
    absent_fraction: float = 0.0,
    num_random: int = 1,
    num_samples: int = 64,
    batch_size: int = 32,
    seed: int = 0,
    locations_per_sample: int | None = None,
) -> tuple[ACEResult, InsertionResult | NoInsertionSiteError]:
    """The region ACE of ``units`` and their insertion effect, at the same locations and k.

    The results equal those of ``average_causal_effect(..., values=values[units],
    locations=locations)`` (hard masks, measured inside the edited region) and of
    ``insertion_effect(..., locations=locations)`` when ``values`` are every unit's
    :func:`insertion_values` (sums of floats may differ in their last bits, in another order).
    Each sample is generated and segmented once as is; each (sample, P) pair once inserted and
    once ablated; the random baseline's insertions are the only images of their own.

    Args:
        generator: the generator under analysis.
        layer: dotted name of a layer with ``[B, U, h, w]`` output.
        segmenter: gives the concept masks of generated images.
        concept: the concept, a name of the segmenter's vocabulary.
        units: the units U to ablate and insert.
        values: k of every unit of the layer ``[U]`` (the random baseline inserts its units at
            theirs).
        locations: the pixels P, ``[h, w]`` or ``[L, h, w]``, at the featuremap resolution.
        absent_fraction: the largest share of the concept a region may hold to count as absent.
        num_random: random unit sets of the insertion's baseline (0: none).
        num_samples: latents drawn (split across processes).
        batch_size: images per forward pass.
        seed: seed of the latents, of the random units and of the sampled locations.
        locations_per_sample: m, how many of the L locations each sample is edited at: a seeded
            uniform subset per sample, groups of samples covering the locations evenly
            (:func:`sampled_locations`), the same whatever ``batch_size`` or the number of
            processes. ``None`` (or m ≥ L): every location. Both estimate the same δ and
            fractions; m < L edits about m/L of the images, for a somewhat noisier estimate.

    Returns:
        The :class:`ACEResult`, and the :class:`InsertionResult` or, when the concept covers every
        location of every sample, the :class:`NoInsertionSiteError` ``insertion_effect`` raises.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from gan_dissect_callbacks.segmenters.base import GroundTruthSegmenter
        >>> from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary
        >>> net = nn.Sequential(nn.Unflatten(1, (3, 2, 2)), nn.Tanh())  # unit c paints channel c
        >>> net.latent_dim = 12
        >>> seg = GroundTruthSegmenter(ConceptVocabulary.from_pairs([("lit", "color")]),
        ...                            lambda x: x[:, :1] > 0)
        >>> corner = torch.tensor([[True, False], [False, False]])
        >>> ace, insertion = causal_effects(net, "0", seg, "lit", [0], [1.0, 1.0, 1.0],
        ...                                 locations=corner, num_random=0, num_samples=8)
        >>> ace.ace, insertion.fraction_gained
        (1.0, 1.0)
    """
    absent_fraction = check_fraction(absent_fraction, "absent_fraction", closed_low=True)
    num_random = check_int(num_random, "num_random", minimum=0)
    num_samples = check_int(num_samples, "num_samples")
    batch_size = check_int(batch_size, "batch_size")
    per_sample = check_int(locations_per_sample, "locations_per_sample", optional=True)
    with prepared(generator, layer, segmenter, concept, seed=seed) as s:
        index = s.units(units)
        places = s.locations(locations)
        every = check_values(values, s.num_units, "values")
        k = every[index]
        random_units, sets = insertion_sets(s, index, k, every, num_random, seed)
        originals = Originals(s, num_samples=num_samples, batch_size=batch_size)
        totals, sums = _effect_sums(
            s, index, k, sets, places, float(absent_fraction), num_samples, batch_size, seed,
            per_sample, originals,
        )  # fmt: skip
    return _ace_and_insertion(
        layer, concept, index, k, random_units, totals, sums, int(places.shape[0]),
        float(absent_fraction), num_samples,
    )  # fmt: skip


def _ace_and_insertion(
    layer: str, concept: str, index: Tensor, k: Tensor, random_units: list[Tensor],
    totals: Tensor, sums: Tensor, num_places: int, absent_fraction: float, num_samples: int,
) -> tuple[ACEResult, InsertionResult | NoInsertionSiteError]:  # fmt: skip
    """The ACE and the insertion effect from this process's sums, merged over processes."""
    totals, sums = all_reduce_sum(totals), all_reduce_sum(sums)
    ace = ace_result(
        layer, concept, index, k, totals, num_samples, num_places, measure="region", soft=False
    )
    try:
        insertion: InsertionResult | NoInsertionSiteError = insertion_result(
            layer, concept, index, k, random_units, sums, absent_fraction, num_samples
        )
    except NoInsertionSiteError as err:
        insertion = err
    return ace, insertion


def concept_effects(
    generator: GeneratorLike,
    layer: str,
    segmenter: Segmenter,
    rankings: Mapping[str, Sequence[int] | Tensor],
    *,
    locations: Tensor,
    top_n: int = 4,
    max_units: int = 20,
    num_random: int = 3,
    points: Sequence[int] | None = None,
    absent_fraction: float = 0.0,
    insertion_random: int = 1,
    locations_per_sample: int | None = None,
    num_samples: int = 64,
    batch_size: int = 32,
    seed: int = 0,
) -> dict[str, ConceptEffects | ConceptAbsentError]:
    """Every measure of several concepts, each by its own ranking, on the images they share.

    Per concept, the numbers are those of the functions called one by one:
    ``removal_curves(..., rankings, max_units=max_units, num_random=num_random, points=points)``,
    ``k = insertion_values(..., concept)`` and ``causal_effects(..., concept,
    ranking[:top_n], k, locations=locations, num_random=insertion_random,
    locations_per_sample=locations_per_sample)``, on the same seeded samples. The unedited
    samples are generated and segmented once for all of them (held in memory when they fit one
    batch, see :class:`~._prepared.Originals`), and the random removal orders are shared by
    every concept; only the edited images are each concept's own.

    Args:
        generator: the generator under analysis.
        layer: dotted name of a layer with ``[B, U, h, w]`` output.
        segmenter: gives the concept masks of generated images.
        rankings: per concept (a name of the segmenter's vocabulary), its units, best first.
        locations: the pixels P of the ACE and the insertion, ``[h, w]`` or ``[L, h, w]``.
        top_n: how many of a ranking's first units the ACE and the insertion edit.
        max_units: N, the most units ablated for a removal curve.
        num_random: random orders of the removal curves' baseline (0: none).
        points: the unit counts n of the removal curves (see :func:`removal_curves`).
        absent_fraction: the largest share of the concept a region may hold to count as absent.
        insertion_random: random unit sets of the insertion's baseline (0: none).
        locations_per_sample: m, the locations each sample is edited at for the ACE and the
            insertion (see :func:`causal_effects`); ``None``: every location.
        num_samples: latents drawn (split across processes; the k on every process).
        batch_size: images per forward pass.
        seed: seed of the latents, of the random units and of the sampled locations.

    Returns:
        Per concept, in the order of ``rankings``, its :class:`ConceptEffects`, or the
        :class:`ConceptAbsentError` of a concept absent from every sample.

    Raises:
        ValueError: no concept, unknown layer or concept, ranked units out of range or
            repeated, bad points, locations or sizes.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from gan_dissect_callbacks.segmenters.base import GroundTruthSegmenter
        >>> from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary
        >>> net = nn.Sequential(nn.Unflatten(1, (3, 2, 2)), nn.Tanh())  # unit c paints channel c
        >>> net.latent_dim = 12
        >>> vocab = ConceptVocabulary.from_pairs([("red", "color"), ("green", "color")])
        >>> seg = GroundTruthSegmenter(vocab, lambda x: x[:, :2] > 0)
        >>> corner = torch.tensor([[True, False], [False, False]])
        >>> effects = concept_effects(net, "0", seg, {"red": [0, 1], "green": [1, 0]},
        ...                           locations=corner, top_n=1, num_random=0,
        ...                           insertion_random=0, num_samples=8)
        >>> effects["red"].removal.removed, effects["green"].ace.ace
        ([1.0, 1.0], 1.0)
    """
    top_n = check_int(top_n, "top_n")
    max_units = check_int(max_units, "max_units")
    num_random = check_int(num_random, "num_random", minimum=0)
    absent_fraction = check_fraction(absent_fraction, "absent_fraction", closed_low=True)
    insertion_random = check_int(insertion_random, "insertion_random", minimum=0)
    per_sample = check_int(locations_per_sample, "locations_per_sample", optional=True)
    num_samples = check_int(num_samples, "num_samples")
    batch_size = check_int(batch_size, "batch_size")
    wanted = check_points(points)
    if not rankings:
        raise ValueError("Expected argument `rankings` to name at least one concept, but got none.")
    concepts = list(rankings)
    measured: dict[str, tuple[Tensor, Tensor, Tensor, list[Tensor], Tensor, Tensor]] = {}
    with prepared(generator, layer, segmenter, concepts[0], seed=seed) as s:
        places = s.locations(locations)
        plan = removal_plan(s, rankings, max_units, num_random, wanted, seed)
        tops = {c: s.units(rankings[c], "ranking")[:top_n] for c in concepts}
        originals = Originals(s, num_samples=num_samples, batch_size=batch_size)
        values = concept_mean_values(s, plan.channels, originals, num_samples, batch_size, seed)
        counts = removal_counts(s, plan, originals, num_samples, batch_size, seed)
        for concept, channel, k_every in zip(concepts, plan.channels, values, strict=True):
            if k_every is None:  # absent from every sample, on every process alike
                continue
            c = replace(s, concept=concept, concept_index=channel)
            every = k_every.double()
            index = tops[concept]
            k = every[index]
            random_units, sets = insertion_sets(c, index, k, every, insertion_random, seed)
            totals, sums = _effect_sums(
                c, index, k, sets, places, float(absent_fraction), num_samples, batch_size,
                seed, per_sample, originals,
            )  # fmt: skip
            measured[concept] = (k_every, index, k, random_units, totals, sums)
    curves = removal_results(layer, plan, all_reduce_sum(counts), num_samples, seed)
    results: dict[str, ConceptEffects | ConceptAbsentError] = {}
    for concept in concepts:
        curve = curves[concept]
        if isinstance(curve, ConceptAbsentError) or concept not in measured:
            # Both are decided alike on every process: no process enters a sum the others skip.
            results[concept] = (
                curve
                if isinstance(curve, ConceptAbsentError)
                else absent_error(concept, num_samples, "its concept-weighted insertion value")
            )
            if concept in measured:
                all_reduce_sum(measured[concept][4])
                all_reduce_sum(measured[concept][5])
            continue
        k_every, index, k, random_units, totals, sums = measured[concept]
        ace, insertion = _ace_and_insertion(
            layer, concept, index, k, random_units, totals, sums, int(places.shape[0]),
            float(absent_fraction), num_samples,
        )  # fmt: skip
        results[concept] = ConceptEffects(curve, k_every, ace, insertion)
    return results


def _effect_sums(
    s: PreparedAnalysis,
    units: Tensor,
    k: Tensor,
    sets: list[tuple[Tensor, Tensor]],
    places: Tensor,
    absent_fraction: float,
    num_samples: int,
    batch_size: int,
    seed: int,
    per_sample: int | None,
    originals: Originals,
) -> tuple[Tensor, Tensor]:
    """The ACE's ``[Σ s_c(x_i), Σ s_c(x_a), Σ s_c(x), pairs]`` and the insertion's sums.

    The insertion's sums (``[sets, 5]``, see ``insertion_stats``) count the first set, the units
    themselves, from the ACE's inserted images. Every sum and count runs over the measured
    (sample, P) pairs only.
    """
    device = s.device
    rank, world = dist_info()
    selected = torch.zeros(s.num_units)
    selected[units] = 1.0
    k_full = full_vector(units, k, s.num_units).float()
    alphas = torch.zeros(len(sets), s.num_units)
    values = torch.zeros(len(sets), s.num_units)
    for j, (set_units, set_k) in enumerate(sets):
        alphas[j, set_units] = 1.0
        values[j] = full_vector(set_units, set_k, s.num_units).float()
    alphas, values = alphas.to(device), values.to(device)
    where_all = places.to(device)
    weights = s.regions(places)  # [L, S, S'], the ACE's region weights
    regions = weights > 0
    region_size = regions.sum((1, 2)).float()
    num_places = places.shape[0]
    totals = torch.zeros(4, dtype=torch.float64)
    sums = torch.zeros(len(sets), 5, dtype=torch.float64)
    pairs_per_pass = max(1, batch_size // 2)  # an inserted and an ablated image per pair
    for batch in s.generator.samples(
        num_samples, batch_size, seed=seed, rank=rank, world_size=world
    ):
        z = batch.latents
        measured = sampled_locations(batch.indices, num_places, per_sample, seed)  # [B, L]
        count = int(measured.sum().item())
        on = measured.to(device)
        original = originals.of(batch)[0][:, s.concept_index].float()  # [B, S, S'], 0 or 1
        weighted = torch.einsum("bst,lst->bl", original, weights)
        totals[2] += (weighted / weights.sum((1, 2)))[on].sum().double().cpu()
        inside = torch.einsum("bst,lst->bl", original, regions.float())  # [B, L]
        eligible = (inside / region_size <= absent_fraction) & on
        sums[:, 4] += count
        sums[:, 3] += int(eligible.sum().item())
        # Location-major, as every pair of every sample was measured before subsets existed.
        place_of, sample_of = measured.t().nonzero().unbind(1)
        for part in chunks(place_of.numel(), pairs_per_pass):
            p, i = place_of[part], sample_of[part]
            n = p.numel()
            scores = inserted_then_ablated(s, z, i, p, selected, k_full, where_all)
            means = region_means(scores, weights[p.to(device)].repeat(2, 1, 1))
            totals[0] += means[:n].sum().double().cpu()
            totals[1] += means[n:].sum().double().cpu()
            absent = eligible[i.to(device), p.to(device)]
            if bool(absent.any()):
                ii, pp = i.to(device)[absent], p.to(device)[absent]
                after = scores[:n][absent] > 0.5
                sums[0, :3] += insertion_stats(after, ii, pp, inside, regions, region_size).sum(0)
        totals[3] += count
        pairs = eligible.nonzero()  # [(sample, location)]
        rows = torch.arange(1, len(sets)).repeat_interleave(pairs.shape[0]).to(device)
        pair_rows = pairs.repeat(len(sets) - 1, 1)
        for part in chunks(rows.numel(), batch_size):
            which = rows[part]
            i, p = pair_rows[part].unbind(1)
            edit = UnitEdit(alpha=alphas[which], value=values[which], where=where_all[p])
            after = s.concept_scores(s.images(z[i.to(z.device)], edit)) > 0.5
            stats = insertion_stats(after, i, p, inside, regions, region_size)
            sums[:, :3].index_add_(0, which.cpu(), stats)
    return totals, sums


def sampled_locations(
    indices: Tensor, num_locations: int, per_sample: int | None, seed: int
) -> Tensor:
    """``[B, L]`` bool: the locations measured for each global sample index.

    Samples go in groups of ``L // per_sample`` consecutive indices; a group shares one uniformly
    random permutation of the L locations, seeded by ``seed`` and the group alone, and its r-th
    sample takes the r-th run of ``per_sample`` of it. Each sample's subset is thus uniform (the
    estimate stays unbiased), while a group covers its locations evenly, as the full grid does,
    so no location is measured by chance more than another. The subset depends on the index
    alone: it is the same in any batch and on any process. ``None``, or at least
    ``num_locations``, measures every location.

    Example:
        >>> subset = sampled_locations(torch.arange(8), 16, 4, seed=0)
        >>> subset.sum(1).tolist()
        [4, 4, 4, 4, 4, 4, 4, 4]
        >>> subset[:4].sum(0).tolist() == [1] * 16  # one group covers every location once
        True
        >>> torch.equal(subset[5:], sampled_locations(torch.tensor([5, 6, 7]), 16, 4, seed=0))
        True
        >>> bool(sampled_locations(torch.arange(2), 16, None, seed=0).all())
        True
    """
    b = int(indices.numel())
    if per_sample is None or per_sample >= num_locations:
        return torch.ones(b, num_locations, dtype=torch.bool)
    per_group = num_locations // per_sample
    measured = torch.zeros(b, num_locations, dtype=torch.bool)
    orders: dict[int, Tensor] = {}
    for row, i in enumerate(indices.tolist()):
        group, r = divmod(int(i), per_group)
        if group not in orders:
            # A stream of its own per (seed, group): the same wherever its samples are drawn.
            draws = torch.Generator().manual_seed(_mix(seed, group))
            orders[group] = torch.randperm(num_locations, generator=draws)
        measured[row, orders[group][r * per_sample : (r + 1) * per_sample]] = True
    return measured


def _mix(seed: int, group: int) -> int:
    """A 63-bit seed of ``(seed, group)``, apart from the latents' stream of ``seed``."""
    return (seed * 0x9E3779B97F4A7C15 + (group + 1) * 0xBF58476D1CE4E5B9) % (1 << 63)
