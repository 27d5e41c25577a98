"""The real side of the artifact search's SWD, drawn once and shared by scoring and verification.

Every SWD of the artifact search compares generated descriptor sets with the same real set: the
descriptors of the real images at positions drawn from a generator seeded with the analysis's
``seed``, normalised, projected on directions drawn next from that generator, and sorted. The sort
is much of the cost of one comparison, so :func:`prepare_real` makes it once; a caller that
analyses the same real images again (a callback, check after check) keeps the result and passes
it back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from gan_dissect_callbacks.arguments import check_int
from gan_dissect_callbacks.engines.artifacts._images import check_real_images
from gan_dissect_callbacks.functional.swd_sets import (
    SortedReal,
    draw_directions,
    flat_descriptors,
    image_descriptors,
    sort_real,
)

__all__ = ["RealSide", "prepare_real"]


@dataclass(frozen=True)
class RealSide:
    """The real images' sorted projections for one seed and one SWD setting.

    Memory: ``L × num_projections × N × num_descriptors_per_image`` float32 values for ``N`` real
    images and ``L`` pyramid levels (128 MiB at 32 px with 256 images and the defaults).

    Attributes:
        sorted_real: the sorted projections and their directions.
        seed: seed of the descriptor positions and of the directions.
        num_descriptors_per_image: neighbourhoods per image per level.
        num_projections: directions per level.
        generator_state: the state of the seed's generator after the real side's draws; the
            generated sets' positions continue from it.
        real_images: the real images it was made from (to check a reuse).
    """

    sorted_real: SortedReal
    seed: int
    num_descriptors_per_image: int
    num_projections: int
    generator_state: Tensor = field(repr=False)
    real_images: Tensor = field(repr=False)

    def first(self, num_projections: int) -> SortedReal:
        """The sorted real side on the first ``num_projections`` directions of every level."""
        if num_projections == self.num_projections:
            return self.sorted_real
        real = self.sorted_real
        return SortedReal(
            {r: d[:, :num_projections] for r, d in real.directions.items()},
            {r: p[:num_projections] for r, p in real.projections.items()},
            real.channels,
        )

    def generator(self) -> torch.Generator:
        """A generator in the state right after the real side's draws."""
        rng = torch.Generator()
        rng.set_state(self.generator_state)
        return rng


def prepare_real(
    real_images: Tensor, *, seed: int, num_descriptors_per_image: int, num_projections: int
) -> RealSide:
    """Descriptors of ``real_images``, their directions and sorted projections, for ``seed``.

    Example:
        >>> real = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
        >>> side = prepare_real(real, seed=0, num_descriptors_per_image=8, num_projections=4)
        >>> tuple(side.sorted_real.projections[16].shape)
        (4, 32)
    """
    real_images = check_real_images(real_images)
    seed = check_int(seed, "seed", minimum=0)
    num_descriptors_per_image = check_int(num_descriptors_per_image, "num_descriptors_per_image")
    num_projections = check_int(num_projections, "num_projections")
    rng = torch.Generator().manual_seed(seed)
    real_cpu = real_images.float().cpu()
    real = flat_descriptors(
        image_descriptors(real_cpu, num_descriptors_per_image, rng), real_cpu.shape[1]
    )
    sorted_real = sort_real(real, draw_directions(real, num_projections, rng))
    # A copy: a caller changing its tensor in place must not make the side look still valid.
    kept = real_cpu.clone() if real_cpu is real_images else real_cpu
    return RealSide(
        sorted_real, seed, num_descriptors_per_image, num_projections, rng.get_state(), kept
    )


def real_side_for(
    given: RealSide | None,
    real_images: Tensor,
    *,
    seed: int,
    num_descriptors_per_image: int,
    num_projections: int,
) -> RealSide:
    """A new real side when ``given`` is ``None``, else ``given``, checked against these images.

    A side made with more directions serves too: its first ``num_projections`` are used.
    """
    settings = (seed, num_descriptors_per_image, num_projections)
    if given is None:
        return prepare_real(
            real_images,
            seed=seed,
            num_descriptors_per_image=num_descriptors_per_image,
            num_projections=num_projections,
        )
    if not isinstance(given, RealSide):
        raise TypeError(
            "Expected argument `real_side` to be a RealSide made by prepare_real, but got"
            f" {type(given).__name__}."
        )
    made = (given.seed, given.num_descriptors_per_image, given.num_projections)
    enough = made[:2] == settings[:2] and given.num_projections >= num_projections
    same_images = given.real_images.shape == real_images.shape and torch.equal(
        given.real_images, real_images.float().cpu()
    )
    if not enough or not same_images:
        what = "other real images" if enough else f"(seed, per image, projections) {made}"
        raise ValueError(
            f"Expected argument `real_side` to be made for these real images and (seed, per image,"
            f" at least projections) {settings}, but it was made for {what}. Make it with"
            " prepare_real(real_images, seed=..., num_descriptors_per_image=...,"
            " num_projections=...) using the same values, or pass None."
        )
    return given
