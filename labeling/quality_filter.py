"""Which judgements count (#10, part 3): the same filter for exports (CLI, API, the export
page) and for the reward stage (run config key "filter").

* exclude_paused: judgements of annotators with an open pause on the project;
* exclude_flagged: judgements of annotators the project's quality thresholds flag now
  (labeling.quality_data.flagged_annotators: the quality page's flags);
* exclude_failed_gold: judgements that failed their gold task (each such judgement, not
  the annotator's others);
* min_task_agreement: only tasks whose human judgements agree at least this much: the
  share of them that give the task's most common verdict (the same ranking of its
  replies; tied replies are stored in one order, so equal verdicts are equal values).
  Tasks with fewer than two human judgements have no agreement to measure and are kept.
  Imported labels are never counted toward agreement and are dropped only with their task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from django.db.models import Count, QuerySet

from .exceptions import InvalidInput
from .models import AnnotatorPause, Judgement, JudgementSource, Project
from .verdicts import level_expression

BOOLEAN_OPTIONS = ("exclude_paused", "exclude_flagged", "exclude_failed_gold")


def filter_problems(options) -> list[tuple[str, str]]:
    """(option, reason) for every bad option of a filter given as JSON (run configs)."""
    if not isinstance(options, dict):
        return [("", "must be an object of filter options")]
    problems = []
    allowed = {f.name for f in fields(JudgementFilter)}
    for key, value in options.items():
        if key not in allowed:
            problems.append((key, f"unknown option; the filter takes {', '.join(sorted(allowed))}"))
        elif key in BOOLEAN_OPTIONS and not isinstance(value, bool):
            problems.append((key, "must be true or false"))
        elif key == "min_task_agreement" and value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 1
        ):
            problems.append((key, "must be a number from 0 to 1, or null"))
    return problems


@dataclass(frozen=True)
class JudgementFilter:
    exclude_paused: bool = False
    exclude_flagged: bool = False
    exclude_failed_gold: bool = False
    min_task_agreement: float | None = None

    @classmethod
    def from_options(cls, options: dict | None) -> JudgementFilter:
        options = options or {}
        problems = filter_problems(options)
        if problems:
            key, reason = problems[0]
            raise InvalidInput(reason, field=f"filter.{key}" if key else "filter")
        return cls(**options)

    @property
    def active(self) -> bool:
        return any((self.exclude_paused, self.exclude_flagged, self.exclude_failed_gold, self.min_task_agreement is not None))

    def describe(self) -> str:
        parts = [name.replace("_", " ") for name in BOOLEAN_OPTIONS if getattr(self, name)]
        if self.min_task_agreement is not None:
            parts.append(f"task agreement at least {self.min_task_agreement:g}")
        return ", ".join(parts) or "none"

    def apply(self, judgements: QuerySet[Judgement], project: Project) -> QuerySet[Judgement]:
        if self.exclude_failed_gold:
            judgements = judgements.exclude(gold_correct=False)
        if self.exclude_paused:
            paused = AnnotatorPause.objects.filter(project=project, lifted_at__isnull=True).values("annotator_id")
            judgements = judgements.exclude(annotator_id__in=paused)
        if self.exclude_flagged:
            from .quality_data import flagged_annotators

            judgements = judgements.exclude(annotator_id__in=list(flagged_annotators(project)))
        if self.min_task_agreement is not None:
            judgements = judgements.exclude(task_id__in=low_agreement_tasks(project, self.min_task_agreement))
        return judgements


def low_agreement_tasks(project: Project, threshold: float) -> list[int]:
    """Tasks with two or more human judgements whose most common verdict (labeling/verdicts.py:
    the ranking, and tie apart from both bad) has a share below `threshold`."""
    totals: dict[int, int] = {}
    top: dict[int, int] = {}
    verdicts = (
        Judgement.objects.filter(task__project=project, source=JudgementSource.ANNOTATOR)
        .annotate(level=level_expression())
        .values("task_id", "level", "ranking")
        .annotate(n=Count("id"))
        .order_by()
    )
    for row in verdicts.iterator(chunk_size=5000):
        task_id, n = row["task_id"], row["n"]
        totals[task_id] = totals.get(task_id, 0) + n
        top[task_id] = max(top.get(task_id, 0), n)
    return [task_id for task_id, total in totals.items() if total >= 2 and top[task_id] / total < threshold]
