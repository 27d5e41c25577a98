"""The overhead budget: the cadence stretches so analyses stay within max_overhead of training time.

A fake clock makes every training batch take 1 s and every analysis a chosen time, so the steps an
analysis runs at are exact (times and the budget are powers of two: no rounding).
"""

from __future__ import annotations

import inspect
from typing import Any

import lightning.pytorch as pl
import pytest
from lightning.pytorch.loggers import CSVLogger

from gan_dissect_callbacks.callbacks import (
    ArtifactPruningCallback,
    DissectionCallback,
    InterventionCallback,
    QualityMonitor,
)
from gan_dissect_callbacks.callbacks._schedule import ScheduledAnalysis
from gan_dissect_callbacks.demos.gan import SceneGAN
from gan_dissect_callbacks.demos.train import SceneDataModule

BUDGET = 1 / 16


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Ticker(pl.Callback):
    """Listed before the analysis: each training batch takes ``seconds`` on the fake clock."""

    def __init__(self, clock: FakeClock, seconds: float = 1.0) -> None:
        self.clock, self.seconds = clock, seconds

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self.clock.now += self.seconds


class Costly(ScheduledAnalysis):
    """An analysis that costs ``cost`` seconds on the fake clock."""

    _writes_reports = False

    def __init__(self, clock: FakeClock, cost: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._clock = clock
        self.cost = cost

    @property
    def state_key(self) -> str:
        return self._state_key_of()

    def _analyse(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        self._clock.now += self.cost  # type: ignore[attr-defined]
        self.history.append({"step": step})


def run(callback: Costly, tmp_path, batches: int = 20) -> pl.Trainer:
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        max_steps=2 * batches, logger=CSVLogger(str(tmp_path)), enable_progress_bar=False,
        callbacks=[Ticker(callback._clock), callback], enable_checkpointing=False,  # type: ignore[arg-type]
        enable_model_summary=False, log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(
        SceneGAN(latent_dim=8, width=4, image_size=16, sample_every_n_batches=0),
        datamodule=SceneDataModule(num_scenes=160, image_size=16, batch_size=8),
    )
    return trainer


def steps(callback: ScheduledAnalysis) -> list[int]:
    return [e["step"] for e in callback.history]


def test_a_costly_analysis_runs_less_often_to_stay_within_the_budget(tmp_path):
    # 1 s batches, 0.25 s analyses, 1/16: after k analyses the next fits once t/16 ≥ (k + 1)/4.
    costly = Costly(FakeClock(), 0.25, every_n_train_steps=1, max_overhead=BUDGET)
    run(costly, tmp_path)
    assert steps(costly) == [1, 8, 12, 16, 20]
    assert costly.budget.spent_s == 1.25
    assert costly.budget.overhead == 1.25 / 20


class CostlyUpkeep(Costly):
    """Its per-batch bookkeeping (the cadence check) also costs ``upkeep`` seconds a batch."""

    def __init__(self, clock: FakeClock, cost: float, upkeep: float, **kwargs: Any) -> None:
        super().__init__(clock, cost, **kwargs)
        self.upkeep = upkeep

    def _due(self, trainer: pl.Trainer, hook: Any, step: int) -> bool:
        if hook == "batch":
            self._clock.now += self.upkeep  # type: ignore[attr-defined]
        return super()._due(trainer, hook, step)


class Loader(pl.Callback):
    """Listed first: fetching each batch takes ``seconds`` before any batch-start hook runs."""

    def __init__(self, clock: FakeClock, seconds: float) -> None:
        self.clock, self.seconds = clock, seconds

    def on_train_batch_start(self, *args: Any, **kwargs: Any) -> None:
        self.clock.now += self.seconds


def test_time_between_batches_counts_as_training_time(tmp_path):
    # Half of each 1-s batch passes before the batch's hooks (loading, say): it is training
    # time all the same, so the steps are those of 1-s batches.
    clock = FakeClock()
    costly = Costly(clock, 0.25, every_n_train_steps=1, max_overhead=BUDGET)
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        max_steps=2 * 20, logger=False, enable_progress_bar=False, enable_checkpointing=False,
        callbacks=[Loader(clock, 0.5), Ticker(clock, 0.5), costly], enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )  # fmt: skip
    trainer.fit(
        SceneGAN(latent_dim=8, width=4, image_size=16, sample_every_n_batches=0),
        datamodule=SceneDataModule(num_scenes=160, image_size=16, batch_size=8),
    )
    assert costly.budget.trained_s == 20.0
    assert steps(costly) == [1, 8, 12, 16, 20]


def test_the_per_batch_upkeep_counts_against_the_budget_too(tmp_path):
    cost, upkeep = 0.25, 2**-6  # the upkeep alone is a quarter of the 1/16 budget
    costly = CostlyUpkeep(FakeClock(), cost, upkeep, every_n_train_steps=1, max_overhead=BUDGET)
    run(costly, tmp_path)
    # Brute force of the rule: after batch t, run if spent + last cost ≤ t/16; then the
    # batch's upkeep is spent.
    spent, last, expected = 0.0, None, []
    for t in range(1, 21):
        if last is None or spent + last <= BUDGET * t:
            spent, last = spent + cost, cost
            expected.append(t)
        spent += upkeep
    assert steps(costly) == expected != [1, 8, 12, 16, 20]  # later than without the upkeep
    assert costly.budget.spent_s == spent == len(expected) * cost + 20 * upkeep
    assert costly.budget.overhead <= BUDGET


def test_the_explicit_cadence_stays_the_highest_frequency(tmp_path):
    cheap = Costly(FakeClock(), 2**-10, every_n_train_steps=5, max_overhead=BUDGET)
    run(cheap, tmp_path)
    assert steps(cheap) == [5, 10, 15, 20]


def test_without_a_budget_the_cadence_is_kept(tmp_path):
    costly = Costly(FakeClock(), 0.25, every_n_train_steps=2, max_overhead=None)
    run(costly, tmp_path)
    assert steps(costly) == list(range(2, 21, 2))


def test_start_and_end_analyses_run_and_count_against_the_budget(tmp_path):
    costly = Costly(
        FakeClock(), 0.25, every_n_train_steps=1, on_train_start=True, on_train_end=True,
        max_overhead=BUDGET,
    )  # fmt: skip
    run(costly, tmp_path)
    # Step 0 runs (asked for), then the cadence waits for the budget: t/16 ≥ (k + 1)/4.
    assert steps(costly) == [0, 8, 12, 16, 20]


def test_cost_and_effective_cadence_are_logged(tmp_path):
    costly = Costly(FakeClock(), 0.25, every_n_train_steps=1, max_overhead=BUDGET)
    trainer = run(costly, tmp_path)
    metrics = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    header = metrics.splitlines()[0].split(",")
    assert "analysis/overhead" in header and "analysis/effective_cadence" in header
    rows = [dict(zip(header, line.split(","))) for line in metrics.splitlines()[1:]]
    cadence = [
        float(r["analysis/effective_cadence"]) for r in rows if r["analysis/effective_cadence"]
    ]
    assert cadence == [7.0, 4.0, 4.0, 4.0]
    assert trainer.state.finished


def test_no_overhead_is_logged_before_any_training(tmp_path):
    costly = Costly(
        FakeClock(), 0.25, every_n_train_steps=1, on_train_start=True, max_overhead=BUDGET
    )
    run(costly, tmp_path)
    metrics = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    header = metrics.splitlines()[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in metrics.splitlines()[1:]]
    logged = {int(r["step"]): r["analysis/overhead"] for r in rows if r["analysis/overhead"]}
    assert sorted(logged) == [8, 12, 16, 20]  # step 0's analysis ran, but 0 s had trained
    assert float(logged[8]) == 2 * 0.25 / 8


def test_the_budget_survives_a_checkpoint(tmp_path):
    costly = Costly(FakeClock(), 0.25, every_n_train_steps=1, max_overhead=BUDGET)
    run(costly, tmp_path)
    again = Costly(FakeClock(), 0.25, every_n_train_steps=1, max_overhead=BUDGET)
    again.load_state_dict(costly.state_dict())
    assert again.budget.state_dict() == costly.budget.state_dict()
    assert not again.budget.allows()  # 1.5 s spent would exceed 1/16 of 20 s


@pytest.mark.parametrize(
    "callback", [DissectionCallback, InterventionCallback, ArtifactPruningCallback, QualityMonitor]
)
def test_every_callback_has_the_default_budget(callback):
    assert inspect.signature(callback).parameters["max_overhead"].default == 0.05


def test_a_bad_budget_is_refused():
    with pytest.raises(ValueError, match=r"`max_overhead` to be a float in \(0, 1\]"):
        Costly(FakeClock(), 0.1, max_overhead=0.0)


def test_callbacks_share_one_budget(tmp_path):
    clock = FakeClock()
    a = Costly(clock, 0.25, every_n_train_steps=1, max_overhead=BUDGET, name="a")
    b = Costly(clock, 0.25, every_n_train_steps=1, max_overhead=BUDGET, name="b")
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        max_steps=2 * 40, logger=False, enable_progress_bar=False, callbacks=[Ticker(clock), a, b],
        enable_checkpointing=False, enable_model_summary=False, default_root_dir=str(tmp_path),
    )  # fmt: skip
    trainer.fit(
        SceneGAN(latent_dim=8, width=4, image_size=16, sample_every_n_batches=0),
        datamodule=SceneDataModule(num_scenes=320, image_size=16, batch_size=8),
    )
    # Each takes half the budget: after k analyses the next fits once t/32 ≥ (k + 1)/4.
    assert steps(a) == steps(b) == [1, 16, 24, 32, 40]
    assert a.budget.spent_s + b.budget.spent_s <= BUDGET * 40


def test_a_callback_without_a_cadence_takes_no_share_of_the_budget(tmp_path):
    clock = FakeClock()
    costly = Costly(clock, 0.25, every_n_train_steps=1, max_overhead=BUDGET, name="a")
    at_end = Costly(clock, 0.25, on_train_end=True, max_overhead=BUDGET, name="end")
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        max_steps=2 * 20, logger=False, enable_progress_bar=False, enable_checkpointing=False,
        callbacks=[Ticker(clock), costly, at_end], enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )  # fmt: skip
    trainer.fit(
        SceneGAN(latent_dim=8, width=4, image_size=16, sample_every_n_batches=0),
        datamodule=SceneDataModule(num_scenes=160, image_size=16, batch_size=8),
    )
    assert steps(costly) == [1, 8, 12, 16, 20]  # the whole budget, as alone
    assert steps(at_end) == [20]
