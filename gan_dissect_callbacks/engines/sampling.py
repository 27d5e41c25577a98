"""Seeded latents and images for analyses that must not touch the training run.

Every engine draws its latents from a :class:`torch.Generator` of its own, so the same seed gives
the same samples on every process and in every run, and the global RNG streams of training are
never advanced. For a given seed and batch size, sample ``i`` gets the same latent whatever the
number of processes, which is what lets results computed on split samples equal single-process
results. (A different batch size draws the latents in other chunks, so it gives other samples.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from gan_dissect_callbacks.arguments import check_int

__all__ = [
    "LatentSampler",
    "SampleBatch",
    "iterate_samples",
    "latents_for",
    "resolve_latent_sampler",
    "rng_isolated",
]

#: ``sampler(n, generator) -> latents [n, ...]`` on the model's device.
LatentSampler = Callable[[int, torch.Generator], Tensor]


def resolve_latent_sampler(
    model: nn.Module, sample_latents: LatentSampler | None = None, latent_dim: int | None = None
) -> LatentSampler:
    """Find how to draw latents for ``model``.

    In order: the explicit ``sample_latents``; ``model.sample_latents(n, generator=...)``;
    standard normal latents of size ``latent_dim`` or ``model.latent_dim`` (also looked up in
    ``model.hparams``).

    Raises:
        ValueError: if none is found, naming the three ways to give one.

    Example:
        >>> from torch import nn
        >>> m = nn.Linear(4, 2)
        >>> m.latent_dim = 4
        >>> tuple(resolve_latent_sampler(m)(3, torch.Generator().manual_seed(0)).shape)
        (3, 4)
    """
    if sample_latents is not None:
        return sample_latents
    method = getattr(model, "sample_latents", None)
    if callable(method):
        return lambda n, generator: method(n, generator=generator)
    dim = latent_dim
    if dim is None:
        dim = getattr(model, "latent_dim", None)
    if dim is None:
        hparams = getattr(model, "hparams", None)
        if hparams is not None and "latent_dim" in hparams:
            dim = hparams["latent_dim"]
    if dim is None:
        raise ValueError(
            f"Cannot tell how to sample latents for {type(model).__name__}. Give the analysis "
            "`sample_latents=lambda n, generator: ...`, or `latent_dim=...`, or define "
            "`sample_latents(n, generator=None)` or a `latent_dim` attribute on the model."
        )
    size = int(dim)

    def normal(n: int, generator: torch.Generator) -> Tensor:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        return torch.randn(n, size, generator=generator).to(device)

    return normal


@dataclass(frozen=True)
class SampleBatch:
    """One batch of an analysis: global sample indices and their latents."""

    indices: Tensor
    latents: Tensor


def iterate_samples(
    sampler: LatentSampler,
    num_samples: int,
    batch_size: int,
    *,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[SampleBatch]:
    """Yield this process's share of ``num_samples`` seeded samples, in batches.

    Latents are drawn in fixed chunks of ``batch_size`` from ``seed`` so sample ``i`` is the same
    on every process; process ``rank`` keeps the samples with ``i % world_size == rank``.

    Example:
        >>> s = lambda n, g: torch.randn(n, 2, generator=g)
        >>> whole = torch.cat([b.latents for b in iterate_samples(s, 5, 2, seed=0)])
        >>> mine = list(iterate_samples(s, 5, 2, seed=0, rank=1, world_size=2))
        >>> [b.indices.tolist() for b in mine]
        [[1], [3]]
        >>> torch.equal(torch.cat([b.latents for b in mine]), whole[[1, 3]])
        True
    """
    num_samples = check_int(num_samples, "num_samples")
    batch_size = check_int(batch_size, "batch_size")
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        latents = sampler(n, generator)
        indices = torch.arange(start, start + n)
        keep = indices % world_size == rank
        if keep.any():
            yield SampleBatch(indices[keep], latents[keep.to(latents.device)])


@contextmanager
def rng_isolated(device: Any = None) -> Iterator[None]:
    """Run a block without advancing the global CPU (and CUDA) RNG streams of training."""
    devices = []
    if device is not None and torch.device(device).type == "cuda":
        devices = [torch.device(device).index or 0]
    with torch.random.fork_rng(devices=devices, enabled=True):
        yield


def latents_for(
    sampler: LatentSampler, indices: Sequence[int], num_samples: int, batch_size: int, *, seed: int
) -> Tensor:
    """Regenerate the latents of given global sample indices of :func:`iterate_samples`.

    Replays the seeded chunks up to the largest index (latents are cheap to draw), so a report
    that stores only sample indices can redraw its top-activating images.

    Example:
        >>> s = lambda n, g: torch.randn(n, 2, generator=g)
        >>> whole = torch.cat([b.latents for b in iterate_samples(s, 7, 3, seed=1)])
        >>> torch.equal(latents_for(s, [5, 0], 7, 3, seed=1), whole[[5, 0]])
        True
    """
    if not indices:
        raise ValueError("Expected at least one sample index, but got none.")
    last = max(indices)
    if min(indices) < 0 or last >= num_samples:
        raise ValueError(f"Expected sample indices in [0, {num_samples}), but got {list(indices)}.")
    generator = torch.Generator().manual_seed(seed)
    chunks = []
    for start in range(0, last + 1, batch_size):
        # Same chunk sizes as iterate_samples: a sampler's draws may depend on the chunk size.
        chunks.append(sampler(min(batch_size, num_samples - start), generator))
    everything = torch.cat(chunks)
    return everything[torch.as_tensor(list(indices), device=everything.device)]
