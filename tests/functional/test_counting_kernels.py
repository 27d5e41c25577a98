"""The compiled counting kernels give exactly the PyTorch path's counts, and brute force's."""

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gan_dissect_callbacks.functional import _counting, unit_concept
from gan_dissect_callbacks.functional.threshold import counts_above, snap_levels
from gan_dissect_callbacks.functional.unit_concept import unit_concept_levels, unit_concept_update
from tests.metrics._reference import brute_force_counts, random_dissection_data

pytest.importorskip("numba")

FIELDS = [field.name for field in dataclasses.fields(unit_concept.UnitConceptCounts)]


def _both_paths(monkeypatch, call):
    """``call()`` with the compiled kernels, then with the PyTorch path."""
    monkeypatch.setenv("GAN_DISSECT_NUMBA", "1")
    assert _counting.available()
    compiled = call()
    monkeypatch.setenv("GAN_DISSECT_NUMBA", "0")
    assert not _counting.available()
    return compiled, call()


def _assert_equal_counts(a, b):
    for name in FIELDS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 5),
    units=st.sampled_from([1, 3, 32, 33, 70]),
    concepts=st.sampled_from([0, 1, 4, 70]),
    counting=st.sampled_from(["combinations", "pairs", "auto"]),
    ties=st.sampled_from(["none", "relu", "round"]),
)
def test_kernels_equal_the_pytorch_path_and_brute_force(
    seed, batch, units, concepts, counting, ties
):
    acts, masks = random_dissection_data(seed, batch, units, concepts, (3, 4), (7, 9), ties)
    with pytest.MonkeyPatch.context() as monkeypatch:
        levels, torch_levels = _both_paths(
            monkeypatch, lambda: unit_concept_levels(acts, (7, 9), num_levels=6, num_dense_levels=4)
        )
        assert torch.equal(levels, torch_levels)
        bins = unit_concept._level_bins(levels)
        compiled, reference = _both_paths(
            monkeypatch, lambda: unit_concept._unit_concept_update(acts, masks, bins, counting)
        )
    _assert_equal_counts(compiled, reference)
    some = masks if concepts else torch.zeros((batch, 1, 7, 9), dtype=torch.bool)
    brute = brute_force_counts(acts, some, levels)
    assert torch.equal(counts_above(compiled.unit_bins, dim=1), brute["unit_above"])
    if concepts:
        assert torch.equal(counts_above(compiled.joint_bins, dim=1), brute["joint_above"])


def test_values_on_and_next_to_levels_are_binned_exactly_by_the_kernels(monkeypatch):
    monkeypatch.setenv("GAN_DISSECT_NUMBA", "1")
    g = torch.Generator().manual_seed(0)
    levels = snap_levels(torch.randn(3, 40, generator=g).sort(dim=1).values * 7)
    levels[1] = snap_levels(torch.linspace(1000.0, 1000.01, 40)[None])  # tiny range far from 0
    picks = torch.randint(0, 40, (3, 6, 6), generator=g)
    on = levels.gather(1, picks.view(3, -1)).view(3, 6, 6)
    far = torch.tensor([-1e30, 1e30])
    values = torch.stack([on, torch.nextafter(on, far[0]), torch.nextafter(on, far[1])])
    values[0, 0, 0, 0], values[0, 0, 0, 1] = far  # far outside the grid: clamped, not wrapped
    masks = torch.rand(3, 2, 6, 6, generator=g) > 0.5
    brute = brute_force_counts(values, masks, levels)
    for counting in ("combinations", "pairs"):
        counts = unit_concept_update(values, masks, levels, counting=counting)
        assert torch.equal(counts_above(counts.unit_bins, dim=1), brute["unit_above"])
        assert torch.equal(counts_above(counts.joint_bins, dim=1), brute["joint_above"])


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_splitting_units_over_threads_changes_no_count(monkeypatch, threads):
    monkeypatch.setenv("GAN_DISSECT_NUMBA", "1")
    acts, masks = random_dissection_data(7, 4, 70, 5, (4, 4), (8, 8), "round")
    levels = unit_concept_levels(acts, (8, 8), num_levels=8, num_dense_levels=5)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        expected = unit_concept_update(acts, masks, levels)
        torch.set_num_threads(threads)
        _assert_equal_counts(unit_concept_update(acts, masks, levels), expected)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize(("threads", "units"), [(2, 32), (2, 33), (3, 50), (2, 3), (3, 7), (2, 1)])
def test_shares_cover_every_unit_once_and_a_slow_thread_takes_fewer(threads, units):
    """Units go to whichever thread is free: each exactly once, however the threads run."""
    import threading
    import time

    taken: list[tuple[int, int, str]] = []
    lock = threading.Lock()
    main = threading.current_thread().name

    def kernel(first: int, last: int) -> None:
        if threading.current_thread().name != main:
            time.sleep(0.02)  # a worker on a busy core
        with lock:
            taken.append((first, last, threading.current_thread().name))

    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        _counting._run(kernel, units)
    finally:
        torch.set_num_threads(previous)
    covered = sorted(u for first, last, _ in taken for u in range(first, last))
    assert covered == list(range(units))
    if units >= threads * _counting._INTERLEAVE:  # shares start on whole runs of units
        assert all(first % _counting._INTERLEAVE == 0 for first, _, _ in taken)
    if units >= threads * _counting._SHARES_PER_THREAD * _counting._INTERLEAVE:
        # several shares each: the fast thread took more of them
        mine = sum(last - first for first, last, name in taken if name == main)
        assert mine > units / threads


def test_a_forked_process_gets_a_pool_of_its_own(monkeypatch):
    pool = _counting._executor(2)
    assert _counting._executor(2) is pool
    monkeypatch.setattr(_counting.os, "getpid", lambda: -1)  # as if this were a forked child
    assert _counting._executor(2) is not pool


def test_kernels_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("GAN_DISSECT_NUMBA", "0")
    assert not _counting.available()
    monkeypatch.setenv("GAN_DISSECT_NUMBA", "1")
    assert _counting.available()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_compiled_iqr_search_equals_the_pytorch_one(monkeypatch, seed):
    from gan_dissect_callbacks.functional.threshold import iqr_rule

    g = torch.Generator().manual_seed(seed)
    units, levels, concepts, total = 5, 40, 7, 1000
    unit_above = torch.randint(0, total, (units, levels), generator=g).sort(1, True).values
    concept = torch.randint(0, total // 2, (concepts,), generator=g)
    concept[0] = 0  # an absent concept: every IQR is 0
    concept[1] = total  # a concept on every pixel: no information either
    m, c = unit_above[:, :, None], concept[None, None, :]
    joint = (torch.minimum(m, c) * torch.rand(units, levels, concepts, generator=g)).long()
    joint = torch.maximum(joint, m + c - total)
    joint[:, ::5] = torch.minimum(m, c)[:, ::5].expand(-1, -1, concepts)  # perfect tables, ties
    compiled, reference = _both_paths(
        monkeypatch, lambda: iqr_rule(joint, unit_above, concept, total)
    )
    assert torch.equal(compiled[0], reference[0])
    torch.testing.assert_close(compiled[1], reference[1], rtol=0, atol=1e-15)
    assert bool((compiled[1][:, :2] == 0).all()) and bool((compiled[0][:, :2] == 0).all())


def test_a_numba_that_fails_to_load_warns_and_leaves_the_pytorch_path(monkeypatch):
    def broken(name):
        raise RuntimeError("numba was built for another NumPy")

    _counting._numba.cache_clear()
    monkeypatch.setattr(_counting.importlib, "import_module", broken)
    try:
        with pytest.warns(UserWarning, match="counts with PyTorch instead"):
            assert not _counting.available()
        acts, masks = random_dissection_data(3, 2, 5, 3, (3, 3), (6, 6), "none")
        levels = unit_concept_levels(acts, (6, 6), num_levels=4, num_dense_levels=2)
        brute = brute_force_counts(acts, masks, levels)
        counts = unit_concept_update(acts, masks, levels)
        assert torch.equal(counts_above(counts.joint_bins, dim=1), brute["joint_above"])
    finally:
        monkeypatch.undo()
        _counting._numba.cache_clear()
    assert _counting.available()


@pytest.mark.parametrize("counting", ["combinations", "pairs"])
@pytest.mark.parametrize("num_levels", [6, 2047, 2048, 2100])
def test_lookup_tables_of_16_and_32_bits_count_the_same(monkeypatch, num_levels, counting):
    """The kernels read 16-bit tables while a block's bins fit them, 32-bit ones beyond."""
    g = torch.Generator().manual_seed(num_levels)
    acts = torch.randn(3, 37, 4, 4, generator=g)
    # Above every level on a block's last unit: 2047 levels put 65535, the largest 16-bit
    # entry, in its table (2048 would not fit).
    acts[:, 31, :2] = 100.0
    masks = torch.rand(3, 5, 8, 8, generator=g) > 0.6
    levels = snap_levels(torch.randn(37, num_levels, generator=g).sort(dim=1).values * 2)
    bins = unit_concept._level_bins(levels)
    fits = unit_concept.UNIT_BLOCK * (num_levels + 1) <= 2**16
    assert bins.kernel_table.dtype == (torch.uint16 if fits else torch.int32)
    assert torch.equal(bins.kernel_table.long(), bins.table.long())
    assert int(bins.table.max()) == unit_concept.UNIT_BLOCK * (num_levels + 1) - 1
    compiled, reference = _both_paths(
        monkeypatch, lambda: unit_concept._unit_concept_update(acts, masks, bins, counting)
    )
    _assert_equal_counts(compiled, reference)
    brute = brute_force_counts(acts, masks, levels)
    assert torch.equal(counts_above(compiled.unit_bins, dim=1), brute["unit_above"])
    assert torch.equal(counts_above(compiled.joint_bins, dim=1), brute["joint_above"])


def _with_threads(threads, call):
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        return call()
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("counting", ["combinations", "pairs"])
def test_blocks_counted_side_by_side_give_the_counts_of_one_thread(monkeypatch, threads, counting):
    """Six blocks of units (the last one short) go to threads of their own: the same counts."""
    monkeypatch.setenv("GAN_DISSECT_NUMBA", "1")
    acts, masks = random_dissection_data(3, 3, 5 * 32 + 7, 6, (4, 4), (8, 8), "round")
    levels = unit_concept_levels(acts, (8, 8), num_levels=8, num_dense_levels=5)

    def update():
        return unit_concept_update(acts, masks, levels, counting=counting)

    expected = _with_threads(1, update)
    _assert_equal_counts(_with_threads(threads, update), expected)
    brute = brute_force_counts(acts, masks, levels)
    assert torch.equal(counts_above(expected.joint_bins, dim=1), brute["joint_above"])


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("counting", ["combinations", "pairs"])
def test_one_pass_calibration_over_blocks_side_by_side_gives_the_counts_of_one_thread(
    monkeypatch, threads, counting
):
    """The calibrating pass merges each block's bins into its own levels, whichever thread."""
    monkeypatch.setenv("GAN_DISSECT_NUMBA", "1")
    acts, masks = random_dissection_data(5, 4, 4 * 32 + 3, 5, (4, 4), (16, 16), "relu")
    merged = []
    monkeypatch.setattr(
        unit_concept,
        "_merged_bins",
        lambda *args, _merge=unit_concept._merged_bins: merged.append(1) or _merge(*args),
    )

    def calibrate():
        return unit_concept._calibrated_update(
            acts, masks, quantile=0.99, num_levels=12, min_fraction=1e-3, num_dense_levels=6,
            counting=counting,
        )  # fmt: skip

    levels, expected = _with_threads(1, calibrate)
    levels_side_by_side, counts = _with_threads(threads, calibrate)
    assert merged  # the one pass ran: each block's bins were merged into the final levels
    assert torch.equal(levels_side_by_side, levels)
    _assert_equal_counts(counts, expected)
    _assert_equal_counts(counts, unit_concept_update(acts, masks, levels))


@pytest.mark.parametrize(("threads", "blocks"), [(2, 4), (2, 9), (3, 6), (2, 2), (3, 2), (1, 5)])
def test_each_block_is_counted_once_with_torch_on_one_thread(threads, blocks):
    import threading

    seen: list[tuple[int, str, int]] = []
    lock = threading.Lock()
    # A block per thread or more: side by side; fewer: one after the other on this thread.
    side_by_side = threads > 1 and blocks >= threads
    # Side by side, the first blocks wait for each other: one thread alone would time out.
    together = threading.Barrier(threads, timeout=20)

    def count(block: int) -> None:
        if side_by_side and block < threads:
            together.wait()
        with lock:
            seen.append((block, threading.current_thread().name, torch.get_num_threads()))

    _with_threads(threads, lambda: _counting.over_blocks(count, blocks))
    assert sorted(block for block, _, _ in seen) == list(range(blocks))
    assert {inside for _, _, inside in seen} == {1}  # no torch op wakes OpenMP's workers
    names = {name for _, name, _ in seen}
    assert len(names) == (threads if side_by_side else 1)


def test_a_block_that_fails_stops_the_others_and_its_error_reaches_the_caller():
    import threading
    import time

    counted: list[int] = []
    lock = threading.Lock()

    def count(block: int) -> None:
        if block == 1:
            raise ValueError("block 1 failed")
        time.sleep(0.002)
        with lock:
            counted.append(block)

    def fails() -> int:
        with pytest.raises(ValueError, match="block 1 failed"):
            _counting.over_blocks(count, 40)
        return torch.get_num_threads()

    assert _with_threads(2, fails) == 2
    assert len(counted) < 39  # the threads took no block once one had failed
    assert getattr(_counting._reserved, "threads", None) is None


@pytest.mark.parametrize("where", ["over_blocks", "_run"])
def test_a_second_ctrl_c_still_waits_for_the_threads_writing_the_counts(monkeypatch, where):
    """Ctrl-C during the wait for the other threads: they end first, then the caller raises."""
    import concurrent.futures
    import threading
    import time

    together = threading.Barrier(2, timeout=20)
    ended: list[str] = []

    def work(name: str) -> None:
        if ended:
            return  # the shares handed out after the first Ctrl-C
        together.wait()  # both threads are counting
        if threading.current_thread() is threading.main_thread():
            raise KeyboardInterrupt  # the first Ctrl-C, while the other thread counts
        time.sleep(0.3)
        ended.append(name)

    waits = []
    wait = concurrent.futures.Future.exception

    def second_ctrl_c(self, timeout=None):  # arrives while the caller waits for the job
        waits.append(1)
        if len(waits) == 1:
            raise KeyboardInterrupt
        return wait(self, timeout)

    monkeypatch.setattr(concurrent.futures.Future, "exception", second_ctrl_c)

    def count() -> None:
        if where == "over_blocks":
            _counting.over_blocks(lambda block: work(f"block {block}"), 2)
        else:
            with _counting.kernel_threads():
                _counting._run(lambda first, last: work(f"units {first}"), 8 * 4)

    def interrupted() -> list[str]:
        with pytest.raises(KeyboardInterrupt):
            count()
        return list(ended)

    assert len(_with_threads(2, interrupted)) == 1  # the other thread's block had ended
    assert len(waits) == 2  # the wait went on after the second Ctrl-C


def test_kernels_inside_kernel_threads_split_over_the_threads_torch_had():
    import threading

    names: set[str] = set()
    lock = threading.Lock()
    # Each thread's first share waits for the other's: one thread alone would time out.
    together = threading.Barrier(2, timeout=20)

    def kernel(first: int, last: int) -> None:
        with lock:
            first_share = threading.current_thread().name not in names
            names.add(threading.current_thread().name)
        if first_share:
            together.wait()

    def inside() -> tuple[int, int]:
        with _counting.kernel_threads():
            torch_threads = torch.get_num_threads()
            _counting._run(kernel, 64)
        return torch_threads, torch.get_num_threads()

    assert _with_threads(2, inside) == (1, 2)
    assert len(names) == 2

    def fails() -> int:
        with pytest.raises(RuntimeError, match="inside"), _counting.kernel_threads():
            raise RuntimeError("inside")
        return torch.get_num_threads()

    assert _with_threads(2, fails) == 2  # the count comes back on an error too
    assert getattr(_counting._reserved, "threads", None) is None


@pytest.mark.parametrize("threads", [1, 2])
def test_scores_of_unit_blocks_side_by_side_equal_those_of_one_block(monkeypatch, threads):
    """compute() scores blocks of units on threads of their own; the result is one block's."""
    from gan_dissect_callbacks.functional.unit_concept import unit_concept_compute

    acts, masks = random_dissection_data(11, 3, 37, 6, (4, 4), (8, 8), "relu")
    levels = unit_concept_levels(acts, (8, 8), num_levels=10, num_dense_levels=4)
    counts = unit_concept_update(acts, masks, levels)
    whole = unit_concept_compute(counts, levels)
    bins, concepts = counts.joint_bins.shape[1:]
    monkeypatch.setattr(unit_concept, "_COMPUTE_TABLES", 3 * bins * concepts)  # 13 blocks
    blocks = _with_threads(threads, lambda: unit_concept_compute(counts, levels))
    pytorch_path = _both_paths(
        monkeypatch, lambda: _with_threads(threads, lambda: unit_concept_compute(counts, levels))
    )[1]
    for result in (blocks, pytorch_path):
        for name in ("threshold_quantile", "iou_quantile", "threshold_iqr", "iou_iqr"):
            assert torch.equal(getattr(result, name), getattr(whole, name)), name
        torch.testing.assert_close(result.iqr, whole.iqr, rtol=0, atol=1e-15)


def test_threads_started_after_blocks_side_by_side_get_torch_s_count(monkeypatch):
    """``torch.set_num_threads`` also sets what new threads start with: the caller's count."""
    import threading
    import time

    monkeypatch.setattr(_counting, "_pool", None)  # a pool whose threads never ran torch
    main = threading.current_thread().name

    def count(block: int) -> None:
        if threading.current_thread().name != main:
            time.sleep(0.05)  # the pool's thread finishes after this one

    def after() -> list[int]:
        _counting.over_blocks(count, 4)
        seen: list[int] = []
        thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        return [*seen, torch.get_num_threads()]

    assert _with_threads(2, after) == [2, 2]
