"""The views of the artifact-unit search and of the sample-quality monitor, as pure functions.

Shared by :class:`~gan_dissect_callbacks.callbacks.artifact_pruning.ArtifactPruningCallback` and
:class:`~gan_dissect_callbacks.callbacks.quality.QualityMonitor`; each takes a check's plain-value
entry (or the engine's results) and returns what is written:

- :func:`check_scalars`: ``{prefix}/swd`` (the model as it trains, mask included),
  ``swd_ablated`` (the candidates ablated too), ``improvement``, ``improvement_se``,
  ``accepted``, ``pruned_units``, ``score_baseline``, ``top_score`` and ``swd_unpruned``
  (without the mask, when there is one);
- :func:`check_markdown`: the decision and the candidates' scores as a markdown table;
- :func:`check_grids`: ``before`` / ``after`` (the same latents without and with the ablation)
  and ``candidates`` (each candidate's top-activating images, one row per unit), from the
  images the engines handed over;
- :func:`log_artifacts`: the histogram of unit scores, the table and the grids to one
  TensorBoard ``SummaryWriter``;
- :func:`quality_scalars`: the monitor's ``{prefix}/swd_{resolution}``, ``swd_avg`` and
  ``discriminator_score``.

Example:
    >>> entry = {"step": 2, "scores": [1.5, None, 0.5], "score_baseline": 0.0,
    ...          "candidates": [0], "accepted": False, "pruned": [], "rolled_back": [],
    ...          "pruned_units": [], "mask_check": None,
    ...          "ablation": {"swd": [10.0, 12.0], "swd_ablated": [9.0, 11.0], "seeds": [0, 1],
    ...                       "mean_improvement": 1.0, "improvement_se": 0.0}}
    >>> check_scalars(entry, "artifacts")["artifacts/swd"]
    11.0
    >>> print(check_markdown(entry, "generator.layer3").splitlines()[-1])
    | 0 | 1.50 |
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from gan_dissect_callbacks.engines.artifacts import AblationResult, UnitArtifactScores
from gan_dissect_callbacks.reporting.images import ImageLog, image_grid, image_pixels

__all__ = ["check_grids", "check_markdown", "check_scalars", "log_artifacts", "quality_scalars"]

#: Images per row of the before/after grids.
_GRID_ROW = 8


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _finite_scores(entry: Mapping[str, Any]) -> list[float]:
    return [s for s in entry["scores"] if s is not None]


def check_scalars(entry: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """The scalars of one check, tagged ``{prefix}/...`` (see the module docstring)."""
    ablation = entry["ablation"]
    scalars = {
        f"{prefix}/swd": _mean(ablation["swd"]),
        f"{prefix}/swd_ablated": _mean(ablation["swd_ablated"]),
        f"{prefix}/improvement": ablation["mean_improvement"],
        f"{prefix}/accepted": float(entry["accepted"]),
        f"{prefix}/pruned_units": float(len(entry["pruned_units"])),
        f"{prefix}/score_baseline": float(entry["score_baseline"]),
    }
    if ablation["improvement_se"] is not None:
        scalars[f"{prefix}/improvement_se"] = ablation["improvement_se"]
    finite = _finite_scores(entry)
    if finite:
        scalars[f"{prefix}/top_score"] = max(finite)
    if entry["mask_check"] is not None:
        scalars[f"{prefix}/swd_unpruned"] = _mean(entry["mask_check"]["swd"])
    return scalars


def check_markdown(entry: Mapping[str, Any], layer: str) -> str:
    """The decision of one check and its candidates' artifact scores, as markdown."""
    ablation = entry["ablation"]
    se = ablation["improvement_se"]
    lines = [
        f"**{layer}**, step {entry['step']}: candidates {entry['candidates']}; SWD×10³"
        f" {_mean(ablation['swd']):.2f} → {_mean(ablation['swd_ablated']):.2f} ablated;"
        f" improvement {ablation['mean_improvement']:.2f} ± {se if se is not None else 0:.2f}"
        f" (SE, {len(ablation['seeds'])} seeds);"
        f" {'real' if entry['accepted'] else 'not beyond noise'}"
        + (f"; **pruned** {entry['pruned']}" if entry["pruned"] else "")
        + (f"; **rolled back** {entry['rolled_back']}" if entry["rolled_back"] else ""),
        "",
        f"Pruned now: {entry['pruned_units']}. Score baseline {entry['score_baseline']:.2f}.",
        "",
        "| unit | artifact score |",
        "|---:|---:|",
    ]
    scores = entry["scores"]
    for u in entry["candidates"]:
        lines.append(f"| {u} | {scores[u]:.2f} |")
    return "\n".join(lines)


def check_grids(
    ablation: AblationResult | None, scores: UnitArtifactScores | None, shown: int
) -> dict[str, Tensor]:
    """``before`` / ``after`` grids of the ablation's examples, and the candidates' top images.

    Args:
        ablation: the verified ablation (its ``examples``, if kept, make the two grids).
        scores: the unit scores, with their images kept (``keep_images=True``); each ablated
            unit's ``shown`` top images make one row of the ``candidates`` grid.
        shown: top images per candidate.
    """
    grids: dict[str, Tensor] = {}
    if ablation is not None and ablation.examples is not None:
        before, after = ablation.examples
        grids["before"] = image_grid(before, nrow=_GRID_ROW)
        grids["after"] = image_grid(after, nrow=_GRID_ROW)
    if scores is None or scores.images is None or not ablation or not ablation.units:
        return grids
    images = torch.cat([scores.top_images(u, shown) for u in ablation.units])
    grids["candidates"] = image_grid(images, nrow=shown)
    return grids


def log_artifacts(
    writer: Any,
    entry: Mapping[str, Any],
    *,
    layer: str,
    prefix: str,
    grids: Mapping[str, Tensor] | None = None,
) -> None:
    """The histogram of unit scores, the markdown table and the grids of one check to ``writer``.

    The scalars go through :meth:`~gan_dissect_callbacks.reporting.writing.ReportOutput.log_scalars`
    (to every logger, not only TensorBoard).
    """
    step = int(entry["step"])
    finite = _finite_scores(entry)
    if finite:
        writer.add_histogram(f"{prefix}/unit_scores", torch.tensor(finite), global_step=step)
    writer.add_text(f"{prefix}/chosen_units", check_markdown(entry, layer), global_step=step)
    with ImageLog(writer) as log:  # PNGs encoded on a second thread, as for the dissection
        for name, grid in (grids or {}).items():
            log.add(f"{prefix}/{name}", image_pixels(grid), step)


def quality_scalars(values: Mapping[str, float], prefix: str) -> dict[str, float]:
    """The quality monitor's values tagged ``{prefix}/{name}``.

    Example:
        >>> quality_scalars({"swd_avg": 12.5, "discriminator_score": 0.5}, "quality")
        {'quality/swd_avg': 12.5, 'quality/discriminator_score': 0.5}
    """
    return {f"{prefix}/{name}": float(value) for name, value in values.items()}
