"""Dissection under 2-process DDP (gloo on CPU) equals the single-process result."""

import json
import socket
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gan_dissect_callbacks.callbacks.dissection import DissectionCallback
from gan_dissect_callbacks.engines.dissection import DissectionReport, dissect
from tests.engines.synthetic import PaintingGenerator, exact_segmenter

pytestmark = pytest.mark.slow

KWARGS = {"num_samples": 45, "batch_size": 8, "top_k": 3, "seed": 5}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str, rule: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        torch.manual_seed(rank)  # different global RNG per rank must not matter
        model = PaintingGenerator().eval()
        report = dissect(model, ["features", "scale"], exact_segmenter(), rule=rule, **KWARGS)
        Path(out, f"rank{rank}.json").write_text(report.to_json())
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("rule", ["quantile", "iqr"])
def test_two_processes_give_the_single_process_report(tmp_path, rule):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path), rule), nprocs=2, join=True)
    single = dissect(
        PaintingGenerator().eval(), ["features", "scale"], exact_segmenter(), rule=rule, **KWARGS
    )
    for rank in (0, 1):
        got = DissectionReport.from_json(tmp_path / f"rank{rank}.json")
        assert got == single, f"rank {rank} differs"


def test_callback_under_ddp_spawn_writes_once_and_matches_one_process(tmp_path):
    from gan_dissect_callbacks.demos.gan import SceneGAN
    from gan_dissect_callbacks.demos.segmenter import load_toy_segmenter
    from gan_dissect_callbacks.demos.train import SceneDataModule

    def run(root, **trainer_kwargs):
        pl.seed_everything(0, verbose=False)
        cb = DissectionCallback(
            ["generator.layer2"],
            load_toy_segmenter(),
            every_n_train_steps=2,
            on_train_start=True,
            num_samples=24,
            batch_size=8,
            top_k=2,
            raise_on_error=True,
            max_overhead=None,
        )
        trainer = pl.Trainer(
            max_steps=4,
            accelerator="cpu",
            logger=pl.loggers.TensorBoardLogger(str(root), name="r"),
            callbacks=[cb],
            enable_progress_bar=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            **trainer_kwargs,
        )
        trainer.fit(
            SceneGAN(latent_dim=16, width=8, sample_every_n_batches=0),
            datamodule=SceneDataModule(num_scenes=64, batch_size=8),
        )
        return Path(root, "r", "version_0", "dissection")

    ddp = run(tmp_path / "ddp", devices=2, strategy="ddp_spawn_find_unused_parameters_true")
    one = run(tmp_path / "one", devices=1)
    # Only rank 0 wrote: one file per dissection, no duplicates from rank 1.
    assert sorted(p.name for p in ddp.glob("step_*.json")) == [
        "step_0000000.json",
        "step_0000002.json",
    ]
    # Before training the weights are identical, so the dissections must be too.
    a = json.loads((ddp / "step_0000000.json").read_text())
    b = json.loads((one / "step_0000000.json").read_text())
    assert a == b
