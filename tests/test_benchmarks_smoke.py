"""The benchmark runner end to end at its smallest sizes: every section is written and sane."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

RUN_ALL = Path(__file__).resolve().parents[1] / "benchmarks" / "run_all.py"


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("bench") / "results.json"
    done = subprocess.run(
        [sys.executable, str(RUN_ALL), "--preset", "smoke", "--threads", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text()), out.with_name("RESULTS.md").read_text()


@pytest.mark.slow
def test_every_section_is_written(results: tuple[dict[str, Any], str]) -> None:
    data, summary = results
    assert set(data) == {
        "meta",
        "overhead",
        "reference_workload",
        "throughput",
        "training",
        "scaling",
        "profile",
        "notes",
        "gpu",
    }
    assert data["meta"]["preset"] == "smoke"
    assert data["meta"]["machine"]["torch_threads"] == 1
    for heading in ("## 1.", "## 2.", "## 3.", "## 4.", "## 5.", "## 6."):
        assert heading in summary


@pytest.mark.slow
def test_overhead_and_throughput_are_positive(results: tuple[dict[str, Any], str]) -> None:
    data, _ = results
    assert set(data["overhead"]) == {"toy", "paper_progan", "paper_synthetic"}
    for case in data["overhead"].values():
        for key in ("forward_s_median", "dissect_s_median", "ratio", "dissect_samples_per_s"):
            assert _positive(case[key]), (key, case[key])
        assert case["met"] == (case["ratio"] <= case["target"])
    paper = data["overhead"]["paper_synthetic"]
    assert paper["layers"]["layer4"] == {"units": 512, "featuremap": [8, 8]}
    assert paper["concepts"] == 150
    assert paper["mask_size"] == [64, 64]
    for name, numbers in data["throughput"]["passes"].items():
        assert _positive(numbers["samples_per_s"]), name
    for name in ("toy", "paper_synthetic"):
        assert _positive(data["throughput"]["memory"][name]["peak_mib"])


@pytest.mark.slow
def test_reference_workload_meets_accuracy(results: tuple[dict[str, Any], str]) -> None:
    data, _ = results
    reference = data["reference_workload"]
    assert _positive(reference["samples_per_s"])
    assert reference["ratio_to_reference"] == pytest.approx(reference["samples_per_s"] / 4.9)
    assert 0 <= reference["iou_max_error"] <= 0.005
    assert _positive(data["throughput"]["memory"]["reference"]["peak_mib"])
    wide = reference["concepts_150"]
    assert wide["concepts"] == 150
    assert _positive(wide["samples_per_s"])
    assert wide["met"] == (wide["samples_per_s"] >= 20)
    # The smoke preset calibrates on a single batch, so only the full run holds it to 0.005.
    assert 0 <= wide["iou_max_error"] < 0.05


@pytest.mark.slow
def test_state_is_flat_in_samples_and_follows_the_formula(
    results: tuple[dict[str, Any], str],
) -> None:
    throughput = results[0]["throughput"]
    trace = throughput["state_vs_samples"]
    assert [t["samples"] for t in trace] == [32, 64]
    assert trace[0]["state_bytes"] == trace[1]["state_bytes"]
    # Before calibration (128 samples) the batches wait in the buffer: activations + masks.
    per_sample = 512 * 8 * 8 * 4 + 32 * 64 * 64
    assert [t["buffer_bytes"] for t in trace] == [32 * per_sample, 64 * per_sample]
    assert throughput["state_flat"]
    for row in throughput["state_vs_size"]:
        u, c, levels = row["units"], row["concepts"], row["levels"]
        assert row["state_bytes"] == 8 * u * (levels + 1) * (c + 1) + 4 * u * levels + 8 * c + 16


@pytest.mark.slow
def test_training_scaling_profile_and_gpu(results: tuple[dict[str, Any], str]) -> None:
    data, _ = results
    training = data["training"]
    assert _positive(training["baseline_batch_s"])
    assert set(training["configs"]) == {
        "DissectionCallback",
        "InterventionCallback",
        "ArtifactPruningCallback",
        "QualityMonitor",
        "demo default_callbacks (all four)",
    }
    for config in training["configs"].values():
        assert _positive(config["analysis_s_per_cycle"])
        assert _positive(config["overhead_pct"])
        assert config["default_cadence"] == 500
    memory = training["memory"]
    assert set(memory) == {"none", *training["configs"]}
    assert memory["none"]["added_to_training_mib"] == 0
    for name, numbers in memory.items():
        assert _positive(numbers["peak_mib"]), name
    for axis in ("batch", "units", "concepts", "size"):
        assert data["scaling"][axis]
        assert all(_positive(row["samples_per_s"]) for row in data["scaling"][axis])
    for profile in data["profile"].values():
        assert len(profile["top_ops"]) == 10
        assert _positive(profile["breakdown_s"]["counting (upsample, bin, bincount)"])
    gpu = data["gpu"]
    if gpu["skipped"]:
        assert gpu["reason"]
    else:
        assert all(_positive(case["ratio"]) for case in gpu["overhead"].values())
