"""One pass over seeded samples that serves every analysis needing those samples.

An analysis usually starts the same way: draw seeded latents in batches, generate their images
(capturing some layers), segment them, and fold each batch into a running result. A
:class:`SampleConsumer` is one analysis's share of that work: which samples and layers it needs,
whether it needs concept masks, and what it does with each batch. :func:`run_sample_pass` draws
the batches once for any number of consumers that want the same samples. Per batch, the
generator runs once, capturing the layers of all consumers, and each segmenter runs once.

The engines run their first pass through it with one consumer (their own). The callbacks give it
several when analyses fire at the same step on the same generator, seed and batch size (see
docs/callbacks.md, "Shared samples"). So a dissection, an artifact scoring and an SWD measurement
at one step generate their images once.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from gan_dissect_callbacks.engines.generator import AnalysedGenerator
    >>> class Brightness(SampleConsumer):
    ...     def add(self, batch):
    ...         self.total = getattr(self, "total", 0.0) + float(batch.images.sum())
    >>> class Peaks(SampleConsumer):
    ...     def add(self, batch):
    ...         self.peaks = batch.activations["0"].amax(dim=1)
    >>> g = AnalysedGenerator(nn.Sequential(nn.Linear(2, 3), nn.Tanh()), latent_dim=2)
    >>> first, second = Brightness(num_samples=4, batch_size=2), Peaks(4, 2, layers=["0"])
    >>> run_sample_pass(g, [first, second])  # the generator runs twice, not four times
    >>> first.error is None, tuple(second.peaks.shape)
    (True, (2,))
"""

from __future__ import annotations

import itertools
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from gan_dissect_callbacks.arguments import check_int
from gan_dissect_callbacks.engines.distributed import dist_info
from gan_dissect_callbacks.engines.generator import AnalysedGenerator
from gan_dissect_callbacks.segmenters.base import Segmenter, checked_segment

__all__ = ["PassBatch", "SampleConsumer", "run_sample_pass"]


@dataclass(frozen=True)
class PassBatch:
    """One batch of a pass: what every consumer of the pass may read (and must not modify).

    Attributes:
        indices: ``[B]`` global sample indices (see
            :func:`~gan_dissect_callbacks.engines.sampling.iterate_samples`).
        latents: the batch's latents.
        images: the generated images, in the generator's own precision.
        activations: ``{layer: featuremap}`` of every layer a consumer of the pass asked for.
        masks: ``{id(segmenter): [B, C, H, W] bool}``, checked, for each segmenter asked for.
    """

    indices: Tensor
    latents: Tensor
    images: Tensor
    activations: Mapping[str, Tensor]
    masks: Mapping[int, Tensor]

    def masks_of(self, segmenter: Segmenter) -> Tensor:
        """The concept masks ``segmenter`` gave for this batch's images."""
        return self.masks[id(segmenter)]


class SampleConsumer(ABC):
    """One analysis's part of a pass over seeded samples: what it needs and what it does.

    Subclasses implement :meth:`add` (and :meth:`begin` if something must happen first).
    A failure inside either is kept in :attr:`error` and stops only this consumer. The
    analysis re-raises it with :meth:`raise_error` when it finishes.

    Args:
        num_samples: how many samples it takes: the pass's first ``num_samples``.
        batch_size: latents are drawn in chunks of this size; with the seed, this defines the
            samples.
        seed: seed of the latents.
        layers: layers whose featuremaps it reads from each batch.
        segmenter: the segmenter whose masks it reads, if any.
        split: under ``torch.distributed``, take only this process's share of the samples (every
            ``world_size``-th one) instead of all of them.
        modules: modules outside the generator it runs on the batches (a discriminator); the
            pass keeps them in eval mode too.

    Attributes:
        error: the exception that stopped it, or ``None``.
        seconds: its share of the pass's wall time: its own :meth:`begin` and :meth:`add`, an
            equal part of generating each batch it took with the consumers that took it too,
            and of segmenting them with the consumers of the same segmenter.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        seed: int = 0,
        layers: Sequence[str] = (),
        segmenter: Segmenter | None = None,
        split: bool = False,
        modules: Sequence[nn.Module] = (),
    ) -> None:
        self.num_samples = check_int(num_samples, "num_samples")
        self.batch_size = check_int(batch_size, "batch_size")
        self.seed = check_int(seed, "seed", minimum=0)
        self.layers = tuple(layers)
        self.segmenter = segmenter
        self.split = split
        self.modules = tuple(modules)
        self.error: Exception | None = None
        self.seconds = 0.0

    def begin(self, g: AnalysedGenerator) -> None:  # noqa: B027 (most consumers need none)
        """Called once before the first batch, inside the pass's harmless context."""

    @abstractmethod
    def add(self, batch: PassBatch) -> None:
        """Fold in one batch of samples."""

    def settings(self) -> dict[str, Any]:
        """What the consumer was made with: it serves only an analysis called with the same."""
        return {
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "layers": list(self.layers),
        }

    def check_made_like(self, expected: SampleConsumer, call: str) -> None:
        """Raise unless this consumer has ``expected``'s :meth:`settings` (those of ``call``).

        Raises:
            ValueError: naming each setting that differs, expected against given.
        """
        mine, theirs = self.settings(), expected.settings()
        differ = sorted(key for key in theirs if mine.get(key) != theirs[key])
        if differ:
            raise ValueError(
                f"Expected `samples` made with the arguments of the {call} call "
                f"({', '.join(f'{k}={theirs[k]!r}' for k in differ)}), but got "
                f"{', '.join(f'{k}={mine.get(k)!r}' for k in differ)}."
            )

    def raise_error(self) -> None:
        """Re-raise the failure that stopped this consumer, if any."""
        if self.error is not None:
            raise self.error

    def share(self) -> tuple[int, int]:
        """``(rank, world_size)`` of the samples it takes: its process's share, or all."""
        return dist_info() if self.split else (0, 1)

    def same_samples(self, other: SampleConsumer) -> bool:
        """Whether one pass can serve both: the same latents, chunked alike, split alike.

        A consumer that takes fewer samples than the other must take whole batches, so that
        its latents are drawn in the same chunks.
        """
        fewer = min(self.num_samples, other.num_samples)
        alike = (self.seed, self.batch_size, self.share()) == (
            other.seed,
            other.batch_size,
            other.share(),
        )
        return alike and (self.num_samples == other.num_samples or fewer % self.batch_size == 0)


def run_sample_pass(g: AnalysedGenerator, consumers: Sequence[SampleConsumer]) -> None:
    """Draw the samples once and hand every batch to each consumer that takes it.

    Runs inside ``g.harmless()``. The consumers' extra modules are kept in eval mode as well.
    The pass covers the most samples any consumer takes. A consumer stops receiving batches
    after its own ``num_samples``, or once it has failed (see :attr:`SampleConsumer.error`).
    The pass ends when no consumer takes more. Each consumer's :attr:`SampleConsumer.seconds`
    is set.

    Raises:
        ValueError: if the consumers do not all want the same samples
            (:meth:`SampleConsumer.same_samples`).
        Exception: whatever generating or segmenting a batch raised. That work is shared, so
            it fails the whole pass.
    """
    if not consumers:
        return
    lead = consumers[0]
    if not all(a.same_samples(b) for a, b in itertools.combinations(consumers, 2)):
        raise ValueError(
            "Expected every two consumers of one pass to want the same samples (seed, batch size, "
            "split, and whole batches when one takes fewer), but got "
            f"{[(c.seed, c.batch_size, c.num_samples, c.split) for c in consumers]}."
        )
    clock = time.perf_counter
    charged = [0.0] * len(consumers)

    def hand(index: int, call: object, *args: object) -> None:
        consumer = consumers[index]
        begun = clock()
        try:
            call(*args)  # type: ignore[operator]
        except Exception as err:  # it stops this consumer only; its analysis re-raises it
            consumer.error = err
        charged[index] += clock() - begun

    def split_among(seconds: float, among: Sequence[int]) -> None:
        for index in among:
            charged[index] += seconds / len(among)

    total = max(c.num_samples for c in consumers)
    rank, world = lead.share()
    extra = [m for c in consumers for m in c.modules]
    started = clock()
    try:
        with g.harmless(also=extra):
            for index, consumer in enumerate(consumers):
                hand(index, consumer.begin, g)
            batches = g.samples(total, lead.batch_size, seed=lead.seed, rank=rank, world_size=world)
            for batch in batches:
                first = int(batch.indices[0])
                taking = [
                    i for i, c in enumerate(consumers) if c.error is None and first < c.num_samples
                ]
                if not taking:
                    break
                begun = clock()
                layers = list(dict.fromkeys(name for i in taking for name in consumers[i].layers))
                images, acts = g.run(batch.latents, capture=layers)
                split_among(clock() - begun, taking)
                masks = {}
                for i in taking:
                    segmenter = consumers[i].segmenter
                    if segmenter is not None and id(segmenter) not in masks:
                        begun = clock()
                        masks[id(segmenter)] = checked_segment(segmenter, images)
                        split_among(
                            clock() - begun,
                            [j for j in taking if consumers[j].segmenter is segmenter],
                        )
                shared = PassBatch(batch.indices, batch.latents, images, acts, masks)
                for i in taking:
                    hand(i, consumers[i].add, shared)
    finally:
        # The rest (drawing latents, the harmless context) is shared by all alike.
        rest = max(0.0, clock() - started - sum(charged)) / len(consumers)
        for consumer, seconds in zip(consumers, charged, strict=True):
            consumer.seconds = seconds + rest
