"""Removal curves: ablate the top-n units of a ranking, n = 1…N, and count the pixels removed.

The segmenter gives every concept's masks of an image at once, and the random baseline's unit
orders do not depend on the concept, so :func:`removal_curves` measures the curves of several
concepts on one stream of samples: each distinct set of ablated units is generated and segmented
once, and counted for every concept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from gan_dissect_callbacks.arguments import check_int
from gan_dissect_callbacks.engines.distributed import all_reduce_sum, dist_info
from gan_dissect_callbacks.engines.generator import GeneratorLike
from gan_dissect_callbacks.engines.intervention._prepared import (
    Originals,
    PreparedAnalysis,
    chunks,
    concept_index,
    prepared,
)
from gan_dissect_callbacks.engines.intervention.results import (
    ConceptAbsentError,
    RemovalCurve,
    absent_error,
)
from gan_dissect_callbacks.instrumentation import UnitEdit
from gan_dissect_callbacks.segmenters.base import Segmenter, checked_segment

__all__ = ["removal_curve", "removal_curves"]


def removal_curve(
    generator: GeneratorLike,
    layer: str,
    segmenter: Segmenter,
    concept: str,
    ranking: Sequence[int] | Tensor,
    *,
    max_units: int = 20,
    num_random: int = 3,
    points: Sequence[int] | None = None,
    num_samples: int = 64,
    batch_size: int = 32,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> RemovalCurve:
    """Ablate the top-n units of ``ranking`` over the whole image, n = 1…N: pixels removed.

    The baseline ablates the first n units of ``num_random`` seeded random orders of all units.
    Each sample is generated once as is and, per distinct set of ablated units, once ablated, in
    batches of ``batch_size`` images: at most ``(1 + num_random) · len(points)`` times. The
    concept's masks are the segmenter's hard masks.

    Args:
        generator: the generator under analysis (an
            :class:`~gan_dissect_callbacks.engines.generator.AnalysedGenerator`, or a module
            whose layers are named, e.g. a LightningModule).
        layer: dotted name of a layer with ``[B, U, h, w]`` output.
        segmenter: gives the concept masks of generated images.
        concept: the concept, a name of the segmenter's vocabulary.
        ranking: units, best first (e.g. :func:`iou_ranking` or :attr:`AlphaResult.ranking`).
        max_units: N, the most units ablated (at most ``len(ranking)``).
        num_random: random orders for the baseline (0: none).
        points: the unit counts n to evaluate (those above N are left out, N is always
            evaluated); ``None``: every n = 1…N.
        num_samples: latents drawn (split across processes).
        batch_size: images per forward pass.
        seed: seed of the latents and of the random orders.
        progress: called as ``progress(done, total)`` after each batch of latents.

    Returns:
        A :class:`RemovalCurve`.

    Raises:
        ValueError: unknown layer or concept, ranked units out of range or repeated.
        ConceptAbsentError: the concept is absent from all samples.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from gan_dissect_callbacks.segmenters.base import GroundTruthSegmenter
        >>> from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary
        >>> net = nn.Sequential(nn.Unflatten(1, (3, 2, 2)), nn.Tanh())  # unit c paints channel c
        >>> net.latent_dim = 12
        >>> seg = GroundTruthSegmenter(ConceptVocabulary.from_pairs([("lit", "color")]),
        ...                            lambda x: x[:, :1] > 0)
        >>> removal_curve(net, "0", seg, "lit", [1, 0], num_random=0, num_samples=4).removed
        [0.0, 1.0]
    """
    curve = removal_curves(
        generator,
        layer,
        segmenter,
        {concept: ranking},
        max_units=max_units,
        num_random=num_random,
        points=points,
        num_samples=num_samples,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
    )[concept]
    if isinstance(curve, ConceptAbsentError):
        raise curve
    return curve


def removal_curves(
    generator: GeneratorLike,
    layer: str,
    segmenter: Segmenter,
    rankings: Mapping[str, Sequence[int] | Tensor],
    *,
    max_units: int = 20,
    num_random: int = 3,
    points: Sequence[int] | None = None,
    num_samples: int = 64,
    batch_size: int = 32,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, RemovalCurve | ConceptAbsentError]:
    """:func:`removal_curve` of several concepts, each by its own ranking, on shared images.

    Every curve equals the one :func:`removal_curve` gives for its concept alone (the same
    latents, random orders and counts); the images are shared: the originals, the random
    baseline's ablations (the same for every concept) and any set of units ablated for two
    concepts.

    Args:
        generator: the generator under analysis.
        layer: dotted name of a layer with ``[B, U, h, w]`` output.
        segmenter: gives the concept masks of generated images.
        rankings: per concept (a name of the segmenter's vocabulary), its units, best first.
        max_units: N, the most units ablated (at most the length of each ranking).
        num_random: random orders for the baseline (0: none).
        points: the unit counts n to evaluate (those above a curve's N are left out, its N is
            always evaluated); ``None``: every n = 1…N.
        num_samples: latents drawn (split across processes).
        batch_size: images per forward pass.
        seed: seed of the latents and of the random orders.
        progress: called as ``progress(done, total)`` after each batch of latents.

    Returns:
        Per concept, in the order of ``rankings``, its :class:`RemovalCurve`, or the
        :class:`ConceptAbsentError` that :func:`removal_curve` would raise for it.

    Raises:
        ValueError: no concept, unknown layer or concept, ranked units out of range or
            repeated, points that are not ints ≥ 1.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from gan_dissect_callbacks.segmenters.base import GroundTruthSegmenter
        >>> from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary
        >>> net = nn.Sequential(nn.Unflatten(1, (3, 2, 2)), nn.Tanh())  # unit c paints channel c
        >>> net.latent_dim = 12
        >>> vocab = ConceptVocabulary.from_pairs([("red", "color"), ("green", "color")])
        >>> seg = GroundTruthSegmenter(vocab, lambda x: x[:, :2] > 0)
        >>> curves = removal_curves(net, "0", seg, {"red": [0, 1], "green": [0, 1]},
        ...                         num_random=0, num_samples=4)
        >>> curves["red"].removed, curves["green"].removed
        ([1.0, 1.0], [0.0, 1.0])
    """
    max_units = check_int(max_units, "max_units")
    num_random = check_int(num_random, "num_random", minimum=0)
    num_samples = check_int(num_samples, "num_samples")
    batch_size = check_int(batch_size, "batch_size")
    wanted = check_points(points)
    if not rankings:
        raise ValueError("Expected argument `rankings` to name at least one concept, but got none.")
    concepts = list(rankings)
    with prepared(generator, layer, segmenter, concepts[0], seed=seed) as s:
        plan = removal_plan(s, rankings, max_units, num_random, wanted, seed)
        originals = Originals(s, num_samples=num_samples, batch_size=batch_size)
        counts = removal_counts(s, plan, originals, num_samples, batch_size, seed, progress)
    return removal_results(layer, plan, all_reduce_sum(counts), num_samples, seed)


@dataclass(frozen=True)
class _Plan:
    """The ablations of one curve: its points, and per (order, point) the set of units ablated."""

    points: list[int]
    keys: list[tuple[int, ...]]


def _plan(order: Tensor, random_orders: list[Tensor], wanted: list[int] | None) -> _Plan:
    n_units = order.numel()
    if wanted is None:
        points = list(range(1, n_units + 1))
    else:
        points = sorted({n for n in wanted if n <= n_units} | {n_units})
    keys = [
        tuple(sorted(o[:n].tolist()))
        for o in [order, *(r[:n_units] for r in random_orders)]
        for n in points
    ]
    return _Plan(points, keys)


@dataclass(frozen=True)
class RemovalPlan:
    """What the removal curves of several concepts ablate: per concept its orders and points.

    ``unit_sets`` are the distinct sets of ablated units of every curve, each measured once.
    """

    concepts: list[str]
    channels: list[int]
    orders: dict[str, Tensor]
    random_orders: list[Tensor]
    plans: dict[str, _Plan]
    unit_sets: list[tuple[int, ...]]


def removal_plan(
    s: PreparedAnalysis,
    rankings: Mapping[str, Sequence[int] | Tensor],
    max_units: int,
    num_random: int,
    wanted: list[int] | None,
    seed: int,
) -> RemovalPlan:
    """The checked rankings, the seeded random orders and every set of units to ablate."""
    concepts = list(rankings)
    channels = [concept_index(s.segmenter.vocabulary, c) for c in concepts]
    orders = {c: s.units(rankings[c], "ranking")[:max_units] for c in concepts}
    longest = max(o.numel() for o in orders.values())
    draws = torch.Generator().manual_seed(seed)
    # A shorter curve's random orders are prefixes of the same permutations.
    random_orders = [
        torch.randperm(s.num_units, generator=draws)[:longest] for _ in range(num_random)
    ]
    plans = {c: _plan(orders[c], random_orders, wanted) for c in concepts}
    unit_sets = list(dict.fromkeys(key for plan in plans.values() for key in plan.keys))
    return RemovalPlan(concepts, channels, orders, random_orders, plans, unit_sets)


def removal_results(
    layer: str, plan: RemovalPlan, counts: Tensor, num_samples: int, seed: int
) -> dict[str, RemovalCurve | ConceptAbsentError]:
    """Each concept's curve from the counts of every process (see :func:`removal_counts`)."""
    num_random = len(plan.random_orders)
    row_of = {key: row for row, key in enumerate(plan.unit_sets)}
    curves: dict[str, RemovalCurve | ConceptAbsentError] = {}
    for j, concept in enumerate(plan.concepts):
        concept_pixels = int(counts[-1, j, 0].item())
        if concept_pixels == 0:
            curves[concept] = absent_error(
                concept, num_samples, "the fraction of its pixels removed"
            )
            continue
        curve_plan = plan.plans[concept]
        rows = torch.tensor([row_of[key] for key in curve_plan.keys]).view(1 + num_random, -1)
        removed = (1 - counts[rows, j, 0].double() / concept_pixels).tolist()
        net = (1 - counts[rows, j, 1].double() / concept_pixels).tolist()
        n_units = plan.orders[concept].numel()
        curves[concept] = RemovalCurve(
            layer=layer,
            concept=concept,
            units=plan.orders[concept].tolist(),
            points=curve_plan.points,
            removed=removed[0],
            net_removed=net[0],
            random_units=[o[:n_units].tolist() for o in plan.random_orders],
            random_removed=removed[1:],
            concept_pixels=concept_pixels,
            num_samples=num_samples,
            seed=seed,
        )
    return curves


def check_points(points: Sequence[int] | None) -> list[int] | None:
    """The unit counts n of a curve: ``None`` (every n) or ints ≥ 1."""
    if points is None:
        return None
    if isinstance(points, str) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in points
    ):
        raise ValueError(
            f"Expected argument `points` to be None or a list of ints ≥ 1, but got {points!r}."
        )
    return list(points)


def removal_counts(
    s: PreparedAnalysis,
    plan: RemovalPlan,
    originals: Originals,
    num_samples: int,
    batch_size: int,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> Tensor:
    """``[sets + 1, concepts, 2]`` int64 per set of ablated units and concept channel.

    Row ``r < sets``: (concept pixels kept, concept pixels after) with ``plan.unit_sets[r]``
    ablated; the last row: (concept pixels of the originals, the same). Sums over this process's
    samples.
    """
    device = s.device
    rank, world = dist_info()
    unit_sets = plan.unit_sets
    alphas = torch.zeros(len(unit_sets), s.num_units)
    for row, units in enumerate(unit_sets):
        alphas[row, list(units)] = 1.0
    alphas = alphas.to(device)
    index = torch.tensor(plan.channels, device=device)
    kept = torch.zeros(len(unit_sets), len(plan.channels), dtype=torch.long)
    after = torch.zeros(len(unit_sets), len(plan.channels), dtype=torch.long)
    before = torch.zeros(len(plan.channels), dtype=torch.long)
    done = 0
    for batch in s.generator.samples(
        num_samples, batch_size, seed=seed, rank=rank, world_size=world
    ):
        z = batch.latents
        b = z.shape[0]
        original = _tracked(originals.of(batch)[0], index)  # [B, concepts, S, S']
        before += original.sum((0, 2, 3)).cpu()
        row_of = torch.arange(alphas.shape[0]).repeat_interleave(b)
        sample_of = torch.arange(b).repeat(alphas.shape[0])
        for part in chunks(row_of.numel(), batch_size):
            rows, i = row_of[part], sample_of[part]
            edit = UnitEdit(alpha=alphas[rows.to(device)], value=0.0)
            segmentation = checked_segment(s.segmenter, s.images(z[i.to(z.device)], edit))
            ablated = _tracked(segmentation, index)
            kept.index_add_(0, rows, (ablated & original[i.to(device)]).sum((2, 3)).cpu())
            after.index_add_(0, rows, ablated.sum((2, 3)).cpu())
        done += b
        if progress is not None:
            progress(done * world, num_samples)
    originals_row = torch.stack([before, before], 1).unsqueeze(0)
    return torch.cat([torch.stack([kept, after], 2), originals_row])


def _tracked(segmentation: Tensor, channels: Tensor) -> Tensor:
    """The hard masks of the tracked concepts: ``[B, concepts, S, S']`` bool."""
    return segmentation[:, channels].float() > 0.5
