"""The engines' collectives under a real 2-process gloo group: sums, gathers, agreed failure."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gan_dissect_callbacks.engines.distributed import (
    AnalysisFailedElsewhere,
    agree_on_failure,
    all_gather_cat,
    all_reduce_sum,
    dist_info,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = {"info": dist_info()}
        result["sum"] = all_reduce_sum(torch.tensor([rank + 1.0])).item()
        result["gather"] = all_gather_cat(torch.tensor([rank])).tolist()
        try:
            with agree_on_failure("the test analysis"):
                if rank == 1:
                    raise KeyError("only on rank 1")
            result["failure"] = None
        except AnalysisFailedElsewhere as err:
            result["failure"] = f"elsewhere: {err}"
        except KeyError as err:
            result["failure"] = f"here: {err}"
        with agree_on_failure():
            pass  # nobody failed: nobody raises
        # After the agreement both ranks are in step: this collective matches.
        result["after"] = all_reduce_sum(torch.tensor([1.0])).item()
        out[rank] = result
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_collectives_and_agreed_failure_on_two_processes():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
        results = dict(out)
    assert [results[r]["info"] for r in (0, 1)] == [(0, 2), (1, 2)]
    assert results[0]["sum"] == results[1]["sum"] == 3.0
    assert results[0]["gather"] == results[1]["gather"] == [0, 1]
    assert results[1]["failure"] == "here: 'only on rank 1'"
    assert results[0]["failure"].startswith(
        "elsewhere: the test analysis failed on process 1 (KeyError: 'only on rank 1')"
    )
    assert results[0]["after"] == results[1]["after"] == 2.0


def test_single_process_is_a_no_op():
    assert dist_info() == (0, 1)
    t = torch.tensor([2.0])
    assert all_reduce_sum(t) is t and all_gather_cat(t) is t
    with pytest.raises(ValueError, match="boom"), agree_on_failure():
        raise ValueError("boom")
