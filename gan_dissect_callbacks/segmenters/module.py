"""``ModuleSegmenter``: any ``nn.Module`` that returns per-concept logits, as a segmenter.

The wrapped module maps (transformed) images to logits ``[B, C, h, w]``, one channel per concept
of the vocabulary. Two readings of the logits:

- multi-label (default): ``p = sigmoid(logits)``, masks ``p > threshold``; a pixel can belong
  to several concepts (a window pixel is also a house pixel);
- exclusive: ``p = softmax(logits)`` over concepts, masks the one-hot ``argmax``; each pixel gets
  exactly one concept.

Logits are resized to ``output_size`` (bilinear, ``align_corners=False``) *before* the
nonlinearity, so hard masks have smooth boundaries at any resolution. For exclusive masks
:meth:`~ModuleSegmenter.segment` resizes in ``channels_last`` layout (:func:`resize_logits`):
its argmax needs no float tensor in the default layout, and the resize is several times faster
so on a CPU (150 concepts, 16×16 → 64×64 for 32 images: ~0.05 s instead of ~0.3 s on 2 cores).
:meth:`~ModuleSegmenter.logits`, :meth:`~ModuleSegmenter.soft_segment` and multi-label masks
resize in the default layout, which is faster where the result must be laid out so. A module
whose class sets ``takes_channels_last = True`` resizes its own logits and is called as
``module(x, channels_last=True)`` for exclusive masks (as the torchvision and transformers
adapters' :class:`~gan_dissect_callbacks.segmenters.torchvision.SegmentationLogits` is).

The module runs at the segmenter's own ``precision``, whatever the precision of the training
run that calls it: float32 by default, or under ``torch.autocast`` to bfloat16 or float16.
Reduced precision is often 2-3x faster (bfloat16 on a CPU with AVX512-BF16 or AMX, float16 or
bfloat16 on a GPU) and moves logits by rounding only, so a mask changes where a logit lies
within rounding of the threshold; probabilities and thresholds stay in float32.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_dissect_callbacks.arguments import (
    SEGMENTER_PRECISIONS,
    SegmenterPrecision,
    check_choice,
    check_size,
)
from gan_dissect_callbacks.instrumentation import eval_mode
from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary

__all__ = ["ModuleSegmenter", "native_bf16", "resize_logits"]

_AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def resize_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of ``logits [B, C, h, w]`` to ``size`` (``align_corners=False``).

    The same interpolation as ``F.interpolate(logits, size, mode="bilinear")``, computed in
    ``channels_last`` layout: PyTorch's CPU kernel for the default layout is several times slower
    for many channels at a 2x-8x upsampling (150 channels, 16×16 → 64×64: ~0.33 s against
    ~0.05 s for 32 images on 2 cores). The two layouts add the same terms in another order, so
    a value may differ from ``F.interpolate``'s in its last bit; each image's values are the
    same however many images share the call. The result is in ``channels_last`` layout (its
    shape is ``[B, C, *size]``); call ``.contiguous()`` before ``.view``.

    Example:
        >>> import torch
        >>> resize_logits(torch.tensor([[[[0.0, 4.0]]]]), (1, 4))
        tensor([[[[0., 1., 3., 4.]]]])
    """
    x = logits.contiguous(memory_format=torch.channels_last)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bfloat16 natively, so that ``"bf16-mixed"`` is a speed-up.

    A CPU needs AVX512-BF16 or AMX (elsewhere oneDNN emulates bfloat16, slower than float32); a
    CUDA device needs compute capability 8.0 or newer. ``precision="auto"`` reads this.

    Example:
        >>> native_bf16("meta")
        False
    """
    device = torch.device(device)
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return False


class ModuleSegmenter:
    """Adapt a module that returns per-concept logits ``[B, C, h, w]`` to the segmenter protocol.

    The module runs in eval mode for every pass and each submodule's previous train/eval mode is
    restored afterwards, so BatchNorm statistics and dropout state of a model being trained are
    untouched. :meth:`segment` runs under ``torch.no_grad``; :meth:`soft_segment` keeps the
    autograd graph (unless the caller disabled it), so gradients reach the images. The α
    optimisation should take gradients with ``torch.autograd.grad`` with respect to α only, so
    that the segmenter's parameters collect no ``.grad``.

    Args:
        module: maps ``input_transform(images)`` to logits ``[B, len(vocabulary), h, w]``.
        vocabulary: the concepts, in the module's output channel order.
        multilabel: sigmoid and threshold per concept (``True``) or softmax and argmax over
            concepts (``False``).
        threshold: probability above which a pixel is in a concept's mask; multi-label only.
        input_transform: maps images in ``[-1, 1]`` to what the module expects, e.g. ImageNet
            normalisation ``lambda x: ((x + 1) / 2 - mean) / std``. ``None``: images as they are.
        output_size: ``(S, S')`` to resize the logits to, or an int for a square; ``None``: the
            module's own output resolution.
        precision: what the module computes in: ``"32-true"`` (float32, or the module's own
            dtype), ``"bf16-mixed"`` or ``"16-mixed"`` (``torch.autocast`` to bfloat16 or
            float16 on the images' device), or ``"auto"``: ``"bf16-mixed"`` where
            :func:`native_bf16` holds for that device, else ``"32-true"``.

    Raises:
        TypeError: if ``module``, ``vocabulary`` or ``input_transform`` has the wrong type.
        ValueError: if ``threshold``, ``output_size`` or ``precision`` is out of range.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary
        >>> vocab = ConceptVocabulary.from_pairs([("sky", "object"), ("tree", "object")])
        >>> net = nn.Conv2d(3, 2, 3, padding=1)
        >>> _ = torch.nn.init.normal_(net.weight, generator=torch.Generator().manual_seed(0))
        >>> _ = torch.nn.init.zeros_(net.bias)
        >>> seg = ModuleSegmenter(net, vocab, output_size=(8, 8))
        >>> images = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1
        >>> seg.segmentation_size((4, 4)), seg.segment(images).shape
        ((8, 8), torch.Size([1, 2, 8, 8]))
        >>> seg.segment(images)[0, 0, 0].int().tolist()
        [1, 1, 0, 0, 1, 1, 1, 1]
    """

    def __init__(
        self,
        module: nn.Module,
        vocabulary: ConceptVocabulary,
        *,
        multilabel: bool = True,
        threshold: float = 0.5,
        input_transform: Callable[[Tensor], Tensor] | None = None,
        output_size: int | tuple[int, int] | None = None,
        precision: SegmenterPrecision = "32-true",
    ) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"Expected argument `module` to be an nn.Module, but got {type(module).__name__}."
            )
        if not isinstance(vocabulary, ConceptVocabulary):
            raise TypeError(
                f"Expected argument `vocabulary` to be a ConceptVocabulary, but got "
                f"{type(vocabulary).__name__}."
            )
        if not isinstance(multilabel, bool):
            raise TypeError(f"Expected argument `multilabel` to be a bool, but got {multilabel!r}.")
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
            or not 0 < threshold < 1
        ):
            raise ValueError(
                f"Expected argument `threshold` to be a float in (0, 1), but got {threshold!r}."
            )
        if input_transform is not None and not callable(input_transform):
            raise TypeError(
                f"Expected argument `input_transform` to be callable or None, but got "
                f"{type(input_transform).__name__}."
            )
        if isinstance(output_size, int) and not isinstance(output_size, bool):
            output_size = (output_size, output_size)
        size = None if output_size is None else check_size(output_size)
        self.module = module
        self._vocabulary = vocabulary
        self.multilabel = multilabel
        self.threshold = float(threshold)
        self.input_transform = input_transform
        self.output_size = size
        self.precision = check_choice(precision, "precision", SEGMENTER_PRECISIONS)
        self._probed_sizes: dict[tuple[int, int], tuple[int, int]] = {}

    @property
    def vocabulary(self) -> ConceptVocabulary:
        """The concepts, in the module's output channel order."""
        return self._vocabulary

    def logits(self, images: Tensor) -> Tensor:
        """The module's logits ``[B, C, S, S']`` for ``images`` in ``[-1, 1]``, resized if asked.

        Raises:
            TypeError, ValueError: if the module's output is not a logits tensor of shape
                ``[B, len(vocabulary), h, w]``.
        """
        return self._logits(images, channels_last=False)

    def soft_segment(self, images: Tensor) -> Tensor:
        """Probabilities ``[B, C, S, S']``: sigmoid (multi-label) or softmax over concepts."""
        logits = self.logits(images)
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)

    def segment(self, images: Tensor) -> Tensor:
        """Bool masks ``[B, C, S, S']``: ``p > threshold`` (multi-label) or one-hot argmax."""
        with torch.no_grad():
            if self.multilabel:
                return torch.sigmoid(self.logits(images)) > self.threshold
            # argmax of the logits equals that of the softmax, without its rounding ties. The
            # logits may be channels_last (see the module docstring); the masks are not. A
            # subclass that overrides `logits` gets masks from its own logits.
            if type(self).logits is ModuleSegmenter.logits:
                logits = self._logits(images, channels_last=True)
            else:
                logits = self.logits(images)
            winner = logits.argmax(dim=1, keepdim=True)
            masks = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
            return masks.scatter_(1, winner, True)

    def _logits(self, images: Tensor, *, channels_last: bool) -> Tensor:
        """:meth:`logits`, resized in ``channels_last`` layout and left so if asked."""
        x = images if self.input_transform is None else self.input_transform(images)
        reference = self._reference_tensor()
        if reference is not None and x.is_floating_point() and x.dtype != reference.dtype:
            x = x.to(reference.dtype)  # images reach the module in its own precision
        # The segmenter's own precision, not that of a mixed-precision region the analysis was
        # called in: the masks should not depend on the training run's precision.
        with eval_mode(self.module), self._autocast(x.device):
            if channels_last and getattr(self.module, "takes_channels_last", False) is True:
                out = self.module(x, channels_last=True)
            else:
                out = self.module(x)
        self._check_logits(out, images.shape[0])
        if out.dtype in (torch.float16, torch.bfloat16):
            out = out.float()  # probabilities and thresholds in float32, as for any segmenter
        if self.output_size is not None and tuple(out.shape[2:]) != self.output_size:
            if channels_last:
                out = resize_logits(out, self.output_size)
            else:
                out = F.interpolate(
                    out, size=self.output_size, mode="bilinear", align_corners=False
                )
        return out

    def segmentation_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """``output_size``, or else the module's output size for such images.

        Without ``output_size`` this runs the module once on a blank image of ``image_size``
        (eval mode, no gradients) and caches the answer per image size.
        """
        if self.output_size is not None:
            return self.output_size
        size = check_size(image_size, "image_size")
        if size not in self._probed_sizes:
            reference = self._reference_tensor()
            blank = torch.zeros(
                1,
                3,
                *size,
                device=None if reference is None else reference.device,
                dtype=None if reference is None else reference.dtype,
            )
            with torch.no_grad():
                h, w = self.logits(blank).shape[2:]
            self._probed_sizes[size] = (int(h), int(w))
        return self._probed_sizes[size]

    def _autocast(self, device: torch.device) -> torch.autocast:
        """The autocast region of ``precision`` on ``device`` (disabled at ``"32-true"``)."""
        precision = self.precision
        if precision == "auto":
            precision = "bf16-mixed" if native_bf16(device) else "32-true"
        dtype = _AUTOCAST_DTYPES.get(precision)
        if dtype is None:
            return torch.autocast(device.type, enabled=False)
        return torch.autocast(device.type, dtype=dtype)

    def _reference_tensor(self) -> Tensor | None:
        """The module's first floating parameter or buffer: its device and precision."""
        tensors = itertools.chain(self.module.parameters(), self.module.buffers())
        return next((t for t in tensors if t.is_floating_point()), None)

    def _check_logits(self, out: object, batch_size: int) -> None:
        expected = f"[B={batch_size}, C={len(self._vocabulary)}, h, w]"
        if not isinstance(out, Tensor):
            raise TypeError(
                f"Expected the wrapped module to return a logits tensor {expected}, but got "
                f"{type(out).__name__}. Wrap a model that returns a dict or an output object "
                "(e.g. {'out': ...} or .logits) in a small nn.Module that returns the tensor."
            )
        if (
            out.dim() != 4
            or out.shape[0] != batch_size
            or out.shape[1] != len(self._vocabulary)
            or not out.is_floating_point()
        ):
            raise ValueError(
                f"Expected the wrapped module to return float logits {expected}, one channel "
                f"per concept of the vocabulary, but got a {out.dtype} tensor of shape "
                f"{list(out.shape)}."
            )
