"""What ``gan-dissect`` checks before it dissects: a report it would replace, layers that mislead.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> check_not_written(folder, 12, overwrite=False)  # nothing there yet
    >>> _ = (folder / "step_0000012.json").write_text("{}")
    >>> check_not_written(folder, 12, overwrite=False)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileExistsError: ...step_0000012.json already holds a report of step 12. Pass --overwrite to \
replace it, or choose another --out or --step.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gan_dissect_callbacks.reporting.writing import step_report_name

if TYPE_CHECKING:
    from gan_dissect_callbacks.engines.generator import AnalysedGenerator

__all__ = ["MIN_UNITS", "check_not_written", "layer_warnings"]

#: A layer with fewer units than this is reported as suspicious: too few to hold concepts apart.
MIN_UNITS = 8


def check_not_written(folder: Path, step: int, *, overwrite: bool) -> None:
    """Refuse to replace the report of ``step`` in ``folder`` unless ``overwrite``.

    Raises:
        FileExistsError: naming the file and ``--overwrite``.
    """
    path = Path(folder) / step_report_name(step)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} already holds a report of step {step}. Pass --overwrite to replace it, or "
            "choose another --out or --step."
        )


def layer_warnings(
    generator: AnalysedGenerator, layers: Sequence[str], *, seed: int = 0
) -> list[str]:
    """One warning per layer whose dissection would mislead, probed on one seeded sample.

    A layer whose output has the images' shape is the image itself (or the last step before it):
    its units are colour channels, and their "concepts" only say where each colour is. A layer
    with fewer than :data:`MIN_UNITS` units is too narrow for units to stand for separate
    concepts. Layers whose output is not a ``[B, U, h, w]`` featuremap are left to the dissection,
    which names the problem.

    Args:
        generator: the generator to dissect.
        layers: the layers to dissect (known layers of it).
        seed: seed of the one probing latent.

    Example:
        >>> from torch import nn
        >>> from gan_dissect_callbacks.engines.generator import AnalysedGenerator
        >>> net = nn.Sequential(
        ...     nn.Unflatten(1, (4, 1, 1)), nn.ConvTranspose2d(4, 4, 4), nn.Conv2d(4, 3, 1)
        ... )
        >>> net.latent_dim = 4
        >>> for warning in layer_warnings(AnalysedGenerator(net), ["1", "2"]):
        ...     print(warning.split(":")[0])
        layer '1' has only 4 units
        layer '2' outputs the images themselves ([3, 4, 4])
    """
    with generator.harmless():
        images, acts = generator.run(generator.latents(1, seed), capture=layers)
    found = []
    for name in layers:
        r = acts[name]
        if r.ndim != 4:
            continue
        if r.shape[1:] == images.shape[1:]:
            found.append(
                f"layer {name!r} outputs the images themselves ({list(r.shape[1:])}): its units "
                "are colour channels, so their labels only say where each colour is. Dissect an "
                "inner layer instead."
            )
        elif r.shape[1] < MIN_UNITS:
            found.append(
                f"layer {name!r} has only {r.shape[1]} units: too few for units to stand for "
                f"separate concepts (dissect a layer with at least {MIN_UNITS})."
            )
    return found
