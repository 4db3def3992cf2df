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
from .verdicts import top_share, verdict_key

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


# ------------------------------------------------------------------------- disagreement
#
# Task order "disagreement" (#10, active learning): a task whose judgements disagree gets
# one more annotator at a time, up to the project's overlap_k_max, and is served before
# fresh tasks, so that its verdict settles. A task agrees when its most common verdict has
# at least `disagreement_target` (default 3/4) of its judgements: with k = 3, a 2-1 split
# asks for a fourth judgement, 3-1 settles it, 2-2 asks for a fifth. Verdicts are compared
# in the task's own terms (labeling/verdicts.py: the stored ranking plus "tie" / "both bad"),
# so two annotators who saw the replies in different orders agree when they preferred the
# same reply. The decision is taken when a judgement completes the task
# (labeling.services.submit_judgement, on the locked task row: a handful of judgements),
# and the periodic job (disagreement_sweep) applies it to tasks judged before the mode was
# on or before overlap_k_max was raised.

ESCALATED_SCORE = 1000


def wants_another(project: Project, judged: int, keys: list[tuple]) -> bool:
    """Whether a task with `judged` judgements whose verdicts are `keys` should get one more annotator."""
    return (
        project.task_ordering == "disagreement"
        and project.overlap_k_max > project.overlap_k
        and judged < project.overlap_k_max
        and top_share(keys) < project.disagreement_target
    )


def task_verdicts(task_ids) -> dict[int, list[tuple]]:
    """{task id: verdict keys} of the human judgements of these tasks."""
    out: dict[int, list[tuple]] = {}
    rows = Judgement.objects.filter(task_id__in=task_ids, source=JudgementSource.ANNOTATOR).values_list("task_id", "choice", "ranking")
    for task_id, choice, ranking in rows.iterator(chunk_size=CHUNK):
        out.setdefault(task_id, []).append(verdict_key(choice, ranking))
    return out


def disagreement_sweep(project: Project) -> int:
    """Reopen the project's completed tasks whose judgements disagree and that have room
    under overlap_k_max (one more judgement each), and score open tasks: ESCALATED_SCORE
    for those waiting for an extra judgement, 0 for the others. Returns the tasks changed."""
    k, k_max = project.overlap_k, project.overlap_k_max
    changed = 0
    if project.task_ordering == "disagreement" and k_max > k:
        candidates = ComparisonTask.objects.filter(
            project=project, status=TaskStatus.COMPLETE, is_gold=False, judgement_count__gte=k, judgement_count__lt=k_max
        ).values_list("pk", "judgement_count")
        last = 0
        while True:  # in chunks of task ids, each chunk's judgements in one query
            chunk = dict(candidates.filter(pk__gt=last).order_by("pk")[:CHUNK])
            if not chunk:
                break
            last = max(chunk)
            verdicts = task_verdicts(list(chunk))
            reopen = [pk for pk, judged in chunk.items() if wants_another(project, judged, verdicts.get(pk, []))]
            for pk in reopen:
                changed += ComparisonTask.objects.filter(pk=pk, status=TaskStatus.COMPLETE).update(
                    status=TaskStatus.OPEN, extra_judgements=chunk[pk] - k + 1, order_score=ESCALATED_SCORE
                )
    open_tasks = ComparisonTask.objects.filter(project=project, status=TaskStatus.OPEN)
    changed += open_tasks.filter(extra_judgements__gt=0).exclude(order_score=ESCALATED_SCORE).update(order_score=ESCALATED_SCORE)
    changed += open_tasks.filter(extra_judgements=0, order_score__gt=0).update(order_score=0)
    return changed
