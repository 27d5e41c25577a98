"""Compiled CPU kernels for the dissection's counting loop (optional: they need numba).

The PyTorch path of :func:`~gan_dissect_callbacks.functional.unit_concept.unit_concept_update`
makes four passes over every upsampled value (grid cell, table lookup, the combination's offset,
``bincount``), writes an index per value to memory, and its ``bincount`` runs on one thread.
These kernels do the same in one pass that writes nothing but the counts (they release the
GIL). The blocks of units go to threads of their own, each block's upsampling and kernels on one
thread (:func:`over_blocks`); with fewer blocks than threads, each kernel splits its block's
units over the threads instead. Either way torch's ops in the loop run single-threaded, so that
torch's spinning OpenMP workers leave the cores to the kernels (:func:`kernel_threads`). Every
bin is decided by the same float32 operations as on the PyTorch path, so the counts are
identical (tested). The IQR rule's search over levels is here too (:func:`best_iqr`): one pass
over the ``[U, L, C]`` counts, four logarithms per 2×2 table, no float64 temporaries of that
size.

They are used on the CPU when numba is installed (``pip install "gan_dissect_callbacks[fast]"``)
and ``GAN_DISSECT_NUMBA`` is not ``0``; otherwise the PyTorch path runs. The first call compiles
them (a few seconds, cached on disk afterwards); numba's compiler runtime adds about 130 MiB to
the process's resident memory once.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "available",
    "best_iqr",
    "count_cells",
    "count_combinations",
    "count_pairs",
    "kernel_threads",
    "over_blocks",
]


@functools.cache
def _numba() -> ModuleType | None:
    # Imported on first use: importing numba takes longer than a CLI's `--help`.
    try:
        return importlib.import_module("numba")
    except ImportError:  # the optional extra is not installed
        return None
    except Exception as err:  # e.g. a numba built for another NumPy: count with PyTorch
        warnings.warn(
            f"numba could not be loaded ({err}); the dissection counts with PyTorch instead. "
            "Reinstall it (`pip install -U numba`) or set GAN_DISSECT_NUMBA=0.",
            stacklevel=2,
        )
        return None


def available(device: torch.device | None = None) -> bool:
    """Whether the compiled kernels can be used (numba installed, not switched off), and for
    tensors on ``device`` when given (they count on the CPU only).

    Example:
        >>> isinstance(available(), bool)
        True
        >>> available(torch.device("meta"))
        False
    """
    if device is not None and device.type != "cpu":
        return False
    return os.environ.get("GAN_DISSECT_NUMBA", "1") != "0" and _numba() is not None


# Each kernel walks a tile of pixels once per unit (or per run of `_INTERLEAVE` units), so that
# the units' lookup tables and count rows stay in cache, and finds a value's grid cell as
# ``int(ceil(min(max(v, low), high)))``: clamping before the ceil equals the PyTorch path's
# ceil-then-clamp, as `low` and `high` are whole numbers, and keeps the int conversion in
# range. Indices are unsigned, which spares numba's negative-index checks.
#
# The cells and combinations kernels walk `_INTERLEAVE` units side by side: their values lie
# next to each other in a pixel's row of `values` (one cache line where one unit alone reads a
# line per value), and neighbouring pixels, which often fall in the same bin, no longer
# increment one counter back to back, each increment waiting on the store before it: four
# increments that never hit the same counter keep the core busy. Measured on one thread of an
# AVX2 CPU (ns per value), the combinations kernel went 2.8 → 1.9 with 16-bit lookup tables
# (`kernel_table`, so that four units' tables fit the cache beside their counts; 2.5 with
# int32 tables), and the cells kernel on calibration's fine grid 2.2 → 1.6, faster than adding
# runs of equal cells once (which it did before, and still does for units outside a run of
# four: a share's last units, or every unit of a share of one). Eight units side by side were
# slower again. The kernels write the four out: change them with `_INTERLEAVE`.
_TILE = 2048
_INTERLEAVE = 4


def _combinations_kernel(
    values: Any, low: Any, high: Any, offset: Any, table: Any, combo: Any, span: int,
    counts: Any, first: int, last: int,
) -> None:  # fmt: skip
    pixels, units = values.shape
    flat = values.ravel()
    width = np.uint64(span)

    def cell(v: float, lo: float, hi: float, shift: float) -> Any:
        return np.uint64(np.int64(np.ceil(min(max(v, lo), hi))) + shift)

    for tile in range(0, pixels, _TILE):
        end = min(pixels, tile + _TILE)
        u = first
        while u + 4 <= last:  # `_INTERLEAVE` units at a time, written out
            lo0, hi0, s0 = low[u], high[u], offset[u]
            lo1, hi1, s1 = low[u + 1], high[u + 1], offset[u + 1]
            lo2, hi2, s2 = low[u + 2], high[u + 2], offset[u + 2]
            lo3, hi3, s3 = low[u + 3], high[u + 3], offset[u + 3]
            for p in range(tile, end):
                row = np.uint64(combo[p]) * width
                at = np.uint64(p * units + u)
                c0 = cell(flat[at], lo0, hi0, s0)
                c1 = cell(flat[at + np.uint64(1)], lo1, hi1, s1)
                c2 = cell(flat[at + np.uint64(2)], lo2, hi2, s2)
                c3 = cell(flat[at + np.uint64(3)], lo3, hi3, s3)
                counts[row + np.uint64(table[c0])] += 1
                counts[row + np.uint64(table[c1])] += 1
                counts[row + np.uint64(table[c2])] += 1
                counts[row + np.uint64(table[c3])] += 1
            u += 4
        for rest in range(u, last):
            lo, hi, shift = low[rest], high[rest], offset[rest]
            for p in range(tile, end):
                c = cell(flat[np.uint64(p * units + rest)], lo, hi, shift)
                counts[np.uint64(combo[p]) * width + np.uint64(table[c])] += 1


def _pairs_kernel(
    values: Any, low: Any, high: Any, offset: Any, table: Any, starts: Any, concepts: Any,
    span: int, alone: Any, joint: Any, first: int, last: int,
) -> None:  # fmt: skip
    pixels, units = values.shape
    flat = values.ravel()
    width = np.uint64(span)
    for tile in range(0, pixels, _TILE):
        end = min(pixels, tile + _TILE)
        for u in range(first, last):
            lo, hi, shift = low[u], high[u], offset[u]
            for p in range(tile, end):
                v = flat[np.uint64(p * units + u)]
                cell = np.uint64(np.int64(np.ceil(min(max(v, lo), hi))) + shift)
                index = np.uint64(table[cell])
                alone[index] += 1
                for pair in range(starts[p], starts[p + 1]):
                    joint[np.uint64(concepts[pair]) * width + index] += 1


def _cells_kernel(
    values: Any, low: Any, high: Any, offset: Any, counts: Any, first: int, last: int
) -> None:
    pixels, units = values.shape
    flat = values.ravel()

    def cell(v: float, lo: float, hi: float, shift: float) -> Any:
        return np.uint64(np.int64(np.ceil(min(max(v, lo), hi))) + shift)

    for tile in range(0, pixels, _TILE):
        end = min(pixels, tile + _TILE)
        u = first
        while u + 4 <= last:  # `_INTERLEAVE` units at a time, written out
            lo0, hi0, s0 = low[u], high[u], offset[u]
            lo1, hi1, s1 = low[u + 1], high[u + 1], offset[u + 1]
            lo2, hi2, s2 = low[u + 2], high[u + 2], offset[u + 2]
            lo3, hi3, s3 = low[u + 3], high[u + 3], offset[u + 3]
            for p in range(tile, end):
                at = np.uint64(p * units + u)
                counts[cell(flat[at], lo0, hi0, s0)] += 1
                counts[cell(flat[at + np.uint64(1)], lo1, hi1, s1)] += 1
                counts[cell(flat[at + np.uint64(2)], lo2, hi2, s2)] += 1
                counts[cell(flat[at + np.uint64(3)], lo3, hi3, s3)] += 1
            u += 4
        for rest in range(u, last):
            lo, hi, shift = low[rest], high[rest], offset[rest]
            previous, run = np.uint64(0), 0
            for p in range(tile, end):
                c = cell(flat[np.uint64(p * units + rest)], lo, hi, shift)
                if c == previous:
                    run += 1
                else:
                    counts[previous] += run
                    previous, run = c, 1
            counts[previous] += run


def _iqr_kernel(
    joint: Any, mask: Any, concept: Any, total: float, index: Any, best: Any, first: int, last: int
) -> None:  # fmt: skip
    # The formula of functional/iqr.py::_iqr, table by table; ties go to the lowest level.
    def plogp(count: float) -> float:
        p = count / total
        return p * np.log(p) if p > 0.0 else 0.0

    levels, concepts = joint.shape[1], joint.shape[2]
    h_concept = np.empty(concepts)
    for c in range(concepts):
        h_concept[c] = -(plogp(concept[c]) + plogp(total - concept[c]))
    # A concept on no pixel (or on all) has H(concept) = 0 and H(mask, concept) = H(mask): its
    # IQR is 0 at every level, so its answer is the lowest level with 0, without the tables.
    # Dissections often carry many such concepts (a vocabulary the generator does not draw).
    informative = np.empty(concepts, dtype=np.int64)
    count = 0
    for c in range(concepts):
        if 0.0 < concept[c] < total:
            informative[count] = c
            count += 1
    for u in range(first, last):
        for c in range(concepts):
            index[u, c], best[u, c] = 0, -1.0 if 0.0 < concept[c] < total else 0.0
        for level in range(levels):
            m = float(mask[u, level])
            h_mask = -(plogp(m) + plogp(total - m))
            for i in range(count):
                c = informative[i]
                j, k = float(joint[u, level, c]), float(concept[c])
                h_joint = -(
                    plogp(j) + plogp(m - j) + plogp(k - j) + plogp(total - m - k + j)
                )  # fmt: skip
                ratio = 0.0
                if h_joint > 0.0:
                    ratio = min(1.0, max(0.0, h_mask + h_concept[c] - h_joint) / h_joint)
                if ratio > best[u, c]:
                    index[u, c], best[u, c] = level, ratio


_compiled: dict[str, Callable[..., None]] = {}
_pool: tuple[int, int, ThreadPoolExecutor] | None = None
#: Shares of a kernel's units per thread (see `_run`).
_SHARES_PER_THREAD = 4
#: Blocks per thread from which `over_blocks` counts blocks side by side (the toy's dissection
#: took the same time at 1 and 2 on two threads; at 1 a many-core machine keeps every thread
#: busy on a layer of one block per thread).
_BLOCKS_PER_THREAD = 1
_lock = threading.Lock()
# The threads that kernels called on this thread split over, inside `kernel_threads`.
_reserved = threading.local()


@contextlib.contextmanager
def kernel_threads(threads: int | None = None) -> Iterator[None]:
    """Run torch's ops on the calling thread only; kernels called on it split over ``threads``.

    After each parallel op, torch's OpenMP workers keep spinning for a while (libgomp's default
    wait policy) on the cores the kernels' threads need. A loop that alternates small torch ops
    with kernel calls, as the counting loop does, then ran its kernels ~2.5x slower on two
    cores (0.24 s of kernel time per batch of ``benchmarks/bench_unit_concept_iou.py``, against
    0.085 s with ``OMP_WAIT_POLICY=PASSIVE``). Inside this block no OpenMP region wakes torch's
    workers, so they fall asleep and leave the cores to the kernels. ``threads`` defaults to the
    count torch had (inside another block, that block's); the previous count comes back on
    exit, also on an error.

    Example:
        >>> before = torch.get_num_threads()
        >>> with kernel_threads():
        ...     torch.get_num_threads()
        1
        >>> torch.get_num_threads() == before
        True
    """
    previous = torch.get_num_threads()
    outer = getattr(_reserved, "threads", None)
    _reserved.threads = threads if threads is not None else (outer or previous)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
        _reserved.threads = outer


def over_blocks(count: Callable[[int], None], blocks: int) -> None:
    """Run ``count(block)`` for ``block`` in ``range(blocks)``, with the threads torch has.

    With at least one block per thread, the blocks go to whichever thread is free, each one
    counted on its thread alone (its torch ops and its kernels): no two threads write the same
    counts or wait on each other within a block. With fewer, the blocks run one after the
    other and each kernel splits its units over the threads (:func:`_run`). Either way torch's
    ops run single-threaded (:func:`kernel_threads`). ``count`` must write only its block's
    part of any shared output.
    """
    threads = torch.get_num_threads()
    if threads <= 1 or blocks < _BLOCKS_PER_THREAD * threads:
        with kernel_threads():
            for block in range(blocks):
                count(block)
        return
    pool = _executor(threads - 1)
    todo = iter(range(blocks))
    taking = threading.Lock()
    failed = threading.Event()

    def take() -> None:
        while not failed.is_set():
            with taking:
                block = next(todo, None)
            if block is None:
                return
            count(block)

    def work() -> None:  # on a pool thread
        with kernel_threads(1):
            try:
                take()
            except BaseException:
                failed.set()  # the other threads take no further block
                raise

    # This thread sets torch's count first and restores it last: `torch.set_num_threads` also
    # sets the count that threads started later begin with, which the pool threads' own
    # settings would otherwise leave at 1.
    with kernel_threads(1):
        jobs = [pool.submit(work) for _ in range(1, threads)]
        try:
            take()
        except BaseException:  # also Ctrl-C: the other threads stop after their block
            failed.set()
            raise
        finally:
            _wait_for(jobs)
    for job in jobs:
        job.result()


def _wait_for(jobs: Sequence[Future[None]]) -> None:
    """Wait until every job has ended, through a further Ctrl-C too: they write into the
    caller's outputs, which must not change after the caller has returned or raised. A Ctrl-C
    during the wait is raised once the jobs have ended (each ends within its block or share)."""
    interrupted: KeyboardInterrupt | None = None
    for job in jobs:
        while True:
            try:
                job.exception()  # waits; the job's own error is raised by `result()` later
                break
            except KeyboardInterrupt as err:
                interrupted = interrupted or err
    if interrupted is not None:
        raise interrupted


def _kernel(name: str, function: Callable[..., None]) -> Callable[..., None]:
    with _lock:  # threads counting blocks side by side may ask for a kernel at once
        if name not in _compiled:
            numba = _numba()
            assert numba is not None, "call `available()` first"
            _compiled[name] = numba.njit(nogil=True, cache=True, boundscheck=False)(function)
        return _compiled[name]


def _executor(threads: int) -> ThreadPoolExecutor:
    """A pool of ``threads`` workers, made again after a fork (its threads do not survive one)."""
    global _pool
    with _lock:
        if _pool is None or _pool[0] != os.getpid() or _pool[1] != threads:
            if _pool is not None and _pool[0] == os.getpid():
                _pool[2].shutdown(wait=False)
            _pool = (os.getpid(), threads, ThreadPoolExecutor(threads, "gan-dissect-count"))
        return _pool[2]


def _run(kernel: Callable[..., None], units: int, *args: Any) -> None:
    """Run ``kernel(*args, first, last)`` over units ``[0, units)``, split over torch's threads
    (those it had before :func:`kernel_threads`, inside one).

    Units go out in a few shares per thread, each to the next thread that is free, so a thread
    that runs slower (on a core that something else is using) takes fewer of them instead of
    holding the others up. Shares cover disjoint units: they write disjoint counts.
    """
    available_threads = getattr(_reserved, "threads", None) or torch.get_num_threads()
    threads = min(available_threads, units)
    if threads <= 1:
        kernel(*args, 0, units)
        return
    # Sized by torch's threads, not by this call's share count: a narrow block (fewer units than
    # threads) must not tear down and rebuild the pool between calls.
    pool = _executor(available_threads - 1)
    # Shares are whole runs of `_INTERLEAVE` units where every thread gets one; with more
    # threads than runs (9 or more threads on a block of 32), single units keep them all busy.
    runs = -(-units // _INTERLEAVE) if units >= threads * _INTERLEAVE else units
    step = _INTERLEAVE if runs < units else 1
    shares = min(runs, threads * _SHARES_PER_THREAD)
    bounds = [min(units, step * (runs * part // shares)) for part in range(shares + 1)]
    parts = iter(range(shares))
    taking = threading.Lock()

    def work() -> None:
        while True:
            with taking:
                part = next(parts, None)
            if part is None:
                return
            kernel(*args, bounds[part], bounds[part + 1])

    jobs = [pool.submit(work) for _ in range(1, threads)]
    try:
        work()  # this thread takes shares too
    finally:  # the other shares write into the same arrays
        _wait_for(jobs)
    for job in jobs:
        job.result()


def _grid(low: Tensor, high: Tensor, offset: Tensor) -> tuple[Any, Any, Any]:
    return low.numpy(), high.numpy(), offset.to(torch.int64).numpy()


def count_combinations(
    values: Tensor,
    low: Tensor,
    high: Tensor,
    offset: Tensor,
    table: Tensor,
    combination: Tensor,
    span: int,
    counts: Tensor,
) -> None:
    """Add one count per value at ``combination[p]·span + table[cell]`` into ``counts``.

    Args:
        values: ``[P, u]`` float32, grid-scaled upsampled values of ``u`` units (C-contiguous).
        low, high, offset: ``[u]`` float32 grid bounds and table offsets of the units.
        table: int32 or uint16 lookup table from (unit, grid cell) to (unit, bin).
        combination: ``[P]`` int32 label-combination id of each pixel.
        span: bins per combination.
        counts: int32 or int64 counts, added to in place.
    """
    kernel = _kernel("combinations", _combinations_kernel)
    _run(
        kernel, values.shape[1], values.numpy(), *_grid(low, high, offset), table.numpy(),
        combination.numpy(), span, counts.numpy(),
    )  # fmt: skip


def count_pairs(
    values: Tensor,
    low: Tensor,
    high: Tensor,
    offset: Tensor,
    table: Tensor,
    starts: Tensor,
    concepts: Tensor,
    span: int,
    alone: Tensor,
    joint: Tensor,
) -> None:
    """Count each value's bin in ``alone`` and, for each concept of its pixel, in ``joint``.

    Args:
        values, low, high, offset, table: as in :func:`count_combinations`.
        starts: ``[P + 1]`` int64, pixel ``p``'s concepts are ``concepts[starts[p]:starts[p+1]]``.
        concepts: int32 concept index of every (pixel, concept) pair.
        span: bins per concept.
        alone: int32 or int64 ``[span]`` counts per bin, added to in place.
        joint: ``[C·span]`` counts per (concept, bin) of the same dtype, added to in place.
    """
    kernel = _kernel("pairs", _pairs_kernel)
    _run(
        kernel, values.shape[1], values.numpy(), *_grid(low, high, offset), table.numpy(),
        starts.numpy(), concepts.numpy(), span, alone.numpy(), joint.numpy(),
    )  # fmt: skip


def count_cells(values: Tensor, low: Tensor, high: Tensor, offset: Tensor, counts: Tensor) -> None:
    """Add one count per value at its (unit, grid cell) index into ``counts`` (int32 or int64)."""
    kernel = _kernel("cells", _cells_kernel)
    _run(kernel, values.shape[1], values.numpy(), *_grid(low, high, offset), counts.numpy())


def best_iqr(
    joint_above: Tensor, unit_above: Tensor, concept_counts: Tensor, total: int
) -> tuple[Tensor, Tensor]:
    """For each unit and concept, the level with the largest IQR, and that IQR.

    Args:
        joint_above: ``[U, L, C]`` int64 pixels above each level where the concept is present.
        unit_above: ``[U, L]`` int64 pixels above each level.
        concept_counts: ``[C]`` int64 pixels of each concept.
        total: all pixels counted.

    Returns:
        ``(index [U, C] int64, iqr [U, C] float64)``, as
        :func:`~gan_dissect_callbacks.functional.threshold.iqr_rule`.
    """
    units, _, concepts = joint_above.shape
    index = torch.zeros((units, concepts), dtype=torch.int64)
    best = torch.zeros((units, concepts), dtype=torch.float64)
    if units and concepts and joint_above.shape[1]:
        _run(
            _kernel("iqr", _iqr_kernel), units, joint_above.contiguous().numpy(),
            unit_above.contiguous().numpy(), concept_counts.contiguous().numpy(), float(total),
            index.numpy(), best.numpy(),
        )  # fmt: skip
    return index, best
