"""Removal curves: ablate the top-n units of a ranking, n = 1…N, and count the pixels removed."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from gan_dissect_callbacks.arguments import check_int
from gan_dissect_callbacks.engines.distributed import all_reduce_sum, dist_info
from gan_dissect_callbacks.engines.generator import GeneratorLike
from gan_dissect_callbacks.engines.intervention._prepared import (
    PreparedAnalysis,
    chunks,
    prepared,
)
from gan_dissect_callbacks.engines.intervention.results import RemovalCurve, absent_error
from gan_dissect_callbacks.instrumentation import UnitEdit
from gan_dissect_callbacks.segmenters.base import Segmenter

__all__ = ["removal_curve"]


def removal_curve(
    generator: GeneratorLike,
    layer: str,
    segmenter: Segmenter,
    concept: str,
    ranking: Sequence[int] | Tensor,
    *,
    max_units: int = 20,
    num_random: int = 3,
    num_samples: int = 64,
    batch_size: int = 32,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> RemovalCurve:
    """Ablate the top-n units of ``ranking`` over the whole image, n = 1…N: pixels removed.

    The baseline ablates the first n units of ``num_random`` seeded random orders of all units.
    Each sample is generated once as is and ``(1 + num_random) · N`` times ablated, in batches of
    ``batch_size`` images; the concept's masks are the segmenter's hard masks.

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
    max_units = check_int(max_units, "max_units")
    num_random = check_int(num_random, "num_random", minimum=0)
    num_samples = check_int(num_samples, "num_samples")
    batch_size = check_int(batch_size, "batch_size")
    with prepared(generator, layer, segmenter, concept, seed=seed) as s:
        order = s.units(ranking, "ranking")[:max_units]
        n_units = order.numel()
        draws = torch.Generator().manual_seed(seed)
        random_orders = [
            torch.randperm(s.num_units, generator=draws)[:n_units] for _ in range(num_random)
        ]
        orders = torch.stack([order, *random_orders])  # [K, N]
        counts = _removal_counts(s, orders, num_samples, batch_size, seed, progress)
    counts = all_reduce_sum(counts)
    concept_pixels = int(counts[0, 0, 2].item())
    if concept_pixels == 0:
        raise absent_error(concept, num_samples, "the fraction of its pixels removed")
    removed = (1 - counts[:, :, 0].double() / concept_pixels).tolist()
    net = (1 - counts[:, :, 1].double() / concept_pixels).tolist()
    return RemovalCurve(
        layer=layer,
        concept=concept,
        units=order.tolist(),
        removed=removed[0],
        net_removed=net[0],
        random_units=[o.tolist() for o in random_orders],
        random_removed=removed[1:],
        concept_pixels=concept_pixels,
        num_samples=num_samples,
        seed=seed,
    )


def _removal_counts(
    s: PreparedAnalysis,
    orders: Tensor,
    num_samples: int,
    batch_size: int,
    seed: int,
    progress: Callable[[int, int], None] | None,
) -> Tensor:
    """``[K, N, 3]`` int64: concept pixels kept, concept pixels after, concept pixels before."""
    device = s.device
    rank, world = dist_info()
    num_curves, n_units = orders.shape
    # Row (k, n - 1) ablates the first n units of order k.
    prefix = F.one_hot(orders, s.num_units).cumsum(1).clamp(max=1).float()
    alphas = prefix.reshape(num_curves * n_units, s.num_units).to(device)
    kept = torch.zeros(num_curves * n_units, dtype=torch.long)
    after = torch.zeros(num_curves * n_units, dtype=torch.long)
    before = torch.zeros((), dtype=torch.long)
    done = 0
    for batch in s.generator.samples(
        num_samples, batch_size, seed=seed, rank=rank, world_size=world
    ):
        z = batch.latents
        b = z.shape[0]
        original = s.concept_scores(s.images(z)) > 0.5
        before += original.sum().cpu()
        row_of = torch.arange(alphas.shape[0]).repeat_interleave(b)
        sample_of = torch.arange(b).repeat(alphas.shape[0])
        for part in chunks(row_of.numel(), batch_size):
            rows, i = row_of[part], sample_of[part]
            edit = UnitEdit(alpha=alphas[rows.to(device)], value=0.0)
            ablated = s.concept_scores(s.images(z[i.to(z.device)], edit)) > 0.5
            kept.index_add_(0, rows, (ablated & original[i.to(device)]).sum((1, 2)).cpu())
            after.index_add_(0, rows, ablated.sum((1, 2)).cpu())
        done += b
        if progress is not None:
            progress(done * world, num_samples)
    counts = torch.stack([kept, after, before.expand_as(kept)], 1)
    return counts.reshape(num_curves, n_units, 3)
