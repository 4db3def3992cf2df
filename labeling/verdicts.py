"""What a judgement says, one definition for every place that compares judgements: task
order "disagreement" (labeling.ordering), the export and training filter `min_task_agreement`
(labeling.quality_filter), the task browser's "annotators disagree" filter and its task page
(labeling.console.data).

A verdict is the stored ranking (groups of reply ids, best first, the ids of a group sorted,
so the same preference is the same value whatever order each annotator saw the replies in)
together with, when nothing is ranked above anything, whether the annotator called the replies
all good (`tie`) or all bad (`both_bad`): the same single group, two different verdicts
(#19: tie, tie, both bad used to count as agreement for min_task_agreement and as a split for
the ordering).

`verdict_key` is the definition in Python; `level_expression` the same distinction in SQL,
for queries that group judgements by (task, level, ranking). tests/test_verdicts.py checks
that the two agree.
"""

from __future__ import annotations

from django.db.models import Case, CharField, F, Value, When

LEVEL_CHOICES = ("tie", "both_bad")


def verdict_key(choice: str, ranking) -> tuple:
    """One judgement's verdict, comparable across annotators and display orders."""
    groups = tuple(tuple(group) for group in ranking or []) if isinstance(ranking, list) else ()
    return (choice if choice in LEVEL_CHOICES else "", groups)


def level_expression() -> Case:
    """SQL: the first part of verdict_key ("tie", "both_bad" or "")."""
    return Case(When(choice__in=LEVEL_CHOICES, then=F("choice")), default=Value(""), output_field=CharField())


def top_share(keys: list[tuple]) -> float:
    """The share of the most common verdict (1.0 for no judgement)."""
    if not keys:
        return 1.0
    counts: dict[tuple, int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    return max(counts.values()) / len(keys)
