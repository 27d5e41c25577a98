"""The intervention engine: do a concept's units *cause* it?

Dissection finds units whose activations match a concept; intervention tests causation by
editing those units and segmenting what the generator draws. Every edit goes through the one
rule of :mod:`~gan_dissect_callbacks.instrumentation`, ``r ← (1 − α) ⊙ r + α ⊙ k`` at the
featuremap pixels P:

- **ablation** ``x_a = f(0, r_Ū,P)``: α = 1 and k = 0 on the units U;
- **insertion** ``x_i = f(k, r_Ū,P)``: α = 1 and k = one constant per unit
  (:func:`insertion_values`: the unit's mean activation where the concept is, or a high quantile);
- **average causal effect** (:func:`average_causal_effect`)
  ``δ_U→c = E_z,P[s_c(x_i)] − E_z,P[s_c(x_a)]``;
- **removal curves** (:func:`removal_curve`): ablate the top-n units of a ranking over the whole
  image, n = 1…N, and report the fraction of the concept's pixels removed, against n random
  units;
- **insertion** where the concept is absent (:func:`insertion_effect`): the pixels gained;
- the **continuous intervention** (:func:`optimize_alpha`):
  ``α* = argmin_α −δ_α + λ‖α‖₂`` through a soft segmenter, which ranks the units by α.

**Where s_c is measured.** ``s_c(x)`` is the share of the concept's pixels inside the region
``P↑``: the edited featuremap pixels P upsampled (nearest) to the segmentation resolution, i.e.
the *same* place that was edited. (The original code measured the inserted image at another
location than the edited one; here one region tensor serves both the edit and the measurement.)
With P = every pixel, ``s_c(x)`` is the concept's share of the whole image. An expectation over
``z`` and P weights every (sample, location) pair equally.

**Harmless.** Every function runs the model in eval mode (each submodule's mode restored),
with the global RNG streams forked, draws latents from its own seeded generator and removes its
hooks. Under ``torch.distributed`` the streaming measures (:func:`average_causal_effect`,
:func:`removal_curve`, :func:`insertion_effect`) split the samples like
:func:`~gan_dissect_callbacks.engines.dissection.dissect` and sum their counts over processes;
:func:`insertion_values` and :func:`optimize_alpha` compute the same numbers on every process.
All ranks must call them together.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from gan_dissect_callbacks.segmenters.base import GroundTruthSegmenter
    >>> from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary
    >>> class Painter(nn.Module):  # unit 0 paints the red channel, unit 1 the green one
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.latent_dim = 2 * 4 * 4
    ...         self.features = nn.Unflatten(1, (2, 4, 4))
    ...     def forward(self, z):
    ...         r = self.features(z)
    ...         return torch.tanh(torch.cat([r, torch.zeros_like(r[:, :1])], 1))
    >>> vocab = ConceptVocabulary.from_pairs([("red", "color"), ("green", "color")])
    >>> seg = GroundTruthSegmenter(vocab, lambda x: x[:, :2] > 0)
    >>> curve = removal_curve(Painter(), "features", seg, "red", ranking=[0, 1], num_random=0,
    ...                       num_samples=8)
    >>> curve.removed
    [1.0, 1.0]
    >>> ace = average_causal_effect(Painter(), "features", seg, "green", units=[1], values=[2.0],
    ...                             num_samples=8)
    >>> ace.inserted, ace.ablated
    (1.0, 0.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from gan_dissect_callbacks.engines.sampling import (
    LatentSampler,
    iterate_samples,
    resolve_latent_sampler,
    rng_isolated,
)
from gan_dissect_callbacks.functional.threshold import quantile_levels
from gan_dissect_callbacks.instrumentation import (
    UnitEdit,
    capture_activations,
    edit_activations,
    eval_mode,
    resolve_layer,
)
from gan_dissect_callbacks.segmenters.base import Segmenter, check_images, checked_segment
from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary

if TYPE_CHECKING:
    from gan_dissect_callbacks.engines.dissection import DissectionReport

__all__ = [
    "ACEResult",
    "AlphaResult",
    "AlphaStep",
    "ConceptAbsentError",
    "InsertionResult",
    "NoInsertionSiteError",
    "RemovalCurve",
    "average_causal_effect",
    "concept_weighted_mean",
    "insertion_effect",
    "insertion_values",
    "intervention_images",
    "iou_ranking",
    "iou_scores",
    "optimize_alpha",
    "patch_locations",
    "removal_curve",
]

ValueRule = Literal["concept_mean", "quantile"]
Measure = Literal["region", "image"]
_VALUE_RULES = ("concept_mean", "quantile")
_MEASURES = ("region", "image")


# ---------------------------------------------------------------------------------- errors


class ConceptAbsentError(ValueError):
    """The concept never appears in the sampled images, so the measure is undefined."""


class NoInsertionSiteError(ValueError):
    """The concept already covers every candidate location, so there is nowhere to insert it."""


# ---------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ACEResult:
    """The average causal effect of a set of units on a concept (:func:`average_causal_effect`).

    Attributes:
        layer: the edited layer.
        concept: the concept measured.
        units: the units edited.
        values: their insertion values k, in the order of ``units``.
        ace: ``δ = inserted − ablated``.
        inserted: ``E_z,P[s_c(x_i)]``, the concept's share of the measured region after insertion.
        ablated: ``E_z,P[s_c(x_a)]``, the same after ablation.
        original: ``E_z,P[s_c(x)]``, the same without any edit.
        num_samples: latents drawn.
        num_locations: locations P per latent.
        measure: ``"region"`` (inside the edited region P↑) or ``"image"`` (the whole image).
        soft: whether ``s_c`` were the segmenter's probabilities rather than its hard masks.
    """

    layer: str
    concept: str
    units: list[int]
    values: list[float]
    ace: float
    inserted: float
    ablated: float
    original: float
    num_samples: int
    num_locations: int
    measure: str
    soft: bool

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        return asdict(self)


@dataclass(frozen=True)
class RemovalCurve:
    """Fraction of a concept's pixels removed by ablating the top-n units of a ranking.

    Entry ``n - 1`` of each list is for ablating ``n`` units over the whole image. Fractions are
    ratios of pixel counts summed over all samples.

    Attributes:
        layer: the edited layer.
        concept: the concept measured.
        units: the ranked units, best first; the curve ablates ``units[:n]``.
        removed: share of the concept's original pixels that are no longer the concept.
        net_removed: ``1 − (concept pixels after) / (concept pixels before)``; lower than
            ``removed`` when the ablation also draws the concept elsewhere (can be negative).
        random_units: the unit order of each random draw (the baseline).
        random_removed: ``removed`` for each random draw.
        concept_pixels: the concept's pixels over all original samples.
        num_samples: latents drawn.
        seed: the seed of the latents and of the random draws.
    """

    layer: str
    concept: str
    units: list[int]
    removed: list[float]
    net_removed: list[float]
    random_units: list[list[int]]
    random_removed: list[list[float]]
    concept_pixels: int
    num_samples: int
    seed: int

    @property
    def random_mean(self) -> list[float]:
        """The random baseline: ``removed`` averaged over the draws (empty without draws)."""
        if not self.random_removed:
            return []
        draws = len(self.random_removed)
        return [sum(col) / draws for col in zip(*self.random_removed, strict=True)]

    def removed_at(self, n: int) -> float:
        """``removed`` for the top ``n`` units (``n ≥ 1``)."""
        if not 1 <= n <= len(self.removed):
            raise ValueError(
                f"Expected argument `n` in [1, {len(self.removed)}], the curve's unit counts, "
                f"but got {n}."
            )
        return self.removed[n - 1]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (with the random baseline's mean as ``random_mean``)."""
        return {**asdict(self), "random_mean": self.random_mean}


@dataclass(frozen=True)
class InsertionResult:
    """Pixels gained by inserting units where the concept is absent (:func:`insertion_effect`).

    Gains are measured inside the edited region ``P↑`` only, on (sample, location) pairs whose
    region held at most ``absent_fraction`` of the concept before the edit.

    Attributes:
        layer: the edited layer.
        concept: the concept measured.
        units: the inserted units.
        values: their insertion values k.
        fraction_gained: mean over pairs of (concept pixels gained in P↑) / |P↑|.
        pixels_gained: mean over pairs of the concept pixels gained in P↑.
        fraction_before: mean over pairs of the concept's share of P↑ before the edit.
        random_fraction_gained: ``fraction_gained`` when inserting as many random units, one
            value per draw (the baseline).
        random_units: the units of each random draw.
        num_pairs: (sample, location) pairs where the concept was absent, i.e. measured.
        num_candidates: all (sample, location) pairs.
        absent_fraction: the largest share of the concept a region may hold to count as absent.
        num_samples: latents drawn.
    """

    layer: str
    concept: str
    units: list[int]
    values: list[float]
    fraction_gained: float
    pixels_gained: float
    fraction_before: float
    random_fraction_gained: list[float]
    random_units: list[list[int]]
    num_pairs: int
    num_candidates: int
    absent_fraction: float
    num_samples: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        return asdict(self)


@dataclass(frozen=True)
class AlphaStep:
    """One step of :func:`optimize_alpha`: the objective ``−δ + λ‖α‖₂`` and its parts."""

    step: int
    loss: float
    ace: float
    norm: float


@dataclass(frozen=True)
class AlphaResult:
    """The continuous intervention's result (:func:`optimize_alpha`).

    Attributes:
        layer: the edited layer.
        concept: the concept whose causal effect was maximised.
        alpha: the optimised ``α ∈ [0, 1]`` per unit.
        ranking: every unit, by decreasing α; among equal α (units saturate at 1 or 0), by the
            running mean of the objective's gradient (the unit still pushed hardest first), then
            the higher initial score, then the lower index.
        init: the initial α.
        values: the insertion values k per unit.
        history: the objective at every step.
        lam: λ, the weight of ``‖α‖₂``.
        lr: Adam's learning rate.
        batch_size: latents per step.
        seed: seed of the latents and locations.
    """

    layer: str
    concept: str
    alpha: list[float]
    ranking: list[int]
    init: list[float]
    values: list[float]
    history: list[AlphaStep]
    lam: float
    lr: float
    batch_size: int
    seed: int

    def top_units(self, n: int) -> list[int]:
        """The ``n`` units with the largest α."""
        return self.ranking[:n]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        return asdict(self)


# ---------------------------------------------------------------------------------- pure math


def concept_weighted_mean(activations: Tensor, masks: Tensor) -> Tensor:
    """Each unit's mean activation weighted by where a concept is: the insertion value k.

    The concept mask is average-pooled to the featuremap resolution, so a featuremap pixel
    weighs as much as the share of its image pixels that belong to the concept.

    Args:
        activations: featuremaps ``[B, U, h, w]``.
        masks: one concept's masks ``[B, S, S']`` (bool, or float weights in ``[0, 1]``).

    Returns:
        ``[U]`` float64: ``Σ r_u · m↓ / Σ m↓``; NaN where the concept is absent from every image.

    Example:
        >>> import torch
        >>> r = torch.tensor([[[[1.0, 3.0]], [[2.0, 0.0]]]])  # B=1, U=2, 1x2 pixels
        >>> m = torch.tensor([[[True, True, False, False]]])  # the left half of a 1x4 image
        >>> concept_weighted_mean(r, m).tolist()
        [1.0, 2.0]
    """
    sums, weight = _weighted_sums(activations, masks)
    return sums / weight


def _weighted_sums(activations: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    if activations.ndim != 4:
        raise ValueError(
            f"Expected `activations` of shape [B, U, h, w], but got {list(activations.shape)}."
        )
    if masks.ndim != 3 or masks.shape[0] != activations.shape[0]:
        raise ValueError(
            f"Expected `masks` of shape [B={activations.shape[0]}, S, S'], but got "
            f"{list(masks.shape)}."
        )
    pooled = F.adaptive_avg_pool2d(
        masks.float().unsqueeze(1), (int(activations.shape[-2]), int(activations.shape[-1]))
    )[:, 0]
    pooled = pooled.double()
    sums = torch.einsum("buhw,bhw->u", activations.double(), pooled)
    return sums, pooled.sum()


# ---------------------------------------------------------------------------------- helpers


def patch_locations(
    featuremap_size: tuple[int, int], patch_size: int, stride: int | None = None
) -> Tensor:
    """Square patches on a grid, as locations P for the intervention functions.

    Args:
        featuremap_size: ``(h, w)`` of the edited layer's featuremap.
        patch_size: side of each patch, in featuremap pixels.
        stride: distance between patch corners; ``patch_size`` (non-overlapping) by default.

    Returns:
        ``[L, h, w]`` bool, one patch per location, row-major.

    Example:
        >>> patch_locations((4, 4), 2).shape
        torch.Size([4, 4, 4])
        >>> patch_locations((4, 4), 2)[1].int().tolist()
        [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
    """
    if (
        not isinstance(featuremap_size, tuple | list)
        or len(featuremap_size) != 2
        or not all(isinstance(s, int) and s > 0 for s in featuremap_size)
    ):
        raise ValueError(
            f"Expected argument `featuremap_size` to be a pair of positive ints (h, w), but got "
            f"{featuremap_size!r}."
        )
    h, w = featuremap_size
    if not isinstance(patch_size, int) or not 1 <= patch_size <= min(h, w):
        raise ValueError(
            f"Expected argument `patch_size` to be an int in [1, {min(h, w)}] for a {h}x{w} "
            f"featuremap, but got {patch_size!r}."
        )
    step = patch_size if stride is None else stride
    if not isinstance(step, int) or step < 1:
        raise ValueError(
            f"Expected argument `stride` to be None or an int ≥ 1, but got {stride!r}."
        )
    patches = []
    for top in range(0, h - patch_size + 1, step):
        for left in range(0, w - patch_size + 1, step):
            p = torch.zeros(h, w, dtype=torch.bool)
            p[top : top + patch_size, left : left + patch_size] = True
            patches.append(p)
    return torch.stack(patches)


def iou_scores(report: DissectionReport, layer: str, concept: str) -> list[float]:
    """Every unit's IoU with ``concept`` in a dissection report (NaN read as 0).

    Use it as the initial α of :func:`optimize_alpha`.
    """
    if layer not in report.layers:
        raise ValueError(
            f"Expected argument `layer` to be a layer of the dissection report "
            f"({', '.join(report.layers)}), but got {layer!r}."
        )
    c = _concept_index(report.vocabulary, concept)
    return [0.0 if math.isnan(row[c]) else float(row[c]) for row in report.layers[layer].iou]


def iou_ranking(report: DissectionReport, layer: str, concept: str) -> list[int]:
    """Every unit of ``layer`` by decreasing IoU with ``concept`` (ties: lower index first).

    Example:
        >>> from types import SimpleNamespace
        >>> from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary
        >>> vocab = ConceptVocabulary.from_pairs([("sky", "object"), ("tree", "object")])
        >>> layer = SimpleNamespace(iou=[[0.1, 0.0], [0.3, 0.2], [0.3, 0.5]])
        >>> report = SimpleNamespace(vocabulary=vocab, layers={"layer3": layer})
        >>> iou_ranking(report, "layer3", "sky")
        [1, 2, 0]
    """
    scores = iou_scores(report, layer, concept)
    return sorted(range(len(scores)), key=lambda u: (-scores[u], u))


def _concept_index(vocabulary: ConceptVocabulary, concept: str) -> int:
    if not isinstance(concept, str) or concept not in vocabulary.names:
        raise ValueError(
            f"Unknown concept {concept!r}. Known concepts: {', '.join(vocabulary.names)}."
        )
    return vocabulary.index(concept)


def _check_int(value: object, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"Expected argument `{name}` to be an int ≥ {low}, but got {value!r}.")
    return value


def _check_units(units: Sequence[int] | Tensor, num_units: int, argument: str) -> Tensor:
    """``units`` as a long tensor: a non-empty list of distinct indices in ``[0, num_units)``."""
    given = units if isinstance(units, Tensor) else torch.as_tensor(list(units), dtype=torch.long)
    if given.dtype == torch.bool or given.is_floating_point() or given.is_complex():
        raise TypeError(
            f"Expected argument `{argument}` to hold integer unit indices, but got dtype "
            f"{given.dtype}."
        )
    if given.ndim != 1 or given.numel() == 0:
        raise ValueError(
            f"Expected argument `{argument}` to be a non-empty flat list of unit indices, but got "
            f"shape {list(given.shape)}."
        )
    index = given.long().cpu()
    bad = index[(index < 0) | (index >= num_units)]
    if bad.numel():
        raise ValueError(
            f"Expected argument `{argument}` to hold unit indices in [0, {num_units}) (the layer "
            f"has {num_units} units), but got {bad.tolist()}."
        )
    if index.unique().numel() != index.numel():
        values, counts = index.unique(return_counts=True)
        raise ValueError(
            f"Expected argument `{argument}` to list each unit once, but got repeated units "
            f"{values[counts > 1].tolist()}."
        )
    return index


def _check_values(values: float | Sequence[float] | Tensor, count: int, argument: str) -> Tensor:
    """Insertion values for ``count`` listed units: ``[count]`` float64, finite."""
    if isinstance(values, int | float) and not isinstance(values, bool):
        k = torch.full((count,), float(values), dtype=torch.float64)
    else:
        k = torch.as_tensor(values).detach().double().cpu()
        if k.ndim != 1 or k.numel() != count:
            raise ValueError(
                f"Expected argument `{argument}` to be a float or to hold one value per listed "
                f"unit ({count}), but got shape {list(k.shape)}."
            )
    if not bool(torch.isfinite(k).all()):
        raise ValueError(f"Expected argument `{argument}` to be finite, but got {k.tolist()}.")
    return k


def _check_locations(locations: Tensor | None, featuremap_size: tuple[int, int]) -> Tensor:
    """Locations P as ``[L, h, w]`` float in ``[0, 1]``, each selecting at least one pixel."""
    h, w = featuremap_size
    if locations is None:
        return torch.ones(1, h, w)
    if not isinstance(locations, Tensor) or not (
        locations.dtype == torch.bool or locations.is_floating_point()
    ):
        got = f"dtype {locations.dtype}" if isinstance(locations, Tensor) else type(locations)
        raise TypeError(
            f"Expected argument `locations` to be a bool or float tensor [h, w] or [L, h, w], but "
            f"got {got}."
        )
    p = locations.detach().cpu()
    p = p.unsqueeze(0) if p.ndim == 2 else p
    if p.ndim != 3 or tuple(p.shape[-2:]) != (h, w) or p.shape[0] == 0:
        raise ValueError(
            f"Expected argument `locations` of shape [h, w] or [L, h, w] at the featuremap "
            f"resolution ({h}x{w}), but got {list(locations.shape)}. Build patches with "
            f"patch_locations(({h}, {w}), patch_size)."
        )
    p = p.float()
    if bool(((p < 0) | (p > 1) | p.isnan()).any()):
        raise ValueError("Expected argument `locations` to hold values in [0, 1].")
    empty = (p.flatten(1).sum(1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"Expected argument `locations` to select at least one pixel in every location P, but "
            f"location(s) {empty} select none."
        )
    return p


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(t: Tensor) -> Tensor:
    """Sum ``t`` over processes (a no-op in a single process)."""
    if _dist_info()[1] == 1:
        return t
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else "cpu"
    moved = t.to(device)
    dist.all_reduce(moved)
    return moved.to(t.device)


def _twice(t: Tensor) -> Tensor:
    """``t`` stacked on itself along the batch: one copy to insert into, one to ablate."""
    return torch.cat([t, t])


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


@dataclass(frozen=True)
class _Setup:
    """A resolved analysis: the model, its layer and featuremap shape, the concept."""

    model: nn.Module
    layer: str
    segmenter: Segmenter
    concept: str
    concept_index: int
    generate: Callable[[Tensor], Tensor]
    sampler: LatentSampler
    num_units: int
    featuremap_size: tuple[int, int]
    segmentation_size: tuple[int, int]

    def images(self, latents: Tensor, edit: UnitEdit | None = None) -> Tensor:
        if edit is None:
            return self.generate(latents)
        with edit_activations(self.model, {self.layer: edit}):
            return self.generate(latents)

    def concept_scores(self, images: Tensor, soft: bool = False) -> Tensor:
        """``s_c`` of ``images``: ``[B, S, S']`` float (hard 0/1 or soft probabilities)."""
        out = checked_segment(self.segmenter, images, soft=soft)
        return out[:, self.concept_index].float()

    def regions(self, locations: Tensor, device: torch.device) -> Tensor:
        """P upsampled to the segmentation resolution: ``[L, S, S']``, nearest."""
        up = F.interpolate(locations.unsqueeze(1), size=self.segmentation_size, mode="nearest")
        return up[:, 0].to(device)


def _model_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@contextmanager
def _analysis(model: nn.Module) -> Iterator[None]:
    with rng_isolated(_model_device(model)), eval_mode(model):
        yield


def _setup(
    model: nn.Module,
    layer: str,
    segmenter: Segmenter,
    concept: str,
    *,
    generate: Callable[[Tensor], Tensor] | None,
    sample_latents: LatentSampler | None,
    latent_dim: int | None,
    seed: int,
) -> _Setup:
    """Check the arguments and probe the layer's shape on one sample (inside :func:`_analysis`)."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"Expected argument `model` to be an nn.Module, but got {type(model).__name__}."
        )
    resolve_layer(model, layer)  # lists the valid names
    if not isinstance(segmenter, Segmenter):
        raise TypeError(
            "Expected argument `segmenter` to implement the Segmenter protocol (vocabulary, "
            f"segment, soft_segment, segmentation_size), but got {type(segmenter).__name__}."
        )
    index = _concept_index(segmenter.vocabulary, concept)
    generate_fn = generate if generate is not None else model
    sampler = resolve_latent_sampler(model, sample_latents, latent_dim)
    with torch.no_grad(), capture_activations(model, [layer]) as acts:
        images = generate_fn(sampler(1, torch.Generator().manual_seed(seed)))
    r = acts[layer]
    if r.ndim != 4:
        raise ValueError(
            f"Expected layer {layer!r} to output a featuremap [B, U, h, w], but got shape "
            f"{list(r.shape)}. Intervene on a convolutional layer."
        )
    check_images(images)
    seg_size = segmenter.segmentation_size((int(images.shape[-2]), int(images.shape[-1])))
    return _Setup(
        model=model,
        layer=layer,
        segmenter=segmenter,
        concept=concept,
        concept_index=index,
        generate=generate_fn,
        sampler=sampler,
        num_units=int(r.shape[1]),
        featuremap_size=(int(r.shape[2]), int(r.shape[3])),
        segmentation_size=(int(seg_size[0]), int(seg_size[1])),
    )


def _absent_error(concept: str, num_samples: int, what: str) -> ConceptAbsentError:
    return ConceptAbsentError(
        f"Concept {concept!r} is absent from all {num_samples} samples, so {what} is undefined. "
        "Pick a concept the generator draws (see the dissection report's concept_fraction), or "
        "draw more samples."
    )


# ---------------------------------------------------------------------------------- k


def insertion_values(
    model: nn.Module,
    layer: str,
    segmenter: Segmenter,
    concept: str,
    *,
    rule: ValueRule = "concept_mean",
    quantile: float = 0.99,
    num_samples: int = 64,
    batch_size: int = 32,
    seed: int = 0,
    generate: Callable[[Tensor], Tensor] | None = None,
    sample_latents: LatentSampler | None = None,
    latent_dim: int | None = None,
) -> Tensor:
    """The insertion value k of every unit of ``layer`` for ``concept``.

    Args:
        model: the module whose layers are named (e.g. a LightningModule).
        layer: dotted name of a layer with ``[B, U, h, w]`` output.
        segmenter: gives the concept masks of generated images.
        concept: the concept, a name of the segmenter's vocabulary.
        rule: ``"concept_mean"``: each unit's mean activation weighted by the concept mask pooled
            to the featuremap (the original's choice, see :func:`concept_weighted_mean`);
            ``"quantile"``: each unit's ``quantile`` over all featuremap pixels and samples
            (holds ``num_samples·h·w`` values per unit in memory).
        quantile: the quantile of the quantile rule.
        num_samples: latents drawn (the same on every process).
        batch_size: images per forward pass.
        seed: seed of the latents.
        generate: latents → images in ``[-1, 1]``; ``model`` itself by default.
        sample_latents: ``(n, generator) → latents``; found on the model when omitted.
        latent_dim: size of standard-normal latents, when the model does not say.

    Returns:
        ``[U]`` float32 on the CPU.

    Raises:
        ValueError: unknown layer or concept, bad ``rule`` or ``quantile``.
        ConceptAbsentError: (concept-mean rule) the concept is absent from all samples.
    """
    if rule not in _VALUE_RULES:
        raise ValueError(f"Expected argument `rule` to be one of {_VALUE_RULES}, but got {rule!r}.")
    if not isinstance(quantile, float | int) or not 0.0 < quantile < 1.0:
        raise ValueError(
            f"Expected argument `quantile` to be a float in (0, 1), but got {quantile!r}."
        )
    _check_int(num_samples, "num_samples", 1)
    _check_int(batch_size, "batch_size", 1)
    with _analysis(model):
        s = _setup(
            model,
            layer,
            segmenter,
            concept,
            generate=generate,
            sample_latents=sample_latents,
            latent_dim=latent_dim,
            seed=seed,
        )
        return _insertion_values(s, rule, float(quantile), num_samples, batch_size, seed)


def _insertion_values(
    s: _Setup, rule: str, quantile: float, num_samples: int, batch_size: int, seed: int
) -> Tensor:
    sums = torch.zeros(s.num_units, dtype=torch.float64)
    weight = torch.zeros((), dtype=torch.float64)
    values: list[Tensor] = []
    with torch.no_grad():
        for batch in iterate_samples(s.sampler, num_samples, batch_size, seed=seed):
            with capture_activations(s.model, [s.layer]) as acts:
                images = s.generate(batch.latents)
            r = acts[s.layer].float()
            if rule == "quantile":
                values.append(r.transpose(0, 1).reshape(s.num_units, -1).cpu())
                continue
            masks = s.concept_scores(images)
            batch_sums, batch_weight = _weighted_sums(r, masks)
            sums += batch_sums.cpu()
            weight += batch_weight.cpu()
    if rule == "quantile":
        levels = quantile_levels(torch.cat(values, 1), torch.tensor([quantile]))
        return levels[:, 0].float()
    if weight.item() == 0:
        raise _absent_error(s.concept, num_samples, "its concept-weighted insertion value")
    return (sums / weight).float()


def _resolve_values(
    s: _Setup,
    units: Tensor,
    values: float | Sequence[float] | Tensor | None,
    num_samples: int,
    batch_size: int,
    seed: int,
) -> tuple[Tensor, Tensor | None]:
    """(k of the listed units, k of every unit when computed)."""
    if values is not None:
        return _check_values(values, units.numel(), "values"), None
    every = _insertion_values(s, "concept_mean", 0.99, num_samples, batch_size, seed).double()
    return every[units], every


def _full_vector(units: Tensor, values: Tensor, num_units: int) -> Tensor:
    full = torch.zeros(num_units, dtype=torch.float64)
    full[units] = values
    return full


# ---------------------------------------------------------------------------------- ACE


def average_causal_effect(
    model: nn.Module,
    layer: str,
    segmenter: Segmenter,
    concept: str,
    units: Sequence[int] | Tensor,
    *,
    values: float | Sequence[float] | Tensor | None = None,
    locations: Tensor | None = None,
    measure: Measure = "region",
    soft: bool = False,
    num_samples: int = 64,
    batch_size: int = 32,
    seed: int = 0,
    generate: Callable[[Tensor], Tensor] | None = None,
    sample_latents: LatentSampler | None = None,
    latent_dim: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ACEResult:
    """``δ_U→c = E_z,P[s_c(x_i)] − E_z,P[s_c(x_a)]``, streamed over seeded samples.

    Every sample is edited at every location: ``2 · num_samples · L`` edited images in batches
    of ``batch_size``; memory does not grow with ``num_samples``.

    Args:
        model: the module whose layers are named (e.g. a LightningModule).
        layer: dotted name of a layer with ``[B, U, h, w]`` output.
        segmenter: gives the concept masks of generated images.
        concept: the concept, a name of the segmenter's vocabulary.
        units: the units U to ablate and insert.
        values: their insertion values k, one per listed unit or one for all; by default the
            concept-weighted mean activation (:func:`insertion_values`, same samples).
        locations: the pixels P, ``[h, w]`` or ``[L, h, w]`` (bool, or float weights) at the
            featuremap resolution; ``None``: every pixel. See :func:`patch_locations`.
        measure: where ``s_c`` is measured: ``"region"`` (inside the edited P↑) or ``"image"``.
        soft: use the segmenter's probabilities instead of its hard masks (the headline numbers
            use hard masks).
        num_samples: latents drawn (split across processes).
        batch_size: images per forward pass.
        seed: seed of the latents.
        generate: latents → images in ``[-1, 1]``; ``model`` itself by default.
        sample_latents: ``(n, generator) → latents``; found on the model when omitted.
        latent_dim: size of standard-normal latents, when the model does not say.
        progress: called as ``progress(done, total)`` after each batch of latents.

    Returns:
        An :class:`ACEResult`.

    Raises:
        ValueError: unknown layer or concept, units out of range, an empty location P, bad
            values.
        ConceptAbsentError: (default values) the concept is absent from all samples.
    """
    if measure not in _MEASURES:
        raise ValueError(
            f"Expected argument `measure` to be one of {_MEASURES}, but got {measure!r}."
        )
    _check_int(num_samples, "num_samples", 1)
    _check_int(batch_size, "batch_size", 1)
    with _analysis(model):
        s = _setup(
            model,
            layer,
            segmenter,
            concept,
            generate=generate,
            sample_latents=sample_latents,
            latent_dim=latent_dim,
            seed=seed,
        )
        index = _check_units(units, s.num_units, "units")
        places = _check_locations(locations, s.featuremap_size)
        k, _ = _resolve_values(s, index, values, num_samples, batch_size, seed)
        totals = _ace_sums(
            s, index, k, places, measure, soft, num_samples, batch_size, seed, progress
        )
    totals = _all_reduce(totals)
    count = totals[3].item()
    inserted, ablated, original = (float(v) / count for v in totals[:3])
    return ACEResult(
        layer=layer,
        concept=concept,
        units=index.tolist(),
        values=k.tolist(),
        ace=inserted - ablated,
        inserted=inserted,
        ablated=ablated,
        original=original,
        num_samples=num_samples,
        num_locations=int(places.shape[0]),
        measure=measure,
        soft=soft,
    )


def _region_means(scores: Tensor, regions: Tensor) -> Tensor:
    """``[N]``: the mean of ``scores[n]`` weighted by ``regions[n]``."""
    return (scores * regions).sum((1, 2)) / regions.sum((1, 2))


def _ace_sums(
    s: _Setup,
    units: Tensor,
    k: Tensor,
    places: Tensor,
    measure: str,
    soft: bool,
    num_samples: int,
    batch_size: int,
    seed: int,
    progress: Callable[[int, int], None] | None,
) -> Tensor:
    """``[Σ s_c(x_i), Σ s_c(x_a), Σ s_c(x), pairs]`` over this process's (sample, P) pairs."""
    device = _model_device(s.model)
    rank, world = _dist_info()
    selected = torch.zeros(s.num_units)
    selected[units] = 1.0
    k_full = _full_vector(units, k, s.num_units).float()
    where_all = places.to(device)
    regions = s.regions(places, device)
    if measure == "image":
        regions = torch.ones_like(regions)
    num_places = places.shape[0]
    totals = torch.zeros(4, dtype=torch.float64)
    pairs_per_pass = max(1, batch_size // 2)  # an inserted and an ablated image per pair
    done = 0
    with torch.no_grad():
        for batch in iterate_samples(
            s.sampler, num_samples, batch_size, seed=seed, rank=rank, world_size=world
        ):
            z = batch.latents
            b = z.shape[0]
            original = s.concept_scores(s.images(z), soft)  # [B, S, S']
            weighted = torch.einsum("bst,lst->bl", original, regions)
            totals[2] += (weighted / regions.sum((1, 2))).sum().double().cpu()
            place_of = torch.arange(num_places).repeat_interleave(b)
            sample_of = torch.arange(b).repeat(num_places)
            for part in _chunks(place_of.numel(), pairs_per_pass):
                p, i = place_of[part], sample_of[part]
                n = p.numel()
                value = torch.cat([k_full.expand(n, -1), torch.zeros(n, s.num_units)])
                edit = UnitEdit(
                    alpha=selected,
                    value=value.to(device),
                    where=where_all[p.to(device)].repeat(2, 1, 1),
                )
                scores = s.concept_scores(s.images(_twice(z[i.to(z.device)]), edit), soft)
                means = _region_means(scores, regions[p.to(device)].repeat(2, 1, 1))
                totals[0] += means[:n].sum().double().cpu()
                totals[1] += means[n:].sum().double().cpu()
            totals[3] += b * num_places
            done += b
            if progress is not None:
                progress(done * world, num_samples)
    return totals


# ---------------------------------------------------------------------------------- removal


def removal_curve(
    model: nn.Module,
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
    generate: Callable[[Tensor], Tensor] | None = None,
    sample_latents: LatentSampler | None = None,
    latent_dim: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RemovalCurve:
    """Ablate the top-n units of ``ranking`` over the whole image, n = 1…N: pixels removed.

    The baseline ablates the first n units of ``num_random`` seeded random orders of all units.
    Each sample is generated once as is and ``(1 + num_random) · N`` times ablated, in batches of
    ``batch_size`` images; the concept's masks are the segmenter's hard masks.

    Args:
        model: the module whose layers are named (e.g. a LightningModule).
        layer: dotted name of a layer with ``[B, U, h, w]`` output.
        segmenter: gives the concept masks of generated images.
        concept: the concept, a name of the segmenter's vocabulary.
        ranking: units, best first (e.g. :func:`iou_ranking` or :attr:`AlphaResult.ranking`).
        max_units: N, the most units ablated (at most ``len(ranking)``).
        num_random: random orders for the baseline (0: none).
        num_samples: latents drawn (split across processes).
        batch_size: images per forward pass.
        seed: seed of the latents and of the random orders.
        generate: latents → images in ``[-1, 1]``; ``model`` itself by default.
        sample_latents: ``(n, generator) → latents``; found on the model when omitted.
        latent_dim: size of standard-normal latents, when the model does not say.
        progress: called as ``progress(done, total)`` after each batch of latents.

    Returns:
        A :class:`RemovalCurve`.

    Raises:
        ValueError: unknown layer or concept, ranked units out of range or repeated.
        ConceptAbsentError: the concept is absent from all samples.
    """
    _check_int(max_units, "max_units", 1)
    _check_int(num_random, "num_random", 0)
    _check_int(num_samples, "num_samples", 1)
    _check_int(batch_size, "batch_size", 1)
    with _analysis(model):
        s = _setup(
            model,
            layer,
            segmenter,
            concept,
            generate=generate,
            sample_latents=sample_latents,
            latent_dim=latent_dim,
            seed=seed,
        )
        order = _check_units(ranking, s.num_units, "ranking")[:max_units]
        n_units = order.numel()
        draws = torch.Generator().manual_seed(seed)
        random_orders = [
            torch.randperm(s.num_units, generator=draws)[:n_units] for _ in range(num_random)
        ]
        orders = torch.stack([order, *random_orders])  # [K, N]
        counts = _removal_counts(s, orders, num_samples, batch_size, seed, progress)
    counts = _all_reduce(counts)
    concept_pixels = int(counts[0, 0, 2].item())
    if concept_pixels == 0:
        raise _absent_error(concept, num_samples, "the fraction of its pixels removed")
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
    s: _Setup,
    orders: Tensor,
    num_samples: int,
    batch_size: int,
    seed: int,
    progress: Callable[[int, int], None] | None,
) -> Tensor:
    """``[K, N, 3]`` int64: concept pixels kept, concept pixels after, concept pixels before."""
    device = _model_device(s.model)
    rank, world = _dist_info()
    num_curves, n_units = orders.shape
    # Row (k, n - 1) ablates the first n units of order k.
    prefix = F.one_hot(orders, s.num_units).cumsum(1).clamp(max=1).float()
    alphas = prefix.reshape(num_curves * n_units, s.num_units).to(device)
    kept = torch.zeros(num_curves * n_units, dtype=torch.long)
    after = torch.zeros(num_curves * n_units, dtype=torch.long)
    before = torch.zeros((), dtype=torch.long)
    done = 0
    with torch.no_grad():
        for batch in iterate_samples(
            s.sampler, num_samples, batch_size, seed=seed, rank=rank, world_size=world
        ):
            z = batch.latents
            b = z.shape[0]
            original = s.concept_scores(s.images(z)) > 0.5
            before += original.sum().cpu()
            row_of = torch.arange(alphas.shape[0]).repeat_interleave(b)
            sample_of = torch.arange(b).repeat(alphas.shape[0])
            for part in _chunks(row_of.numel(), batch_size):
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


# ---------------------------------------------------------------------------------- insertion


def insertion_effect(
    model: nn.Module,
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
    generate: Callable[[Tensor], Tensor] | None = None,
    sample_latents: LatentSampler | None = None,
    latent_dim: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> InsertionResult:
    """Insert ``units`` at locations where ``concept`` is absent; measure the pixels gained there.

    For every sample and location P, the pair is measured when P↑ held at most
    ``absent_fraction`` of the concept in the original image. The units are then set to k at P
    and the concept's (hard-mask) pixels gained are counted inside P↑, the edited place itself.
    The baseline inserts as many seeded random units, each at its own concept-weighted k.

    Args:
        model: the module whose layers are named (e.g. a LightningModule).
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
        generate: latents → images in ``[-1, 1]``; ``model`` itself by default.
        sample_latents: ``(n, generator) → latents``; found on the model when omitted.
        latent_dim: size of standard-normal latents, when the model does not say.
        progress: called as ``progress(done, total)`` after each batch of latents.

    Returns:
        An :class:`InsertionResult`.

    Raises:
        ValueError: unknown layer or concept, units out of range, an empty location P, bad
            values.
        ConceptAbsentError: (default values) the concept is absent from all samples.
        NoInsertionSiteError: the concept covers every candidate location in every sample.
    """
    if not isinstance(absent_fraction, float | int) or not 0.0 <= absent_fraction < 1.0:
        raise ValueError(
            f"Expected argument `absent_fraction` to be a float in [0, 1), but got "
            f"{absent_fraction!r}."
        )
    _check_int(num_random, "num_random", 0)
    _check_int(num_samples, "num_samples", 1)
    _check_int(batch_size, "batch_size", 1)
    with _analysis(model):
        s = _setup(
            model,
            layer,
            segmenter,
            concept,
            generate=generate,
            sample_latents=sample_latents,
            latent_dim=latent_dim,
            seed=seed,
        )
        index = _check_units(units, s.num_units, "units")
        if locations is None:
            h, w = s.featuremap_size
            locations = patch_locations((h, w), max(1, min(h, w) // 4))
        places = _check_locations(locations, s.featuremap_size)
        k, every = _resolve_values(s, index, values, num_samples, batch_size, seed)
        if num_random and every is None:
            every = _insertion_values(s, "concept_mean", 0.99, num_samples, batch_size, seed)
            every = every.double()
        draws = torch.Generator().manual_seed(seed)
        random_sets = [
            torch.randperm(s.num_units, generator=draws)[: index.numel()] for _ in range(num_random)
        ]
        sets = [(index, k)] + [(u, every[u]) for u in random_sets if every is not None]
        sums = _insertion_sums(
            s, sets, places, float(absent_fraction), num_samples, batch_size, seed, progress
        )
    sums = _all_reduce(sums)
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
        units=index.tolist(),
        values=k.tolist(),
        fraction_gained=float(sums[0, 0] / pairs),
        pixels_gained=float(sums[0, 1] / pairs),
        fraction_before=float(sums[0, 2] / pairs),
        random_fraction_gained=[float(row[0] / pairs) for row in sums[1:]],
        random_units=[u.tolist() for u in random_sets],
        num_pairs=pairs,
        num_candidates=candidates,
        absent_fraction=float(absent_fraction),
        num_samples=num_samples,
    )


def _insertion_sums(
    s: _Setup,
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
    device = _model_device(s.model)
    rank, world = _dist_info()
    alphas = torch.zeros(len(sets), s.num_units)
    values = torch.zeros(len(sets), s.num_units)
    for j, (units, k) in enumerate(sets):
        alphas[j, units] = 1.0
        values[j] = _full_vector(units, k, s.num_units).float()
    alphas, values = alphas.to(device), values.to(device)
    where_all = places.to(device)
    regions = s.regions(places, device) > 0  # [L, S, S']
    region_size = regions.sum((1, 2)).float()
    sums = torch.zeros(len(sets), 5, dtype=torch.float64)
    done = 0
    with torch.no_grad():
        for batch in iterate_samples(
            s.sampler, num_samples, batch_size, seed=seed, rank=rank, world_size=world
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
            for part in _chunks(rows.numel(), batch_size):
                which = rows[part]
                i, p = pair_rows[part].unbind(1)
                edit = UnitEdit(alpha=alphas[which], value=values[which], where=where_all[p])
                after = s.concept_scores(s.images(z[i.to(z.device)], edit)) > 0.5
                gained = (after & regions[p]).sum((1, 2)).float() - inside[i, p]
                before = inside[i, p] / region_size[p]
                stats = torch.stack([gained / region_size[p], gained, before], 1).double().cpu()
                sums[:, :3].index_add_(0, which.cpu(), stats)
            done += b
            if progress is not None:
                progress(done * world, num_samples)
    return sums


# ---------------------------------------------------------------------------------- α


def optimize_alpha(
    model: nn.Module,
    layer: str,
    segmenter: Segmenter,
    concept: str,
    *,
    init: Sequence[float] | Tensor | None = None,
    values: Sequence[float] | Tensor | None = None,
    locations: Tensor | None = None,
    lam: float = 0.005,
    lr: float = 0.01,
    steps: int = 200,
    batch_size: int = 16,
    seed: int = 0,
    measure: Measure = "region",
    value_samples: int = 64,
    generate: Callable[[Tensor], Tensor] | None = None,
    sample_latents: LatentSampler | None = None,
    latent_dim: int | None = None,
    progress: Callable[[AlphaStep, int], None] | None = None,
) -> AlphaResult:
    """The continuous intervention: ``α* = argmin_α (−δ_α + λ‖α‖₂)``, α clamped to ``[0, 1]``.

    With ``x'_a = f((1 − α) ⊙ r_U,P, r_Ū,P)`` and ``x'_i = f(α ⊙ k + (1 − α) ⊙ r_U,P, r_Ū,P)``,
    ``δ_α = E_z,P[s_c(x'_i)] − E_z,P[s_c(x'_a)]`` is measured on the segmenter's *soft* output
    inside the edited region P↑. Each step draws ``batch_size`` fresh seeded latents and one
    location per latent, takes the gradient with ``torch.autograd.grad`` with respect to α only
    (no ``.grad`` is left on the model or the segmenter), takes an Adam step and clamps α to
    ``[0, 1]``.

    Args:
        model: the module whose layers are named (e.g. a LightningModule).
        layer: dotted name of a layer with ``[B, U, h, w]`` output.
        segmenter: gives soft concept scores, differentiable with respect to the images.
        concept: the concept, a name of the segmenter's vocabulary.
        init: a score per unit, e.g. the units' IoU with the concept (:func:`iou_scores`);
            α starts at ``init / max(init)``. ``None``: α starts at 0.5 everywhere.
        values: k per unit ``[U]``; by default the concept-weighted mean activation.
        locations: candidate P ``[L, h, w]`` or ``[h, w]``; ``None``: every pixel.
        lam: λ, the weight of ``‖α‖₂`` (which keeps α sparse).
        lr: Adam's learning rate.
        steps: optimisation steps.
        batch_size: latents per step (each generated twice: inserted and ablated).
        seed: seed of the latents and of the locations.
        measure: where ``s_c`` is measured: ``"region"`` (inside P↑) or ``"image"``.
        value_samples: samples for the default ``values``.
        generate: latents → images in ``[-1, 1]``; ``model`` itself by default.
        sample_latents: ``(n, generator) → latents``; found on the model when omitted.
        latent_dim: size of standard-normal latents, when the model does not say.
        progress: called as ``progress(step_record, steps)`` after each step.

    Returns:
        An :class:`AlphaResult` whose ``ranking`` orders the units by α.

    Raises:
        ValueError: unknown layer or concept, bad ``init``/``values``/``locations`` or
            hyper-parameters.
        ConceptAbsentError: (default values) the concept is absent from all samples.
    """
    for name, value in (("lam", lam), ("lr", lr)):
        if isinstance(value, bool) or not isinstance(value, float | int) or not value >= 0:
            raise ValueError(f"Expected argument `{name}` to be a float ≥ 0, but got {value!r}.")
    _check_int(steps, "steps", 1)
    _check_int(batch_size, "batch_size", 1)
    _check_int(value_samples, "value_samples", 1)
    if measure not in _MEASURES:
        raise ValueError(
            f"Expected argument `measure` to be one of {_MEASURES}, but got {measure!r}."
        )
    device = _model_device(model)
    with _analysis(model):
        s = _setup(
            model,
            layer,
            segmenter,
            concept,
            generate=generate,
            sample_latents=sample_latents,
            latent_dim=latent_dim,
            seed=seed,
        )
        every = torch.arange(s.num_units)
        if values is None:
            k = _insertion_values(s, "concept_mean", 0.99, value_samples, 32, seed).double()
        else:
            k = _check_values(values, s.num_units, "values")
        start = _initial_alpha(init, s.num_units)
        places = _check_locations(locations, s.featuremap_size)
        where_all = places.to(device)
        regions = s.regions(places, device)
        if measure == "image":
            regions = torch.ones_like(regions)
        alpha = start.clone().to(device).requires_grad_(True)
        optimizer = torch.optim.Adam([alpha], lr=lr)
        k_rows = k.float().to(device).expand(batch_size, -1)
        inserted_then_ablated = torch.cat([k_rows, torch.zeros_like(k_rows)])
        generator = torch.Generator().manual_seed(seed)
        history: list[AlphaStep] = []
        with torch.enable_grad():
            for step in range(1, steps + 1):
                z = s.sampler(batch_size, generator)
                p = torch.randint(places.shape[0], (batch_size,), generator=generator).to(device)
                edit = UnitEdit(
                    alpha=alpha, value=inserted_then_ablated, where=where_all[p].repeat(2, 1, 1)
                )
                scores = s.concept_scores(s.images(_twice(z), edit), soft=True)
                means = _region_means(scores, regions[p].repeat(2, 1, 1))
                ace = means[:batch_size].mean() - means[batch_size:].mean()
                norm = torch.linalg.vector_norm(alpha)
                loss = -ace + lam * norm
                (grad,) = torch.autograd.grad(loss, [alpha])
                alpha.grad = grad
                optimizer.step()
                with torch.no_grad():
                    alpha.clamp_(0.0, 1.0)
                record = AlphaStep(step, loss.item(), ace.item(), norm.item())
                history.append(record)
                if progress is not None:
                    progress(record, steps)
        final = alpha.detach().cpu()
        # Many units can saturate at α = 1 (or 0); among equals, the one the objective still
        # pushes hardest (Adam's running mean of the gradient, most negative) is the most causal.
        push = optimizer.state[alpha]["exp_avg"].detach().cpu()
    ranking = sorted(
        every.tolist(), key=lambda u: (-final[u].item(), push[u].item(), -start[u].item(), u)
    )
    return AlphaResult(
        layer=layer,
        concept=concept,
        alpha=final.tolist(),
        ranking=ranking,
        init=start.tolist(),
        values=k.tolist(),
        history=history,
        lam=float(lam),
        lr=float(lr),
        batch_size=batch_size,
        seed=seed,
    )


def _initial_alpha(init: Sequence[float] | Tensor | None, num_units: int) -> Tensor:
    if init is None:
        return torch.full((num_units,), 0.5)
    scores = torch.as_tensor(init).detach().float().cpu()
    if scores.ndim != 1 or scores.numel() != num_units:
        raise ValueError(
            f"Expected argument `init` to hold one score per unit ({num_units}), but got shape "
            f"{list(scores.shape)}."
        )
    scores = torch.nan_to_num(scores, nan=0.0)
    top = scores.max()
    if not bool(torch.isfinite(scores).all()) or top <= 0:
        raise ValueError(
            "Expected argument `init` to hold finite scores with a positive maximum (e.g. IoUs), "
            f"but got maximum {top.item()}."
        )
    return (scores / top).clamp(0.0, 1.0)


# ---------------------------------------------------------------------------------- pictures


def intervention_images(
    model: nn.Module,
    layer: str,
    units: Sequence[int] | Tensor,
    values: float | Sequence[float] | Tensor,
    *,
    insert_where: Tensor | None = None,
    num_images: int = 8,
    seed: int = 0,
    generate: Callable[[Tensor], Tensor] | None = None,
    sample_latents: LatentSampler | None = None,
    latent_dim: int | None = None,
) -> dict[str, Tensor]:
    """The same seeded samples original, with ``units`` ablated everywhere, and inserted.

    Args:
        model: the module whose layers are named (e.g. a LightningModule).
        layer: dotted name of a layer with ``[B, U, h, w]`` output.
        units: the units to ablate and insert.
        values: their insertion values k (one per listed unit, or one for all).
        insert_where: where to insert, ``[h, w]``; ``None``: every pixel.
        num_images: samples drawn.
        seed: seed of the latents.
        generate: latents → images in ``[-1, 1]``; ``model`` itself by default.
        sample_latents: ``(n, generator) → latents``; found on the model when omitted.
        latent_dim: size of standard-normal latents, when the model does not say.

    Returns:
        ``{"original", "ablated", "inserted"}`` images ``[num_images, C, H, W]`` on the CPU.
    """
    _check_int(num_images, "num_images", 1)
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"Expected argument `model` to be an nn.Module, but got {type(model).__name__}."
        )
    resolve_layer(model, layer)
    generate_fn = generate if generate is not None else model
    sampler = resolve_latent_sampler(model, sample_latents, latent_dim)
    with _analysis(model), torch.no_grad():
        z = sampler(num_images, torch.Generator().manual_seed(seed))
        with capture_activations(model, [layer]) as acts:
            original = generate_fn(z)
        r = acts[layer]
        index = _check_units(units, int(r.shape[1]), "units")
        k = _check_values(values, index.numel(), "values").float().tolist()
        where = None
        if insert_where is not None:
            where = _check_locations(insert_where, (int(r.shape[2]), int(r.shape[3])))[0]
        with edit_activations(model, {layer: UnitEdit.ablation(index, int(r.shape[1]))}):
            ablated = generate_fn(z)
        insertion = UnitEdit.insertion(index, k, int(r.shape[1]), where=where)
        with edit_activations(model, {layer: insertion}):
            inserted = generate_fn(z)
    return {
        "original": original.detach().float().cpu(),
        "ablated": ablated.detach().float().cpu(),
        "inserted": inserted.detach().float().cpu(),
    }
