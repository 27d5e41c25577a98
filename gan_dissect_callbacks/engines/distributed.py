"""The few ``torch.distributed`` operations the engines need, all no-ops in a single process.

Under DDP every rank calls an engine with the same arguments; each takes every
``world_size``-th sample (see :func:`~gan_dissect_callbacks.engines.sampling.iterate_samples`),
and the counts are summed here, so every rank ends with the single-process result.

Example:
    >>> import torch
    >>> dist_info()
    (0, 1)
    >>> all_reduce_sum(torch.tensor([1, 2])).tolist()
    [1, 2]
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "AnalysisFailedElsewhere",
    "agree_on_failure",
    "all_gather_cat",
    "all_reduce_sum",
    "dist_info",
]


class AnalysisFailedElsewhere(RuntimeError):
    """The analysis failed on another process; this one stops it too, so no collective hangs."""


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` outside ``torch.distributed``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _collective_device(t: Tensor) -> torch.device:
    # NCCL reduces CUDA tensors only; gloo takes CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(t: Tensor) -> Tensor:
    """``t`` summed over processes, on ``t``'s device (``t`` itself in a single process)."""
    if dist_info()[1] == 1:
        return t
    moved = t.to(_collective_device(t))
    dist.all_reduce(moved)
    return moved.to(t.device)


def all_gather_cat(t: Tensor, dim: int = 0) -> Tensor:
    """Every process's ``t`` (same shape on all), concatenated along ``dim`` in rank order."""
    world = dist_info()[1]
    if world == 1:
        return t
    moved = t.contiguous().to(_collective_device(t))
    parts = [torch.empty_like(moved) for _ in range(world)]
    dist.all_gather(parts, moved)
    return torch.cat(parts, dim).to(t.device)


@contextmanager
def agree_on_failure(what: str = "the analysis") -> Iterator[None]:
    """Run the collective-free part of an analysis; then every process learns if any one failed.

    Put the local part of an engine (drawing, generating, segmenting, counting) inside, and its
    collectives after. A process whose block raises tells the others why and re-raises; the
    others finish their block, learn it and raise :class:`AnalysisFailedElsewhere` with that
    reason (so rank 0, which alone warns, says what failed where). So every
    process leaves the analysis at the same point and no process waits in a collective that
    another one will never enter (gloo aborts the run there; NCCL hangs). In a single process
    this is a no-op.

    Example:
        >>> with agree_on_failure():
        ...     total = 1 + 1
        >>> total
        2
    """
    if dist_info()[1] == 1:
        yield
        return
    try:
        yield
    except BaseException as err:
        _exchange_failures(f"{type(err).__name__}: {err}")
        raise
    failures = _exchange_failures("")
    if failures:
        rank, reason = failures[0]
        raise AnalysisFailedElsewhere(
            f"{what} failed on process {rank} ({reason}); this process stopped it too, so that "
            "no process waits for the others in a collective."
        )


def _exchange_failures(reason: str) -> list[tuple[int, str]]:
    """Every process's failure (``""`` for none): ``[(rank, reason)]`` of those that failed."""
    reasons: list[str] = [""] * dist_info()[1]
    dist.all_gather_object(reasons, reason)
    return [(rank, text) for rank, text in enumerate(reasons) if text]
