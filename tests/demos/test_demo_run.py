"""The demo's run: its callbacks, batch counting, and the numbers its ``summary`` command prints.

The step-0 numbers below were produced once by::

    python -c "import torch; torch.set_num_threads(1); from gan_dissect_callbacks.demos.train \\
    import train_scene_gan, default_callbacks; cbs = default_callbacks(every_n_batches=1000); \\
    [setattr(cb, 'run_on_train_end', False) for cb in cbs]; \\
    train_scene_gan(2, log_dir='runs', name='pin', callbacks=cbs)"
    python -m gan_dissect_callbacks.demos summary runs/pin/version_0 --json

They are the first analysis of the demo itself (``python -m gan_dissect_callbacks.demos train``):
the untrained generator is the same whatever the number of batches, and the real images are the
first of the same data module (10,000 scenes, batch 64, seed 0).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from gan_dissect_callbacks.callbacks import (
    ArtifactPruningCallback,
    DissectionCallback,
    InterventionCallback,
    QualityMonitor,
)
from gan_dissect_callbacks.demos.__main__ import main
from gan_dissect_callbacks.demos.summary import format_summary, summarize_run
from gan_dissect_callbacks.demos.train import (
    DEMO_LAYERS,
    BatchCheckpoint,
    BatchProgressBar,
    default_callbacks,
    train_scene_gan,
)

#: Step 0 (untrained generator), 256 samples: no interpretable unit yet in any layer.
STEP0_MEAN_BEST_IOU = {
    "generator.layer1": 0.01750666360340059,
    "generator.layer2": 0.011559478772145365,
    "generator.layer3": 0.012101154015054119,
}
STEP0_SWD = 234.825927734375


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_default_callbacks_are_the_three_uses_and_quality_with_pruning_on() -> None:
    callbacks = default_callbacks(every_n_batches=500)
    kinds = [type(cb) for cb in callbacks]
    assert kinds == [
        DissectionCallback,
        InterventionCallback,
        ArtifactPruningCallback,
        QualityMonitor,
    ]
    dissection, intervention, artifacts, quality = callbacks
    assert list(dissection.layers) == list(DEMO_LAYERS)
    assert intervention.dissection is dissection
    assert artifacts.layer == "generator.layer3" and artifacts.prune is True
    assert not artifacts.run_on_train_start  # the untrained generator has nothing to prune
    assert dissection.run_on_train_start and quality.run_on_train_start  # the step-0 baseline
    assert all(cb.every_n_train_steps == 500 for cb in callbacks)
    assert all(cb.max_overhead is None for cb in callbacks)


@pytest.fixture(scope="module")
def pinned_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's configuration for 2 batches: only the step-0 analyses run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        callbacks = default_callbacks(every_n_batches=1000)
        for cb in callbacks:
            cb.run_on_train_end = False  # a 2-batch run would otherwise end with an analysis
        root = tmp_path_factory.mktemp("demo")
        _, trainer = train_scene_gan(
            2, log_dir=root, name="pin", callbacks=callbacks, enable_progress_bar=False
        )
    finally:
        torch.set_num_threads(threads)
    assert trainer.logger is not None
    return Path(trainer.logger.log_dir)


def test_the_first_analysis_of_the_demo_gives_the_pinned_numbers(pinned_run: Path, capsys) -> None:
    main(["summary", str(pinned_run), "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(summarize_run(pinned_run)))
    assert set(printed["dissection"]) == {"dissection"}
    assert printed["intervention"] == {} and printed["artifacts"] == {}
    (step0,) = printed["dissection"]["dissection"]
    assert step0["step"] == 0
    for layer, expected in STEP0_MEAN_BEST_IOU.items():
        numbers = step0["layers"][layer]
        assert numbers["interpretable_units"] == {"object": 0, "part": 0, "material": 0}
        assert numbers["total"] == 0 and numbers["distinct_concepts"] == 0
        assert numbers["mean_best_iou"] == pytest.approx(expected, abs=1e-4), layer
        assert numbers["label_stability"] is None
    (swd,) = printed["quality"]["quality"]
    assert swd["step"] == 0
    assert swd["swd_avg"] == pytest.approx(STEP0_SWD, abs=1e-4)


def test_the_text_summary_prints_the_same_numbers(pinned_run: Path, capsys) -> None:
    main(["summary", str(pinned_run)])
    text = capsys.readouterr().out
    assert text.strip() == format_summary(summarize_run(pinned_run))
    assert (
        "generator.layer3: 0 = 0 object + 0 part + 0 material; 0 concepts;"
        f" mean best IoU {STEP0_MEAN_BEST_IOU['generator.layer3']:.4f}"
    ) in text
    assert f"step 0: {STEP0_SWD:.4f}" in text


def test_the_checkpoint_is_named_by_training_batches(pinned_run: Path) -> None:
    assert [p.name for p in (pinned_run / "checkpoints").iterdir()] == ["batch=2.ckpt"]
    checkpoint = torch.load(pinned_run / "checkpoints" / "batch=2.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 4  # two optimizer steps per batch


class _RecordingBar(BatchProgressBar):
    """Records what the bar shows after each batch."""

    def __init__(self, total_batches: int) -> None:
        super().__init__(total_batches)
        self.shown: list[tuple[str, int, int]] = []

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(*args, **kwargs)
        bar = self.train_progress_bar
        self.shown.append((bar.desc, bar.n, bar.total))


def test_the_progress_bar_counts_batches_over_the_whole_run(tmp_path: Path) -> None:
    bar = _RecordingBar(5)
    train_scene_gan(
        5,
        batch_size=8,
        num_scenes=24,  # 3 batches per epoch: the run spans 2 epochs
        log_dir=tmp_path,
        callbacks=[bar],
        enable_checkpointing=False,
    )
    assert bar.shown == [
        ("Epoch 0 | batches: ", 1, 5),
        ("Epoch 0 | batches: ", 2, 5),
        ("Epoch 0 | batches: ", 3, 5),
        ("Epoch 1 | batches: ", 4, 5),
        ("Epoch 1 | batches: ", 5, 5),
    ]


def test_batch_checkpoint_names_and_a_given_checkpoint_is_kept(tmp_path: Path) -> None:
    mine = BatchCheckpoint(dirpath=tmp_path / "mine", filename="gan-{batch}")
    _, trainer = train_scene_gan(
        4,
        batch_size=8,
        num_scenes=24,
        log_dir=tmp_path,
        callbacks=[mine],
        enable_progress_bar=False,
    )
    assert trainer.checkpoint_callbacks == [mine]
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["gan-batch=4.ckpt"]


def test_summary_of_a_folder_without_reports_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="runs/scenes/version_0"):
        summarize_run(tmp_path)
    with pytest.raises(FileNotFoundError, match="No run folder"):
        summarize_run(tmp_path / "missing")
