"""Artifact units: find the units whose samples look worst, check that ablating them helps, prune.

The paper found artifact units by hand and by the FID of each unit's top-activating images. This
engine automates it in three steps, none of which needs Lightning:

1. :func:`score_units` — the *artifact score* of every unit of a layer, from its ``top_k``
   top-activating generated images (by spatial max). By default (``"swd_ablation"``) it is the
   sliced Wasserstein distance to real images (SWD ×10³, averaged over pyramid levels; see
   :mod:`~.functional.swd`) of those images minus that of the same latents regenerated with the
   unit ablated: how much the unit itself makes its own top images unlike real ones. The plain
   SWD of the top images (``"swd"``, the analogue of the paper's per-unit FID) is there too, but
   it also flags units that merely select unusual content; on the planted toy world it misses
   the planted units that the ablation-paired score ranks first. The cheaper proxy
   ``"discriminator"`` scores a unit by minus the mean discriminator output on its top images.
   Descriptors are cut once per image and all units are projected and compared in batched tensor
   code (one sort of the real projections per direction, shared by every unit).
2. :func:`verify_ablation` — ablate the chosen units (through the one edit rule,
   :func:`~gan_dissect_callbacks.instrumentation.apply_unit_edit`) and measure the *global* SWD
   with and without on the **same** latents, the same descriptor positions and the same
   projections, for several seeds. The paired improvement ``swd − swd_ablated`` is reported with
   its standard deviation and standard error; it is *real* when its lower bound
   ``mean − num_se · SE`` exceeds ``min_improvement``.
3. :class:`PruningMask` — keep an ablation for good: a per-layer unit mask installed as a forward
   hook that calls ``apply_unit_edit``; saved as plain values, re-installed on a freshly loaded
   model with :func:`apply_pruning_from_checkpoint`.

:func:`find_artifact_units` runs steps 1 and 2 in one call. Every pass draws latents from its own
seeded generator with the global RNG forked, in eval mode (each submodule's mode restored) and
without gradients, so it can run in the middle of training without changing it.

Example:
    >>> from gan_dissect_callbacks.demos.gan import SceneGAN
    >>> gan = SceneGAN(latent_dim=8, width=4, image_size=16)
    >>> real = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    >>> scores = score_units(gan, "generator.layer2", real, num_samples=8, top_k=2,
    ...                      num_descriptors_per_image=8, num_projections=16)
    >>> len(scores.scores), scores.ranking == sorted(range(4), key=lambda u: -scores.scores[u])
    (4, True)
    >>> mask = PruningMask({"generator.layer2": scores.top(1)}).apply(gan)
    >>> z = gan.sample_latents(2, generator=torch.Generator().manual_seed(0))
    >>> with capture_activations(gan, ["generator.layer2"]) as acts:
    ...     _ = gan(z)
    >>> float(acts["generator.layer2"][:, scores.top(1)].abs().max())
    0.0
    >>> mask.remove()
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from gan_dissect_callbacks.engines.sampling import (
    LatentSampler,
    iterate_samples,
    resolve_latent_sampler,
    rng_isolated,
)
from gan_dissect_callbacks.functional.swd import (
    laplacian_pyramid,
    normalize_descriptors,
    random_directions,
    sample_descriptors,
)
from gan_dissect_callbacks.instrumentation import (
    UnitEdit,
    apply_unit_edit,
    capture_activations,
    edit_activations,
    eval_mode,
    resolve_layer,
)
from gan_dissect_callbacks.segmenters.base import check_images

__all__ = [
    "AblationResult",
    "ArtifactSearch",
    "PruningMask",
    "UnitArtifactScores",
    "apply_pruning_from_checkpoint",
    "find_artifact_units",
    "score_units",
    "unit_swd_scores",
    "verify_ablation",
]

ScoreMethod = Literal["swd_ablation", "swd", "discriminator"]
_METHODS = ("swd_ablation", "swd", "discriminator")
_PATCH_SIZE = 7
_MIN_RESOLUTION = 16
#: Upper bound on the elements of one block of the batched per-unit SWD (float64: 64 MB each),
#: whatever the layer width and the number of real descriptors.
_BLOCK_ELEMENTS = 1 << 23
#: Key under which :class:`PruningMask` state sits in a callback's checkpoint state.
MASK_STATE_KEY = "pruning_mask"


# ---------------------------------------------------------------------------------- validation


def _check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Expected argument `{name}` to be a positive int, but got {value!r}.")
    return value


def _check_real_images(images: object) -> Tensor:
    if not isinstance(images, Tensor) or not images.is_floating_point():
        got = f"a {images.dtype} tensor" if isinstance(images, Tensor) else type(images).__name__
        raise TypeError(
            f"Expected argument `real_images` to be a float tensor [N, 3, S, S], but got {got}."
        )
    shape = list(images.shape)
    side = shape[-1] if images.ndim == 4 else 0
    if (
        images.ndim != 4
        or shape[0] == 0
        or shape[1] != 3
        or shape[2] != side
        or side < _MIN_RESOLUTION
        or side & (side - 1)
    ):
        raise ValueError(
            "Expected argument `real_images` to have shape [N, 3, S, S] with N >= 1 and S a power"
            f" of two >= {_MIN_RESOLUTION}, but got {shape}."
        )
    check_images(images)
    return images


def _check_generated(images: object, real: Tensor) -> Tensor:
    check_images(images)  # type: ignore[arg-type]
    assert isinstance(images, Tensor)
    if images.shape[1:] != real.shape[1:]:
        raise ValueError(
            "Expected generated images to have the [C, H, W] of `real_images`"
            f" {list(real.shape[1:])}, but got {list(images.shape[1:])}."
        )
    return images


def _model_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _featuremap(acts: Mapping[str, Tensor], layer: str) -> Tensor:
    r = acts[layer]
    if r.ndim != 4:
        raise ValueError(
            f"Expected layer {layer!r} to output a featuremap [B, U, h, w], but got shape"
            f" {list(r.shape)}. Choose a convolutional layer."
        )
    return r


@contextmanager
def _analysis(model: nn.Module) -> Iterator[None]:
    """Seeded, side-effect-free analysis: RNG forked, eval mode, no gradients."""
    with rng_isolated(_model_device(model)), eval_mode(model), torch.no_grad():
        yield


# ---------------------------------------------------------------------------------- descriptors


def _image_descriptors(
    images: Tensor, num_per_image: int, generator: torch.Generator
) -> dict[int, Tensor]:
    """Per image and pyramid level: ``[B, num_per_image, C·7·7]`` raw (unnormalised) descriptors."""
    b = images.shape[0]
    out = {}
    for level in laplacian_pyramid(images.float(), _MIN_RESOLUTION):
        d = sample_descriptors(level, num_per_image, _PATCH_SIZE, generator)
        out[level.shape[-1]] = d.reshape(b, num_per_image, -1)
    return out


def _flat_descriptors(per_image: Mapping[int, Tensor], channels: int) -> dict[int, Tensor]:
    """``[B, n, D]`` per level → ``[B·n, C, 7, 7]``, the layout of the SWD functions."""
    return {res: d.reshape(-1, channels, _PATCH_SIZE, _PATCH_SIZE) for res, d in per_image.items()}


def _normalize_sets(sets: Tensor, channels: int) -> Tensor:
    """Normalise each set ``[S, M, D]`` per colour channel by its own mean and std."""
    s, m, _ = sets.shape
    x = sets.reshape(s, m, channels, -1)
    mean = x.mean(dim=(1, 3), keepdim=True)
    std = x.std(dim=(1, 3), keepdim=True, unbiased=False)
    return ((x - mean) / torch.where(std > 0, std, torch.ones_like(std))).reshape(s, m, -1)


def _batched_sliced_w1(real: Tensor, sets: Tensor, directions: Tensor) -> Tensor:
    """Sliced W1 between ``real [N, D]`` and each set of ``sets [S, M, D]`` (shared directions).

    Equals :func:`~gan_dissect_callbacks.functional.swd.sliced_wasserstein` of ``real`` and
    ``sets[s]`` with the same directions, for every ``s``, at a cost that does not grow with
    ``S · N``: along one direction the exact ``∫₀¹ |F_a⁻¹(t) − F_b⁻¹(t)| dt`` splits into the
    ``M`` pieces where the set's quantile function ``F_a⁻¹`` is the constant ``a_i``; on each the
    real quantile function is integrated in closed form from its running integral
    ``G(t) = ∫₀ᵗ F_b⁻¹``, cut where it crosses ``a_i`` (found by a binary search). The real
    projections are sorted once per direction and shared by all sets.
    """
    n, (s, m, _) = real.shape[0], sets.shape
    num_projections = directions.shape[1]
    per_chunk = max(1, min(num_projections, _BLOCK_ELEMENTS // (n + m * s)))
    set_chunk = max(1, min(s, _BLOCK_ELEMENTS // (per_chunk * m)))
    edges = torch.arange(m + 1, dtype=torch.float64, device=real.device) / m
    total = torch.zeros(s, dtype=torch.float64, device=real.device)
    for chunk in directions.split(per_chunk, dim=1):
        b = (chunk.T @ real.T).sort(dim=1).values.double()  # [P, N]
        running = torch.cat([b.new_zeros(b.shape[0], 1), b.cumsum(dim=1) / n], dim=1)

        def integral_to(t: Tensor, b: Tensor = b, running: Tensor = running) -> Tensor:
            """``G(t)`` for ``t [P, X]`` in [0, 1]: piecewise linear between multiples of 1/N."""
            x = t * n
            j = x.floor().clamp(max=n - 1).long()
            return running.gather(1, j) + b.gather(1, j) * (x - j) / n

        at_edges = integral_to(edges.expand(b.shape[0], -1))  # [P, M + 1]
        for start in range(0, s, set_chunk):
            a = (sets[start : start + set_chunk] @ chunk).permute(2, 0, 1)  # [P, S', M]
            a = a.contiguous().sort(dim=2).values.double()
            p, count = a.shape[0], a.shape[1]
            below = torch.searchsorted(b, a.reshape(p, -1)).view(p, count, m)  # #{b < a_i}
            crossing = (below.double() / n).clamp(min=edges[:-1], max=edges[1:])
            at_crossing = integral_to(crossing.reshape(p, -1)).view(p, count, m)
            low, high = at_edges[:, None, :-1], at_edges[:, None, 1:]
            pieces = (
                a * (crossing - edges[:-1])
                - (at_crossing - low)
                + (high - at_crossing)
                - a * (edges[1:] - crossing)
            )
            total[start : start + set_chunk] += pieces.sum(dim=(0, 2))
    return (total / num_projections).to(real.dtype)


def unit_swd_scores(
    real_descriptors: Mapping[int, Tensor],
    image_descriptors: Mapping[int, Tensor],
    top_samples: Tensor,
    num_projections: int = 128,
    generator: torch.Generator | None = None,
) -> Tensor:
    """SWD ×10³ (averaged over levels) between real images and each unit's top images.

    For unit ``u`` the fake set is the descriptors of the images ``top_samples[u]``; it is
    normalised on its own, as the real set is, exactly as in
    :func:`~gan_dissect_callbacks.functional.swd.swd_from_descriptors`. Levels are processed in
    the mapping's order and each draws ``num_projections`` directions from ``generator``, shared by
    all units, so ``unit_swd_scores(...)[u]`` equals
    ``swd_from_descriptors(real, descriptors of unit u, num_projections, same generator).average``
    up to float rounding. Work is batched over units; memory is bounded by chunking.

    Args:
        real_descriptors: resolution → ``[N, C, p, p]`` descriptors of real images.
        image_descriptors: resolution → ``[B, n, C·p·p]`` descriptors of each generated image
            (``n`` per image); same resolutions.
        top_samples: ``[U, k]`` int64 indices into the ``B`` images.
        num_projections: random directions per level.
        generator: source of the directions (``None``: a fresh generator seeded with 0).

    Returns:
        ``[U]`` float tensor.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> real = {16: torch.randn(256, 3, 7, 7, generator=g)}
        >>> images = {16: torch.randn(4, 64, 147, generator=g)}  # 4 images, 64 descriptors each
        >>> images[16][3] = images[16][3] ** 3  # image 3 has heavy-tailed local statistics
        >>> top = torch.tensor([[0, 1], [1, 2], [2, 3]])  # unit 2's top images include it
        >>> unit_swd_scores(real, images, top, 32, torch.Generator().manual_seed(0)).round()
        tensor([135., 155., 243.])
    """
    if set(real_descriptors) != set(image_descriptors) or not real_descriptors:
        raise ValueError(
            "Expected arguments `real_descriptors` and `image_descriptors` to have the same,"
            f" non-empty set of levels, but got {sorted(real_descriptors)} and"
            f" {sorted(image_descriptors)}."
        )
    if not isinstance(top_samples, Tensor) or top_samples.ndim != 2 or top_samples.numel() == 0:
        shape = list(top_samples.shape) if isinstance(top_samples, Tensor) else top_samples
        raise ValueError(
            f"Expected argument `top_samples` to have shape [U, k] with U, k >= 1, but got {shape}."
        )
    _check_positive_int(num_projections, "num_projections")
    generator = torch.Generator().manual_seed(0) if generator is None else generator
    for per_image in image_descriptors.values():
        num_images = per_image.shape[0]
        if int(top_samples.max()) >= num_images or int(top_samples.min()) < 0:
            raise ValueError(
                f"Expected `top_samples` to index the {num_images} images, but got indices in"
                f" [{int(top_samples.min())}, {int(top_samples.max())}]."
            )
    directions = _draw_directions(real_descriptors, num_projections, generator)
    return _chunked_unit_swd(real_descriptors, image_descriptors, top_samples, directions)


def _draw_directions(
    real_descriptors: Mapping[int, Tensor], num_projections: int, generator: torch.Generator
) -> dict[int, Tensor]:
    """Per level, in the mapping's order, the directions ``swd_from_descriptors`` would draw."""
    return {
        res: random_directions(real[0].numel(), num_projections, generator)
        for res, real in real_descriptors.items()
    }


def _swd_of_sets(
    real_descriptors: Mapping[int, Tensor],
    sets: Mapping[int, Tensor],
    directions: Mapping[int, Tensor],
) -> Tensor:
    """SWD ×10³ averaged over levels between the real set and each fake set ``[S, M, D]``.

    Each set is normalised on its own, as in ``swd_from_descriptors``; all sets share the
    directions of a level.
    """
    per_level = []
    for resolution, real in real_descriptors.items():
        real_flat = normalize_descriptors(real.float()).flatten(1)
        normalized = _normalize_sets(sets[resolution].float(), real.shape[1])
        level_directions = directions[resolution].to(real_flat)
        per_level.append(_batched_sliced_w1(real_flat, normalized, level_directions) * 1e3)
    return torch.stack(per_level).mean(dim=0)


def _unit_chunks(num: int, images_per_unit: int, values_per_image: int) -> Iterator[slice]:
    """Slices of units whose descriptor sets together hold about ``_BLOCK_ELEMENTS`` values."""
    size = max(1, _BLOCK_ELEMENTS // max(1, images_per_unit * values_per_image))
    for start in range(0, num, size):
        yield slice(start, min(num, start + size))


# ---------------------------------------------------------------------------------- scoring


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

    @property
    def ranking(self) -> list[int]:
        """Units by decreasing score (worst first), excluded units left out; ties: lower index."""
        valid = [u for u, s in enumerate(self.scores) if not math.isnan(s)]
        return sorted(valid, key=lambda u: (-self.scores[u], u))

    def top(self, n: int) -> list[int]:
        """The ``n`` worst units (fewer if fewer are scored)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"Expected argument `n` to be an int >= 0, but got {n!r}.")
        return self.ranking[:n]

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


@contextmanager
def _discriminator_mode(discriminator: Callable[[Tensor], Tensor]) -> Iterator[None]:
    # A discriminator outside the model (not covered by its eval_mode) is put in eval mode too.
    if isinstance(discriminator, nn.Module):
        with eval_mode(discriminator):
            yield
    else:
        yield


def _generate_ablated(
    model: nn.Module,
    generate_fn: Callable[[Tensor], Tensor],
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
        with edit_activations(model, {layer: UnitEdit(alpha=alpha)}):
            out.append(generate_fn(latents[start : start + batch_size]).float().cpu())
    return torch.cat(out)


def score_units(
    model: nn.Module,
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
    generate: Callable[[Tensor], Tensor] | None = None,
    sample_latents: LatentSampler | None = None,
    latent_dim: int | None = None,
    step: int | None = None,
) -> UnitArtifactScores:
    """Artifact score of every unit of ``layer``, from its ``top_k`` top-activating images.

    One pass generates ``num_samples`` seeded images, capturing ``layer``; each unit's ``top_k``
    images by spatial max are its top images. Then, by ``method``:

    - ``"swd"``: SWD ×10³ of the unit's top images against ``real_images`` — the analogue of the
      paper's FID of top-activating images. Descriptors are cut once per image and shared by
      every unit that selected it (:func:`unit_swd_scores`). It flags units whose top images
      look unreal, but also units that merely select unusual content: top images are an extreme
      subset, so a unit drawing a large, strong object scores high without causing any artifact.
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
        model: the module whose layers are named (e.g. a LightningModule).
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
        generate: latents → images in ``[-1, 1]``; defaults to ``model`` itself.
        sample_latents: ``(n, generator) → latents``; found on the model when omitted.
        latent_dim: size of standard-normal latents, when the model does not say.
        step: the training step to stamp on the result.

    Returns:
        A :class:`UnitArtifactScores`.
    """
    if method not in _METHODS:
        raise ValueError(f"Expected argument `method` to be one of {_METHODS}, but got {method!r}.")
    if method == "discriminator" and discriminator is None:
        raise ValueError(
            "Expected argument `discriminator` for method='discriminator', but got None. Pass the"
            " GAN's discriminator, e.g. discriminator=gan.discriminator."
        )
    real_images = _check_real_images(real_images)
    for name, value in (
        ("num_samples", num_samples),
        ("top_k", top_k),
        ("batch_size", batch_size),
        ("num_descriptors_per_image", num_descriptors_per_image),
        ("num_projections", num_projections),
    ):
        _check_positive_int(value, name)
    if top_k > num_samples:
        raise ValueError(
            f"Expected argument `top_k` to be at most `num_samples` ({num_samples}), but got"
            f" {top_k}."
        )
    resolve_layer(model, layer)  # fails early, listing the valid names
    sampler = resolve_latent_sampler(model, sample_latents, latent_dim)
    generate_fn = generate if generate is not None else model

    images_list, peaks_list, latents_list = [], [], []
    with _analysis(model):
        for batch in iterate_samples(sampler, num_samples, batch_size, seed=seed):
            with capture_activations(model, [layer]) as acts:
                images = generate_fn(batch.latents)
            images_list.append(_check_generated(images, real_images).float().cpu())
            peaks_list.append(_featuremap(acts, layer).float().amax(dim=(2, 3)).cpu())
            latents_list.append(batch.latents)
        images = torch.cat(images_list)
        peaks = torch.cat(peaks_list)  # [N, U]
        num_units = peaks.shape[1]
        excluded = _unit_list(exclude, num_units, "exclude")
        if not bool(torch.isfinite(peaks).all()):
            raise ValueError(f"Expected finite activations at layer {layer!r}, but got NaN/Inf.")
        # Stable sort: among equal peaks the smaller sample index wins, deterministically.
        top = peaks.T.argsort(dim=1, descending=True, stable=True)[:, :top_k]  # [U, k]
        scored = torch.tensor([u for u in range(num_units) if u not in excluded], dtype=torch.long)
        values = torch.full((num_units,), math.nan)
        baseline = 0.0
        if method == "discriminator":
            assert discriminator is not None
            with _discriminator_mode(discriminator):
                device = _model_device(model)
                d = torch.cat(
                    [
                        _discriminator_scores(discriminator, chunk.to(device)).cpu()
                        for chunk in images.split(batch_size)
                    ]
                )
            values[scored] = -d[top[scored]].mean(dim=1)
            baseline = float(-d[:top_k].mean())
        else:
            generator = torch.Generator().manual_seed(seed)
            channels = images.shape[1]
            real_cpu = real_images.float().cpu()
            real = _flat_descriptors(
                _image_descriptors(real_cpu, num_descriptors_per_image, generator), channels
            )
            directions = _draw_directions(real, num_projections, generator)
            if method == "swd":
                rows = torch.cat([top[scored], torch.arange(top_k).view(1, -1)])
                needed, inverse = rows.unique(return_inverse=True)
                per_image = _image_descriptors(images[needed], num_descriptors_per_image, generator)
                swd_rows = _chunked_unit_swd(real, per_image, inverse, directions)
                values[scored], baseline = swd_rows[:-1], float(swd_rows[-1])
            else:
                latents = torch.cat(latents_list)
                values[scored] = _ablation_scores(
                    model,
                    generate_fn,
                    layer,
                    images,
                    latents,
                    top[scored],
                    scored,
                    num_units,
                    real,
                    directions,
                    num_descriptors_per_image,
                    batch_size,
                    generator,
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
    )


def _chunked_unit_swd(
    real: Mapping[int, Tensor],
    per_image: Mapping[int, Tensor],
    rows: Tensor,
    directions: Mapping[int, Tensor],
) -> Tensor:
    """SWD of the descriptor set of each row of image indices ``rows [S, k]``, in unit chunks."""
    first = next(iter(per_image.values()))
    out = []
    for chunk in _unit_chunks(rows.shape[0], rows.shape[1], first[0].numel()):
        picked = rows[chunk]
        sets = {
            res: d[picked.reshape(-1)].reshape(picked.shape[0], -1, d.shape[-1])
            for res, d in per_image.items()
        }
        out.append(_swd_of_sets(real, sets, directions))
    return torch.cat(out)


def _ablation_scores(
    model: nn.Module,
    generate_fn: Callable[[Tensor], Tensor],
    layer: str,
    images: Tensor,
    latents: Tensor,
    top: Tensor,
    units: Tensor,
    num_units: int,
    real: Mapping[int, Tensor],
    directions: Mapping[int, Tensor],
    num_descriptors_per_image: int,
    batch_size: int,
    generator: torch.Generator,
) -> Tensor:
    """Per unit: SWD of its top images minus SWD of the same latents with the unit ablated."""
    k = top.shape[1]
    values_per_image = sum(r[0].numel() for r in real.values()) * num_descriptors_per_image
    scores = []
    for chunk in _unit_chunks(units.shape[0], 2 * k, values_per_image):
        index = top[chunk].reshape(-1)
        owner = units[chunk].repeat_interleave(k)
        ablated = _generate_ablated(
            model, generate_fn, layer, latents[index.to(latents.device)], owner, num_units,
            batch_size,
        )  # fmt: skip
        rewind = generator.get_state()
        plain_descriptors = _image_descriptors(images[index], num_descriptors_per_image, generator)
        generator.set_state(rewind)  # the ablated twin of each image gets the same positions
        ablated_descriptors = _image_descriptors(ablated, num_descriptors_per_image, generator)
        rows = torch.arange(index.shape[0]).view(-1, k)
        both = torch.cat(
            [
                _chunked_unit_swd(real, plain_descriptors, rows, directions),
                _chunked_unit_swd(real, ablated_descriptors, rows, directions),
            ]
        )
        scores.append(both[: rows.shape[0]] - both[rows.shape[0] :])
    return torch.cat(scores) if scores else torch.zeros(0)


def _unit_list(units: Sequence[int] | Tensor, num_units: int, name: str) -> list[int]:
    values = units.tolist() if isinstance(units, Tensor) else list(units)
    bad = [u for u in values if isinstance(u, bool) or not isinstance(u, int)]
    if bad:
        raise TypeError(f"Expected argument `{name}` to hold int unit indices, but got {bad}.")
    out_of_range = [u for u in values if not 0 <= u < num_units]
    if out_of_range:
        raise ValueError(
            f"Expected argument `{name}` to hold unit indices in [0, {num_units}) for a layer with"
            f" {num_units} units, but got {out_of_range}."
        )
    return sorted(set(values))


# ---------------------------------------------------------------------------------- ablation


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


def _seed_for(seed: int, repetition: int) -> int:
    # Repetitions use consecutive seeds; seed s of one check is seed s of every check.
    return seed + repetition


def verify_ablation(
    model: nn.Module,
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
    generate: Callable[[Tensor], Tensor] | None = None,
    sample_latents: LatentSampler | None = None,
    latent_dim: int | None = None,
) -> AblationResult:
    """Measure the global SWD with and without ablating ``units`` of ``layer``.

    For each repetition ``i`` (latent seed ``seed + i``) the same ``num_samples`` latents are
    generated twice, as the model is and with ``units`` set to zero (``UnitEdit.ablation``), and
    both sets are compared with the same real descriptors, the same neighbourhood positions and the
    same projections, so the paired difference carries little noise beyond the ablation's effect.

    Args:
        model: the module whose layers are named.
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
        generate: latents → images in ``[-1, 1]``; defaults to ``model``.
        sample_latents: ``(n, generator) → latents``; found on the model when omitted.
        latent_dim: size of standard-normal latents, when the model does not say.

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
    real_images = _check_real_images(real_images)
    for name, value in (
        ("num_samples", num_samples),
        ("num_seeds", num_seeds),
        ("batch_size", batch_size),
        ("num_descriptors_per_image", num_descriptors_per_image),
        ("num_projections", num_projections),
    ):
        _check_positive_int(value, name)
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 0:
        raise ValueError(
            f"Expected argument `num_examples` to be an int >= 0, but got {num_examples!r}."
        )
    resolve_layer(model, layer)
    sampler = resolve_latent_sampler(model, sample_latents, latent_dim)
    generate_fn = generate if generate is not None else model
    real_cpu = real_images.float().cpu()
    channels = real_cpu.shape[1]

    seeds, swd_plain, swd_ablated = [], [], []
    examples: tuple[Tensor, Tensor] | None = None
    edit: UnitEdit | None = None
    with _analysis(model):
        for repetition in range(num_seeds):
            latent_seed = _seed_for(seed, repetition)
            plain, ablated = [], []
            for batch in iterate_samples(sampler, num_samples, batch_size, seed=latent_seed):
                with capture_activations(model, [layer]) as acts:
                    images = generate_fn(batch.latents)
                plain.append(_check_generated(images, real_images).float().cpu())
                if edit is None:
                    num_units = _featuremap(acts, layer).shape[1]
                    edit = UnitEdit.ablation(_unit_list(units, num_units, "units"), num_units)
                with edit_activations(model, {layer: edit}):
                    ablated.append(generate_fn(batch.latents).float().cpu())
            fake, fake_ablated = torch.cat(plain), torch.cat(ablated)
            generator = torch.Generator().manual_seed(latent_seed)
            real = _flat_descriptors(
                _image_descriptors(real_cpu, num_descriptors_per_image, generator), channels
            )
            rewind = generator.get_state()
            descriptors = _image_descriptors(fake, num_descriptors_per_image, generator)
            generator.set_state(rewind)  # the ablated images get the same positions
            descriptors_ablated = _image_descriptors(
                fake_ablated, num_descriptors_per_image, generator
            )
            # Both sets against the same real descriptors with the same directions: equal to two
            # calls of swd_from_descriptors, with the real projections sorted once.
            pair = {
                res: torch.stack([d.flatten(0, 1), descriptors_ablated[res].flatten(0, 1)])
                for res, d in descriptors.items()
            }
            directions = _draw_directions(real, num_projections, generator)
            values = _swd_of_sets(real, pair, directions).tolist()
            seeds.append(latent_seed)
            swd_plain.append(values[0])
            swd_ablated.append(values[1])
            if repetition == 0 and num_examples:
                examples = (fake[:num_examples].clone(), fake_ablated[:num_examples].clone())
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
    model: nn.Module,
    layer: str,
    real_images: Tensor,
    *,
    top_n: int = 3,
    score_kwargs: Mapping[str, Any] | None = None,
    verify_kwargs: Mapping[str, Any] | None = None,
) -> ArtifactSearch:
    """Score every unit of ``layer`` and verify the ablation of the ``top_n`` worst.

    Args:
        model: the module whose layers are named.
        layer: the layer to search.
        real_images: ``[N, 3, S, S]`` real images in ``[-1, 1]``.
        top_n: how many of the worst units to ablate.
        score_kwargs: keyword arguments of :func:`score_units`.
        verify_kwargs: keyword arguments of :func:`verify_ablation`.

    Returns:
        An :class:`ArtifactSearch`; ``search.ablation.is_real()`` says whether to prune.
    """
    _check_positive_int(top_n, "top_n")
    scores = score_units(model, layer, real_images, **dict(score_kwargs or {}))
    ablation = verify_ablation(
        model, layer, scores.top(top_n), real_images, **dict(verify_kwargs or {})
    )
    return ArtifactSearch(scores=scores, ablation=ablation)


# ---------------------------------------------------------------------------------- pruning


class PruningMask:
    """A persistent ablation: per layer, units whose output is set to zero on every forward pass.

    :meth:`apply` installs one forward hook per masked layer that passes the layer's output
    through :func:`~gan_dissect_callbacks.instrumentation.apply_unit_edit` with
    ``UnitEdit.ablation(units)`` — the same rule as every other edit — placed before other hooks
    so that captures see the pruned featuremap. The hooks read the mask when they run, so
    :meth:`prune` and :meth:`restore` take effect at once on an applied mask. Gradients through a
    pruned unit are zero. The state is plain values (:meth:`state_dict`), so it rides in a
    checkpoint; :func:`apply_pruning_from_checkpoint` re-applies it to a freshly loaded model.

    Args:
        units: ``{layer name: unit indices}`` to prune.

    Example:
        >>> net = nn.Sequential(nn.Identity())
        >>> mask = PruningMask({"0": [1]}).apply(net)
        >>> net(torch.ones(1, 3, 1, 1)).flatten().tolist()
        [1.0, 0.0, 1.0]
        >>> mask.state_dict()
        {'units': {'0': [1]}}
        >>> mask.remove()
        >>> net(torch.ones(1, 3, 1, 1)).flatten().tolist()
        [1.0, 1.0, 1.0]
    """

    def __init__(self, units: Mapping[str, Sequence[int]] | None = None) -> None:
        self._units: dict[str, list[int]] = {}
        self._edits: dict[tuple[str, int], UnitEdit] = {}
        self._model: nn.Module | None = None
        self._handles: dict[str, RemovableHandle] = {}
        if units is not None:
            if not isinstance(units, Mapping):
                raise TypeError(
                    "Expected argument `units` to be a mapping {layer name: unit indices}, but"
                    f" got {type(units).__name__}."
                )
            for layer, indices in units.items():
                self.prune(layer, indices)

    def __repr__(self) -> str:
        return f"PruningMask({self._units!r})"

    @property
    def layers(self) -> list[str]:
        """The layers with at least one pruned unit."""
        return [name for name, units in self._units.items() if units]

    def units(self, layer: str) -> list[int]:
        """The pruned units of ``layer`` (sorted; empty if none)."""
        return list(self._units.get(layer, []))

    @property
    def num_pruned(self) -> int:
        """Pruned units over all layers."""
        return sum(len(u) for u in self._units.values())

    @property
    def is_applied(self) -> bool:
        """Whether the hooks are installed on a model."""
        return self._model is not None

    def prune(self, layer: str, units: Sequence[int] | Tensor) -> PruningMask:
        """Add ``units`` of ``layer`` to the mask (on the model at once if applied)."""
        if not isinstance(layer, str) or not layer:
            raise ValueError(
                f"Expected a layer name such as 'generator.layer3', but got {layer!r}."
            )
        values = units.tolist() if isinstance(units, Tensor) else list(units)
        bad = [u for u in values if isinstance(u, bool) or not isinstance(u, int) or u < 0]
        if bad:
            raise ValueError(
                f"Expected the units of layer {layer!r} to be int indices >= 0, but got {bad}."
            )
        self._units[layer] = sorted(set(self._units.get(layer, [])) | set(values))
        self._edits = {k: v for k, v in self._edits.items() if k[0] != layer}
        if self._model is not None and layer not in self._handles and self._units[layer]:
            self._install(self._model, layer)
        return self

    def restore(self, layer: str, units: Sequence[int] | None = None) -> PruningMask:
        """Un-prune ``units`` of ``layer`` (all of them if ``None``)."""
        keep = [] if units is None else [u for u in self._units.get(layer, []) if u not in units]
        if keep:
            self._units[layer] = keep
        else:
            self._units.pop(layer, None)
            handle = self._handles.pop(layer, None)
            if handle is not None:
                handle.remove()
        self._edits = {k: v for k, v in self._edits.items() if k[0] != layer}
        return self

    def clear(self) -> PruningMask:
        """Un-prune every unit (the hooks go; the mask stays attached to its model)."""
        for layer in list(self._units):
            self.restore(layer)
        return self

    def _edit(self, layer: str, num_units: int) -> UnitEdit:
        key = (layer, num_units)
        if key not in self._edits:
            self._edits[key] = UnitEdit.ablation(self._units[layer], num_units)
        return self._edits[key]

    def _install(self, model: nn.Module, layer: str) -> None:
        module = resolve_layer(model, layer)

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Tensor | None:
            if not self._units.get(layer):
                return None
            if not isinstance(output, Tensor) or output.ndim != 4:
                what = list(output.shape) if isinstance(output, Tensor) else type(output).__name__
                raise ValueError(
                    f"Expected layer {layer!r} to output a featuremap [B, U, h, w] to prune, but"
                    f" got {what}."
                )
            return apply_unit_edit(output, self._edit(layer, output.shape[1]), layer=layer)

        self._handles[layer] = module.register_forward_hook(hook, prepend=True)

    def apply(self, model: nn.Module) -> PruningMask:
        """Install the mask's hooks on ``model`` (moving them if applied elsewhere); returns self.

        Raises:
            ValueError: if a masked layer is not a layer of ``model`` (listing the valid names);
                nothing is installed then.
        """
        for layer in self.layers:
            resolve_layer(model, layer)
        self.remove()
        self._model = model
        for layer in self.layers:
            self._install(model, layer)
        return self

    def remove(self) -> None:
        """Remove the hooks (the mask's contents are kept)."""
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()
        self._model = None

    def edits(self, num_units: Mapping[str, int]) -> dict[str, UnitEdit]:
        """The mask as ``{layer: UnitEdit}``, e.g. for a one-off ``edit_activations`` context."""
        return {
            layer: UnitEdit.ablation(self._units[layer], num_units[layer]) for layer in self.layers
        }

    def state_dict(self) -> dict[str, Any]:
        """Plain-value state: ``{"units": {layer: [unit, ...]}}``."""
        return {"units": {layer: list(self._units[layer]) for layer in self.layers}}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Replace the mask's contents; an applied mask updates its model's hooks."""
        units = state_dict.get("units") if isinstance(state_dict, Mapping) else None
        if not isinstance(units, Mapping):
            raise ValueError(
                "Expected a pruning-mask state {'units': {layer: [unit, ...]}}, but got"
                f" {state_dict!r}."
            )
        if self._model is not None:
            for layer in units:
                resolve_layer(self._model, layer)
        self.clear()
        for layer, indices in units.items():
            self.prune(layer, [int(u) for u in indices])

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Any]) -> PruningMask:
        """A new (not applied) mask from :meth:`state_dict` output."""
        mask = cls()
        mask.load_state_dict(state_dict)
        return mask


def apply_pruning_from_checkpoint(
    model: nn.Module,
    checkpoint: str | Path | Mapping[str, Any],
    *,
    state_key: str | None = None,
    weights_only: bool = True,
) -> PruningMask:
    """Re-apply the pruning saved in a Lightning checkpoint to a freshly loaded model.

    Forward hooks are not saved with a model's weights, so a pruned generator loaded for inference
    draws its artifact units again until the mask is re-applied. This finds the mask that
    :class:`~gan_dissect_callbacks.callbacks.artifacts.ArtifactPruningCallback` saved in the
    checkpoint's callback states (all of them, merged, unless ``state_key`` picks one) and applies
    it to ``model``, which must have the layer names of the trained module (e.g. the same
    LightningModule class).

    Args:
        model: the freshly loaded model.
        checkpoint: a checkpoint path or an already loaded checkpoint dict.
        state_key: the callback's ``state_key``, to pick one mask among several.
        weights_only: passed to :func:`torch.load` when ``checkpoint`` is a path.

    Returns:
        The applied :class:`PruningMask` (call ``remove()`` to undo it).

    Raises:
        ValueError: if the checkpoint holds no pruning mask (listing its callback states).
    """
    if isinstance(checkpoint, str | Path):
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=weights_only)
    if not isinstance(checkpoint, Mapping):
        raise TypeError(
            "Expected argument `checkpoint` to be a path or a checkpoint dict, but got"
            f" {type(checkpoint).__name__}."
        )
    states = checkpoint.get("callbacks", {})
    found = {
        key: state[MASK_STATE_KEY]
        for key, state in states.items()
        if isinstance(state, Mapping) and MASK_STATE_KEY in state
    }
    if state_key is not None:
        found = {k: v for k, v in found.items() if k == state_key}
    if not found:
        wanted = f" under state key {state_key!r}" if state_key is not None else ""
        raise ValueError(
            f"Expected a pruning mask{wanted} in the checkpoint's callback states, but got none"
            f" (callback states: {sorted(states)}). Was the model trained with"
            " ArtifactPruningCallback(prune=True)?"
        )
    mask = PruningMask()
    for state in found.values():
        for layer, units in PruningMask.from_state_dict(state).state_dict()["units"].items():
            mask.prune(layer, units)
    return mask.apply(model)
