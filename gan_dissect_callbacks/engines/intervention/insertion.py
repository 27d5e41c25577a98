"""Insertion where a concept is absent: the concept's pixels gained at the edited place."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from gan_dissect_callbacks.arguments import check_fraction, check_int
from gan_dissect_callbacks.engines.distributed import all_reduce_sum, dist_info
from gan_dissect_callbacks.engines.generator import GeneratorLike
from gan_dissect_callbacks.engines.intervention._prepared import (
    PreparedAnalysis,
    chunks,
    full_vector,
    prepared,
)
from gan_dissect_callbacks.engines.intervention.ranking import patch_locations
from gan_dissect_callbacks.engines.intervention.results import (
    InsertionResult,
    NoInsertionSiteError,
)
from gan_dissect_callbacks.engines.intervention.values import resolve_values, unit_values
from gan_dissect_callbacks.instrumentation import UnitEdit
from gan_dissect_callbacks.segmenters.base import Segmenter

__all__ = ["insertion_effect"]


def insertion_effect(
    generator: GeneratorLike,
    layer: str,
    segmenter: Segmenter,
    concept: str,
    units: Sequence[int] | Tensor,
    *,
    values: float | Sequence[float] | Tensor | None = None,
    locations: Tensor | None = None,
    absent_fraction: float = 0.0,
    num_random: int = 1,
    num_samples: int = 64,
    batch_size: int = 32,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> InsertionResult:
    """Insert ``units`` at locations where ``concept`` is absent; measure the pixels gained there.

    For every sample and location P, the pair is measured when P↑ held at most
    ``absent_fraction`` of the concept in the original image. The units are then set to k at P
    and the concept's (hard-mask) pixels gained are counted inside P↑, the edited place itself.
    The baseline inserts as many seeded random units, each at its own concept-weighted k.

    Args:
        generator: the generator under analysis (an
            :class:`~gan_dissect_callbacks.engines.generator.AnalysedGenerator`, or a module
            whose layers are named, e.g. a LightningModule).
        layer: dotted name of a layer with ``[B, U, h, w]`` output.
        segmenter: gives the concept masks of generated images.
        concept: the concept, a name of the segmenter's vocabulary.
        units: the units to insert.
        values: their k, one per listed unit or one for all; by default the concept-weighted
            mean activation (:func:`insertion_values`, same samples).
        locations: candidate P, ``[L, h, w]`` or ``[h, w]``; by default a grid of patches a
            quarter of the featuremap's side (:func:`patch_locations`).
        absent_fraction: the largest share of the concept a region may hold to count as absent.
        num_random: random unit sets for the baseline (0: none).
        num_samples: latents drawn (split across processes).
        batch_size: images per forward pass.
        seed: seed of the latents and of the random units.
        progress: called as ``progress(done, total)`` after each batch of latents.

    Returns:
        An :class:`InsertionResult`.

    Raises:
        ValueError: unknown layer or concept, units out of range, an empty location P, bad
            values.
        ConceptAbsentError: (default values) the concept is absent from all samples.
        NoInsertionSiteError: the concept covers every candidate location in every sample.

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
        >>> result = insertion_effect(net, "0", seg, "lit", [0], values=1.0, locations=corner,
        ...                           num_random=0, num_samples=8)
        >>> result.fraction_gained, result.fraction_before
        (1.0, 0.0)
    """
    absent_fraction = check_fraction(absent_fraction, "absent_fraction", closed_low=True)
    num_random = check_int(num_random, "num_random", minimum=0)
    num_samples = check_int(num_samples, "num_samples")
    batch_size = check_int(batch_size, "batch_size")
    with prepared(generator, layer, segmenter, concept, seed=seed) as s:
        index = s.units(units)
        if locations is None:
            h, w = s.featuremap_size
            locations = patch_locations((h, w), max(1, min(h, w) // 4))
        places = s.locations(locations)
        k, every = resolve_values(s, index, values, num_samples, batch_size, seed)
        if num_random and every is None:
            every = unit_values(s, "concept_mean", 0.99, num_samples, batch_size, seed)
            every = every.double()
        random_units, sets = insertion_sets(s, index, k, every, num_random, seed)
        sums = _insertion_sums(
            s, sets, places, float(absent_fraction), num_samples, batch_size, seed, progress
        )
    sums = all_reduce_sum(sums)
    return insertion_result(
        layer, concept, index, k, random_units, sums, float(absent_fraction), num_samples
    )


def insertion_sets(
    s: PreparedAnalysis,
    units: Tensor,
    k: Tensor,
    every: Tensor | None,
    num_random: int,
    seed: int,
) -> tuple[list[Tensor], list[tuple[Tensor, Tensor]]]:
    """The random baseline's seeded unit sets, and every inserted (units, k): the units first."""
    draws = torch.Generator().manual_seed(seed)
    random_units = [
        torch.randperm(s.num_units, generator=draws)[: units.numel()] for _ in range(num_random)
    ]
    sets = [(units, k)] + [(u, every[u]) for u in random_units if every is not None]
    return random_units, sets


def insertion_stats(
    after: Tensor, i: Tensor, p: Tensor, inside: Tensor, regions: Tensor, region_size: Tensor
) -> Tensor:
    """``[n, 3]`` float64 per inserted pair ``(i, p)``: fraction gained, pixels gained, before.

    ``after`` are the concept's masks of the inserted images, ``inside[i, p]`` the concept's
    pixels in region ``p`` of original ``i`` and ``regions`` the bool regions P↑.
    """
    gained = (after & regions[p]).sum((1, 2)).float() - inside[i, p]
    before = inside[i, p] / region_size[p]
    return torch.stack([gained / region_size[p], gained, before], 1).double().cpu()


def insertion_result(
    layer: str,
    concept: str,
    units: Tensor,
    k: Tensor,
    random_units: list[Tensor],
    sums: Tensor,
    absent_fraction: float,
    num_samples: int,
) -> InsertionResult:
    """The :class:`InsertionResult` of the summed ``[sets, 5]`` counts of every process."""
    pairs, candidates = int(sums[0, 3].item()), int(sums[0, 4].item())
    if pairs == 0:
        raise NoInsertionSiteError(
            f"Concept {concept!r} covers more than absent_fraction={absent_fraction} of every "
            f"candidate location in all {num_samples} samples, so there is nowhere to insert it. "
            "Give smaller `locations`, raise `absent_fraction`, or draw more samples."
        )
    return InsertionResult(
        layer=layer,
        concept=concept,
        units=units.tolist(),
        values=k.tolist(),
        fraction_gained=float(sums[0, 0] / pairs),
        pixels_gained=float(sums[0, 1] / pairs),
        fraction_before=float(sums[0, 2] / pairs),
        random_fraction_gained=[float(row[0] / pairs) for row in sums[1:]],
        random_units=[u.tolist() for u in random_units],
        num_pairs=pairs,
        num_candidates=candidates,
        absent_fraction=float(absent_fraction),
        num_samples=num_samples,
    )


def _insertion_sums(
    s: PreparedAnalysis,
    sets: list[tuple[Tensor, Tensor]],
    places: Tensor,
    absent_fraction: float,
    num_samples: int,
    batch_size: int,
    seed: int,
    progress: Callable[[int, int], None] | None,
) -> Tensor:
    """Per unit set: ``[Σ fraction gained, Σ pixels gained, Σ fraction before, pairs, candidates]``.

    Sums run over the (sample, location) pairs where the concept was absent.
    """
    device = s.device
    rank, world = dist_info()
    alphas = torch.zeros(len(sets), s.num_units)
    values = torch.zeros(len(sets), s.num_units)
    for j, (units, k) in enumerate(sets):
        alphas[j, units] = 1.0
        values[j] = full_vector(units, k, s.num_units).float()
    alphas, values = alphas.to(device), values.to(device)
    where_all = places.to(device)
    regions = s.regions(places) > 0  # [L, S, S']
    region_size = regions.sum((1, 2)).float()
    sums = torch.zeros(len(sets), 5, dtype=torch.float64)
    done = 0
    for batch in s.generator.samples(
        num_samples, batch_size, seed=seed, rank=rank, world_size=world
    ):
        z = batch.latents
        b = z.shape[0]
        original = s.concept_scores(s.images(z)) > 0.5  # [B, S, S']
        inside = torch.einsum("bst,lst->bl", original.float(), regions.float())  # [B, L]
        eligible = inside / region_size <= absent_fraction
        sums[:, 4] += b * places.shape[0]
        pairs = eligible.nonzero()  # [(sample, location)]
        sums[:, 3] += pairs.shape[0]
        rows = torch.arange(len(sets)).repeat_interleave(pairs.shape[0]).to(device)
        pair_rows = pairs.repeat(len(sets), 1)
        for part in chunks(rows.numel(), batch_size):
            which = rows[part]
            i, p = pair_rows[part].unbind(1)
            edit = UnitEdit(alpha=alphas[which], value=values[which], where=where_all[p])
            after = s.concept_scores(s.images(z[i.to(z.device)], edit)) > 0.5
            stats = insertion_stats(after, i, p, inside, regions, region_size)
            sums[:, :3].index_add_(0, which.cpu(), stats)
        done += b
        if progress is not None:
            progress(done * world, num_samples)
    return sums
