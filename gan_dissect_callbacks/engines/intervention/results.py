"""What the intervention analyses return, and the two ways a measure can be undefined."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor

__all__ = [
    "ACEResult",
    "AlphaResult",
    "AlphaStep",
    "ConceptAbsentError",
    "ConceptEffects",
    "InsertionResult",
    "NoInsertionSiteError",
    "RemovalCurve",
    "absent_error",
]

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

    The curve is evaluated at the unit counts ``points``: entry ``i`` of each list is for
    ablating ``n = points[i]`` units over the whole image (by default every ``n = 1…N``, so
    entry ``n - 1`` is for ``n``). Fractions are ratios of pixel counts summed over all samples.

    Attributes:
        layer: the edited layer.
        concept: the concept measured.
        units: the ranked units, best first; the curve ablates ``units[:n]``.
        points: the unit counts ``n`` evaluated, ascending; the last is ``len(units)``.
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
    points: list[int]
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
        """``removed`` for the top ``n`` units, ``n`` one of ``points``."""
        if n not in self.points:
            raise ValueError(
                f"Expected argument `n` to be one of the curve's unit counts {self.points}, but "
                f"got {n}."
            )
        return self.removed[self.points.index(n)]

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


@dataclass(frozen=True)
class ConceptEffects:
    """Every measure of one concept from :func:`concept_effects`, on the images it shares.

    Attributes:
        removal: the removal curve of the concept's ranking (:func:`removal_curves`).
        values: k of every unit of the layer, ``[U]`` float32 (:func:`insertion_values`).
        ace: the region ACE of the ranking's top units (:func:`causal_effects`).
        insertion: their insertion effect, or the :class:`NoInsertionSiteError` when the
            concept covers every location of every sample.
    """

    removal: RemovalCurve
    values: Tensor
    ace: ACEResult
    insertion: InsertionResult | NoInsertionSiteError


def absent_error(concept: str, num_samples: int, what: str) -> ConceptAbsentError:
    """The error of a measure ``what`` that needs ``concept`` in at least one sample."""
    return ConceptAbsentError(
        f"Concept {concept!r} is absent from all {num_samples} samples, so {what} is undefined. "
        "Pick a concept the generator draws (see the dissection report's concept_fraction), or "
        "draw more samples."
    )
