"""Small image helpers for TensorBoard: grids without torchvision, and finding the writers.

Example:
    >>> import torch
    >>> grid = image_grid(torch.zeros(5, 3, 4, 4), nrow=3, padding=1)
    >>> tuple(grid.shape)
    (3, 11, 16)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["analysis_dir", "batch_step", "image_grid", "tensorboard_writers", "to_unit_range"]


def to_unit_range(images: Tensor) -> Tensor:
    """Map images from ``[-1, 1]`` to ``[0, 1]`` (clamped), the range TensorBoard expects."""
    return ((images.detach().float() + 1) / 2).clamp(0, 1)


def image_grid(
    images: Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 1.0, *, signed: bool = True
) -> Tensor:
    """Tile images ``[N, C, H, W]`` into one ``[C, H', W']`` image, ``nrow`` images per row.

    Args:
        images: the images; in ``[-1, 1]`` when ``signed`` (converted to ``[0, 1]``), else
            already in ``[0, 1]``.
        nrow: images per row.
        padding: pixels between images and around the grid.
        pad_value: value of the padding, in ``[0, 1]``.
        signed: whether ``images`` are in ``[-1, 1]``.

    Raises:
        ValueError: if ``images`` is not 4-D with at least one image.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(
            f"Expected `images` of shape [N, C, H, W] with N ≥ 1, but got {tuple(images.shape)}."
        )
    if nrow < 1:
        raise ValueError(f"Expected argument `nrow` to be ≥ 1, but got {nrow}.")
    x = to_unit_range(images) if signed else images.detach().float().clamp(0, 1)
    n, c, h, w = x.shape
    cols = min(nrow, n)
    rows = -(-n // cols)
    grid = torch.full(
        (c, rows * (h + padding) + padding, cols * (w + padding) + padding),
        pad_value,
        dtype=x.dtype,
        device=x.device,
    )
    for i in range(n):
        r, col = divmod(i, cols)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = x[i]
    return grid.cpu()


def tensorboard_writers(trainer: Any) -> list[Any]:
    """Every TensorBoard ``SummaryWriter`` among a trainer's loggers (possibly none).

    Lightning's ``fast_dev_run`` replaces loggers by a dummy one, which is skipped.
    """
    from lightning.pytorch.loggers import TensorBoardLogger

    return [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]


def batch_step(trainer: Any) -> int:
    """The index of the current training batch, the axis ``self.log`` uses.

    Analyses of the model's state after batch ``b`` are logged at ``batch_step + 1``, the number
    of batches trained (so 0 is the untrained model). ``trainer.global_step`` is not used because
    a GAN stepping two optimizers by hand advances it twice per batch.
    """
    return int(trainer.fit_loop.total_batch_idx)


def analysis_dir(trainer: Any, name: str) -> Path:
    """Where an analysis writes its files: ``{first logger's log_dir}/{name}``.

    Like ``trainer.log_dir`` but without its broadcast, so rank 0 may call it alone under DDP.
    Without a logger (or with ``fast_dev_run``'s dummy one) it is ``default_root_dir/{name}``.
    """
    base = None
    if trainer.loggers:
        logger = trainer.loggers[0]
        base = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
    return Path(base or trainer.default_root_dir) / name
