"""One intervention analysis made ready: the generator, the edited layer, the concept measured.

Every measure of the package starts the same way: wrap the generator, check the layer, the
segmenter and the concept, enter the harmless context, and probe the layer's featuremap and the
segmentation size on one seeded sample. :func:`prepared` does it once for all of them and yields
a :class:`PreparedAnalysis`, which then draws, edits and segments for the measure.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from gan_dissect_callbacks.arguments import check_segmenter, check_unit_indices
from gan_dissect_callbacks.engines.distributed import agree_on_failure
from gan_dissect_callbacks.engines.generator import (
    AnalysedGenerator,
    GeneratorLike,
    featuremap_shape,
)
from gan_dissect_callbacks.engines.sampling import SampleBatch
from gan_dissect_callbacks.instrumentation import UnitEdit
from gan_dissect_callbacks.segmenters.base import Segmenter, check_images, checked_segment
from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary

__all__ = [
    "Originals",
    "PreparedAnalysis",
    "check_locations",
    "check_values",
    "chunks",
    "concept_index",
    "full_vector",
    "prepared",
    "region_means",
    "twice",
]


@dataclass(frozen=True)
class PreparedAnalysis:
    """A checked analysis of one layer and one concept, inside the generator's harmless context.

    Attributes:
        generator: the generator under analysis.
        layer: the edited layer, a name of ``generator.module``.
        segmenter: gives the concept's masks.
        concept: the concept measured.
        concept_index: its channel in the segmenter's output.
        num_units: the layer's units U.
        featuremap_size: ``(h, w)`` of the layer's featuremap.
        segmentation_size: ``(S, S')`` of the segmenter's masks of the generated images.
    """

    generator: AnalysedGenerator
    layer: str
    segmenter: Segmenter
    concept: str
    concept_index: int
    num_units: int
    featuremap_size: tuple[int, int]
    segmentation_size: tuple[int, int]

    @property
    def device(self) -> torch.device:
        """Where the generator runs."""
        return self.generator.device

    def images(self, latents: Tensor, edit: UnitEdit | None = None) -> Tensor:
        """Images of ``latents``, with ``edit`` applied to the layer if given."""
        return self.generator.images(latents, None if edit is None else {self.layer: edit})

    def concept_scores(self, images: Tensor, soft: bool = False) -> Tensor:
        """``s_c`` of ``images``: ``[B, S, S']`` float (hard 0/1 or soft probabilities)."""
        out = checked_segment(self.segmenter, images, soft=soft)
        return out[:, self.concept_index].float()

    def regions(self, locations: Tensor) -> Tensor:
        """P upsampled to the segmentation resolution: ``[L, S, S']``, nearest, on the device."""
        up = F.interpolate(locations.unsqueeze(1), size=self.segmentation_size, mode="nearest")
        return up[:, 0].to(self.device)

    def units(self, units: Sequence[int] | Tensor, name: str = "units") -> Tensor:
        """``units`` checked against the layer: distinct indices in ``[0, U)``, on the CPU."""
        return check_unit_indices(units, self.num_units, name)

    def locations(self, locations: Tensor | None) -> Tensor:
        """``locations`` checked against the featuremap (see :func:`check_locations`)."""
        return check_locations(locations, self.featuremap_size)


class Originals:
    """The unedited samples of an analysis: each one generated and segmented once for every measure.

    :meth:`of` gives a batch's segmentation (every concept, as the segmenter returns it) and the
    layer's featuremap. A round whose samples all fit one batch (``num_samples ≤ batch_size``)
    holds them after their first request, so every later measure and concept reads the same
    tensors; a larger round generates each batch again per request, so memory stays that of
    one batch.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from gan_dissect_callbacks.segmenters.base import GroundTruthSegmenter
        >>> from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary
        >>> net = nn.Sequential(nn.Unflatten(1, (3, 2, 2)), nn.Tanh())
        >>> net.latent_dim = 12
        >>> seg = GroundTruthSegmenter(ConceptVocabulary.from_pairs([("lit", "color")]),
        ...                            lambda x: x[:, :1] > 0)
        >>> with prepared(net, "0", seg, "lit", seed=0) as s:
        ...     originals = Originals(s, num_samples=4, batch_size=4)
        ...     batch = next(iter(s.generator.samples(4, 4, seed=0)))
        ...     first, _ = originals.of(batch)
        ...     again, _ = originals.of(batch)
        >>> first is again, tuple(first.shape)
        (True, (4, 1, 2, 2))
    """

    def __init__(self, s: PreparedAnalysis, *, num_samples: int, batch_size: int) -> None:
        self._s = s
        self._batch_size = batch_size
        self._hold = num_samples <= batch_size
        self._held: dict[int, tuple[Tensor, Tensor, Tensor]] = {}

    def of(self, batch: SampleBatch) -> tuple[Tensor, Tensor]:
        """``(segmentation [B, C, S, S'], featuremap [B, U, h, w])`` of ``batch``'s samples."""
        start = int(batch.indices[0]) // self._batch_size * self._batch_size
        held = self._held.get(start)
        if held is not None:
            indices, segmentation, featuremap = held
            if torch.equal(indices, batch.indices):
                return segmentation, featuremap
            # A process's share of a batch held whole (see `iterate_samples`).
            rows = batch.indices - start
            if bool((rows < indices.numel()).all()) and torch.equal(indices[rows], batch.indices):
                on = rows.to(segmentation.device)
                return segmentation[on], featuremap[on.to(featuremap.device)]
        images, acts = self._s.generator.run(batch.latents, capture=[self._s.layer])
        segmentation = checked_segment(self._s.segmenter, images)
        featuremap = acts[self._s.layer]
        if self._hold:
            self._held[start] = (batch.indices, segmentation, featuremap)
        return segmentation, featuremap


@contextmanager
def prepared(
    generator: GeneratorLike,
    layer: str,
    segmenter: Segmenter,
    concept: str,
    *,
    seed: int,
    grad: bool = False,
) -> Iterator[PreparedAnalysis]:
    """Check an analysis's generator, layer, segmenter and concept; run the block harmlessly.

    The layer's shape and the images' size are probed on the first latent of ``seed``. The block
    is an analysis's collective-free part: under ``torch.distributed`` every process learns on
    leaving it whether any one failed (:func:`~.distributed.agree_on_failure`), so the sums that
    follow it are entered by all processes or by none.

    Raises:
        ValueError: an unknown layer (listing the generator's layers) or concept (listing the
            vocabulary), or a layer whose output is not a ``[B, U, h, w]`` featuremap.
        TypeError: a generator that is not a module, a segmenter that is not one.
    """
    g = AnalysedGenerator.wrap(generator)
    g.resolve_layer(layer)
    check_segmenter(segmenter)
    index = concept_index(segmenter.vocabulary, concept)
    with g.harmless(grad=grad), agree_on_failure("the intervention analysis"):
        with torch.no_grad():
            images, acts = g.run(g.latents(1, seed), capture=[layer])
        num_units, h, w = featuremap_shape(layer, acts[layer])
        check_images(images)
        seg_size = segmenter.segmentation_size((int(images.shape[-2]), int(images.shape[-1])))
        yield PreparedAnalysis(
            generator=g,
            layer=layer,
            segmenter=segmenter,
            concept=concept,
            concept_index=index,
            num_units=num_units,
            featuremap_size=(h, w),
            segmentation_size=(int(seg_size[0]), int(seg_size[1])),
        )


def concept_index(vocabulary: ConceptVocabulary, concept: str) -> int:
    """The channel of ``concept``; an unknown one gets the list of known concepts."""
    if not isinstance(concept, str) or concept not in vocabulary.names:
        raise ValueError(
            f"Unknown concept {concept!r}. Known concepts: {', '.join(vocabulary.names)}."
        )
    return vocabulary.index(concept)


def check_values(values: float | Sequence[float] | Tensor, count: int, name: str) -> Tensor:
    """Insertion values for ``count`` listed units: ``[count]`` float64, finite."""
    if isinstance(values, int | float) and not isinstance(values, bool):
        k = torch.full((count,), float(values), dtype=torch.float64)
    else:
        k = torch.as_tensor(values).detach().double().cpu()
        if k.ndim != 1 or k.numel() != count:
            raise ValueError(
                f"Expected argument `{name}` to be a float or to hold one value per listed "
                f"unit ({count}), but got shape {list(k.shape)}."
            )
    if not bool(torch.isfinite(k).all()):
        raise ValueError(f"Expected argument `{name}` to be finite, but got {k.tolist()}.")
    return k


def check_locations(locations: Tensor | None, featuremap_size: tuple[int, int]) -> Tensor:
    """Locations P as ``[L, h, w]`` float in ``[0, 1]``, each selecting at least one pixel.

    ``None`` is one location covering every pixel.
    """
    h, w = featuremap_size
    if locations is None:
        return torch.ones(1, h, w)
    if not isinstance(locations, Tensor) or not (
        locations.dtype == torch.bool or locations.is_floating_point()
    ):
        got = f"dtype {locations.dtype}" if isinstance(locations, Tensor) else type(locations)
        raise TypeError(
            f"Expected argument `locations` to be a bool or float tensor [h, w] or [L, h, w], but "
            f"got {got}."
        )
    p = locations.detach().cpu()
    p = p.unsqueeze(0) if p.ndim == 2 else p
    if p.ndim != 3 or tuple(p.shape[-2:]) != (h, w) or p.shape[0] == 0:
        raise ValueError(
            f"Expected argument `locations` of shape [h, w] or [L, h, w] at the featuremap "
            f"resolution ({h}x{w}), but got {list(locations.shape)}. Build patches with "
            f"patch_locations(({h}, {w}), patch_size)."
        )
    p = p.float()
    if bool(((p < 0) | (p > 1) | p.isnan()).any()):
        raise ValueError("Expected argument `locations` to hold values in [0, 1].")
    empty = (p.flatten(1).sum(1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"Expected argument `locations` to select at least one pixel in every location P, but "
            f"location(s) {empty} select none."
        )
    return p


def full_vector(units: Tensor, values: Tensor, num_units: int) -> Tensor:
    """``[U]`` float64: ``values`` at ``units``, 0 elsewhere."""
    full = torch.zeros(num_units, dtype=torch.float64)
    full[units] = values
    return full


def region_means(scores: Tensor, regions: Tensor) -> Tensor:
    """``[N]``: the mean of ``scores[n]`` weighted by ``regions[n]``."""
    return (scores * regions).sum((1, 2)) / regions.sum((1, 2))


def twice(t: Tensor) -> Tensor:
    """``t`` stacked on itself along the batch: one copy to insert into, one to ablate."""
    return torch.cat([t, t])


def chunks(n: int, size: int) -> Iterator[slice]:
    """``[0, n)`` in slices of at most ``size``."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))
