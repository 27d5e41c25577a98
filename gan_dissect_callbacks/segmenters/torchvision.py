"""Torchvision semantic segmentation models (DeepLabV3, FCN, LR-ASPP) as segmenters.

torchvision's segmentation models return a dict whose ``"out"`` entry holds logits
``[B, 21, H, W]`` at the input's size, over the 21 Pascal VOC classes: channel 0 is the
background, channels 1-20 the objects (aeroplane ... tvmonitor). They expect RGB in ``[0, 1]``
normalised with the ImageNet mean and std; :class:`SegmentationLogits` applies that to images in
``[-1, 1]``: ``((x + 1) / 2 - mean) / std``.

**Background.** The models were trained with a softmax over all 21 channels, so the
probabilities are always computed over all 21 (dropping the background logit before the
softmax would force every pixel into some object). The background itself is left out of the
vocabulary by default: it means "none of the classes", not a concept a unit could draw, and
an interpretable "background unit" would only say that the unit avoids the 20 objects. So with
``include_background=False`` the 20 concepts' probabilities sum to ``1 - p(background)`` at each
pixel, and a pixel whose argmax is the background belongs to no concept's mask. With
``include_background=True`` the background is concept 0, of category ``"background"``.

**Multi-scale inference.** With ``scales=(0.5, 1.0, 2.0)`` each image is resized by each factor
(bilinear, antialiased when shrinking), segmented, its logits resized to the output size and the
logits averaged over scales before the softmax.

torchvision is optional: this module imports without it, and so does an adapter built around a
model you constructed. :meth:`TorchvisionSegmenter.from_pretrained` needs it
(``pip install "gan_dissect_callbacks[torchvision]"``) and loads weights only from the local
torch hub cache; it never downloads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_dissect_callbacks.arguments import SegmenterPrecision, check_size
from gan_dissect_callbacks.segmenters.module import ModuleSegmenter, resize_logits
from gan_dissect_callbacks.segmenters.vocabulary import Concept, ConceptVocabulary

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TORCHVISION_MODELS",
    "VOC_CATEGORIES",
    "SegmentationLogits",
    "TorchvisionSegmenter",
    "torch_hub_checkpoint_path",
]

#: Per-channel RGB mean of ImageNet, for inputs in ``[0, 1]``.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
#: Per-channel RGB standard deviation of ImageNet, for inputs in ``[0, 1]``.
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: The output channels of torchvision's segmentation weights: background, then 20 VOC objects.
VOC_CATEGORIES: tuple[str, ...] = (
    "__background__", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep",
    "sofa", "train", "tvmonitor",
)  # fmt: skip

#: The builders of ``torchvision.models.segmentation`` that :meth:`from_pretrained` accepts.
TORCHVISION_MODELS: tuple[str, ...] = (
    "deeplabv3_mobilenet_v3_large",
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
    "fcn_resnet50",
    "fcn_resnet101",
    "lraspp_mobilenet_v3_large",
)

_INSTALL_HINT = 'pip install "gan_dissect_callbacks[torchvision]"'


class SegmentationLogits(nn.Module):
    """Images in ``[-1, 1]`` to a segmentation model's logits: normalise, run per scale, average.

    The wrapper is the ``nn.Module`` that a :class:`ModuleSegmenter` runs, so moving it moves the
    model and the normalisation constants together (``segmenter.module.to("cuda")``). Its
    ``state_dict`` is the model's, under the prefix ``model.``.

    Args:
        model: the segmentation model, called as ``model(x)`` on normalised images.
        extract: maps the model's output to logits ``[B, C, h, w]`` (e.g. ``out["out"]``).
        mean: per-channel mean for RGB in ``[0, 1]``.
        std: per-channel standard deviation for RGB in ``[0, 1]``, all positive.
        scales: factors to resize the input by; the logits of all scales are averaged.
        output_size: ``(S, S')`` (or an int for a square) of the returned logits; ``None``: the
            input images' size.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or ``extract`` is not callable.
        ValueError: if ``mean``, ``std``, ``scales`` or ``output_size`` is out of range.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Conv2d(3, 2, 1)
        >>> wrapper = SegmentationLogits(net, lambda out: out, mean=(0.5, 0.5, 0.5),
        ...                              std=(0.5, 0.5, 0.5), scales=(1.0, 0.5), output_size=4)
        >>> images = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
        >>> wrapper(images).shape
        torch.Size([1, 2, 4, 4])
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        model: nn.Module,
        extract: Callable[[Any], Tensor],
        *,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        scales: Sequence[float] = (1.0,),
        output_size: int | tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"Expected argument `model` to be an nn.Module, but got {type(model).__name__}."
            )
        if not callable(extract):
            raise TypeError(
                f"Expected argument `extract` to be callable, but got {type(extract).__name__}."
            )
        self.model = model
        self.extract = extract
        self.register_buffer("mean", _check_rgb(mean, "mean").reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer(
            "std", _check_rgb(std, "std", positive=True).reshape(1, 3, 1, 1), persistent=False
        )
        self.scales = _check_scales(scales)
        self.output_size = _check_output_size(output_size)

    def normalize(self, images: Tensor) -> Tensor:
        """``((images + 1) / 2 - mean) / std``: what the model expects, from ``[-1, 1]``."""
        return ((images + 1) / 2 - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    #: :meth:`ModuleSegmenter.segment` may call :meth:`forward` with ``channels_last=True``;
    #: a subclass whose ``forward`` does not take that argument sets this to ``False``.
    takes_channels_last = True

    def forward(self, images: Tensor, channels_last: bool = False) -> Tensor:
        """Logits ``[B, C, S, S']``, averaged over the scales.

        ``channels_last``: resize the logits in that layout and return them so (see
        :func:`~gan_dissect_callbacks.segmenters.module.resize_logits`), which is what an argmax
        over the concepts wants; by default they are resized and returned in the default layout.
        """
        x = self.normalize(images)
        height, width = images.shape[-2:]
        size = self.output_size or (int(height), int(width))
        total: Tensor | None = None
        for scale in self.scales:
            scaled = (max(1, round(height * scale)), max(1, round(width * scale)))
            xs = x
            if scaled != (height, width):
                xs = F.interpolate(
                    x, size=scaled, mode="bilinear", align_corners=False, antialias=scale < 1
                )
            logits = self.extract(self.model(xs))
            if tuple(logits.shape[-2:]) != size:
                if channels_last:
                    logits = resize_logits(logits, size)
                else:
                    logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            total = logits if total is None else total + logits
        assert total is not None  # scales is never empty
        return total if len(self.scales) == 1 else total / len(self.scales)


class TorchvisionSegmenter:
    """A torchvision segmentation model as a segmenter: exclusive (softmax) masks over its classes.

    Build it around a model you constructed, or load one with :meth:`from_pretrained`. The model
    runs in eval mode for every pass and the previous modes are restored afterwards (see
    :class:`~gan_dissect_callbacks.segmenters.module.ModuleSegmenter`, which does the work).

    Args:
        model: returns a dict with ``"out"`` logits ``[B, len(categories), h, w]``, like
            ``torchvision.models.segmentation.deeplabv3_resnet50``.
        categories: the names of the model's output channels, background first.
        include_background: make the background (channel 0) concept 0 of category
            ``"background"``; by default it only takes part in the softmax (see the module
            docstring).
        mean: per-channel mean for RGB in ``[0, 1]`` (ImageNet's by default).
        std: per-channel standard deviation for RGB in ``[0, 1]``.
        scales: factors to resize the input by; logits are averaged over scales.
        output_size: ``(S, S')`` (or an int) of the masks; ``None``: the images' size.
        precision: what the model computes in: ``"32-true"``, ``"bf16-mixed"``, ``"16-mixed"``
            or ``"auto"`` (see :class:`~gan_dissect_callbacks.segmenters.module.ModuleSegmenter`).

    Raises:
        TypeError: if an argument has the wrong type.
        ValueError: if ``categories`` has fewer than 2 names or another argument is out of range.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> class TinyVOC(nn.Module):  # stands in for torchvision's deeplabv3_resnet50
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.head = nn.Conv2d(3, 21, 1)
        ...     def forward(self, x):
        ...         return {"out": self.head(x)}
        >>> _ = torch.manual_seed(0)
        >>> segmenter = TorchvisionSegmenter(TinyVOC(), output_size=(4, 4))
        >>> len(segmenter.vocabulary), segmenter.vocabulary[0]
        (20, Concept(name='aeroplane', category='object'))
        >>> images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
        >>> masks = segmenter.segment(images)
        >>> masks.shape, masks.sum(dim=1).max().item()
        (torch.Size([2, 20, 4, 4]), 1)
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        categories: Sequence[str] = VOC_CATEGORIES,
        include_background: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        scales: Sequence[float] = (1.0,),
        output_size: int | tuple[int, int] | None = None,
        precision: SegmenterPrecision = "32-true",
    ) -> None:
        if (
            isinstance(categories, str)
            or not isinstance(categories, Sequence)
            or len(categories) < 2
            or not all(isinstance(c, str) and c for c in categories)
        ):
            raise ValueError(
                "Expected argument `categories` to be a sequence of at least 2 non-empty names, "
                f"background first, but got {categories!r}."
            )
        if not isinstance(include_background, bool):
            raise TypeError(
                f"Expected argument `include_background` to be a bool, but got "
                f"{include_background!r}."
            )
        wrapper = SegmentationLogits(
            model, _torchvision_logits, mean=mean, std=std, scales=scales, output_size=output_size
        )
        # All channels, background included: the softmax runs over every one of them.
        channels = ConceptVocabulary(
            [Concept("background", "background")] + [Concept(c, "object") for c in categories[1:]]
        )
        self._inner = ModuleSegmenter(
            wrapper,
            channels,
            multilabel=False,
            output_size=wrapper.output_size,
            precision=precision,
        )
        self.include_background = include_background
        self._vocabulary = channels if include_background else ConceptVocabulary(list(channels)[1:])

    @classmethod
    def from_pretrained(
        cls,
        name: str,
        *,
        weights: str | None = "DEFAULT",
        include_background: bool = False,
        scales: Sequence[float] = (1.0,),
        output_size: int | tuple[int, int] | None = None,
        precision: SegmenterPrecision = "32-true",
    ) -> TorchvisionSegmenter:
        """Build ``torchvision.models.segmentation.<name>`` with weights from the local cache.

        The weights must already lie in the torch hub cache (:func:`torch_hub_checkpoint_path`);
        nothing is downloaded, not even the backbone's ImageNet weights (``weights_backbone`` is
        always ``None``). torchvision's own preprocessing resizes images to 520 px; GAN images
        are segmented at their own size unless ``scales`` says otherwise (e.g. ``(2.0,)`` for
        256-px images).

        Args:
            name: one of :data:`TORCHVISION_MODELS`, e.g. ``"deeplabv3_resnet50"``.
            weights: the name of a member of the model's weights enum (``"DEFAULT"``,
                ``"COCO_WITH_VOC_LABELS_V1"``), or ``None`` for random weights (tests).
            include_background: see :class:`TorchvisionSegmenter`.
            scales: see :class:`TorchvisionSegmenter`.
            output_size: see :class:`TorchvisionSegmenter`.
            precision: see :class:`TorchvisionSegmenter`.

        Raises:
            ImportError: if torchvision is not installed.
            ValueError: if ``name`` or ``weights`` is unknown.
            FileNotFoundError: if the weights file is not in the local torch hub cache; the
                message names the file and the URL to fetch it from.
        """
        if name not in TORCHVISION_MODELS:
            raise ValueError(
                f"Expected argument `name` to be one of {list(TORCHVISION_MODELS)}, but got "
                f"{name!r}."
            )
        models = _import_torchvision().models
        weight = None
        categories: Sequence[str] = VOC_CATEGORIES
        if weights is not None:
            enum = models.get_model_weights(name)
            members = list(enum.__members__)
            if not isinstance(weights, str) or weights not in members:
                raise ValueError(
                    f"Expected argument `weights` to be None or one of {members} (the members "
                    f"of {enum.__name__}), but got {weights!r}."
                )
            weight = enum[weights]
            path = torch_hub_checkpoint_path(weight.url)
            if not path.is_file():
                raise FileNotFoundError(
                    f"Expected the weights {enum.__name__}.{weight.name} of `{name}` in the "
                    f"local torch hub cache, but {path} does not exist. Nothing is downloaded: "
                    f"fetch {weight.url} on a machine with network and copy it to {path} "
                    "(the folder is torch.hub.get_dir()/checkpoints; set TORCH_HOME to move it)."
                )
            categories = weight.meta.get("categories", VOC_CATEGORIES)
        builder = getattr(models.segmentation, name)
        model = builder(weights=weight, weights_backbone=None, progress=False)
        return cls(
            model,
            categories=categories,
            include_background=include_background,
            scales=scales,
            output_size=output_size,
            precision=precision,
        )

    @property
    def vocabulary(self) -> ConceptVocabulary:
        """The concepts, in output channel order (the 20 VOC objects by default)."""
        return self._vocabulary

    @property
    def module(self) -> SegmentationLogits:
        """The wrapped model with its normalisation; move it with ``.to(device)``."""
        wrapper = self._inner.module
        assert isinstance(wrapper, SegmentationLogits)
        return wrapper

    def logits(self, images: Tensor) -> Tensor:
        """Logits ``[B, len(categories), S, S']`` over all channels, background included."""
        return self._inner.logits(images)

    def soft_segment(self, images: Tensor) -> Tensor:
        """Softmax probabilities over all channels, ``[B, len(vocabulary), S, S']``."""
        scores = self._inner.soft_segment(images)
        return scores if self.include_background else scores[:, 1:]

    def segment(self, images: Tensor) -> Tensor:
        """One-hot argmax masks; background pixels are in no mask unless it is a concept."""
        masks = self._inner.segment(images)
        return masks if self.include_background else masks[:, 1:].contiguous()

    def segmentation_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """``output_size``, or else ``image_size``."""
        return self._inner.output_size or check_size(image_size, "image_size")


def torch_hub_checkpoint_path(url: str) -> Path:
    """Where ``torch.hub`` caches the checkpoint at ``url``: ``<hub dir>/checkpoints/<file>``.

    Example:
        >>> torch_hub_checkpoint_path("https://example.org/models/net-0123abcd.pth").name
        'net-0123abcd.pth'
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def _torchvision_logits(output: Any) -> Tensor:
    if isinstance(output, Mapping) and isinstance(output.get("out"), Tensor):
        return output["out"]
    got = type(output).__name__
    if isinstance(output, Mapping):
        got = f"a dict with keys {list(output)}"
    raise TypeError(
        "Expected the torchvision model to return a dict with the logits tensor under 'out', "
        f"but got {got}."
    )


def _import_torchvision() -> ModuleType:
    try:
        import torchvision
    except ImportError as err:
        raise ImportError(
            f"Loading torchvision segmentation models requires torchvision: {_INSTALL_HINT}."
        ) from err
    return torchvision


def _check_rgb(values: Sequence[float], argument: str, *, positive: bool = False) -> Tensor:
    """Three finite floats (positive if asked) as a float32 tensor, or a clear error."""
    ok = (
        isinstance(values, Sequence | Tensor)
        and not isinstance(values, str)
        and len(values) == 3
        and all(
            isinstance(v, int | float | Tensor) and not isinstance(v, bool) and math.isfinite(v)
            for v in values
        )
    )
    if ok and positive:
        ok = all(v > 0 for v in values)
    if not ok:
        what = "positive finite floats" if positive else "finite floats"
        raise ValueError(
            f"Expected argument `{argument}` to be 3 {what} (one per RGB channel), but got "
            f"{values!r}."
        )
    return torch.tensor([float(v) for v in values], dtype=torch.float32)


def _check_output_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """``None``, or ``size`` as a pair of positive ints (an int means a square)."""
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool):
        return check_size((size, size))
    return check_size(size)  # a bool reaches check_size's error


def _check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    """A non-empty tuple of positive finite floats, or a clear error."""
    if (
        isinstance(scales, str)
        or not isinstance(scales, Sequence)
        or not scales
        or not all(
            isinstance(s, int | float) and not isinstance(s, bool) and math.isfinite(s) and s > 0
            for s in scales
        )
    ):
        raise ValueError(
            f"Expected argument `scales` to be a non-empty sequence of positive floats, but got "
            f"{scales!r}."
        )
    return tuple(float(s) for s in scales)
