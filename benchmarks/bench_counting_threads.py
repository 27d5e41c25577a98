"""The counting loop's threads: unit blocks side by side (the default) against one after the other.

Alternates, in one process and repeat by repeat, the two ways the dissection's counting loop can
use torch's threads, so that a machine whose speed drifts still compares them fairly:

- ``blocks``: :func:`~gan_dissect_callbacks.functional._counting.over_blocks`, what the package
  does (whole unit blocks on threads of their own, torch's ops single-threaded in the loop);
- ``sequential``: the blocks one after the other with torch's threads left alone, each kernel
  splitting a block's units over the threads (the loop before ``over_blocks``).

Prints, as JSON, the medians of the MISSION §6 stream through ``UnitConceptIoU(512, 32)``
(samples/s overall and of the batches counted after calibration) and of ``dissect()`` of
``run_all``'s toy and paper-shape synthetic cases (seconds)::

    python benchmarks/bench_counting_threads.py [--repeats 7] [--threads 2]

It needs numba (the ``fast`` extra): without it neither path runs the compiled kernels.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable

import bench_unit_concept_iou as reference
import run_all
import torch

from gan_dissect_callbacks.functional import _counting
from gan_dissect_callbacks.metrics.unit_concept_iou import UnitConceptIoU


def _sequential(count: Callable[[int], None], blocks: int) -> None:
    for block in range(blocks):
        count(block)


MODES = {"blocks": _counting.over_blocks, "sequential": _sequential}


def _stream(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """Overall samples/s of the §6 stream, and the median of its batches counted at once."""
    metric = UnitConceptIoU(reference.UNITS, reference.CONCEPTS, quantile=0.99)
    busy, counted = 0.0, []
    for activations, masks in batches:
        waiting = metric.pending_samples > 0 or not metric.calibrated
        start = time.perf_counter()
        metric.update(activations, masks)
        spent = time.perf_counter() - start
        busy += spent
        if not waiting:
            counted.append(reference.BATCH / spent)
    start = time.perf_counter()
    metric.compute()
    busy += time.perf_counter() - start
    return len(batches) * reference.BATCH / busy, statistics.median(counted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="alternations (default 7)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args()
    if not _counting.available():
        raise SystemExit("numba is not installed (or GAN_DISSECT_NUMBA=0): nothing to compare.")
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # the random segmenter's absent concepts
    batches = [reference.make_batch(i) for i in range(16)]
    device = torch.device("cpu")
    cases = {
        name: run_all._make_case(name, run_all.PRESETS["full"], device)
        for name in ("toy", "paper_synthetic")
    }
    results: dict[str, list[float]] = {}
    try:
        for repeat in range(-1, args.repeats):  # repeat -1 warms up both (not recorded)
            for mode in MODES if repeat % 2 else reversed(MODES):
                _counting_loop(mode)
                overall, counted = _stream(batches)
                seconds = {}
                for name, case in cases.items():
                    start = time.perf_counter()
                    run_all._dissect(case)
                    seconds[name] = time.perf_counter() - start
                if repeat >= 0:
                    results.setdefault(f"{mode}: §6 overall samples/s", []).append(overall)
                    results.setdefault(f"{mode}: §6 counted samples/s", []).append(counted)
                    for name, s in seconds.items():
                        results.setdefault(f"{mode}: {name} dissect s", []).append(s)
    finally:
        _counting_loop("blocks")
    medians = {k: round(statistics.median(v), 3) for k, v in sorted(results.items())}
    print(json.dumps(medians, ensure_ascii=False))


def _counting_loop(mode: str) -> None:
    # The counting loop and the compute look `over_blocks` up on the module at each call.
    _counting.over_blocks = MODES[mode]  # type: ignore[assignment]


if __name__ == "__main__":
    main()
