"""ReportOutput: JSON step/latest files, scalars to every writer and logger."""

from __future__ import annotations

import json
import stat

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
