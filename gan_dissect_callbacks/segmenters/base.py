"""The segmenter protocol: images in ``[-1, 1]`` to one mask per concept, plus input/output checks.

A segmenter is anything with

- ``vocabulary``: the :class:`~gan_dissect_callbacks.segmenters.vocabulary.ConceptVocabulary`
  whose concept ``i`` is channel ``i`` of every output;
- ``segment(images)``: hard, multi-label masks, ``[B, C, S, S']`` of dtype ``bool``;
- ``soft_segment(images)``: probabilities, ``[B, C, S, S']`` floating in ``[0, 1]``,
  differentiable with respect to the images where the segmenter can be (the continuous
  intervention optimises through it);
- ``segmentation_size(image_size)``: the ``(S, S')`` it returns for images of size ``(H, W)``,
  so an engine can size its buffers and upsample unit activations before the first batch.

Images are ``[B, 3, H, W]`` floating in ``[-1, 1]``, the usual range of a GAN's ``tanh`` output;
a segmenter that wants another range converts inside (see ``ModuleSegmenter``'s
``input_transform``). :func:`checked_segment` runs a segmenter and checks both sides, naming the
fix when something does not fit.

Example:
    >>> import torch
    >>> from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary
    >>> vocab = ConceptVocabulary.from_pairs([("sky", "object"), ("ground", "object")])
    >>> bright = GroundTruthSegmenter(vocab, lambda x: torch.stack([x[:, 0] > 0, x[:, 0] <= 0], 1))
    >>> images = torch.tensor([0.5, -0.5]).reshape(1, 1, 1, 2).expand(1, 3, 2, 2)
    >>> masks = checked_segment(bright, images)
    >>> masks.shape, masks[0, 0].tolist()
    (torch.Size([1, 2, 2, 2]), [[True, False], [True, False]])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from gan_dissect_callbacks.arguments import check_segmenter, check_size
from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary

__all__ = [
    "GroundTruthSegmenter",
    "Segmenter",
    "check_images",
    "check_segmentation",
    "checked_segment",
]

#: How far outside ``[-1, 1]`` image values may stray (resampling overshoot, rounding).
IMAGE_RANGE_TOLERANCE = 1e-3
#: How far outside ``[0, 1]`` soft scores may stray (rounding in softmax).
SCORE_RANGE_TOLERANCE = 1e-5


@runtime_checkable
class Segmenter(Protocol):
    """What the engines need from a segmenter (see the module docstring for the contract).

    ``isinstance(obj, Segmenter)`` checks that the four members exist, not their behaviour;
    :func:`checked_segment` checks the behaviour on every call.
    """

    @property
    def vocabulary(self) -> ConceptVocabulary:
        """The concepts, in output channel order."""
        ...

    def segment(self, images: Tensor) -> Tensor:
        """Hard multi-label masks ``[B, C, S, S']`` (bool) for images ``[B, 3, H, W]``."""
        ...

    def soft_segment(self, images: Tensor) -> Tensor:
        """Probabilities ``[B, C, S, S']`` in ``[0, 1]``, differentiable where possible."""
        ...

    def segmentation_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The ``(S, S')`` of the outputs for images of size ``(H, W)``."""
        ...


def check_images(images: Tensor, *, atol: float = IMAGE_RANGE_TOLERANCE) -> tuple[float, float]:
    """Check that ``images`` is a segmenter's input: ``[B, 3, H, W]``, float, finite, in [-1, 1].

    Args:
        images: the batch to check, ``B ≥ 1``.
        atol: how far outside ``[-1, 1]`` values may be.

    Returns:
        The lowest and highest value, found by the range check itself.

    Raises:
        TypeError: if ``images`` is not a floating tensor.
        ValueError: if the shape is wrong, the batch is empty, or a value is NaN, infinite or out
            of range; the message names the usual fix.

    Example:
        >>> import torch
        >>> check_images(torch.zeros(2, 3, 4, 4))
        (0.0, 0.0)
        >>> check_images(torch.full((1, 3, 2, 2), 255.0))
        Traceback (most recent call last):
        ...
        ValueError: Expected `images` in [-1, 1], but got values in [255, 255]. Scale the \
generator output into [-1, 1]: end it with tanh, or map [0, 1] output with x * 2 - 1 and [0, 255] \
output with x / 127.5 - 1.
    """
    if not isinstance(images, Tensor) or not images.is_floating_point():
        got = f"dtype {images.dtype}" if isinstance(images, Tensor) else type(images).__name__
        raise TypeError(
            f"Expected `images` to be a float tensor of shape [B, 3, H, W], but got {got}."
        )
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"Expected `images` of shape [B, 3, H, W] (RGB), but got {list(images.shape)}."
        )
    if images.numel() == 0:
        raise ValueError(
            f"Expected `images` to hold at least one pixel of one image, but got shape "
            f"{list(images.shape)}."
        )
    # One reduction on the happy path: NaN propagates through aminmax and fails the range test.
    lo, hi = (v.item() for v in torch.aminmax(images.detach()))
    if lo >= -1 - atol and hi <= 1 + atol:
        return lo, hi
    if not bool(torch.isfinite(images).all()):
        raise ValueError(
            "Expected `images` to be finite, but got NaN or Inf values. Check the generator "
            "for diverged weights or a division by zero."
        )
    raise ValueError(
        f"Expected `images` in [-1, 1], but got values in [{lo:.4g}, {hi:.4g}]. Scale the "
        "generator output into [-1, 1]: end it with tanh, or map [0, 1] output with x * 2 - 1 "
        "and [0, 255] output with x / 127.5 - 1."
    )


def check_segmentation(
    output: Tensor,
    *,
    batch_size: int,
    num_concepts: int,
    size: tuple[int, int] | None = None,
    soft: bool = False,
) -> None:
    """Check a segmenter's output: ``[B, C, S, S']``, bool masks or scores in ``[0, 1]``.

    Args:
        output: what ``segment`` (``soft=False``) or ``soft_segment`` (``soft=True``) returned.
        batch_size: the number of images segmented.
        num_concepts: the vocabulary's length.
        size: the ``(S, S')`` the segmenter declared via ``segmentation_size``, if known.
        soft: whether ``output`` holds soft scores rather than hard masks.

    Raises:
        TypeError: if ``output`` is not a tensor or has the wrong dtype.
        ValueError: if the shape or the values do not fit.

    Example:
        >>> import torch
        >>> check_segmentation(torch.zeros(2, 5, 8, 8, dtype=torch.bool), batch_size=2,
        ...                    num_concepts=5)
        >>> check_segmentation(torch.zeros(2, 4, 8, 8, dtype=torch.bool), batch_size=2,
        ...                    num_concepts=5)
        Traceback (most recent call last):
        ...
        ValueError: Expected the segmenter's masks to have one channel per concept of its \
vocabulary (5), but got 4 (shape [2, 4, 8, 8]).
    """
    what = "soft scores" if soft else "masks"
    if not isinstance(output, Tensor):
        raise TypeError(
            f"Expected the segmenter's {what} to be a Tensor, but got {type(output).__name__}."
        )
    shape = list(output.shape)
    if output.dim() != 4:
        raise ValueError(
            f"Expected the segmenter's {what} of shape [B={batch_size}, C={num_concepts}, S, S'], "
            f"but got {shape}."
        )
    if output.shape[0] != batch_size:
        raise ValueError(
            f"Expected the segmenter's {what} to have one entry per image ({batch_size}), but "
            f"got {output.shape[0]} (shape {shape})."
        )
    if output.shape[1] != num_concepts:
        raise ValueError(
            f"Expected the segmenter's {what} to have one channel per concept of its vocabulary "
            f"({num_concepts}), but got {output.shape[1]} (shape {shape})."
        )
    if size is not None and tuple(output.shape[2:]) != tuple(size):
        raise ValueError(
            f"Expected the segmenter's {what} at the size its segmentation_size declares "
            f"({size[0]}x{size[1]}), but got {output.shape[2]}x{output.shape[3]}. Make "
            "segmentation_size return the size that segment and soft_segment produce."
        )
    if not soft:
        if output.dtype != torch.bool:
            raise TypeError(
                f"Expected the segmenter's masks to have dtype torch.bool, but got {output.dtype}. "
                "Threshold scores (scores > 0.5) or convert 0/1 masks with .bool()."
            )
        return
    if not output.is_floating_point():
        raise TypeError(
            f"Expected the segmenter's soft scores to be floating, but got {output.dtype}. "
            "Return probabilities, e.g. masks.float() for exact masks."
        )
    if output.numel() == 0:
        return
    lo, hi = (v.item() for v in torch.aminmax(output.detach()))
    if lo >= -SCORE_RANGE_TOLERANCE and hi <= 1 + SCORE_RANGE_TOLERANCE:
        return
    if not bool(torch.isfinite(output).all()):
        raise ValueError("Expected the segmenter's soft scores to be finite, but got NaN or Inf.")
    raise ValueError(
        f"Expected the segmenter's soft scores in [0, 1], but got values in "
        f"[{lo:.4g}, {hi:.4g}]. Return probabilities: apply sigmoid (multi-label) or "
        "softmax over concepts (exclusive) to logits."
    )


def checked_segment(segmenter: Segmenter, images: Tensor, *, soft: bool = False) -> Tensor:
    """Run ``segmenter`` on ``images`` and check the input and the output.

    Args:
        segmenter: a :class:`Segmenter`.
        images: ``[B, 3, H, W]`` floating in ``[-1, 1]``.
        soft: call ``soft_segment`` (probabilities) instead of ``segment`` (bool masks).

    Returns:
        The segmenter's output, ``[B, len(vocabulary), S, S']``.

    Raises:
        TypeError: if ``segmenter`` lacks a member of the protocol, or a dtype is wrong.
        ValueError: see :func:`check_images` and :func:`check_segmentation`.

    Example:
        >>> import torch
        >>> from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary
        >>> vocab = ConceptVocabulary.from_pairs([("sky", "object")])
        >>> everywhere = GroundTruthSegmenter(vocab, lambda x: x[:, :1] > -2)
        >>> checked_segment(everywhere, torch.zeros(2, 3, 4, 4), soft=True).mean().item()
        1.0
    """
    check_segmenter(segmenter)
    check_images(images)
    if images.dtype in (torch.float16, torch.bfloat16):
        # A half-precision generator's images: segmenters get float32 (a module segmenter then
        # casts to its own dtype), so masks do not depend on the generator's precision.
        images = images.float()
    output = segmenter.soft_segment(images) if soft else segmenter.segment(images)
    check_segmentation(
        output,
        batch_size=images.shape[0],
        num_concepts=len(segmenter.vocabulary),
        size=segmenter.segmentation_size((images.shape[2], images.shape[3])),
        soft=soft,
    )
    return output


class GroundTruthSegmenter:
    """A segmenter from a deterministic function ``images -> masks``, for exactly known masks.

    Use it in tests and in synthetic worlds where each image's concept masks are known.

    Args:
        vocabulary: the concepts, in the channel order of ``fn``'s masks.
        fn: maps images ``[B, 3, H, W]`` in ``[-1, 1]`` to bool masks
            ``[B, len(vocabulary), S, S']``.
        soft_fn: maps images to scores in ``[0, 1]``; by default ``fn(images).float()``, which
            carries no gradient to the images.
        output_size: the ``(S, S')`` of ``fn``'s masks; ``None`` means the images' own size.

    Raises:
        TypeError: if an argument has the wrong type.
        ValueError: if ``output_size`` is not a pair of positive ints.

    Example:
        >>> import torch
        >>> from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary
        >>> vocab = ConceptVocabulary.from_pairs([("red", "color")])
        >>> red = GroundTruthSegmenter(vocab, lambda x: (x[:, :1] > 0.5) & (x[:, 1:2] < 0))
        >>> red.segmentation_size((32, 32))
        (32, 32)
        >>> red.soft_segment(torch.tensor([1.0, -1.0, -1.0]).reshape(1, 3, 1, 1)).tolist()
        [[[[1.0]]]]
    """

    def __init__(
        self,
        vocabulary: ConceptVocabulary,
        fn: Callable[[Tensor], Tensor],
        soft_fn: Callable[[Tensor], Tensor] | None = None,
        *,
        output_size: tuple[int, int] | None = None,
    ) -> None:
        if not isinstance(vocabulary, ConceptVocabulary):
            raise TypeError(
                f"Expected argument `vocabulary` to be a ConceptVocabulary, but got "
                f"{type(vocabulary).__name__}."
            )
        for argument, value in (("fn", fn), ("soft_fn", soft_fn)):
            if value is not None and not callable(value):
                raise TypeError(
                    f"Expected argument `{argument}` to be callable, but got "
                    f"{type(value).__name__}."
                )
        if fn is None:
            raise TypeError("Expected argument `fn` to be callable, but got None.")
        self._vocabulary = vocabulary
        self.fn = fn
        self.soft_fn = soft_fn
        self.output_size = None if output_size is None else check_size(output_size)

    @property
    def vocabulary(self) -> ConceptVocabulary:
        """The concepts, in channel order."""
        return self._vocabulary

    def segment(self, images: Tensor) -> Tensor:
        """The masks ``fn(images)``."""
        return self.fn(images)

    def soft_segment(self, images: Tensor) -> Tensor:
        """``soft_fn(images)``, or ``fn(images).float()`` without a ``soft_fn``."""
        if self.soft_fn is not None:
            return self.soft_fn(images)
        return self.fn(images).float()

    def segmentation_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """``output_size``, or ``image_size`` when masks have the images' resolution."""
        return self.output_size or check_size(image_size, "image_size")
