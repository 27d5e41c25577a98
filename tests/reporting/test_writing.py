"""ReportOutput: JSON step/latest files, scalars to every writer and logger."""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorboard.backend.event_processing.event_accumulator import (
    STORE_EVERYTHING_SIZE_GUIDANCE,
    EventAccumulator,
)
from torch.utils.tensorboard import SummaryWriter

from gan_dissect_callbacks.functional import _counting
from gan_dissect_callbacks.reporting import _checksums as checksums
from gan_dissect_callbacks.reporting.writing import ReportOutput, write_atomically


class Recorder:
    def __init__(self):
        self.calls = []
        self.flushed = 0

    def add_scalar(self, tag, value, global_step):
        self.calls.append((tag, value, global_step))

    def log_metrics(self, metrics, step):
        self.calls.append((dict(metrics), step))

    def flush(self):
        self.flushed += 1


def test_write_json_writes_step_and_latest(tmp_path):
    out = ReportOutput(folder=tmp_path / "dissection")
    paths = out.write_json(7, {"step": 7, "x": [1, 2]})
    assert [p.name for p in paths] == ["step_0000007.json", "latest.json"]
    for p in paths:
        assert json.loads(p.read_text()) == {"step": 7, "x": [1, 2]}
        assert stat.S_IMODE(p.stat().st_mode) == 0o644
    assert not list((tmp_path / "dissection").glob(".*tmp"))


def test_no_folder_writes_nothing(tmp_path):
    assert ReportOutput().write_json(1, {"a": 1}) == []


def test_log_scalars_reaches_every_writer_and_logger():
    writer, logger = Recorder(), Recorder()
    out = ReportOutput(writers=[writer], loggers=[logger])
    out.log_scalars({"a/b": 1.5, "c": 2.0}, step=3)
    assert writer.calls == [("a/b", 1.5, 3), ("c", 2.0, 3)]
    assert logger.calls == [({"a/b": 1.5, "c": 2.0}, 3)]
    out.log_scalars({}, step=4)  # nothing to send: no empty log_metrics call
    assert len(logger.calls) == 1
    assert [w for w in out.tensorboard()] == [writer] and writer.flushed == 1


def test_write_atomically_replaces(tmp_path):
    path = tmp_path / "a" / "r.json"
    write_atomically(path, "1")
    write_atomically(path, "2")
    assert path.read_text() == "2"


# --------------------------------------------------------------------------------- checksums


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=5000))
def test_the_compiled_event_checksum_is_tensorboards(data: bytes) -> None:
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference

    assert checksums.masked_crc32c(data) == reference(data)
    if _counting.available():  # the compiled kernel and the Python loop agree too
        assert checksums._python_crc32c(data) == checksums._crc32c(data)


def test_writers_get_the_compiled_checksums_and_write_the_same_readable_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference
    from tensorboard.summary.writer import record_writer

    monkeypatch.setattr(record_writer, "masked_crc32c", reference)  # restored afterwards
    monkeypatch.setenv("GAN_DISSECT_NUMBA", "0")
    ReportOutput(writers=[object()])
    assert record_writer.masked_crc32c is reference  # without numba: TensorBoard's own
    monkeypatch.delenv("GAN_DISSECT_NUMBA")
    if not _counting.available():
        pytest.skip("numba is not installed (the `fast` extra)")
    ReportOutput(writers=[object()])
    assert record_writer.masked_crc32c is checksums._guarded
    payload = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    files = []
    for crc in (reference, checksums._guarded):
        monkeypatch.setattr(record_writer, "masked_crc32c", crc)
        out = io.BytesIO()
        record_writer.RecordWriter(out).write(payload)
        files.append(out.getvalue())
    assert files[0] == files[1]  # byte for byte
    writer = SummaryWriter(str(tmp_path))
    writer.add_image("image", torch.rand(3, 64, 64), 1)
    writer.add_scalar("scalar", 0.25, 1)
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE)
    events.Reload()  # the reader checks every record's checksums
    assert events.Scalars("scalar")[0].value == 0.25
    assert events.Images("image")[0].width == 64


def test_a_checksum_that_fails_its_check_or_later_leaves_tensorboards_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference
    from tensorboard.summary.writer import record_writer

    if not _counting.available():
        pytest.skip("numba is not installed (the `fast` extra)")
    monkeypatch.setattr(record_writer, "masked_crc32c", reference)
    monkeypatch.setattr(checksums, "masked_crc32c", lambda data: 0)  # a wrong kernel
    assert not checksums.use_compiled_checksums()
    assert record_writer.masked_crc32c is reference

    def broken(data: bytes) -> int:
        raise RuntimeError("the compiled kernel broke")

    monkeypatch.setattr(checksums, "_fallback", [reference])
    monkeypatch.setattr(checksums, "masked_crc32c", broken)
    assert checksums._guarded(b"event") == reference(b"event")  # the writer thread goes on
