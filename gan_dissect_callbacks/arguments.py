"""Argument checks and the shared choices, in one place for every module of the package.

Every public function and callback validates its arguments with these checks, so one kind of
mistake always gets the same message: the argument's name, what was expected and what came
("Expected argument `quantile` to be a float in (0, 1), but got 1.5."). Integers may be any
integral type (``numpy.int64`` too); booleans are refused where a number is expected.

The named choices (threshold rules, artifact-score methods, insertion-value rules, where an
intervention is measured) are ``Literal`` types here, with the tuple of their values beside them.

Example:
    >>> check_int(3, "num_samples")
    3
    >>> check_int(0, "num_samples")
    Traceback (most recent call last):
    ...
    ValueError: Expected argument `num_samples` to be an int ≥ 1, but got 0.
    >>> check_choice("iqr", "rule", THRESHOLD_RULES)
    'iqr'
    >>> check_fraction(1.5, "quantile")
    Traceback (most recent call last):
    ...
    ValueError: Expected argument `quantile` to be a float in (0, 1), but got 1.5.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

if TYPE_CHECKING:
    from torch import Tensor

    from gan_dissect_callbacks.segmenters.base import Segmenter

__all__ = [
    "MEASURES",
    "SCORE_METHODS",
    "SEGMENTER_PRECISIONS",
    "THRESHOLD_RULES",
    "VALUE_RULES",
    "Measure",
    "ScoreMethod",
    "SegmenterPrecision",
    "ThresholdRule",
    "ValueRule",
    "check_choice",
    "check_float",
    "check_fraction",
    "check_int",
    "check_layer_names",
    "check_name",
    "check_segmenter",
    "check_size",
    "check_unit_indices",
]

#: How a unit's activation threshold is chosen: the top-quantile level, or the paper's IQR rule.
ThresholdRule = Literal["quantile", "iqr"]
THRESHOLD_RULES: tuple[str, ...] = get_args(ThresholdRule)

#: How artifact units are scored (see ``engines.artifacts.score_units``).
ScoreMethod = Literal["swd_ablation", "swd", "discriminator"]
SCORE_METHODS: tuple[str, ...] = get_args(ScoreMethod)

#: How a unit's insertion value k is chosen: its concept-weighted mean, or a high quantile.
ValueRule = Literal["concept_mean", "quantile"]
VALUE_RULES: tuple[str, ...] = get_args(ValueRule)

#: Where an intervention's effect is measured: inside the edited region, or over the image.
Measure = Literal["region", "image"]
MEASURES: tuple[str, ...] = get_args(Measure)

#: The precision a segmenter's module runs at, in Lightning's names: float32, autocast to
#: bfloat16 or float16, or ``"auto"`` (bfloat16 where the device computes it natively).
SegmenterPrecision = Literal["32-true", "bf16-mixed", "16-mixed", "auto"]
SEGMENTER_PRECISIONS: tuple[str, ...] = get_args(SegmenterPrecision)

_Choice = TypeVar("_Choice", bound=str)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(value: Any, name: str, *, minimum: int = 1, optional: bool = False) -> int | Any:
    """``value`` as a Python ``int`` ≥ ``minimum`` (``None`` passes through when ``optional``).

    Example:
        >>> import numpy as np
        >>> check_int(np.int64(4), "batch_size")
        4
        >>> check_int(None, "every_n_epochs", optional=True) is None
        True
        >>> check_int(True, "top_k", minimum=0)
        Traceback (most recent call last):
        ...
        ValueError: Expected argument `top_k` to be an int ≥ 0, but got True.
    """
    if optional and value is None:
        return None
    if not _is_int(value) or int(value) < minimum:
        allowed = f"None or an int ≥ {minimum}" if optional else f"an int ≥ {minimum}"
        raise ValueError(f"Expected argument `{name}` to be {allowed}, but got {value!r}.")
    return int(value)


def check_float(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    optional: bool = False,
) -> float | Any:
    """``value`` as a finite ``float`` (≥ ``minimum`` when given).

    Example:
        >>> check_float(2, "num_se", minimum=0.0)
        2.0
        >>> check_float(-1.0, "lam", minimum=0.0)
        Traceback (most recent call last):
        ...
        ValueError: Expected argument `lam` to be a float ≥ 0.0, but got -1.0.
    """
    if optional and value is None:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and float(value) == float(value) and abs(float(value)) != float("inf")
    if ok and minimum is not None:
        ok = float(value) >= minimum
    if not ok:
        allowed = "a float" if minimum is None else f"a float ≥ {minimum}"
        allowed = f"None or {allowed}" if optional else allowed
        raise ValueError(f"Expected argument `{name}` to be {allowed}, but got {value!r}.")
    return float(value)


def check_fraction(
    value: Any, name: str, *, closed_low: bool = False, closed_high: bool = False
) -> float:
    """``value`` as a float in ``(0, 1)``; ``closed_low``/``closed_high`` admit 0 and 1.

    Example:
        >>> check_fraction(0.0, "iou_cutoff", closed_low=True)
        0.0
    """
    low, high = ("[" if closed_low else "("), ("]" if closed_high else ")")
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = (v >= 0.0 if closed_low else v > 0.0) and (v <= 1.0 if closed_high else v < 1.0)
    if not ok:
        raise ValueError(
            f"Expected argument `{name}` to be a float in {low}0, 1{high}, but got {value!r}."
        )
    return float(value)


def check_choice(value: Any, name: str, choices: Sequence[_Choice]) -> _Choice:
    """``value`` if it is one of ``choices``, else an error listing them.

    Example:
        >>> check_choice("mean", "rule", VALUE_RULES)
        Traceback (most recent call last):
        ...
        ValueError: Expected argument `rule` to be one of ('concept_mean', 'quantile'), but got \
'mean'.
    """
    if not isinstance(value, str) or value not in choices:
        raise ValueError(
            f"Expected argument `{name}` to be one of {tuple(choices)}, but got {value!r}."
        )
    return value  # type: ignore[return-value]


def check_name(value: Any, name: str, example: str = "'generator.layer3'") -> str:
    """``value`` if it is a non-empty string.

    Example:
        >>> check_name("", "layer")
        Traceback (most recent call last):
        ...
        ValueError: Expected argument `layer` to be a non-empty string such as \
'generator.layer3', but got ''.
    """
    if not isinstance(value, str) or not value:
        raise ValueError(
            f"Expected argument `{name}` to be a non-empty string such as {example}, but got "
            f"{value!r}."
        )
    return value


def check_layer_names(layers: Any, name: str = "layers") -> list[str]:
    """``layers`` as a non-empty list of layer names (a lone string is refused: wrap it in a list).

    Example:
        >>> check_layer_names(("generator.layer2", "generator.layer3"))
        ['generator.layer2', 'generator.layer3']
        >>> check_layer_names("generator.layer3")
        Traceback (most recent call last):
        ...
        TypeError: Expected argument `layers` to be a list of layer names such as \
['generator.layer3'], but got 'generator.layer3'.
    """
    if isinstance(layers, str) or not isinstance(layers, Sequence):
        raise TypeError(
            f"Expected argument `{name}` to be a list of layer names such as "
            f"['generator.layer3'], but got {layers!r}."
        )
    if len(layers) == 0:
        raise ValueError(f"Expected argument `{name}` to name at least one layer, but got none.")
    for layer in layers:
        check_name(layer, f"{name}[...]")
    return list(layers)


def check_size(size: Any, name: str = "output_size") -> tuple[int, int]:
    """``size`` as a pair of positive ints ``(height, width)``.

    Example:
        >>> check_size([64, 48])
        (64, 48)
    """
    if (
        not isinstance(size, tuple | list)
        or len(size) != 2
        or not all(_is_int(s) and int(s) > 0 for s in size)
    ):
        raise ValueError(
            f"Expected argument `{name}` to be a pair of positive ints (height, width), but "
            f"got {size!r}."
        )
    return int(size[0]), int(size[1])


def check_unit_indices(
    units: Any,
    num_units: int,
    name: str = "units",
    *,
    allow_empty: bool = False,
    distinct: bool = True,
) -> Tensor:
    """``units`` as a flat ``long`` tensor of indices in ``[0, num_units)``, on the CPU.

    Args:
        units: a sequence of ints or an integer tensor.
        num_units: the layer's number of units.
        name: the argument's name, for messages.
        allow_empty: accept an empty list (an ablation sweep's ``n = 0`` point).
        distinct: refuse a unit listed twice.

    Example:
        >>> check_unit_indices([2, 0], num_units=4).tolist()
        [2, 0]
        >>> check_unit_indices([4], num_units=4)
        Traceback (most recent call last):
        ...
        ValueError: Expected argument `units` to hold unit indices in [0, 4) (the layer has 4 \
units), but got [4].
    """
    import torch  # here, so that argument checks (and the CLI's --help) load without torch

    if isinstance(units, torch.Tensor):
        given = units.detach()
    else:
        values = list(units)
        bad = [u for u in values if not _is_int(u)]
        if bad:
            raise TypeError(
                f"Expected argument `{name}` to hold integer unit indices, but got {bad}."
            )
        given = torch.as_tensor([int(u) for u in values], dtype=torch.long)
    if given.dtype == torch.bool or given.is_floating_point() or given.is_complex():
        raise TypeError(
            f"Expected argument `{name}` to hold integer unit indices, but got dtype {given.dtype}."
        )
    if given.ndim != 1 or (given.numel() == 0 and not allow_empty):
        raise ValueError(
            f"Expected argument `{name}` to be a non-empty flat list of unit indices, but got "
            f"shape {list(given.shape)}."
        )
    index = given.long().cpu()
    bad_range = index[(index < 0) | (index >= num_units)]
    if bad_range.numel():
        raise ValueError(
            f"Expected argument `{name}` to hold unit indices in [0, {num_units}) (the layer "
            f"has {num_units} units), but got {bad_range.tolist()}."
        )
    if distinct and index.unique().numel() != index.numel():
        values_, counts = index.unique(return_counts=True)
        raise ValueError(
            f"Expected argument `{name}` to list each unit once, but got repeated units "
            f"{values_[counts > 1].tolist()}."
        )
    return index


def check_segmenter(segmenter: Any, name: str = "segmenter") -> Segmenter:
    """``segmenter`` if it implements the Segmenter protocol.

    The protocol (:class:`~gan_dissect_callbacks.segmenters.base.Segmenter`): ``vocabulary``,
    ``segment``, ``soft_segment``, ``segmentation_size``.

    Example:
        >>> check_segmenter(object())
        Traceback (most recent call last):
        ...
        TypeError: Expected argument `segmenter` to implement the Segmenter protocol \
(vocabulary, segment, soft_segment, segmentation_size), but object lacks vocabulary, segment, \
soft_segment, segmentation_size.
    """
    wanted = ("vocabulary", "segment", "soft_segment", "segmentation_size")
    missing = [attr for attr in wanted if not hasattr(segmenter, attr)]
    if missing:
        raise TypeError(
            f"Expected argument `{name}` to implement the Segmenter protocol "
            f"({', '.join(wanted)}), but {type(segmenter).__name__} lacks {', '.join(missing)}."
        )
    return segmenter
