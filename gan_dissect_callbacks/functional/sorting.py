"""Sorting the rows of a tensor: where the SWD and the quantile calibration spend their time.

The sliced Wasserstein distance sorts the projections of every set on every direction
(:mod:`~gan_dissect_callbacks.functional.swd`), and a dissection's candidate levels are
quantiles of each unit's activations
(:func:`~gan_dissect_callbacks.functional.threshold.quantile_levels`): both sort many long
rows, with :func:`sort_rows`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

__all__ = ["sort_rows"]

#: Below this many values one thread sorts faster than starting several.
_PARALLEL_SORT_ELEMENTS = 1 << 20


def sort_rows(x: Tensor, *, inplace: bool = False) -> Tensor:
    """The values of ``x`` sorted along its last dimension (ascending).

    On the CPU NumPy's vectorised sort returns the very same values as ``torch.sort`` several
    times faster (it computes no indices), with large tensors split by rows over
    ``torch.get_num_threads()`` threads; elsewhere, and for tensors that need gradients, it is
    ``torch.sort``.

    Args:
        x: the tensor to sort.
        inplace: sort the rows of ``x`` itself (a contiguous CPU tensor nobody else reads) and
            return it, sparing a copy of the size of ``x``.

    Example:
        >>> sort_rows(torch.tensor([[3.0, 1.0, 2.0], [0.0, -1.0, 5.0]]))
        tensor([[ 1.,  2.,  3.],
                [-1.,  0.,  5.]])
    """
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or x.requires_grad:
        return x.sort(dim=-1).values
    own = inplace and x.is_contiguous()
    out = x.numpy() if own else x.numpy().copy(order="C")
    if out.ndim == 0 or out.size == 0:
        return torch.from_numpy(out)
    rows = out.reshape(-1, out.shape[-1])  # a view: the rows are sorted in place
    threads = min(torch.get_num_threads(), rows.shape[0])
    if threads < 2 or out.size < _PARALLEL_SORT_ELEMENTS:
        rows.sort(axis=-1)
    else:
        bounds = np.linspace(0, rows.shape[0], threads + 1).astype(int)
        with ThreadPoolExecutor(threads) as pool:  # NumPy releases the GIL while it sorts
            list(pool.map(lambda i: rows[bounds[i] : bounds[i + 1]].sort(axis=-1), range(threads)))
    return x if own else torch.from_numpy(out)
