"""Hugging Face semantic segmentation models (UperNet, SegFormer, ...) as segmenters.

Any model that ``transformers.AutoModelForSemanticSegmentation`` loads fits: it takes
``pixel_values`` and returns ``.logits`` ``[B, num_labels, h, w]``, at a quarter of the input's
resolution for SegFormer and at full resolution for UperNet. The adapter

- normalises images in ``[-1, 1]`` the way the model's image processor would normalise pixels:
  ``(pixels * rescale_factor - image_mean) / image_std`` on pixels in ``[0, 255]``, i.e.
  ``((x + 1) / 2 - mean) / std`` with ``mean`` and ``std`` in ``[0, 1]`` units
  (:func:`normalization_from_processor_config`);
- resizes the logits to the declared output size (the images' size by default), averaging them
  over ``scales`` if several are given, and reads them exclusively: softmax probabilities and
  one-hot argmax masks, the way these models were trained;
- names its concepts after ``config.id2label`` (:func:`vocabulary_from_id2label`): labels that
  match an ADE20K class take that class's name and category from
  :data:`~gan_dissect_callbacks.segmenters.ade20k.ADE20K_VOCABULARY`, other labels keep their
  name and get the category ``"object"``, the category of nearly all scene-parsing classes.

The image processor's resize is not applied: images are segmented at their own size unless
``scales`` says otherwise (e.g. ``(2.0,)`` for 256-px GAN images and a model trained on 512-px
crops).

transformers is optional: this module imports without it, and an adapter built around a model
you constructed needs nothing more. :meth:`TransformersSegmenter.from_pretrained` needs it
(``pip install "gan_dissect_callbacks[transformers]"``) and reads only local files
(``local_files_only=True``); it never downloads.

Example:
    >>> vocab = vocabulary_from_id2label({0: "wall", 1: "windowpane;window", 2: "robot"})
    >>> [(c.name, c.category) for c in vocab]
    [('wall', 'object'), ('windowpane', 'part'), ('robot', 'object')]
    >>> mean, std = normalization_from_processor_config(
    ...     {"image_mean": [127.5, 127.5, 127.5], "image_std": [127.5, 127.5, 127.5],
    ...      "do_rescale": False})
    >>> mean, std
    ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import Tensor, nn

from gan_dissect_callbacks.arguments import SegmenterPrecision, check_size
from gan_dissect_callbacks.segmenters.ade20k import lookup_ade20k
from gan_dissect_callbacks.segmenters.module import ModuleSegmenter
from gan_dissect_callbacks.segmenters.torchvision import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SegmentationLogits,
)
from gan_dissect_callbacks.segmenters.vocabulary import Concept, ConceptVocabulary

__all__ = [
    "TransformersSegmenter",
    "normalization_from_processor_config",
    "vocabulary_from_id2label",
]

_INSTALL_HINT = 'pip install "gan_dissect_callbacks[transformers]"'
#: A Hugging Face model name, "name" or "owner/name" (anything else is taken for a path).
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
#: What an image processor does when its config leaves a key out (SegFormer's defaults).
_PROCESSOR_DEFAULTS: dict[str, Any] = {
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": IMAGENET_MEAN,
    "image_std": IMAGENET_STD,
}


class TransformersSegmenter(ModuleSegmenter):
    """A Hugging Face semantic segmentation model as a segmenter, with exclusive masks.

    Build it around a model you constructed, or load one with :meth:`from_pretrained`. The model
    runs in eval mode for every pass and each submodule's previous mode is restored afterwards;
    :meth:`soft_segment` keeps the autograd graph, so gradients reach the images.

    Args:
        model: takes normalised ``pixel_values`` and returns an output with ``.logits``
            ``[B, C, h, w]`` (or a tuple whose first item is the logits).
        vocabulary: the concepts of the ``C`` channels; ``None``: from ``model.config.id2label``
            via :func:`vocabulary_from_id2label`.
        mean: per-channel mean for RGB in ``[0, 1]`` (ImageNet's by default; see
            :func:`normalization_from_processor_config` for a checkpoint's own).
        std: per-channel standard deviation for RGB in ``[0, 1]``.
        scales: factors to resize the input by; logits are averaged over scales.
        output_size: ``(S, S')`` (or an int) of the masks; ``None``: the images' size.
        precision: what the model computes in: ``"32-true"``, ``"bf16-mixed"``, ``"16-mixed"``
            or ``"auto"`` (see :class:`~gan_dissect_callbacks.segmenters.module.ModuleSegmenter`).

    Raises:
        TypeError: if ``model`` or ``vocabulary`` has the wrong type.
        ValueError: if ``model`` has no ``config.id2label`` and no ``vocabulary`` is given, or
            another argument is out of range.

    Example:
        >>> import torch
        >>> from types import SimpleNamespace
        >>> from torch import nn
        >>> class TinySegFormer(nn.Module):  # stands in for SegformerForSemanticSegmentation
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.config = SimpleNamespace(id2label={0: "sky", 1: "grass", 2: "door"})
        ...         self.head = nn.Conv2d(3, 3, 4, stride=4)  # logits at 1/4 resolution
        ...     def forward(self, pixel_values):
        ...         return SimpleNamespace(logits=self.head(pixel_values))
        >>> _ = torch.manual_seed(0)
        >>> segmenter = TransformersSegmenter(TinySegFormer(), output_size=8)
        >>> segmenter.vocabulary.concept_categories()
        ('object', 'material', 'part')
        >>> images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
        >>> scores = segmenter.soft_segment(images)
        >>> scores.shape, torch.allclose(scores.sum(dim=1), torch.ones(2, 8, 8))
        (torch.Size([2, 3, 8, 8]), True)

        With a checkpoint in the local cache (at 256 px, ``scales=(2.0,)`` segments at the
        512 px the ADE20K models were trained on)::

            segmenter = TransformersSegmenter.from_pretrained(
                "openmmlab/upernet-convnext-small", scales=(2.0,), output_size=128
            )
    """

    #: The model with its normalisation and scales; move it with ``.to(device)``.
    module: SegmentationLogits

    def __init__(
        self,
        model: nn.Module,
        *,
        vocabulary: ConceptVocabulary | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        scales: Sequence[float] = (1.0,),
        output_size: int | tuple[int, int] | None = None,
        precision: SegmenterPrecision = "32-true",
    ) -> None:
        if vocabulary is None:
            id2label = getattr(getattr(model, "config", None), "id2label", None)
            if not isinstance(id2label, Mapping):
                raise ValueError(
                    "Expected argument `model` to have a `config.id2label` mapping to name its "
                    f"classes, but {type(model).__name__} has none. Pass `vocabulary`."
                )
            vocabulary = vocabulary_from_id2label(id2label)
        wrapper = SegmentationLogits(
            model, _transformers_logits, mean=mean, std=std, scales=scales, output_size=output_size
        )
        super().__init__(
            wrapper,
            vocabulary,
            multilabel=False,
            output_size=wrapper.output_size,
            precision=precision,
        )

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        revision: str | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        scales: Sequence[float] = (1.0,),
        output_size: int | tuple[int, int] | None = None,
        precision: SegmenterPrecision = "32-true",
    ) -> TransformersSegmenter:
        """Load a model with ``AutoModelForSemanticSegmentation`` from local files only.

        The normalisation comes from the checkpoint's ``preprocessor_config.json`` (ImageNet's,
        with a warning, when it has none), unless ``mean`` and ``std`` are given.

        Args:
            name_or_path: a model name in the local Hugging Face cache
                (``"openmmlab/upernet-convnext-small"``) or a directory written by
                ``save_pretrained``.
            cache_dir: the Hugging Face hub cache to read; ``None``: the default one
                (``HF_HUB_CACHE``).
            revision: the branch, tag or commit in the cache; ``None``: ``main``.
            mean: per-channel mean for RGB in ``[0, 1]``, overriding the processor config.
            std: per-channel standard deviation for RGB in ``[0, 1]``, likewise.
            scales: see :class:`TransformersSegmenter`.
            output_size: see :class:`TransformersSegmenter`.
            precision: see :class:`TransformersSegmenter`.

        Raises:
            ImportError: if transformers is not installed.
            FileNotFoundError: if the model's config or weights are not available locally; the
                message says how to place them.
        """
        transformers = _import_transformers()
        name = os.fspath(name_or_path)
        if _find_local_file(name, "config.json", cache_dir, revision) is None:
            raise FileNotFoundError(_not_found_message(name, cache_dir))
        try:
            model = transformers.AutoModelForSemanticSegmentation.from_pretrained(
                name, local_files_only=True, cache_dir=cache_dir, revision=revision
            )
        except OSError as err:
            raise FileNotFoundError(
                f"Found the config of {name!r} but could not load its weights from local files "
                f"(nothing is downloaded): {err}"
            ) from err
        if mean is None or std is None:
            processor_file = _find_local_file(name, "preprocessor_config.json", cache_dir, revision)
            if processor_file is None:
                warnings.warn(
                    f"Found no preprocessor_config.json for {name!r}; normalising with the "
                    "ImageNet mean and std. Pass `mean` and `std` if the model expects others.",
                    UserWarning,
                    stacklevel=2,
                )
                config: Mapping[str, Any] = {}
            else:
                config = json.loads(Path(processor_file).read_text())
            found_mean, found_std = normalization_from_processor_config(config)
            mean = found_mean if mean is None else mean
            std = found_std if std is None else std
        return cls(
            model, mean=mean, std=std, scales=scales, output_size=output_size, precision=precision
        )

    def segmentation_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """``output_size``, or else ``image_size`` (logits are resized to the images' size)."""
        return self.output_size or check_size(image_size, "image_size")


def vocabulary_from_id2label(id2label: Mapping[int, str] | Mapping[str, str]) -> ConceptVocabulary:
    """The concepts of a model's classes, named and categorised via ADE20K where names match.

    A label that :func:`~gan_dissect_callbacks.segmenters.ade20k.lookup_ade20k` recognises
    becomes that ADE20K concept (canonical name and category); any other label keeps its name
    (stripped) with category ``"object"``.

    Args:
        id2label: class index (int, or a str of an int as in JSON configs) to label, covering
            ``0 .. len(id2label) - 1``.

    Returns:
        The vocabulary in class index order.

    Raises:
        ValueError: if the indices are not ``0 .. n - 1`` or a label is empty or repeated.

    Example:
        >>> vocabulary_from_id2label({"1": "sky", "0": "bed "}).names
        ('bed', 'sky')
    """
    try:
        by_index = {int(i): label for i, label in id2label.items()}
    except (TypeError, ValueError, AttributeError):
        by_index = {}
    if not by_index or sorted(by_index) != list(range(len(by_index))):
        raise ValueError(
            "Expected argument `id2label` to map the class indices 0 .. n-1 to labels, but got "
            f"{id2label!r}."
        )
    concepts = []
    for index in range(len(by_index)):
        label = by_index[index]
        if not isinstance(label, str) or not label.strip():
            raise ValueError(
                f"Expected argument `id2label` to map every index to a non-empty label, but "
                f"class {index} has {label!r}."
            )
        concepts.append(lookup_ade20k(label) or Concept(label.strip(), "object"))
    return ConceptVocabulary(concepts)


def normalization_from_processor_config(
    config: Mapping[str, Any],
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """The ``(mean, std)`` for RGB in ``[0, 1]`` that reproduce an image processor's normalisation.

    An image processor maps pixels ``p`` in ``[0, 255]`` to ``(p * k - image_mean) / image_std``
    with ``k = rescale_factor`` if ``do_rescale`` else 1; in ``[0, 1]`` units (``p = 255 x``)
    that is ``(x - mean) / std`` with ``mean = image_mean / (255 k)`` and
    ``std = image_std / (255 k)``. Keys left out take SegFormer's defaults (rescale by 1/255,
    ImageNet mean and std); ``do_normalize: false`` gives mean 0 and std ``1 / (255 k)``.

    Some converted checkpoints state ``image_mean`` in ``[0, 255]`` units (e.g. 123.675) yet
    leave ``do_rescale`` on, which would put every input near -500; for those the mean and std
    are read in ``[0, 255]`` units, with a warning.

    Args:
        config: the contents of a ``preprocessor_config.json``.

    Returns:
        ``(mean, std)``, three floats each.

    Raises:
        ValueError: if ``image_mean``/``image_std`` are not 3 numbers (or 1, for all channels),
            a std is not positive or ``rescale_factor`` is not positive.

    Example:
        >>> normalization_from_processor_config({})
        ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    """
    settings = {**_PROCESSOR_DEFAULTS, **config}
    k = float(settings["rescale_factor"]) if settings["do_rescale"] else 1.0
    if not k > 0:
        raise ValueError(
            f"Expected `rescale_factor` in the processor config to be positive, but got {k}."
        )
    if not settings["do_normalize"]:
        unit = 1 / (255 * k)
        return (0.0, 0.0, 0.0), (unit, unit, unit)
    mean = _three(settings["image_mean"], "image_mean")
    std = _three(settings["image_std"], "image_std")
    if any(s <= 0 for s in std):
        raise ValueError(
            f"Expected `image_std` in the processor config to be positive, but got {list(std)}."
        )
    if settings["do_rescale"] and k * 255 <= 1 + 1e-6 and max(mean) > 1:
        warnings.warn(
            f"The processor config rescales pixels to [0, 1] but states image_mean {list(mean)} "
            "in [0, 255] units; reading image_mean and image_std in [0, 255] units.",
            UserWarning,
            stacklevel=2,
        )
        k = 1.0
    scale = 255 * k
    return (
        (mean[0] / scale, mean[1] / scale, mean[2] / scale),
        (std[0] / scale, std[1] / scale, std[2] / scale),
    )


def _three(value: Any, key: str) -> tuple[float, float, float]:
    values = [value] if isinstance(value, int | float) else value
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):
        floats = []
    if len(floats) == 1:
        floats *= 3
    if len(floats) != 3:
        raise ValueError(
            f"Expected `{key}` in the processor config to be 3 numbers (one per RGB channel), "
            f"but got {value!r}."
        )
    return floats[0], floats[1], floats[2]


def _transformers_logits(output: Any) -> Tensor:
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, tuple | list) and output:
        logits = output[0]
    if not isinstance(logits, Tensor):
        raise TypeError(
            "Expected the model to return an output with a `.logits` tensor (or a tuple whose "
            f"first item is the logits), but got {type(output).__name__}."
        )
    return logits


def _find_local_file(
    name: str,
    filename: str,
    cache_dir: str | os.PathLike[str] | None,
    revision: str | None,
) -> str | None:
    """Path of ``filename`` in directory ``name`` or in the hub cache's copy of ``name``."""
    directory = Path(name)
    if directory.is_dir():
        path = directory / filename
        return str(path) if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(
            name,
            filename,
            cache_dir=None if cache_dir is None else os.fspath(cache_dir),
            revision=revision,
        )
    except ValueError:  # not a valid repository id, e.g. a path that does not exist
        return None
    return found if isinstance(found, str) else None


def _not_found_message(name: str, cache_dir: str | os.PathLike[str] | None) -> str:
    """Why ``name`` has no local config.json, and how to place the model so that it has one."""
    save_hint = "save the model with `model.save_pretrained(DIR)` and pass DIR"
    if Path(name).is_dir():
        return (
            f"Expected the directory {name!r} to hold a model written by `save_pretrained`, but "
            f"it has no config.json. Pass the folder that holds config.json, or {save_hint}."
        )
    if not _REPO_ID.fullmatch(name):
        return (
            f"Expected `name_or_path` to be a model directory or a model name in the local "
            f"Hugging Face cache, but the directory {name!r} does not exist."
        )
    if cache_dir is None:
        from huggingface_hub import constants

        cache_dir = constants.HF_HUB_CACHE
    return (
        f"Expected the model {name!r} in the local Hugging Face cache ({os.fspath(cache_dir)}), "
        "but its config.json is not there. Nothing is downloaded (local_files_only=True): on a "
        f"machine with network run `hf download {name}` and copy the cache folder here (or "
        f"point HF_HUB_CACHE or `cache_dir` at it), or {save_hint}."
    )


def _import_transformers() -> ModuleType:
    try:
        import transformers
    except ImportError as err:
        raise ImportError(
            f"Loading Hugging Face segmentation models requires transformers: {_INSTALL_HINT}."
        ) from err
    return transformers
