"""Streaming sliced Wasserstein distance (Progressive GAN's SWD) with bounded memory."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from gan_dissect_callbacks.arguments import check_int
from gan_dissect_callbacks.functional.swd import (
    laplacian_pyramid,
    real_projections,
    sample_descriptors,
    swd_from_descriptors,
)

__all__ = ["SlicedWassersteinDistance"]

_PATCH_SIZE = 7
_MIN_RESOLUTION = 16
_CHANNELS = 3
_MASK64 = (1 << 64) - 1


def _mix_seed(*values: int) -> int:
    """Combine integers into one well-spread 63-bit seed (splitmix64 finaliser)."""
    x = 0
    for value in values:
        x = (x + value + 0x9E3779B97F4A7C15) & _MASK64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
        x ^= x >> 31
    return x >> 1


def _reservoir_insert(
    reservoir: Tensor, num_seen: int, rows: Tensor, generator: torch.Generator
) -> None:
    """Offer ``rows`` to a uniform reservoir sample (Algorithm R), all rows at once, in place.

    Row ``i`` of the stream (0-based, ``i = num_seen + j``) fills slot ``i`` while the reservoir is
    not full; afterwards it replaces a slot drawn uniformly from ``[0, i]`` if that slot exists.
    Where several new rows draw the same slot the last one wins, exactly as in the one-by-one
    algorithm, so after any number of calls the reservoir is a uniform sample without replacement
    of everything offered.
    """
    capacity, count = reservoir.shape[0], rows.shape[0]
    index = torch.arange(num_seen, num_seen + count, dtype=torch.float64)
    draws = (torch.rand(count, generator=generator, dtype=torch.float64) * (index + 1)).floor()
    slot = torch.where(index < capacity, index, draws).long()
    keep = slot < capacity
    writer = torch.full((capacity,), -1, dtype=torch.long)
    writer.scatter_reduce_(0, slot[keep], torch.arange(count)[keep], reduce="amax")
    written = (writer >= 0).nonzero().squeeze(1)
    reservoir[written.to(reservoir.device)] = rows[writer[written].to(rows.device)].to(
        reservoir.dtype
    )


class SlicedWassersteinDistance(Metric):
    """Sliced Wasserstein distance ×10³ between real and generated images, per level and averaged.

    The method of Karras et al. (2018), see :mod:`gan_dissect_callbacks.functional.swd`: Laplacian
    pyramid down to 16 px, 128 random 7×7 neighbourhoods per image per level, per-channel
    normalisation of each set, 512 random projections. No pretrained network is needed.

    Streaming with bounded memory: for each set (real, fake) and each level the metric keeps a
    uniform random sample of at most ``max_descriptors`` of the descriptors it was offered
    (reservoir sampling, seeded), so the state stops growing once ``max_descriptors / 128`` images
    were seen; until then the result equals the full-data computation. State memory::

        2 sets × L levels × max_descriptors × 147 values × 4 bytes,  L = log2(image_size / 16) + 1

    e.g. 38.5 MB at 32×32 and 57.8 MB at 64×64 with the default ``max_descriptors=16384``.

    With ``reset_real_features=False`` the real set usually stays the same from one ``compute`` to
    the next, so its sorted projections (half the sorting work) are kept and reused while the real
    descriptors are unchanged (checked by comparing them). That costs, besides a copy of the real
    descriptors, ``L × num_projections × real descriptors × 4`` bytes: 64 MiB per level for 512
    projections and 32,768 descriptors.

    Randomness never touches the global RNG: neighbourhood positions and reservoir slots of an
    update come from a generator seeded with ``(seed, level, images seen so far)``, so real and
    fake streams of identical images get identical descriptors (SWD exactly 0), and projection
    directions come from ``seed`` (the same directions at every ``compute``).

    Under DDP the reservoirs are gathered across processes (``dist_reduce_fx="cat"``) and their
    union is used; memory at ``compute`` is the bound above × world size. The union is a uniform
    sample when all processes saw the same number of images (as with a ``DistributedSampler``).

    Args:
        image_size: side length H = W of every image, a power of two ``>= 16``.
        max_descriptors: descriptors kept per set per level.
        num_descriptors_per_image: neighbourhoods cut per image per level (paper: 128).
        num_projections: random directions per level (paper: 4 × 128 = 512).
        seed: seed of all randomness.
        reset_real_features: whether :meth:`reset` also clears the real images' descriptors (set
            ``False`` to reuse a fixed real set across evaluations).
        kwargs: forwarded to :class:`torchmetrics.Metric`.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> real = torch.rand(8, 3, 32, 32, generator=g) * 2 - 1
        >>> noisy = (real + 0.5 * torch.randn(8, 3, 32, 32, generator=g)).clamp(-1, 1)
        >>> metric = SlicedWassersteinDistance(image_size=32, max_descriptors=512)
        >>> metric.update(real, real=True)
        >>> metric.update(real, real=False)
        >>> metric.compute()["swd_avg"]
        tensor(0.)
        >>> metric.reset()
        >>> metric.update(real, real=True)
        >>> metric.update(noisy, real=False)
        >>> {name: round(value.item(), 1) for name, value in metric.compute().items()}
        {'swd_32': 58.8, 'swd_16': 74.1, 'swd_avg': 66.4}
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self,
        image_size: int,
        max_descriptors: int = 16384,
        num_descriptors_per_image: int = 128,
        num_projections: int = 512,
        seed: int = 0,
        reset_real_features: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (
            isinstance(image_size, bool)
            or not isinstance(image_size, int)
            or image_size < _MIN_RESOLUTION
            or image_size & (image_size - 1)
        ):
            raise ValueError(
                "Expected argument `image_size` to be a power of two >= 16, but got"
                f" {image_size!r}."
            )
        max_descriptors = check_int(max_descriptors, "max_descriptors")
        num_descriptors_per_image = check_int(
            num_descriptors_per_image, "num_descriptors_per_image"
        )
        num_projections = check_int(num_projections, "num_projections")
        seed = check_int(seed, "seed", minimum=0)
        if not isinstance(reset_real_features, bool):
            raise ValueError(
                "Expected argument `reset_real_features` to be a bool, but got"
                f" {reset_real_features!r}."
            )
        self.image_size = image_size
        self.max_descriptors = max_descriptors
        self.num_descriptors_per_image = num_descriptors_per_image
        self.num_projections = num_projections
        self.seed = seed
        self.reset_real_features = reset_real_features
        #: ``(seed, num_projections, real descriptor sets, their sorted projections)`` kept
        #: between computes when the real features are kept.
        self._real_cache: tuple[int, int, dict[int, Tensor], dict[int, list[Tensor]]] | None = None
        self.resolutions = tuple(
            image_size >> k for k in range((image_size // _MIN_RESOLUTION).bit_length())
        )
        width = _CHANNELS * _PATCH_SIZE * _PATCH_SIZE
        for prefix in ("real", "fake"):
            # Shape [1] (not a scalar) so that "cat" across processes yields one count per process.
            self.add_state(f"{prefix}_images_seen", torch.zeros(1, dtype=torch.long), "cat")
            for resolution in self.resolutions:
                self.add_state(
                    f"{prefix}_descriptors_{resolution}", torch.zeros(max_descriptors, width), "cat"
                )

    def _check_images(self, images: object) -> Tensor:
        if not isinstance(images, Tensor) or not images.is_floating_point():
            what = (
                f"a {images.dtype} tensor" if isinstance(images, Tensor) else type(images).__name__
            )
            raise TypeError(f"Expected argument `images` to be a float tensor, but got {what}.")
        expected = ["B", _CHANNELS, self.image_size, self.image_size]
        if images.ndim != 4 or images.shape[0] == 0 or list(images.shape[1:]) != expected[1:]:
            raise ValueError(
                f"Expected argument `images` to have shape {expected} with B >= 1, but got"
                f" {list(images.shape)}."
            )
        if not bool(torch.isfinite(images).all()):
            raise ValueError(
                "Expected argument `images` to hold only finite values, but got NaN/Inf."
            )
        low, high = images.min().item(), images.max().item()
        if low < -1.0 or high > 1.0:
            raise ValueError(
                "Expected argument `images` to have values in [-1, 1], but got values in"
                f" [{low:.4g}, {high:.4g}]."
            )
        return images

    def update(self, images: Tensor, real: bool) -> None:
        """Offer the descriptors of a batch of images to the real or fake reservoirs.

        Args:
            images: ``[B, 3, image_size, image_size]`` float tensor with values in ``[-1, 1]``.
            real: ``True`` for real (training) images, ``False`` for generated ones.
        """
        if not isinstance(real, bool):
            raise TypeError(f"Expected argument `real` to be a bool, but got {real!r}.")
        images = self._check_images(images)
        prefix = "real" if real else "fake"
        seen_state: Tensor = getattr(self, f"{prefix}_images_seen")
        images_seen = int(seen_state.sum())
        pyramid = laplacian_pyramid(images.float(), _MIN_RESOLUTION)
        for level_index, (resolution, level) in enumerate(
            zip(self.resolutions, pyramid, strict=True)
        ):
            generator = torch.Generator().manual_seed(
                _mix_seed(self.seed, level_index, images_seen)
            )
            descriptors = sample_descriptors(
                level, self.num_descriptors_per_image, _PATCH_SIZE, generator
            )
            _reservoir_insert(
                getattr(self, f"{prefix}_descriptors_{resolution}"),
                images_seen * self.num_descriptors_per_image,
                descriptors.flatten(1),
                generator,
            )
        seen_state += images.shape[0]

    def forward(self, *args: Any, **kwargs: Any) -> None:
        """Same as :meth:`update`: the SWD of a single batch is not meaningful, so none is made."""
        self.update(*args, **kwargs)

    def _descriptor_sets(self, prefix: str) -> dict[int, Tensor]:
        # Before a DDP sync a state is one process's [max, D]; after it, [world, max, D] — one
        # reservoir per process, each filled up to its own count.
        images_seen: Tensor = getattr(self, f"{prefix}_images_seen").reshape(-1)
        if int(images_seen.sum()) == 0:
            raise RuntimeError(
                f"Expected at least one {prefix} image before `compute`, but got none. Call"
                f" `update(images, real={prefix == 'real'})` first."
            )
        filled = (images_seen * self.num_descriptors_per_image).clamp(max=self.max_descriptors)
        mask = torch.arange(self.max_descriptors, device=filled.device) < filled[:, None]
        sets = {}
        for resolution in self.resolutions:
            state: Tensor = getattr(self, f"{prefix}_descriptors_{resolution}")
            rows = state.reshape(-1, self.max_descriptors, state.shape[-1])[mask]
            sets[resolution] = rows.view(-1, _CHANNELS, _PATCH_SIZE, _PATCH_SIZE)
        return sets

    def compute(self) -> dict[str, Tensor]:
        """SWD ×10³ per level and averaged: ``{"swd_32": ..., "swd_16": ..., "swd_avg": ...}``."""
        real, fake = self._descriptor_sets("real"), self._descriptor_sets("fake")
        projections = None
        if not self.reset_real_features:
            projections = self._kept_real_projections(real)
        generator = torch.Generator().manual_seed(self.seed)
        result = swd_from_descriptors(
            real, fake, self.num_projections, generator, real_projections=projections
        )
        return result.as_dict()

    def _kept_real_projections(self, real: dict[int, Tensor]) -> dict[int, list[Tensor]]:
        """The real set's sorted projections, made again only when the set or the seed changed."""
        cache = self._real_cache
        if (
            cache is None
            or cache[:2] != (self.seed, self.num_projections)
            or cache[2].keys() != real.keys()
            or not all(
                cache[2][r].shape == d.shape
                and cache[2][r].device == d.device
                and torch.equal(cache[2][r], d)
                for r, d in real.items()
            )
        ):
            generator = torch.Generator().manual_seed(self.seed)
            projections = real_projections(real, self.num_projections, generator)
            cache = (self.seed, self.num_projections, real, projections)
            self._real_cache = cache
        return cache[3]

    def reset(self) -> None:
        """Clear the state; keep the real descriptors when ``reset_real_features=False``."""
        if self.reset_real_features:
            super().reset()
            return
        names = ["real_images_seen", *(f"real_descriptors_{r}" for r in self.resolutions)]
        # Metric.reset puts fresh tensors in place and leaves the old ones as they are, so the real
        # states are kept as they are, without a copy.
        kept = {name: getattr(self, name) for name in names}
        super().reset()
        for name, value in kept.items():
            setattr(self, name, value)
