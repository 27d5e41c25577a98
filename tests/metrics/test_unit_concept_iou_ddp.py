"""Two CPU processes (gloo) give exactly the single-process results on the same samples."""

import dataclasses
import datetime
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gan_dissect_callbacks.functional.unit_concept import unit_concept_iou, unit_concept_levels
from gan_dissect_callbacks.metrics.unit_concept_iou import UnitConceptIoU
from tests.metrics._reference import random_dissection_data

UNITS, CONCEPTS = 5, 3
SIZES = {"num_levels": 8, "num_dense_levels": 5}


def _batches(rank):
    """Four batches of two samples; rank 1's data differs from rank 0's."""
    acts, masks = random_dissection_data(100 + rank, 8, UNITS, CONCEPTS, (4, 4), (8, 8), "relu")
    return [(acts[i : i + 2], masks[i : i + 2]) for i in range(0, 8, 2)]


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        streamed = UnitConceptIoU(UNITS, CONCEPTS, calibration_samples=4, **SIZES)
        waiting = UnitConceptIoU(UNITS, CONCEPTS, calibration_samples=100, **SIZES)
        for acts, masks in _batches(rank):
            streamed.update(acts, masks)
            waiting.update(acts, masks)
        results = {
            "streamed": dataclasses.asdict(streamed.compute()),
            "waiting": dataclasses.asdict(waiting.compute()),
            "local_levels": streamed.levels.clone(),
            "local_samples": int(streamed.num_samples),
        }
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_equal(got, expected):
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        same = (
            torch.equal(got[key], value) if isinstance(value, torch.Tensor) else got[key] == value
        )
        assert same, key


@pytest.mark.slow
def test_two_processes_equal_one_process_on_the_same_samples(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    # One process, same samples: rank 0's first 4 samples calibrate, as under DDP.
    single = UnitConceptIoU(UNITS, CONCEPTS, calibration_samples=4, **SIZES)
    for acts, masks in _batches(0) + _batches(1):
        single.update(acts, masks)
    expected = dataclasses.asdict(single.compute())
    for result in ranks:
        _assert_equal(result["streamed"], expected)
        assert result["local_samples"] == 8  # each rank keeps its own counts after compute()

    # Rank 1 uses rank 0's levels although its own first batches would give others.
    assert torch.equal(ranks[1]["local_levels"], expected["levels"])
    own = unit_concept_levels(torch.cat([a for a, _ in _batches(1)[:2]]), (8, 8), **SIZES)
    assert not torch.equal(own, expected["levels"])

    # compute() before calibration: every rank's buffered samples, in rank order.
    acts = torch.cat([a for r in range(2) for a, _ in _batches(r)])
    masks = torch.cat([m for r in range(2) for _, m in _batches(r)])
    waiting = dataclasses.asdict(unit_concept_iou(acts, masks, **SIZES))
    for result in ranks:
        _assert_equal(result["waiting"], waiting)


def _failing_worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        metric = UnitConceptIoU(UNITS, CONCEPTS, calibration_samples=4, **SIZES)
        if rank == 0:

            def out_of_memory(activations):
                raise MemoryError("no memory left for the levels")

            metric._calibrated_levels = out_of_memory
        try:
            metric.calibrate(_batches(rank)[0][0])
            outcome = "calibrated"
        except Exception as err:
            outcome = f"{type(err).__name__}: {err}"
        # Both ranks are still in step: a later collective works.
        flag = torch.ones(1)
        dist.all_reduce(flag)
        torch.save({"outcome": outcome, "after": float(flag)}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_a_calibration_failure_on_rank_zero_is_raised_on_every_rank(tmp_path):
    mp.spawn(_failing_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0]["outcome"] == "MemoryError: no memory left for the levels"
    assert ranks[1]["outcome"].startswith("RuntimeError: Expected the levels from process 0")
    assert [r["after"] for r in ranks] == [2.0, 2.0]
