"""The shared argument checks: one message shape for one kind of mistake."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gan_dissect_callbacks.arguments import (
    SCORE_METHODS,
    THRESHOLD_RULES,
    check_choice,
    check_float,
    check_fraction,
    check_int,
    check_layer_names,
    check_segmenter,
    check_size,
    check_unit_indices,
)
from gan_dissect_callbacks.demos.segmenter import load_toy_segmenter


@pytest.mark.parametrize("value", [np.int64(3), np.int32(3), 3, torch.tensor(3).item()])
def test_check_int_accepts_any_integral(value):
    assert check_int(value, "n") == 3 and type(check_int(value, "n")) is int


@pytest.mark.parametrize("value", [True, 2.0, "2", None, 0])
def test_check_int_refuses(value):
    with pytest.raises(ValueError, match=r"Expected argument `n` to be an int ≥ 1, but got"):
        check_int(value, "n")


def test_check_int_optional_and_minimum():
    assert check_int(None, "every", optional=True) is None
    with pytest.raises(ValueError, match="to be None or an int ≥ 1, but got 0"):
        check_int(0, "every", optional=True)
    assert check_int(0, "k", minimum=0) == 0


def test_check_float_and_fraction():
    assert check_float(np.float32(0.5), "lam", minimum=0.0) == 0.5
    for bad in (float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match="Expected argument `lam` to be a float"):
            check_float(bad, "lam")
    assert check_fraction(0.99, "quantile") == 0.99
    for bad in (0.0, 1.0, 1.5, -0.1, True):
        with pytest.raises(ValueError, match=r"to be a float in \(0, 1\)"):
            check_fraction(bad, "quantile")
    assert check_fraction(1.0, "x", closed_high=True) == 1.0
    with pytest.raises(ValueError, match=r"in \[0, 1\), but got 1.0"):
        check_fraction(1.0, "x", closed_low=True)


def test_check_choice_lists_the_choices():
    assert check_choice("swd", "method", SCORE_METHODS) == "swd"
    with pytest.raises(ValueError, match=r"one of \('quantile', 'iqr'\), but got 'IQR'"):
        check_choice("IQR", "rule", THRESHOLD_RULES)


def test_check_layer_names_and_size():
    with pytest.raises(ValueError, match="at least one layer"):
        check_layer_names([])
    with pytest.raises(ValueError, match="non-empty string"):
        check_layer_names(["generator.layer3", ""])
    assert check_size((np.int64(4), 5)) == (4, 5)
    with pytest.raises(ValueError, match="pair of positive ints"):
        check_size((4, 0))


def test_check_unit_indices():
    assert check_unit_indices(torch.tensor([3, 1]), 4).tolist() == [3, 1]
    assert check_unit_indices([np.int64(2)], 4).tolist() == [2]
    assert check_unit_indices([], 4, allow_empty=True).numel() == 0
    assert check_unit_indices([1, 1], 4, distinct=False).tolist() == [1, 1]
    with pytest.raises(ValueError, match=r"repeated units \[1\]"):
        check_unit_indices([1, 1], 4)
    with pytest.raises(ValueError, match="non-empty flat list"):
        check_unit_indices([], 4)
    with pytest.raises(TypeError, match="integer unit indices"):
        check_unit_indices([0.5], 4)
    with pytest.raises(TypeError, match=r"dtype torch\.bool"):
        check_unit_indices(torch.tensor([True]), 4)


def test_check_segmenter():
    seg = load_toy_segmenter()
    assert check_segmenter(seg) is seg

    class Half:
        vocabulary = None

        def segment(self, images):
            return images

    with pytest.raises(TypeError, match="lacks soft_segment, segmentation_size"):
        check_segmenter(Half())
