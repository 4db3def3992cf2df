"""Order scores for the "balanced" task ordering (#10, active learning): within a priority,
serve first the tasks whose reply sources (policy versions, imported sets) people have
compared least, so that every pair of sources gathers comparisons and the leaderboard's
intervals narrow evenly. Computed by the worker's periodic job (training.tasks) and stored
on the task (ComparisonTask.order_score), so next-task costs what it did.

score = round(1000 / (1 + n / 20)) for the least compared pair of sources among the task's
replies, n = human comparisons of that pair so far (1000 for a pair never compared, 500
after 20, 91 after 200); 0 when all replies come from one source.
"""

from __future__ import annotations

from itertools import combinations

from .models import ComparisonTask, Judgement, JudgementSource, Project, TaskResponse, TaskStatus
from .quality_data import CHUNK, reply_sources

HALF_AFTER = 20


def balance_scores(project: Project) -> dict[int, int]:
    """{open task id: score}."""
    source_of, _ = reply_sources(project)
    compared: dict[tuple[int, int], int] = {}
    for ranking, in Judgement.objects.filter(task__project=project, source=JudgementSource.ANNOTATOR).values_list("ranking").iterator(chunk_size=CHUNK):
        replies = [source_of[r] for group in (ranking or []) for r in group if r in source_of]
        for a, b in combinations(replies, 2):
            if a != b:
                key = (min(a, b), max(a, b))
                compared[key] = compared.get(key, 0) + 1
    sources: dict[int, set[int]] = {}
    rows = TaskResponse.objects.filter(task__project=project, task__status=TaskStatus.OPEN).values_list("task_id", "response_id")
    for task_id, response_id in rows.iterator(chunk_size=CHUNK):
        if response_id in source_of:
            sources.setdefault(task_id, set()).add(source_of[response_id])
    scores = {}
    for task_id, task_sources in sources.items():
        pairs = list(combinations(sorted(task_sources), 2))
        least = min((compared.get(pair, 0) for pair in pairs), default=None)
        scores[task_id] = 0 if least is None else int(round(1000 / (1 + least / HALF_AFTER)))
    return scores


def store_order_scores(project: Project, scores: dict[int, int]) -> int:
    """Write the scores of the project's open tasks (others 0); the number of tasks changed."""
    changed = []
    for task in ComparisonTask.objects.filter(project=project, status=TaskStatus.OPEN).only("pk", "order_score").iterator(chunk_size=CHUNK):
        value = scores.get(task.pk, 0)
        if value != task.order_score:
            task.order_score = value
            changed.append(task)
    ComparisonTask.objects.bulk_update(changed, ["order_score"], batch_size=2000)
    return len(changed)
