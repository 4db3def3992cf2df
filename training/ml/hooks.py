"""Progress and cancellation hooks shared by every trainer.

A trainer calls `hooks.report(step, total, metrics)` after each optimisation step and
`hooks.check_cancelled()` between steps; the job layer passes callables that write to its
database row and read its cancel flag. Nothing here knows about Django.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


class TrainingCancelled(Exception):
    """Raised between steps when the caller asked the trainer to stop; nothing is saved."""


@dataclass
class TrainerHooks:
    on_progress: Callable[[dict], None] | None = None
    should_stop: Callable[[], bool] | None = None

    def report(self, step: int, total: int, metrics: dict) -> None:
        if self.on_progress is not None:
            self.on_progress({"step": step, "total_steps": total, "fraction": step / max(total, 1), **metrics})

    def check_cancelled(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise TrainingCancelled("stopped on request")


NO_HOOKS = TrainerHooks()
