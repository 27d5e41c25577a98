"""Step 1 of the artifact search: the artifact score of every unit of a layer.

A unit's score comes from its ``top_k`` top-activating generated images (by spatial max): by
default (``"swd_ablation"``) the SWD ×10³ of those images against real ones minus that of the same
latents regenerated with the unit ablated; ``"swd"`` is the plain SWD of the top images (the
analogue of the paper's per-unit FID); ``"discriminator"`` is minus the mean discriminator output
on them. The batched SWD math is :mod:`~gan_dissect_callbacks.functional.swd_sets`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from gan_dissect_callbacks.arguments import (
    SCORE_METHODS,
    ScoreMethod,
    check_choice,
    check_int,
    check_unit_indices,
)
from gan_dissect_callbacks.engines.artifacts._images import check_generated, check_real_images
from gan_dissect_callbacks.engines.artifacts._real_side import RealSide, real_side_for
from gan_dissect_callbacks.engines.generator import (
    AnalysedGenerator,
    GeneratorLike,
    featuremap_shape,
)
from gan_dissect_callbacks.engines.passes import PassBatch, SampleConsumer, run_sample_pass
from gan_dissect_callbacks.functional.swd_sets import (
    SortedReal,
    image_descriptors,
    swd_of_index_sets,
    unit_chunks,
)
from gan_dissect_callbacks.instrumentation import UnitEdit

__all__ = ["TopActivatingSamples", "UnitArtifactScores", "score_units"]


@dataclass(frozen=True)
class UnitArtifactScores:
    """The artifact score of every unit of one layer (higher: the unit looks more like an artifact).

    Attributes:
        layer: the layer's dotted name.
        method: how units were scored (see :func:`score_units`): ``"swd_ablation"``, ``"swd"`` or
            ``"discriminator"``.
        scores: one score per unit; ``nan`` for excluded (e.g. already pruned) units.
        baseline: what a unit without any effect would score: ``0`` for ``"swd_ablation"``; for
            the other methods the score of ``top_k`` images no unit selected (the first ``top_k``
            samples). Top-activating images are a selected subset, so under ``"swd"`` most units
            score above it.
        top_samples: per unit, the global indices of its top-activating samples (best first).
        num_samples: generated samples searched for top-activating images.
        top_k: top images per unit.
        seed: seed of the latents.
        step: the training step (batches) this was measured at, if any.
        images: the ``num_samples`` generated images ``[N, C, H, W]`` (CPU, float, in
            ``[-1, 1]``) when scored with ``keep_images=True``, else ``None``; not part of
            :meth:`to_dict`, equality or the repr.
    """

    layer: str
    method: str
    scores: list[float]
    baseline: float
    top_samples: list[list[int]]
    num_samples: int
    top_k: int
    seed: int
    step: int | None = None
    images: Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def ranking(self) -> list[int]:
        """Units by decreasing score (worst first), excluded units left out; ties: lower index."""
        valid = [u for u, s in enumerate(self.scores) if not math.isnan(s)]
        return sorted(valid, key=lambda u: (-self.scores[u], u))

    def top(self, n: int) -> list[int]:
        """The ``n`` worst units (fewer if fewer are scored)."""
        n = check_int(n, "n", minimum=0)
        return self.ranking[:n]

    def top_images(self, unit: int, n: int | None = None) -> Tensor:
        """The ``n`` top-activating images of ``unit`` (all ``top_k`` if ``None``), best first.

        Returns:
            ``[n, C, H, W]`` float images in ``[-1, 1]`` on the CPU, the very images the unit was
            scored on.

        Raises:
            ValueError: if the images were not kept (score with ``keep_images=True``), or
                ``unit`` / ``n`` is out of range.
        """
        if self.images is None:
            raise ValueError(
                "Expected the scores to keep their generated images, but they were scored "
                "without them. Pass `keep_images=True` to score_units to use top_images()."
            )
        check_unit_indices([unit], len(self.scores), "unit")
        n = self.top_k if n is None else check_int(n, "n")
        if n > self.top_k:
            raise ValueError(
                f"Expected argument `n` to be at most `top_k` ({self.top_k}), but got {n}."
            )
        return self.images[self.top_samples[unit][:n]]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (``nan`` scores become ``None``)."""
        return {
            "layer": self.layer,
            "method": self.method,
            "scores": [None if math.isnan(s) else s for s in self.scores],
            "baseline": self.baseline,
            "ranking": self.ranking,
            "top_samples": self.top_samples,
            "num_samples": self.num_samples,
            "top_k": self.top_k,
            "seed": self.seed,
            "step": self.step,
        }


def _discriminator_scores(discriminator: Callable[[Tensor], Tensor], images: Tensor) -> Tensor:
    out = discriminator(images)
    if not isinstance(out, Tensor) or out.ndim == 0 or out.shape[0] != images.shape[0]:
        shape = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            "Expected argument `discriminator` to return one output (or a map of outputs) per"
            f" image, shape [{images.shape[0]}, ...], but got {shape}."
        )
    scores = out.float().reshape(images.shape[0], -1).mean(dim=1)
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("Expected the discriminator's outputs to be finite, but got NaN/Inf.")
    return scores


def _generate_ablated(
    g: AnalysedGenerator,
    layer: str,
    latents: Tensor,
    units: Tensor,
    num_units: int,
    batch_size: int,
) -> Tensor:
    """Image ``i`` drawn from ``latents[i]`` with unit ``units[i]`` ablated (per-sample α)."""
    out = []
    for start in range(0, latents.shape[0], batch_size):
        chosen = units[start : start + batch_size]
        alpha = torch.zeros(chosen.shape[0], num_units, device=latents.device)
        alpha[torch.arange(chosen.shape[0]), chosen.to(latents.device)] = 1.0
        edits = {layer: UnitEdit(alpha=alpha)}
        out.append(g.images(latents[start : start + batch_size], edits=edits).float().cpu())
    return torch.cat(out)


class TopActivatingSamples(SampleConsumer):
    """The pass of :func:`score_units`: each sample's image, latent and units' spatial maxima.

    Every process takes every sample (the scoring is not split under ``torch.distributed``).

    Args:
        layer: the scored layer.
        num_samples, batch_size, seed: as in :func:`score_units`.

    Example:
        >>> from gan_dissect_callbacks.demos.gan import SceneGenerator
        >>> from gan_dissect_callbacks.engines.passes import run_sample_pass
        >>> samples = TopActivatingSamples("layer2", num_samples=6, batch_size=4)
        >>> run_sample_pass(AnalysedGenerator(SceneGenerator(image_size=16)), [samples])
        >>> [tuple(p.shape) for p in samples.peaks]
        [(4, 32), (2, 32)]
    """

    def __init__(self, layer: str, *, num_samples: int, batch_size: int, seed: int = 0) -> None:
        super().__init__(num_samples, batch_size, seed=seed, layers=[layer])
        self.layer = layer
        #: Per batch: float32 images on the CPU, ``[B, U]`` spatial maxima, latents.
        self.images: list[Tensor] = []
        self.peaks: list[Tensor] = []
        self.latents: list[Tensor] = []

    def add(self, batch: PassBatch) -> None:
        r = batch.activations[self.layer]
        featuremap_shape(self.layer, r)
        self.images.append(batch.images.float().cpu())
        self.peaks.append(r.float().amax(dim=(2, 3)).cpu())
        self.latents.append(batch.latents)


def score_units(
    generator: GeneratorLike,
    layer: str,
    real_images: Tensor,
    *,
    method: ScoreMethod = "swd_ablation",
    discriminator: Callable[[Tensor], Tensor] | None = None,
    num_samples: int = 256,
    top_k: int = 16,
    batch_size: int = 64,
    seed: int = 0,
    num_descriptors_per_image: int = 128,
    num_projections: int = 128,
    exclude: Sequence[int] = (),
    step: int | None = None,
    keep_images: bool = False,
    real_side: RealSide | None = None,
    samples: TopActivatingSamples | None = None,
) -> UnitArtifactScores:
    """Artifact score of every unit of ``layer``, from its ``top_k`` top-activating images.

    One pass generates ``num_samples`` seeded images, capturing ``layer``; each unit's ``top_k``
    images by spatial max are its top images. Then, by ``method``:

    - ``"swd"``: SWD ×10³ of the unit's top images against ``real_images`` — the analogue of the
      paper's FID of top-activating images. Descriptors are cut once per image and shared by
      every unit that selected it (:func:`~.functional.swd_sets.unit_swd_scores`). It flags
      units whose top images look unreal, but also units that merely select unusual content: top
      images are an extreme subset, so a unit drawing a large, strong object scores high without
      causing any artifact.
    - ``"swd_ablation"`` (default): the same SWD minus the SWD of the *same latents* regenerated
      with the unit ablated — how much the unit itself makes its top images unlike real ones.
      Selecting the images no longer counts, only the unit's own contribution to them, which is
      what a verified ablation then measures globally. Both sets share the descriptor positions
      and projections, so the difference carries little noise. It costs one more generator pass
      over ``U · top_k`` images (all units at once, through a per-sample α of the edit rule) and
      a second batched SWD. On the planted toy world it ranks the planted units first where
      ``"swd"`` does not (see the artifact tests).
    - ``"discriminator"``: minus the mean discriminator output on the top images; the
      discriminator runs once per image. Free during training, but shares ``"swd"``'s selection
      bias and its scale drifts as the discriminator trains.

    Memory: the generated images (``num_samples × 3 × H × W`` floats), plus for the SWD methods
    ``num_descriptors_per_image × 3·7·7`` floats per level per needed image, processed in
    chunks of units so that a chunk holds about 8 M descriptor values.

    Args:
        generator: the generator under analysis (an :class:`AnalysedGenerator` or a module).
        layer: dotted name of a layer with featuremap output ``[B, U, h, w]``.
        real_images: ``[N, 3, S, S]`` real (training) images in ``[-1, 1]``, ``S`` a power of two
            ``>= 16``. Not used by ``method="discriminator"`` (still checked).
        method: ``"swd_ablation"``, ``"swd"`` or ``"discriminator"``.
        discriminator: images → outputs ``[B]`` or ``[B, ...]``, higher meaning "more real";
            required by ``method="discriminator"``.
        num_samples: generated images searched for each unit's top images.
        top_k: top images per unit (``<= num_samples``).
        batch_size: images per forward pass.
        seed: seed of the latents and of the SWD's random positions and directions.
        num_descriptors_per_image: SWD neighbourhoods per image per level (paper: 128).
        num_projections: SWD random directions per level.
        exclude: units not to score (``nan``), e.g. units already pruned.
        step: the training step to stamp on the result.
        keep_images: keep the generated images on the result, for views of the units' top
            images (:meth:`UnitArtifactScores.top_images`) without running the model again.
        real_side: the real side of the SWD made by :func:`~._real_side.prepare_real` from
            ``real_images`` with the same ``seed`` and ``num_descriptors_per_image`` and at least
            ``num_projections`` directions, of which the first are used (kept by a caller that
            scores again, or shared with the verification); ``None``: made here.
        samples: the scoring's pass, already run by
            :func:`~gan_dissect_callbacks.engines.passes.run_sample_pass` beside other
            analyses (made with this call's ``layer``, ``num_samples``, ``batch_size`` and
            ``seed``); ``None``: run it here.

    Returns:
        A :class:`UnitArtifactScores`.

    Example:
        >>> from gan_dissect_callbacks.demos.gan import SceneGAN
        >>> gan = SceneGAN(latent_dim=8, width=4, image_size=16)
        >>> real = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
        >>> scores = score_units(gan, "generator.layer2", real, num_samples=8, top_k=2,
        ...                      num_descriptors_per_image=8, num_projections=16,
        ...                      keep_images=True)
        >>> tuple(scores.top_images(scores.ranking[0]).shape)
        (2, 3, 16, 16)
    """
    check_choice(method, "method", SCORE_METHODS)
    if method == "discriminator" and discriminator is None:
        raise ValueError(
            "Expected argument `discriminator` for method='discriminator', but got None. Pass the"
            " GAN's discriminator, e.g. discriminator=gan.discriminator."
        )
    real_images = check_real_images(real_images)
    num_samples = check_int(num_samples, "num_samples")
    top_k = check_int(top_k, "top_k")
    batch_size = check_int(batch_size, "batch_size")
    num_descriptors_per_image = check_int(num_descriptors_per_image, "num_descriptors_per_image")
    num_projections = check_int(num_projections, "num_projections")
    if top_k > num_samples:
        raise ValueError(
            f"Expected argument `top_k` to be at most `num_samples` ({num_samples}), but got"
            f" {top_k}."
        )
    g = AnalysedGenerator.wrap(generator)
    g.resolve_layer(layer)  # fails early, listing the valid names

    settings = TopActivatingSamples(
        layer, num_samples=num_samples, batch_size=batch_size, seed=seed
    )
    if samples is None:
        samples = settings
        run_sample_pass(g, [samples])
    else:
        samples.check_made_like(settings, "score_units()")
    samples.raise_error()
    outside = [discriminator] if method == "discriminator" else []
    with g.harmless(also=outside):
        images = check_generated(torch.cat(samples.images), real_images)
        peaks = torch.cat(samples.peaks)  # [N, U]
        num_units = peaks.shape[1]
        excluded = set(
            check_unit_indices(exclude, num_units, "exclude", allow_empty=True, distinct=False)
            .tolist()
        )  # fmt: skip
        if not bool(torch.isfinite(peaks).all()):
            raise ValueError(f"Expected finite activations at layer {layer!r}, but got NaN/Inf.")
        # Stable sort: among equal peaks the smaller sample index wins, deterministically.
        top = peaks.T.argsort(dim=1, descending=True, stable=True)[:, :top_k]  # [U, k]
        scored = torch.tensor([u for u in range(num_units) if u not in excluded], dtype=torch.long)
        values = torch.full((num_units,), math.nan)
        baseline = 0.0
        if method == "discriminator":
            assert discriminator is not None
            d = torch.cat(
                [
                    _discriminator_scores(discriminator, chunk.to(g.device)).cpu()
                    for chunk in images.split(batch_size)
                ]
            )
            values[scored] = -d[top[scored]].mean(dim=1)
            baseline = float(-d[:top_k].mean())
        else:
            # The real side is sorted once and shared by every unit, plain and ablated.
            side = real_side_for(
                real_side,
                real_images,
                seed=seed,
                num_descriptors_per_image=num_descriptors_per_image,
                num_projections=num_projections,
            )
            sorted_real, rng = side.first(num_projections), side.generator()
            if method == "swd":
                rows = torch.cat([top[scored], torch.arange(top_k).view(1, -1)])
                needed, inverse = rows.unique(return_inverse=True)
                per_image = image_descriptors(images[needed], num_descriptors_per_image, rng)
                swd_rows = swd_of_index_sets(sorted_real, per_image, inverse)
                values[scored], baseline = swd_rows[:-1], float(swd_rows[-1])
            else:
                values[scored] = _ablation_scores(
                    g,
                    layer,
                    images,
                    torch.cat(samples.latents),
                    top[scored],
                    scored,
                    num_units,
                    sorted_real,
                    num_descriptors_per_image,
                    batch_size,
                    rng,
                )
    return UnitArtifactScores(
        layer=layer,
        method=method,
        scores=values.tolist(),
        baseline=baseline,
        top_samples=top.tolist(),
        num_samples=num_samples,
        top_k=top_k,
        seed=seed,
        step=step,
        images=images if keep_images else None,
    )


def _ablation_scores(
    g: AnalysedGenerator,
    layer: str,
    images: Tensor,
    latents: Tensor,
    top: Tensor,
    units: Tensor,
    num_units: int,
    real: SortedReal,
    num_descriptors_per_image: int,
    batch_size: int,
    rng: torch.Generator,
) -> Tensor:
    """Per unit: SWD of its top images minus SWD of the same latents with the unit ablated."""
    k = top.shape[1]
    values_per_image = sum(d.shape[0] for d in real.directions.values()) * num_descriptors_per_image
    scores = []
    for chunk in unit_chunks(units.shape[0], 2 * k, values_per_image):
        index = top[chunk].reshape(-1)
        owner = units[chunk].repeat_interleave(k)
        ablated = _generate_ablated(
            g, layer, latents[index.to(latents.device)], owner, num_units, batch_size
        )
        rewind = rng.get_state()
        plain_descriptors = image_descriptors(images[index], num_descriptors_per_image, rng)
        rng.set_state(rewind)  # the ablated twin of each image gets the same positions
        ablated_descriptors = image_descriptors(ablated, num_descriptors_per_image, rng)
        rows = torch.arange(index.shape[0]).view(-1, k)
        both = torch.cat(
            [
                swd_of_index_sets(real, plain_descriptors, rows),
                swd_of_index_sets(real, ablated_descriptors, rows),
            ]
        )
        scores.append(both[: rows.shape[0]] - both[rows.shape[0] :])
    return torch.cat(scores) if scores else torch.zeros(0)
