"""Analyses due at one step share one pass over their samples (docs/callbacks.md, "Shared samples").

:class:`SampleSharing` is the part of
:class:`~gan_dissect_callbacks.callbacks._schedule.ScheduledAnalysis` that does it. When an
analysis runs, it makes its first pass over seeded samples as a
:class:`~gan_dissect_callbacks.engines.passes.SampleConsumer` (``_sample_consumer``). It asks the
analyses that come right after it in the callback list, are due at the same step and want the
same samples for theirs. It runs one pass for all of them, and leaves each its filled consumer
with its part of the pass's time. Each then takes its consumer back in ``_analyse``
(``_take_samples``).

What keeps the answers those of separate passes:

- **Only analyses that declare what they do to the generator let the chain go on.** An analysis
  class sets ``_declares_generator_changes = True`` when it either never changes the generator,
  or reports each change. To report, ``_may_change_generator()`` returns ``True``, and the
  analysis sets ``_changed_step`` at a step where it did change the generator. The passes of the
  analyses after it are then dropped, and those draw their samples again. Any other analysis,
  and any callback that is not an analysis (Lightning's progress bar and model summary aside),
  ends the chain.
- **Same samples.** Every pair of consumers of one pass wants the same latents
  (:meth:`~gan_dissect_callbacks.engines.passes.SampleConsumer.same_samples`).
- **Once per step.** An analysis takes part in at most one pass per step. ``_sample_consumer``
  may be called from another analysis's hook, so it must not change anything the analysis reads
  later. Preparing and reusing a fixed state, such as the SWD's real side, is fine.
- **No collective on one process's behalf.** Under ``torch.distributed`` a consumer that
  splits the samples between processes is not shared (its calibration holds collectives), and a
  budgeted analysis does not join another's pass (its decision is a broadcast).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from lightning.pytorch.callbacks import ModelSummary, ProgressBar

from gan_dissect_callbacks.engines.distributed import dist_info
from gan_dissect_callbacks.engines.passes import SampleConsumer, run_sample_pass

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from gan_dissect_callbacks.callbacks._schedule import Hook
    from gan_dissect_callbacks.engines.generator import AnalysedGenerator

__all__ = ["Prefetched", "SampleSharing"]

#: Lightning's callbacks that never change the model: analyses on both sides of one share samples.
_NEVER_TOUCH_THE_MODEL = (ProgressBar, ModelSummary)


@dataclass
class Prefetched:
    """An analysis's pass, run by another analysis due at the same step."""

    step: int
    consumer: SampleConsumer
    #: Seconds of the pass charged to this analysis: its part, and making its consumer.
    seconds: float
    #: The analyses between the one that ran the pass and this one that may change the generator.
    changers: list[SampleSharing] = field(default_factory=list)


class SampleSharing:
    """Sharing one pass over samples among the analyses due at a step (see the module docs)."""

    #: Whether the analysis changes the generator never, or only where it says so (see above).
    _declares_generator_changes: ClassVar[bool] = False
    _prefetched: Prefetched | None
    _changed_step: int | None
    _last_step: int | None
    _generator: AnalysedGenerator | None
    generate: Any
    sample_latents: Any
    latent_dim: int | None
    _clock: Callable[[], float]

    # Given by ScheduledAnalysis.
    @property
    def analysed_generator(self) -> AnalysedGenerator:
        raise NotImplementedError

    def _due(self, trainer: pl.Trainer, hook: Hook, step: int) -> bool:
        raise NotImplementedError

    def _budgeted(self, hook: Hook) -> bool:
        raise NotImplementedError

    def _within_budget(self, trainer: pl.Trainer, hook: Hook, step: int) -> bool:
        raise NotImplementedError

    def _close_batch(self, now: float) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ what a subclass says

    def _sample_consumer(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int
    ) -> SampleConsumer | None:
        """This analysis's first pass over seeded samples, to run beside other analyses' passes.

        ``None`` (the default): it has none to share. A subclass that returns one takes it back
        in ``_analyse`` with :meth:`_take_samples`, filled, or runs it itself when nothing is
        there. It may be called from another analysis's hook and must not change what the
        analysis reads later.
        """
        return None

    def _may_change_generator(self) -> bool:
        """Whether this analysis may change the generator and says when it does.

        One that returns ``True`` sets ``_changed_step`` to the step whenever it changed the
        generator; the passes it shared with analyses after it are then dropped.
        """
        return False

    # ------------------------------------------------------------------ the sharing

    def _take_samples(self, step: int) -> SampleConsumer | None:
        """The pass another analysis filled for this one at ``step`` (taken once), or ``None``.

        ``None`` too when an analysis that ran in between changed the generator.
        """
        prefetched, self._prefetched = self._prefetched, None
        if prefetched is None or prefetched.step != step:
            return None
        if any(changer._changed_step == step for changer in prefetched.changers):
            return None
        return prefetched.consumer

    def _prepaid(self, step: int) -> float:
        """Seconds of a pass run for this analysis at ``step`` by another one (else 0)."""
        prefetched = self._prefetched
        return prefetched.seconds if prefetched is not None and prefetched.step == step else 0.0

    def _sample_source(self) -> tuple[Any, ...]:
        """What decides the samples besides the consumer: the module and how latents are drawn."""
        module = self.analysed_generator.module
        return (id(module), self.generate, self.sample_latents, self.latent_dim)

    def _share_samples(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int, hook: Hook
    ) -> float:
        """Run this analysis's pass together with those of the analyses due right after it.

        Returns the seconds charged to the others (they are counted in their own costs). If
        the shared generating fails, every analysis draws its own samples and meets its own
        error.
        """
        if self._prefetched is not None and self._prefetched.step == step:
            return 0.0  # an analysis before this one filled it
        try:
            mine = self._sample_consumer(trainer, pl_module, step)
        except Exception:  # the analysis meets it again in `_analyse`, as its own failure
            return 0.0
        if mine is None or (mine.split and dist_info()[1] > 1):
            return 0.0
        group: list[tuple[SampleSharing, SampleConsumer, float, list[SampleSharing]]] = [
            (self, mine, 0.0, [])  # the leader's own pass is drawn before it changes anything
        ]
        for other, changers in self._followers(trainer):
            begun = self._clock()
            theirs = other._consumer_to_join(trainer, pl_module, step, hook, self._sample_source())
            made = self._clock() - begun
            if theirs is not None and all(c.same_samples(theirs) for _, c, _, _ in group):
                group.append((other, theirs, made, changers))
        if len(group) == 1:
            return 0.0
        try:
            run_sample_pass(self.analysed_generator, [consumer for _, consumer, _, _ in group])
        except Exception:  # each analysis meets it again in its own pass
            return 0.0
        charged = 0.0
        for index, (callback, consumer, made, changers) in enumerate(group):
            seconds = 0.0 if index == 0 else consumer.seconds + made
            callback._prefetched = Prefetched(step, consumer, seconds, changers)
            charged += seconds
        return charged

    def _followers(
        self, trainer: pl.Trainer
    ) -> Iterator[tuple[SampleSharing, list[SampleSharing]]]:
        """The analyses right after this one in the callback list that may share its pass.

        Each comes with the analyses between this one and it that may change the generator
        (this one included).
        """
        callbacks = list(getattr(trainer, "callbacks", []))
        if self not in callbacks or not self._declares_generator_changes:
            return
        changers: list[SampleSharing] = [self] if self._may_change_generator() else []
        for callback in callbacks[callbacks.index(self) + 1 :]:
            if isinstance(callback, SampleSharing):
                yield callback, list(changers)
                if not callback._declares_generator_changes:
                    return
                if callback._may_change_generator():
                    changers.append(callback)
            elif not isinstance(callback, _NEVER_TOUCH_THE_MODEL):
                return

    def _consumer_to_join(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        step: int,
        hook: Hook,
        source: tuple[Any, ...],
    ) -> SampleConsumer | None:
        """This analysis's pass, if it runs at ``step`` in ``hook`` and may join a pass of
        ``source``'s samples; ``None`` otherwise."""
        if trainer.sanity_checking or step == self._last_step or self._generator is None:
            return None
        if self._prefetched is not None and self._prefetched.step == step:
            return None  # it takes part in one pass a step
        if hook == "batch":
            self._close_batch(self._clock())  # the budget below sees this batch's time
        if not self._due(trainer, hook, step):
            return None
        if dist_info()[1] > 1 and self._budgeted(hook):
            return None  # its decision is a collective, not to be taken on one process's behalf
        if not self._within_budget(trainer, hook, step) or self._sample_source() != source:
            return None
        try:
            return self._sample_consumer(trainer, pl_module, step)
        except Exception:  # the analysis itself raises it again, as its own
            return None
