"""The overhead budget of an analysis callback: at most a fraction of training wall time.

A callback with ``max_overhead=0.05`` measures the training time (the wall time from each batch's
end to the next one's, loading, validation and the other callbacks included, the analyses left
out), each of its own analyses and its own per-batch upkeep (microseconds). At a step where its
cadence asks for an analysis it runs it only if, counting the analysis's expected cost (the last
one's), it has spent at most its share of the training time so far:

    spent + expected ≤ max_overhead / n · trained

So ``every_n_train_steps`` stays the highest frequency, and a slow analysis on a fast model runs
less often — its *effective cadence* is stretched until the budget holds. The ``n`` analysis
callbacks of one trainer that have a budget and a cadence split it evenly, so that together they
stay within it and none starves another (``n = 1`` in the example below). The first analysis
always runs (there is nothing to estimate from yet), and so do the ones asked for by
``on_train_start`` / ``on_train_end``; they count against the budget all the same.

Under DDP every rank must take the same decision (the analysis runs collectives), so rank 0's
clocks decide and the decision is broadcast.

Example:
    >>> budget = OverheadBudget(0.05)
    >>> budget.allows()  # nothing measured yet: the first analysis runs
    True
    >>> for _ in range(100):
    ...     budget.record_batch(0.1)  # 10 s of training
    >>> budget.record_analysis(1.0, step=100)  # 1 s spent: 10%
    >>> budget.allows()  # 1 + 1 > 0.05 · 10
    False
    >>> for _ in range(300):
    ...     budget.record_batch(0.1)  # 40 s in all
    >>> budget.allows(), round(budget.overhead, 3)  # 1 + 1 ≤ 0.05 · 40
    (True, 0.025)
"""

from __future__ import annotations

from typing import Any

from gan_dissect_callbacks.arguments import check_fraction

__all__ = ["OverheadBudget"]


class OverheadBudget:
    """Training time and analysis time measured so far, and whether one more analysis fits.

    Args:
        max_overhead: the largest share of training wall time the analyses may take, in (0, 1].
    """

    def __init__(self, max_overhead: float) -> None:
        self.max_overhead = check_fraction(max_overhead, "max_overhead", closed_high=True)
        self.trained_s = 0.0
        self.spent_s = 0.0
        self.last_cost_s: float | None = None
        self.last_step: int | None = None

    def record_batch(self, seconds: float) -> None:
        """A training batch took ``seconds``."""
        self.trained_s += max(0.0, seconds)

    def record_analysis(self, seconds: float, step: int) -> int | None:
        """An analysis at ``step`` took ``seconds``; returns the steps since the previous one."""
        self.spent_s += max(0.0, seconds)
        self.last_cost_s = max(0.0, seconds)
        since = None if self.last_step is None else step - self.last_step
        self.last_step = step
        return since

    def record_upkeep(self, seconds: float) -> None:
        """The callback's own work in a batch besides its analysis (clocks, cadence, budget).

        A few microseconds a batch; at a step with an analysis also the logging of its cost and,
        under DDP, the wait for rank 0's decision. It counts as spent (and in :attr:`overhead`),
        so that the budget bounds all that the callback adds to training, not only its analyses.
        """
        self.spent_s += max(0.0, seconds)

    def allows(self, share: int = 1) -> bool:
        """Whether one more analysis, costing what the last one did, keeps within the budget.

        Args:
            share: how many analysis callbacks split the budget evenly (each may take
                ``max_overhead / share``), so that several together stay within it.
        """
        if self.last_cost_s is None:
            return True
        return self.spent_s + self.last_cost_s <= self.max_overhead / share * self.trained_s

    @property
    def overhead(self) -> float:
        """Time spent so far (analyses and upkeep) ÷ training time so far (0 before training)."""
        return self.spent_s / self.trained_s if self.trained_s > 0 else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {
            "trained_s": self.trained_s,
            "spent_s": self.spent_s,
            "last_cost_s": self.last_cost_s,
            "last_step": self.last_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trained_s = float(state.get("trained_s", 0.0))
        self.spent_s = float(state.get("spent_s", 0.0))
        cost = state.get("last_cost_s")
        self.last_cost_s = None if cost is None else float(cost)
        step = state.get("last_step")
        self.last_step = None if step is None else int(step)
