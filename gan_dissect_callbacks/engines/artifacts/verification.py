"""Step 2 of the artifact search: does ablating the chosen units make samples more real?

:func:`verify_ablation` measures the *global* SWD with and without an ablation on the **same**
latents, the same descriptor positions and the same projections, for several seeds; the paired
improvement ``swd − swd_ablated`` is *real* when its lower bound ``mean − num_se · SE`` exceeds
``min_improvement``. :func:`find_artifact_units` scores the units and verifies the worst.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from gan_dissect_callbacks.arguments import check_int, check_unit_indices
from gan_dissect_callbacks.engines.artifacts._images import check_generated, check_real_images
from gan_dissect_callbacks.engines.artifacts._real_side import (
    RealSide,
    prepare_real,
    real_side_for,
)
from gan_dissect_callbacks.engines.artifacts.scoring import UnitArtifactScores, score_units
from gan_dissect_callbacks.engines.generator import (
    AnalysedGenerator,
    GeneratorLike,
    featuremap_shape,
)
from gan_dissect_callbacks.functional.swd_sets import (
    image_descriptor_corners,
    image_descriptors_at,
    swd_of_sets,
)
from gan_dissect_callbacks.instrumentation import UnitEdit

__all__ = ["AblationResult", "ArtifactSearch", "find_artifact_units", "verify_ablation"]


@dataclass(frozen=True)
class AblationResult:
    """Global SWD with and without an ablation, on the same latents, for several seeds.

    Attributes:
        layer: the ablated layer.
        units: the ablated units.
        seeds: the latent seeds, one per repetition.
        swd: per seed, SWD ×10³ (average over levels) of the model as it is.
        swd_ablated: per seed, the same with ``units`` ablated.
        num_samples: generated images per seed.
        examples: the first images of the first seed without and with the ablation (for image
            grids), ``[n, 3, H, W]`` each, or ``None``; not part of :meth:`to_dict`.
    """

    layer: str
    units: list[int]
    seeds: list[int]
    swd: list[float]
    swd_ablated: list[float]
    num_samples: int
    examples: tuple[Tensor, Tensor] | None = field(default=None, repr=False, compare=False)

    @property
    def improvements(self) -> list[float]:
        """Per seed, ``swd − swd_ablated`` (positive: the ablation makes samples more real)."""
        return [a - b for a, b in zip(self.swd, self.swd_ablated, strict=True)]

    @property
    def mean_improvement(self) -> float:
        """Mean of :attr:`improvements`."""
        return sum(self.improvements) / len(self.improvements)

    @property
    def improvement_std(self) -> float:
        """Sample standard deviation of :attr:`improvements` (``nan`` with one seed)."""
        n = len(self.improvements)
        if n < 2:
            return math.nan
        mean = self.mean_improvement
        return math.sqrt(sum((x - mean) ** 2 for x in self.improvements) / (n - 1))

    @property
    def improvement_se(self) -> float:
        """Standard error of :attr:`mean_improvement` (``nan`` with one seed)."""
        return self.improvement_std / math.sqrt(len(self.improvements))

    @property
    def swd_mean(self) -> float:
        """Mean SWD without the ablation."""
        return sum(self.swd) / len(self.swd)

    @property
    def swd_ablated_mean(self) -> float:
        """Mean SWD with the ablation."""
        return sum(self.swd_ablated) / len(self.swd_ablated)

    def lower_bound(self, num_se: float = 2.0) -> float:
        """``mean_improvement − num_se · SE`` (``nan`` with one seed)."""
        return self.mean_improvement - num_se * self.improvement_se

    def upper_bound(self, num_se: float = 2.0) -> float:
        """``mean_improvement + num_se · SE`` (``nan`` with one seed)."""
        return self.mean_improvement + num_se * self.improvement_se

    def is_real(self, min_improvement: float = 0.0, num_se: float = 2.0) -> bool:
        """Whether the ablation helps beyond noise: ``lower_bound(num_se) > min_improvement``.

        Never true with a single seed (no noise estimate) or with no unit ablated.
        """
        return bool(self.units) and self.lower_bound(num_se) > min_improvement

    def hurts(self, num_se: float = 2.0) -> bool:
        """Whether the ablation makes samples worse beyond noise: ``upper_bound(num_se) < 0``."""
        return bool(self.units) and self.upper_bound(num_se) < 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict with the per-seed values and the summary statistics."""
        std, se = self.improvement_std, self.improvement_se
        return {
            "layer": self.layer,
            "units": self.units,
            "seeds": self.seeds,
            "num_samples": self.num_samples,
            "swd": self.swd,
            "swd_ablated": self.swd_ablated,
            "improvements": self.improvements,
            "mean_improvement": self.mean_improvement,
            "improvement_std": None if math.isnan(std) else std,
            "improvement_se": None if math.isnan(se) else se,
        }


def _defaults(function: Any) -> dict[str, Any]:
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


def _seed_for(seed: int, repetition: int) -> int:
    # Repetitions use consecutive seeds; seed s of one check is seed s of every check.
    return seed + repetition


def verify_ablation(
    generator: GeneratorLike,
    layer: str,
    units: Sequence[int],
    real_images: Tensor,
    *,
    num_samples: int = 256,
    num_seeds: int = 3,
    seed: int = 0,
    batch_size: int = 64,
    num_descriptors_per_image: int = 128,
    num_projections: int = 512,
    num_examples: int = 0,
    real_side: RealSide | None = None,
) -> AblationResult:
    """Measure the global SWD with and without ablating ``units`` of ``layer``.

    For each repetition ``i`` (latent seed ``seed + i``) the same ``num_samples`` latents are
    generated twice, as the model is and with ``units`` set to zero (``UnitEdit.ablation``), and
    both sets are compared with the same real descriptors, the same neighbourhood positions and the
    same projections, so the paired difference carries little noise beyond the ablation's effect.
    The real side (descriptors, directions, their sorted projections) is the one
    :func:`~.scoring.score_units` draws with ``seed``, made once and shared by every repetition;
    the generated sets' positions come from the generator of each latent seed (the first
    continues the real side's).

    Args:
        generator: the generator under analysis (an :class:`AnalysedGenerator` or a module).
        layer: dotted name of the layer to ablate.
        units: unit indices to ablate (an empty list measures the noise floor: improvement 0).
        real_images: ``[N, 3, S, S]`` real images in ``[-1, 1]``.
        num_samples: generated images per repetition.
        num_seeds: repetitions with different latents (>= 2 for a noise estimate).
        seed: first latent seed.
        batch_size: images per forward pass.
        num_descriptors_per_image: SWD neighbourhoods per image per level (paper: 128).
        num_projections: SWD random directions per level (paper: 512).
        num_examples: how many images of the first repetition to keep for before/after grids.
        real_side: the real side made by :func:`~._real_side.prepare_real` from ``real_images``
            with the same ``seed`` and ``num_descriptors_per_image`` and at least
            ``num_projections`` directions, of which the first are used; ``None``: made here.

    Returns:
        An :class:`AblationResult`.

    Example:
        >>> from gan_dissect_callbacks.demos.gan import SceneGAN
        >>> gan = SceneGAN(latent_dim=8, width=4, image_size=16)
        >>> real = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
        >>> result = verify_ablation(gan, "generator.layer2", [], real, num_samples=8,
        ...                          num_seeds=2, num_descriptors_per_image=8, num_projections=16)
        >>> result.improvements, result.is_real()
        ([0.0, 0.0], False)
    """
    real_images = check_real_images(real_images)
    num_samples = check_int(num_samples, "num_samples")
    num_seeds = check_int(num_seeds, "num_seeds")
    batch_size = check_int(batch_size, "batch_size")
    num_descriptors_per_image = check_int(num_descriptors_per_image, "num_descriptors_per_image")
    num_projections = check_int(num_projections, "num_projections")
    num_examples = check_int(num_examples, "num_examples", minimum=0)
    g = AnalysedGenerator.wrap(generator)
    g.resolve_layer(layer)
    side = real_side_for(
        real_side,
        real_images,
        seed=seed,
        num_descriptors_per_image=num_descriptors_per_image,
        num_projections=num_projections,
    )
    sorted_real = side.first(num_projections)

    seeds, swd_plain, swd_ablated = [], [], []
    examples: tuple[Tensor, Tensor] | None = None
    edit: UnitEdit | None = None
    with g.harmless():
        for repetition in range(num_seeds):
            latent_seed = _seed_for(seed, repetition)
            # The first repetition's positions continue the real side's generator, as the
            # scoring's do; the others come from their own latent seed. The plain and the
            # ablated images get the same positions, drawn before the images, so that each
            # batch is cut into descriptors at once and only its descriptors are kept.
            rng = (
                side.generator() if repetition == 0 else torch.Generator().manual_seed(latent_seed)
            )
            corners = image_descriptor_corners(
                num_samples, real_images.shape[-1], num_descriptors_per_image, rng
            )
            # Per level, [2, num_samples · n, D]: the plain set and the ablated one.
            pair: dict[int, Tensor] = {}
            shown: list[tuple[Tensor, Tensor]] = []
            done = 0
            for batch in g.samples(num_samples, batch_size, seed=latent_seed):
                images, acts = g.run(batch.latents, capture=[layer])
                plain = check_generated(images, real_images).float().cpu()
                if edit is None:
                    num_units = featuremap_shape(layer, acts[layer])[0]
                    chosen = check_unit_indices(
                        units, num_units, "units", allow_empty=True, distinct=False
                    )
                    edit = UnitEdit.ablation(sorted(set(chosen.tolist())), num_units)
                ablated = g.images(batch.latents, edits={layer: edit}).float().cpu()
                rows = slice(done, done + plain.shape[0])
                at = {res: c[rows] for res, c in corners.items()}
                for res, d in image_descriptors_at(plain, at).items():
                    if res not in pair:
                        pair[res] = d.new_empty((2, num_samples * d.shape[1], d.shape[2]))
                    pair[res][0, rows.start * d.shape[1] : rows.stop * d.shape[1]] = d.flatten(0, 1)
                for res, d in image_descriptors_at(ablated, at).items():
                    pair[res][1, rows.start * d.shape[1] : rows.stop * d.shape[1]] = d.flatten(0, 1)
                if repetition == 0 and done < num_examples:
                    shown.append((plain[: num_examples - done], ablated[: num_examples - done]))
                done = rows.stop
            # Both sets against the same real side: equal to two calls of swd_from_descriptors
            # with the real projections sorted once for every repetition.
            values = swd_of_sets(sorted_real, pair).tolist()
            del pair
            seeds.append(latent_seed)
            swd_plain.append(values[0])
            swd_ablated.append(values[1])
            if shown:
                examples = (torch.cat([p for p, _ in shown]), torch.cat([a for _, a in shown]))
    assert edit is not None
    return AblationResult(
        layer=layer,
        units=edit.alpha.nonzero().flatten().tolist(),
        seeds=seeds,
        swd=swd_plain,
        swd_ablated=swd_ablated,
        num_samples=num_samples,
        examples=examples,
    )


@dataclass(frozen=True)
class ArtifactSearch:
    """Scores of every unit and the verified ablation of the worst ``top_n``."""

    scores: UnitArtifactScores
    ablation: AblationResult

    @property
    def units(self) -> list[int]:
        """The ablated (worst-scoring) units."""
        return self.ablation.units

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        return {"scores": self.scores.to_dict(), "ablation": self.ablation.to_dict()}


def find_artifact_units(
    generator: GeneratorLike,
    layer: str,
    real_images: Tensor,
    *,
    top_n: int = 3,
    score_kwargs: Mapping[str, Any] | None = None,
    verify_kwargs: Mapping[str, Any] | None = None,
) -> ArtifactSearch:
    """Score every unit of ``layer`` and verify the ablation of the ``top_n`` worst.

    When both steps use the same ``seed``, ``num_descriptors_per_image`` and ``num_projections``
    they share one real side (:func:`~._real_side.prepare_real`), sorted once; the results are
    those of the two calls made separately.

    Args:
        generator: the generator under analysis (an :class:`AnalysedGenerator` or a module).
        layer: the layer to search.
        real_images: ``[N, 3, S, S]`` real images in ``[-1, 1]``.
        top_n: how many of the worst units to ablate.
        score_kwargs: keyword arguments of :func:`~.scoring.score_units`.
        verify_kwargs: keyword arguments of :func:`verify_ablation`.

    Returns:
        An :class:`ArtifactSearch`; ``search.ablation.is_real()`` says whether to prune.
    """
    top_n = check_int(top_n, "top_n")
    g = AnalysedGenerator.wrap(generator)
    score_kwargs, verify_kwargs = dict(score_kwargs or {}), dict(verify_kwargs or {})
    names = ("seed", "num_descriptors_per_image", "num_projections")
    score_side = {n: score_kwargs.get(n, _SCORE_DEFAULTS[n]) for n in names}
    verify_side = {n: verify_kwargs.get(n, _VERIFY_DEFAULTS[n]) for n in names}
    method = score_kwargs.get("method", "swd_ablation")
    if score_side == verify_side and method != "discriminator" and "real_side" not in score_kwargs:
        # One real side for both steps: its sort is made once.
        side = prepare_real(real_images, **score_side)
        score_kwargs["real_side"] = side
        verify_kwargs.setdefault("real_side", side)
    scores = score_units(g, layer, real_images, **score_kwargs)
    ablation = verify_ablation(g, layer, scores.top(top_n), real_images, **verify_kwargs)
    return ArtifactSearch(scores=scores, ablation=ablation)


_SCORE_DEFAULTS = _defaults(score_units)
_VERIFY_DEFAULTS = _defaults(verify_ablation)
