"""``gan-dissect`` under ``torchrun``: join the process group the launcher describes.

``torchrun --nproc_per_node N -m gan_dissect_callbacks.cli ...`` starts N copies of the command
with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set. Each joins
the group (gloo on the CPU, NCCL on CUDA), runs the same
:func:`~gan_dissect_callbacks.engines.dissection.dissect` (each process takes every N-th sample,
and the counts are merged exactly), and only rank 0 writes. Without those variables the command
runs alone, as before.

Example:
    >>> import torch
    >>> launched_by_torchrun({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    True
    >>> with process_group(torch.device("cpu")) as device:  # alone: nothing to join
    ...     device
    device(type='cpu')
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.distributed as dist

__all__ = ["launched_by_torchrun", "process_group"]


def launched_by_torchrun(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment describes a process group (``RANK`` and ``WORLD_SIZE`` set)."""
    environ = os.environ if environ is None else environ
    return "RANK" in environ and "WORLD_SIZE" in environ


@contextmanager
def process_group(device: torch.device) -> Iterator[torch.device]:
    """Be one process of the launcher's group for the block; yields this process's device.

    Outside ``torchrun`` (or when a group exists already) this does nothing and yields
    ``device``. Under it, ``--device cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU per process;
    an explicit ``cuda:N`` is kept), the group is initialised from the environment with NCCL for
    CUDA and gloo otherwise, and destroyed on exit.
    """
    if not launched_by_torchrun() or not dist.is_available() or dist.is_initialized():
        yield device
        return
    backend = "gloo"
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        backend = "nccl"
    dist.init_process_group(backend, init_method="env://")
    try:
        yield device
    finally:
        dist.destroy_process_group()
