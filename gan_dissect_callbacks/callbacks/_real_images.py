"""What the SWD callbacks take from the training setup: real images, and the discriminator.

**Real images**: a tensor ``[N, 3, S, S]`` in ``[-1, 1]``, a function ``(n, generator) → images``,
or (``None``) the first ``num_real`` images of the datamodule's (or the module's) training
dataloader, drawn once and kept on the CPU. Drawing them advances no RNG that training uses: the
global streams are forked, and every ``torch.Generator`` that the data module, the loader or its
samplers hold (a loader built with ``generator=self.g`` and kept for the run, say) is put back
to its state before the draw.

**Discriminator**: a callable, a dotted submodule name of the LightningModule, ``None`` (none), or
``"auto"`` (``pl_module.discriminator`` if it is a module).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from gan_dissect_callbacks.engines.sampling import rng_isolated
from gan_dissect_callbacks.instrumentation import resolve_layer

__all__ = ["AUTO", "RealImages", "check_real_source", "draw_real_images", "resolve_discriminator"]

#: Real images: a tensor ``[N, 3, S, S]`` in ``[-1, 1]`` or ``(n, generator) → images``.
#: The function comes first so that a config parser (LightningCLI) reads an import path as one.
RealImages = Callable[[int, torch.Generator], Tensor] | Tensor

#: ``discriminator="auto"``: the LightningModule's ``discriminator`` submodule, if any.
AUTO = "auto"


def check_real_source(real_images: object) -> None:
    """Refuse a ``real_images`` argument that is neither ``None``, a tensor nor a function."""
    if (
        real_images is not None
        and not isinstance(real_images, Tensor)
        and not callable(real_images)
    ):
        raise TypeError(
            "Expected argument `real_images` to be None (use the training dataloader), a tensor"
            " [N, 3, S, S] or a function (n, generator) -> images, but got"
            f" {type(real_images).__name__}."
        )


def _images_of(batch: Any) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, list | tuple) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    if isinstance(batch, dict):
        for key in ("image", "images", "img", "x"):
            if isinstance(batch.get(key), Tensor):
                return batch[key]
    raise TypeError(
        f"Cannot find the images in a training batch of type {type(batch).__name__}. Pass"
        " `real_images=` (a tensor or a function (n, generator) -> images) to the callback."
    )


def draw_real_images(
    source: RealImages | None,
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    num: int,
    seed: int,
) -> Tensor:
    """``num`` real images on the CPU (fewer if the source has fewer), without touching the RNG."""
    if isinstance(source, Tensor):
        return source[:num].detach().float().cpu()
    with rng_isolated(pl_module.device):
        if source is not None:
            images = source(num, torch.Generator().manual_seed(seed))
            if not isinstance(images, Tensor):
                raise TypeError(
                    "Expected the `real_images` function to return a tensor [n, 3, S, S], but got"
                    f" {type(images).__name__}."
                )
            return images[:num].detach().float().cpu()
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None:
            loader = datamodule.train_dataloader()
        else:
            try:
                loader = pl_module.train_dataloader()
            except Exception as err:
                raise ValueError(
                    "Cannot find real images: the trainer has no datamodule and the module no"
                    " train_dataloader(). Pass `real_images=` to the callback."
                ) from err
        chunks, count = [], 0
        with _generators_restored(datamodule, pl_module, loader):
            for batch in loader:
                images = _images_of(batch).detach().float().cpu()
                chunks.append(images)
                count += images.shape[0]
                if count >= num:
                    break
    if not chunks:
        raise ValueError("Expected the training dataloader to yield images, but it was empty.")
    return torch.cat(chunks)[:num]


def _generators_of(*owners: Any) -> list[torch.Generator]:
    """Every ``torch.Generator`` that ``owners``, their samplers and batch samplers hold."""
    found: dict[int, torch.Generator] = {}
    pending = list(owners)
    for owner in owners:
        for part in ("sampler", "batch_sampler"):
            pending.append(getattr(owner, part, None))
        pending.append(getattr(getattr(owner, "batch_sampler", None), "sampler", None))
    for obj in pending:
        if obj is None:
            continue
        values = vars(obj).values() if hasattr(obj, "__dict__") else ()
        for value in values:
            if isinstance(value, torch.Generator):
                found[id(value)] = value
    return list(found.values())


@contextmanager
def _generators_restored(*owners: Any) -> Iterator[None]:
    """Put every ``torch.Generator`` of ``owners`` back to its state on exit."""
    saved = [(g, g.get_state()) for g in _generators_of(*owners)]
    try:
        yield
    finally:
        for generator, state in saved:
            generator.set_state(state)


def resolve_discriminator(
    pl_module: pl.LightningModule, discriminator: str | Callable[[Tensor], Tensor] | None
) -> Callable[[Tensor], Tensor] | None:
    """The discriminator to score images with (see the module docstring), or ``None``.

    Raises:
        ValueError: if a name is not a submodule of ``pl_module`` (listing the valid names).
    """
    if discriminator is None or callable(discriminator):
        return discriminator
    if discriminator == AUTO:
        found = getattr(pl_module, "discriminator", None)
        return found if isinstance(found, nn.Module) else None
    return resolve_layer(pl_module, discriminator)  # raises with the valid names
