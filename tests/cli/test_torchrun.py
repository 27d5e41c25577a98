"""gan-dissect under torchrun: the processes split the samples; the report is one process's."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gan_dissect_callbacks.cli import main

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
FACTORY = "gan_dissect_callbacks.demos.pretrained:load_pretrained_scene_gan"
ARGS = [FACTORY, "--layers", "generator.layer2", "generator.layer3", "--num-samples", "24"]
ARGS += ["--batch-size", "6", "--top-k", "2", "--top-n", "2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_two_processes_write_the_one_process_report_once(tmp_path, capsys):
    alone = tmp_path / "alone"
    assert main([*ARGS, "--out", str(alone)]) == 0
    summary = capsys.readouterr().out.splitlines()[0]

    together = tmp_path / "together"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    launcher += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    done = subprocess.run(
        [*launcher, "-m", "gan_dissect_callbacks.cli", *ARGS, "--out", str(together)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr

    report = Path("dissection", "step_0000000.json")
    assert (together / report).read_text() == (alone / report).read_text()
    written = files_under(together)
    assert [f for f in written if not Path(f).name.startswith("events.")] == [
        "dissection/latest.json",
        str(report),
    ]
    # One event file per TensorBoard run (the main one, and one per layer and category), all
    # written by rank 0 alone.
    runs = [str(Path(f).parent) for f in written if Path(f).name.startswith("events.")]
    assert sorted(runs) == sorted(set(runs))
    assert "." in runs and "dissection/generator.layer3" in runs
    assert done.stdout.count(summary) == 1
    assert done.stdout.count("report:") == 1
    assert "dissecting 24/24 samples" in done.stderr
