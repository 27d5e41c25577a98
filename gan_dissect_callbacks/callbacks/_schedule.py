"""The Lightning plumbing shared by the analysis callbacks: when to run, and what a failure does.

A subclass implements one method, ``_analyse(trainer, pl_module, step)``; this base decides the
step, calls it at the callback's cadence, at most once per step and never while Lightning
sanity-checks, and turns a failure into a warning unless ``raise_on_error``.

**Step axis**: a *step* is a training batch (``trainer.fit_loop.total_batch_idx``); an analysis
of the model after ``n`` batches runs at step ``n``, so the one before training runs at step 0.

**DDP**: every rank calls ``_analyse``; a subclass that measures on rank 0 alone says so there.
"""

from __future__ import annotations

import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Literal

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from gan_dissect_callbacks.arguments import check_int
from gan_dissect_callbacks.callbacks._budget import OverheadBudget
from gan_dissect_callbacks.callbacks._sharing import Prefetched, SampleSharing
from gan_dissect_callbacks.callbacks._trainer import analysis_dir, batch_step, report_output
from gan_dissect_callbacks.engines.generator import AnalysedGenerator
from gan_dissect_callbacks.engines.sampling import LatentSampler
from gan_dissect_callbacks.reporting.writing import ReportOutput, RunWriters

__all__ = ["ScheduledAnalysis"]

#: Seconds spent in every analysis of this process so far (so that a batch's measured time
#: leaves out the analyses of other callbacks that ran between its start and end).
_ANALYSIS_SECONDS = [0.0]

#: The Lightning hooks an analysis can run in.
Hook = Literal["start", "batch", "epoch", "end"]


class ScheduledAnalysis(SampleSharing, pl.Callback, ABC):
    """Run ``_analyse`` every ``n`` training batches or epochs, and optionally at start and end.

    Subclasses keep their entries in ``history`` (each a dict with a ``"step"``); it is the
    callback's state, and its last step is not analysed again after a resume.

    Args:
        every_n_train_steps: run after every ``n`` training batches (``None``: never).
        every_n_epochs: run after every ``n`` training epochs (``None``: never).
        on_train_start: also run before the first batch.
        on_train_end: also run when training ends (skipped if the last batch was analysed).
        raise_on_error: re-raise failures of the analysis instead of warning and going on.
        name: the analysis's name: the prefix of its TensorBoard tags and the folder of its
            reports (default: the analysis's own, e.g. ``"dissection"``). Give each of several
            callbacks of one kind its own; it then also makes their ``state_key`` distinct.
        generator: the generator analysed: ``None`` for the LightningModule itself, the dotted
            name of a submodule (``"generator_ema"``), or an ``nn.Module`` kept outside it. Layer
            names are relative to it.
        generate: latents → images in ``[-1, 1]``; by default the analysed module's forward.
        sample_latents: ``(n, generator) → latents``; by default the analysed module's (or the
            LightningModule's) ``sample_latents``, or standard normal latents of ``latent_dim``.
        latent_dim: latent size, when the modules do not say.
        max_overhead: the largest share of training wall time the analysis may take (see
            :mod:`~gan_dissect_callbacks.callbacks._budget`): at a step its cadence asks for, it
            runs only while its time so far, plus the last analysis's, stays within
            ``max_overhead / n`` of the training time so far (``n``: the callbacks with a budget
            and a cadence on the trainer). ``None``: no budget.

    Example:
        >>> class StepRecorder(ScheduledAnalysis):
        ...     def _analyse(self, trainer, pl_module, step):
        ...         self.history.append({"step": step})
        >>> recorder = StepRecorder(every_n_train_steps=2)
        >>> recorder.load_state_dict({"history": [{"step": 4}]})
        >>> recorder.state_dict()["history"]
        [{'step': 4}]
        >>> StepRecorder(every_n_epochs=0)
        Traceback (most recent call last):
        ...
        ValueError: Expected argument `every_n_epochs` to be None or an int ≥ 1, but got 0.
    """

    #: What a failure's warning calls the analysis: "the {_what} at step n failed ...".
    _what: ClassVar[str] = "analysis"
    #: The analysis's default name: its TensorBoard tag prefix and report folder.
    _default_name: ClassVar[str] = "analysis"
    #: Whether it writes JSON reports (then ``setup`` says where when the trainer has no logger).
    _writes_reports: ClassVar[bool] = True

    def __init__(
        self,
        *,
        every_n_train_steps: int | None = None,
        every_n_epochs: int | None = None,
        on_train_start: bool = False,
        on_train_end: bool = False,
        raise_on_error: bool = False,
        name: str | None = None,
        generator: str | nn.Module | None = None,
        generate: Callable[[Tensor], Tensor] | None = None,
        sample_latents: LatentSampler | None = None,
        latent_dim: int | None = None,
        max_overhead: float | None = None,
    ) -> None:
        super().__init__()
        if name is not None and (not isinstance(name, str) or not name or "/" in name):
            raise ValueError(
                f"Expected argument `name` to be None or a non-empty string without '/', such as "
                f"'dissection_ema', but got {name!r}."
            )
        every_n_train_steps = check_int(every_n_train_steps, "every_n_train_steps", optional=True)
        every_n_epochs = check_int(every_n_epochs, "every_n_epochs", optional=True)
        self.every_n_train_steps = every_n_train_steps
        self.every_n_epochs = every_n_epochs
        self.run_on_train_start = on_train_start
        self.run_on_train_end = on_train_end
        self.raise_on_error = raise_on_error
        self.name = name
        self.generator = generator
        self.generate = generate
        self.sample_latents = sample_latents
        self.latent_dim = check_int(latent_dim, "latent_dim", optional=True)
        self._generator: AnalysedGenerator | None = None
        self.max_overhead = max_overhead
        #: What the analyses cost so far against the training time (also without a budget).
        self.budget = OverheadBudget(max_overhead if max_overhead is not None else 1.0)
        self._batch_started: tuple[float, float] | None = None
        #: The wall clock of the budget (a test may give a fake one).
        self._clock: Callable[[], float] = time.perf_counter
        self.history: list[dict[str, Any]] = []
        self._last_step: int | None = None
        #: The hook whose analysis is running now (``None`` between analyses).
        self._hook: Hook | None = None
        #: Extra TensorBoard runs (one per layer, concept...), open until teardown.
        self._runs = RunWriters()
        #: The budget's decision at ``(step, hook)``.
        self._decision: tuple[int, Hook, bool] | None = None
        #: This analysis's pass, run by another analysis due at the same step.
        self._prefetched: Prefetched | None = None
        #: The last step at which this analysis changed the generator (a pruning).
        self._changed_step: int | None = None

    @property
    def analysis_name(self) -> str:
        """The tag prefix and report folder: ``name``, or the analysis's default."""
        return self.name if self.name is not None else self._default_name

    @property
    def analysed_generator(self) -> AnalysedGenerator:
        """The generator this callback analyses, found in ``setup``."""
        if self._generator is None:
            raise RuntimeError(
                f"{type(self).__name__} has no generator yet: attach it to a Trainer, whose "
                "`setup` finds the generator on the LightningModule."
            )
        return self._generator

    def _state_key_of(self, **identity: Any) -> str:
        """A ``state_key`` from the identifying arguments, plus ``name`` when one was given."""
        if self.name is not None:
            identity["name"] = self.name
        return self._generate_state_key(**identity)

    @abstractmethod
    def _analyse(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        """Analyse the model after ``step`` training batches (every rank calls it)."""

    # ------------------------------------------------------------------ Lightning hooks

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._prefetched = None  # nothing of an earlier fit carries over
        self._generator = AnalysedGenerator.of(
            pl_module,
            self.generator,
            generate=self.generate,
            sample_latents=self.sample_latents,
            latent_dim=self.latent_dim,
        )
        if not trainer.loggers:
            folder = analysis_dir(trainer, self.analysis_name)
            where = f"; JSON reports are still written under {folder}" * self._writes_reports
            rank_zero_warn(
                f"{type(self).__name__}: the trainer has no logger, so nothing goes to "
                f"TensorBoard{where}. Pass `logger=TensorBoardLogger(...)` to the Trainer to see "
                "the curves."
            )

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._runs.close()  # the runs' event files and writer threads

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._runs.close()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_if_due(trainer, pl_module, "start")
        self._open_batch()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        if self._batch_started is None:  # hooks called without `on_train_start`
            self._open_batch()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        entered = self._clock()
        self._close_batch(entered)
        analyses_before = _ANALYSIS_SECONDS[0]
        self._run_if_due(trainer, pl_module, "batch")
        # This hook's own time, less the analysis it may have run (counted as that), is spent too.
        upkeep = self._clock() - entered - (_ANALYSIS_SECONDS[0] - analyses_before)
        self.budget.record_upkeep(upkeep)
        self._open_batch()

    def _open_batch(self) -> None:
        """Start the clock of the next batch's training time: from here to its end."""
        self._batch_started = (self._clock(), _ANALYSIS_SECONDS[0])

    def _close_batch(self, now: float) -> None:
        """Record the training time up to ``now`` (once), less the analyses run meanwhile.

        It runs from the end of the previous batch (or the start of training) to the end of
        this one: loading the batch, the step, validation, checkpoints and the other callbacks'
        hooks all count as training time, as they do on the user's clock.
        """
        if self._batch_started is not None:
            started, analyses_before = self._batch_started
            self.budget.record_batch(now - started - (_ANALYSIS_SECONDS[0] - analyses_before))
            self._batch_started = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_if_due(trainer, pl_module, "epoch")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_if_due(trainer, pl_module, "end")

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "budget": self.budget.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.budget.load_state_dict(state_dict.get("budget", {}))
        if self.history:
            self._last_step = int(self.history[-1]["step"])

    # ------------------------------------------------------------------ running

    def _due(self, trainer: pl.Trainer, hook: Hook, step: int) -> bool:
        """Whether the cadence asks for an analysis in ``hook`` at ``step``."""
        if hook == "start":
            return self.run_on_train_start and not self.history
        if hook == "batch":
            every = self.every_n_train_steps
            return every is not None and step % every == 0
        if hook == "epoch":
            every = self.every_n_epochs
            return every is not None and (trainer.current_epoch + 1) % every == 0
        return self.run_on_train_end

    def _run_if_due(self, trainer: pl.Trainer, pl_module: pl.LightningModule, hook: Hook) -> None:
        step = batch_step(trainer) + 1
        if self._due(trainer, hook, step) and self._within_budget(trainer, hook, step):
            self._run(trainer, pl_module, step, hook)

    @property
    def _cadenced(self) -> bool:
        """Whether it runs every ``n`` batches or epochs (not only at the start or end)."""
        return self.every_n_train_steps is not None or self.every_n_epochs is not None

    def _budgeted(self, hook: Hook) -> bool:
        """Whether the budget decides on runs in ``hook`` (the cadence's, when there is one)."""
        return self.max_overhead is not None and hook not in ("start", "end")

    def _within_budget(self, trainer: pl.Trainer, hook: Hook, step: int) -> bool:
        """Whether the budget lets the cadence's analysis run (rank 0 decides for every rank).

        Decided once per step and hook: an analysis that shares its samples with this one asks
        before this callback's own hook does, and both must get the same answer.
        """
        if not self._budgeted(hook):
            return True
        if self._decision is not None and self._decision[:2] == (step, hook):
            return self._decision[2]
        # The budget is split among the callbacks whose cadence it stretches: one that runs
        # only at the start or the end of training takes no share.
        budgeted = [
            cb
            for cb in getattr(trainer, "callbacks", [])
            if isinstance(cb, ScheduledAnalysis) and cb.max_overhead is not None and cb._cadenced
        ]
        allowed = self.budget.allows(share=max(1, len(budgeted)))
        # Clocks differ between processes; the analysis runs collectives: one decision for all.
        decided = bool(trainer.strategy.broadcast(allowed, src=0))
        self._decision = (step, hook, decided)
        return decided

    def catch_up(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, hook: Hook | None
    ) -> None:
        """Run now if this callback is due in ``hook`` at this step and has not run yet.

        An analysis that uses this one's result (an intervention ranking units by this
        dissection) calls it with the hook it runs in, so it sees the result of the same step
        whatever the order of the callbacks; the once-per-step guard then skips this callback's
        own call of that hook.
        """
        step = batch_step(trainer) + 1
        if (
            hook is not None
            and self._due(trainer, hook, step)
            and self._within_budget(trainer, hook, step)
        ):
            self._run(trainer, pl_module, step, hook)

    def _run(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int, hook: Hook = "batch"
    ) -> None:
        if trainer.sanity_checking or step == self._last_step:
            return
        self._last_step = step
        self._hook = hook
        # A round of analysis can take a while on a CPU; the progress bar stands still meanwhile.
        rank_zero_info(f"{type(self).__name__}: the {self._what} at step {step} runs ...")
        started, nested_before = self._clock(), _ANALYSIS_SECONDS[0]
        # Its part of a pass an analysis before it ran (counted in that one's time already).
        prepaid = self._prepaid(step)
        try:
            with self._reported(step):
                _ANALYSIS_SECONDS[0] += self._share_samples(trainer, pl_module, step, hook)
                self._analyse(trainer, pl_module, step)
        finally:
            self._hook, self._prefetched = None, None
            # An analysis run inside this one (the dissection an intervention catches up) has
            # counted its own time already, and so has the part of a shared pass charged to the
            # analyses after this one: this one's cost leaves them out.
            nested = _ANALYSIS_SECONDS[0] - nested_before
            spent = max(0.0, self._clock() - started - nested)
            _ANALYSIS_SECONDS[0] += spent
            seconds = spent + prepaid
            since = self.budget.record_analysis(seconds, step)
        share = (
            f"analyses so far: {100 * self.budget.overhead:.1f}% of the training time"
            if self.budget.trained_s > 0
            else "no training time yet"
        )
        rank_zero_info(
            f"{type(self).__name__}: the {self._what} at step {step} took {seconds:.1f} s ({share})"
        )
        if trainer.is_global_zero:
            with self._reported(step):  # a logger's failure is the analysis's, not training's
                self._log_cost(trainer, step, since)

    def _log_cost(self, trainer: pl.Trainer, step: int, since: int | None) -> None:
        """What the analysis costs, where every logger sees it beside the curves."""
        scalars: dict[str, float] = {}
        if self.budget.trained_s > 0:  # before any training the share is undefined, not 0
            scalars[f"{self.analysis_name}/overhead"] = self.budget.overhead
        if since is not None:
            scalars[f"{self.analysis_name}/effective_cadence"] = float(since)
        report_output(trainer, self.analysis_name).log_scalars(scalars, step)

    def _write_json_last(self, output: ReportOutput, step: int, payload: dict[str, Any]) -> None:
        """Write the step's JSON report after its logger output, so a failed write loses no curve.

        A file that cannot be written (a full disk, a read-only folder) becomes a warning that
        says what was recorded and what was not; training goes on.
        """
        try:
            output.write_json(step, payload)
        except OSError as err:
            if self.raise_on_error:
                raise
            rank_zero_warn(
                f"{type(self).__name__}: the {self._what} at step {step} was logged to "
                "TensorBoard and the other loggers, but its JSON report could not be written "
                f"to {output.folder} ({type(err).__name__}: {err}); it is still in the callback's "
                "history (and so in the next checkpoint)."
            )

    @contextmanager
    def _reported(self, step: int) -> Iterator[None]:
        """A failure inside becomes a warning (training goes on), unless ``raise_on_error``."""
        try:
            yield
        except Exception as err:
            if self.raise_on_error:
                raise
            rank_zero_warn(
                f"{type(self).__name__}: the {self._what} at step {step} failed and was skipped;"
                " training goes on (pass raise_on_error=True to stop instead).\n"
                + "".join(traceback.format_exception(type(err), err, err.__traceback__))
            )
