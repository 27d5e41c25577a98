"""Reading Lightning checkpoints: the one place that opens a ``.ckpt`` file and reads its step.

Example:
    >>> loops = {"fit_loop": {"epoch_loop.batch_progress": {"total": {"completed": 300}}}}
    >>> checkpoint_step({"global_step": 600, "loops": loops}), checkpoint_step({})
    (300, None)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["checkpoint_step", "read_checkpoint"]


def read_checkpoint(path: str | Path, *, weights_only: bool = False) -> Mapping[str, Any]:
    """The checkpoint dict saved at ``path``, memory-mapped where the format allows.

    Memory-mapped, reading the loop counters or the callback states does not load the weights.

    Args:
        path: a checkpoint file.
        weights_only: passed to :func:`torch.load` (a Lightning checkpoint holds plain values and
            tensors only, but hyper-parameters may hold other objects).

    Raises:
        ValueError: if the file does not hold a dict.
    """
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", mmap=True, weights_only=weights_only)
    except RuntimeError:  # not a zip archive (legacy format) cannot be memory-mapped
        data = torch.load(path, map_location="cpu", weights_only=weights_only)
    if not isinstance(data, Mapping):
        raise ValueError(
            f"Expected {path} to hold a Lightning checkpoint (a dict with a 'state_dict'), but it "
            f"holds a {type(data).__name__}."
        )
    return data


def checkpoint_step(checkpoint: Mapping[str, Any]) -> int | None:
    """The number of training batches a Lightning checkpoint records, or ``None`` if none.

    This is the step axis of ``self.log`` and of the callbacks; a checkpoint's ``global_step``
    counts optimizer steps, which a GAN stepping two optimizers advances twice per batch.
    """
    try:
        total = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]
        return int(total["completed"])
    except (KeyError, TypeError, ValueError):
        return None
