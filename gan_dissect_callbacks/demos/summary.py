"""The numbers of a demo run, read back from what its callbacks wrote.

``python -m gan_dissect_callbacks.demos summary runs/scenes/version_0`` prints, per analysis
step: each layer's interpretable units by category with its mean best IoU and label stability
(the dissection curves), the share of each concept's pixels removed by ablating its top units
against random units (the intervention's removal curves), every artifact check (candidates,
the verified SWD improvement, the units pruned so far) and the SWD ×10³ of the samples.

The dissection, intervention and artifact numbers come from the JSON reports
``{run}/{analysis}/step_XXXXXXX.json``; an analysis is recognised by its report, so a callback
given another ``name`` is found as well. ``QualityMonitor`` writes no report, so the SWD is read
from the run's TensorBoard event file (tag ``{name}/swd_avg``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["format_summary", "summarize_run"]

#: The ``format`` field of the reports whose numbers the summary reads.
_DISSECTION_FORMAT = "gan_dissect_callbacks.dissection/"
_INTERVENTION_FORMAT = "gan_dissect_callbacks.intervention/"


def _kind(report: dict[str, Any]) -> str | None:
    fmt = str(report.get("format", ""))
    if fmt.startswith(_DISSECTION_FORMAT):
        return "dissection"
    if fmt.startswith(_INTERVENTION_FORMAT):
        return "intervention"
    if "ablation" in report and "candidates" in report:
        return "artifacts"
    return None


def _dissection_numbers(folder: Path) -> list[dict[str, Any]]:
    from gan_dissect_callbacks.engines.dissection.report import DissectionReport
    from gan_dissect_callbacks.reporting.dissection import summarise

    steps, previous = [], None
    for path in sorted(folder.glob("step_*.json")):
        numbers = summarise(DissectionReport.from_json(path), previous)
        previous = numbers
        layers = {
            name: {key: layer[key] for key in ("interpretable_units", "total", "distinct_concepts")}
            | {
                "mean_best_iou": layer["mean_best_iou"],
                "label_stability": layer["label_stability"],
            }
            for name, layer in numbers["layers"].items()
        }
        steps.append({"step": numbers["step"], "layers": layers})
    return steps


def _intervention_numbers(report: dict[str, Any]) -> dict[str, Any]:
    concepts: dict[str, dict[str, Any] | None] = {}
    for concept, numbers in report["concepts"].items():
        if not numbers:
            concepts[concept] = None
            continue
        removal = numbers["removal"]
        concepts[concept] = {
            "points": removal["points"],
            "removed": removal["removed"],
            "random_removed": removal["random_mean"],
        }
    return {"step": report["step"], "layer": report["layer"], "concepts": concepts}


def _artifact_numbers(report: dict[str, Any]) -> dict[str, Any]:
    ablation = report["ablation"]
    return {
        "step": report["step"],
        "candidates": report["candidates"],
        "swd": _mean(ablation["swd"]),
        "swd_ablated": _mean(ablation["swd_ablated"]),
        "improvement": ablation["mean_improvement"],
        "improvement_se": ablation["improvement_se"],
        "accepted": report["accepted"],
        "pruned": report["pruned"],
        "rolled_back": report["rolled_back"],
        "pruned_units": report.get("pruned_units", []),
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _quality_numbers(run: Path) -> dict[str, list[dict[str, float]]]:
    """``{name: [{"step", "swd_avg"}, ...]}`` for every ``{name}/swd_avg`` tag of the run."""
    if not any(run.glob("events.out.tfevents.*")):
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    found = {}
    for tag in events.Tags()["scalars"]:
        if tag.endswith("/swd_avg"):
            found[tag[: -len("/swd_avg")]] = [
                {"step": int(e.step), "swd_avg": float(e.value)} for e in events.Scalars(tag)
            ]
    return found


def summarize_run(run: str | Path) -> dict[str, Any]:
    """The numbers of one run folder (``{log_dir}/{name}/version_N``), as plain values.

    Returns:
        ``{"dissection": {name: [step, ...]}, "intervention": {name: [...]},
        "artifacts": {name: [...]}, "quality": {name: [...]}}``, each list in step order.

    Raises:
        FileNotFoundError: if ``run`` is not a folder, or holds no analysis report and no SWD.
    """
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(
            f"No run folder at {run}. Pass a run's log folder, such as runs/scenes/version_0."
        )
    found: dict[str, dict[str, list[dict[str, Any]]]] = {
        "dissection": {},
        "intervention": {},
        "artifacts": {},
    }
    for folder in sorted(p for p in run.iterdir() if p.is_dir()):
        paths = sorted(folder.glob("step_*.json"))
        if not paths:
            continue
        kind = _kind(json.loads(paths[0].read_text()))
        if kind == "dissection":
            found["dissection"][folder.name] = _dissection_numbers(folder)
        elif kind is not None:
            read = _intervention_numbers if kind == "intervention" else _artifact_numbers
            found[kind][folder.name] = [read(json.loads(p.read_text())) for p in paths]
    summary: dict[str, Any] = {**found, "quality": _quality_numbers(run)}
    if not any(summary.values()):
        raise FileNotFoundError(
            f"No analysis reports (step_*.json) or SWD scalars under {run}. Pass the folder of a"
            " run trained with the analysis callbacks, such as runs/scenes/version_0."
        )
    return summary


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as the text that ``python -m gan_dissect_callbacks.demos summary`` prints.

    Example:
        >>> print(format_summary({"quality": {"quality": [{"step": 0, "swd_avg": 234.81}]}}))
        SWD x10^3 (quality/swd_avg)
          step 0: 234.8100
    """
    lines: list[str] = []
    for name, steps in summary.get("dissection", {}).items():
        lines.append(f"interpretable units ({name}): total = object + part + material")
        for entry in steps:
            lines.append(f"  step {entry['step']}:")
            for layer, n in entry["layers"].items():
                counts = n["interpretable_units"]
                by_category = " + ".join(f"{counts[c]} {c}" for c in counts)
                lines.append(
                    f"    {layer}: {n['total']} = {by_category}; {n['distinct_concepts']} concepts;"
                    f" mean best IoU {_fmt(n['mean_best_iou'])};"
                    f" label stability {_fmt(n['label_stability'], 2)}"
                )
    for name, steps in summary.get("intervention", {}).items():
        lines.append(f"concept pixels removed by ablating the top n units ({name}), vs random")
        for entry in steps:
            lines.append(f"  step {entry['step']} ({entry['layer']}):")
            for concept, n in entry["concepts"].items():
                if n is None:
                    lines.append(f"    {concept}: not measured (absent from the samples)")
                    continue
                pairs = ", ".join(
                    f"n={p}: {_fmt(r, 3)} vs {_fmt(q, 3)}"
                    for p, r, q in zip(n["points"], n["removed"], n["random_removed"], strict=True)
                )
                lines.append(f"    {concept}: {pairs}")
    for name, checks in summary.get("artifacts", {}).items():
        lines.append(f"artifact units ({name}): SWD x10^3 without -> with the candidates ablated")
        for c in checks:
            verdict = "verified" if c["accepted"] else "not verified"
            lines.append(
                f"  step {c['step']}: candidates {c['candidates']}, SWD {_fmt(c['swd'], 2)} ->"
                f" {_fmt(c['swd_ablated'], 2)}, improvement {_fmt(c['improvement'], 2)}"
                f" ± {_fmt(c['improvement_se'], 2)} (SE), {verdict}; pruned now {c['pruned']},"
                f" rolled back {c['rolled_back']}, pruned so far {c['pruned_units']}"
            )
    for name, points in summary.get("quality", {}).items():
        lines.append(f"SWD x10^3 ({name}/swd_avg)")
        lines.extend(f"  step {p['step']}: {_fmt(p['swd_avg'])}" for p in points)
    return "\n".join(lines)
