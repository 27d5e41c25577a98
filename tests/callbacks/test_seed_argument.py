"""Every analysis callback checks its ``seed`` like its other integer arguments."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from gan_dissect_callbacks.callbacks import (
    ArtifactPruningCallback,
    DissectionCallback,
    InterventionCallback,
    QualityMonitor,
)
from gan_dissect_callbacks.demos.segmenter import load_toy_segmenter

SEGMENTER = load_toy_segmenter()

MAKERS: dict[str, Callable[..., Any]] = {
    "dissection": lambda **kw: DissectionCallback(["generator.layer1"], SEGMENTER, **kw),
    "intervention": lambda **kw: InterventionCallback("generator.layer3", ["sky"], SEGMENTER, **kw),
    "artifacts": lambda **kw: ArtifactPruningCallback("generator.layer3", **kw),
    "quality": lambda **kw: QualityMonitor(**kw),
}


@pytest.mark.parametrize("kind", sorted(MAKERS))
@pytest.mark.parametrize("seed", [-1, 1.5, "0", None, True])
def test_a_bad_seed_is_refused_by_name(kind: str, seed: Any) -> None:
    with pytest.raises(ValueError, match=r"Expected argument `seed` to be an int ≥ 0, but got"):
        MAKERS[kind](seed=seed)


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_a_numpy_seed_is_stored_as_int(kind: str) -> None:
    callback = MAKERS[kind](seed=np.int64(7))
    assert callback.seed == 7 and type(callback.seed) is int
