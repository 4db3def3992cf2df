"""Reward-model scores of the replies people judged (worker side: loads torch).

The quality page compares the active reward model with people, batch by batch
(labeling.quality_data.reward_vs_people): for that, every reply of a task with a human
judgement gets its calibrated reward under the active reward-model version, once
(ReplyScore), by the periodic task training.tasks.score_judged_replies. A version promoted
later scores the same replies again under its own name, so the page can show each
version's agreement with the judgements it did not train on... and with those it did.
"""

from __future__ import annotations

import logging
import math

from django.db.models import Exists, OuterRef

from labeling.models import ComparisonTask, Judgement, JudgementSource, Project, Response, TaskResponse, TaskStatus
from labeling.ordering import balance_scores, disagreement_sweep, store_order_scores

from .models import ModelVersion, ReplyScore, VersionKind, VersionStatus

log = logging.getLogger(__name__)
MAX_REPLIES_PER_CALL = 4000


def unscored_judged_replies(project: Project, version: ModelVersion, limit: int = MAX_REPLIES_PER_CALL):
    judged = Judgement.objects.filter(task=OuterRef("tasks"), source=JudgementSource.ANNOTATOR)
    scored = ReplyScore.objects.filter(response=OuterRef("pk"), version=version)
    return (
        Response.objects.filter(prompt__project=project)
        .filter(Exists(judged))
        .exclude(Exists(scored))
        .select_related("prompt")
        .distinct()
        .order_by("pk")[:limit]
    )


def _active_reward(project: Project) -> ModelVersion | None:
    return ModelVersion.objects.filter(project=project, kind=VersionKind.REWARD, status=VersionStatus.ACTIVE).first()


def _score(version: ModelVersion, replies: list, device=None) -> int:
    if not replies:
        return 0
    from .ml.reward_model import RewardModel, RewardScorer
    from .runner import worker_device

    model, tokenizer = RewardModel.from_pretrained(version.artifact_path)
    model.to(device or worker_device())
    scorer = RewardScorer(model, tokenizer)
    rewards = scorer([reply.prompt.messages for reply in replies], [reply.text for reply in replies]).tolist()
    ReplyScore.objects.bulk_create(
        [ReplyScore(response=reply, version=version, reward=float(reward)) for reply, reward in zip(replies, rewards)],
        ignore_conflicts=True,  # a second worker scoring the same replies at the same time
    )
    return len(replies)


def uncertainty_of(rewards: list[float]) -> int:
    """0..1000 from the gap between the two best rewards (calibrated: std 1 over replies):
    1000 * exp(-2 * gap), so a gap of 0 is 1000, of 0.5 about 368, of 2 about 18."""
    if len(rewards) < 2:
        return 0
    best, second = sorted(rewards, reverse=True)[:2]
    return int(round(1000 * math.exp(-2 * (best - second))))


def update_order_scores(project: Project, *, limit: int = MAX_REPLIES_PER_CALL, device=None) -> int:
    """The order scores of the project's open tasks for its task_ordering (tasks changed):
    uncertainty: score the open tasks' replies with the active reward model (up to `limit`
    new ones per call) and store each task's uncertainty; balanced: how little its reply
    sources were compared (labeling.ordering); disagreement: reopen completed tasks whose
    judgements disagree (room permitting) and put the tasks waiting for an extra
    judgement first (labeling.ordering.disagreement_sweep); fifo, and uncertainty while no reward
    model is active: clear them (the project page says so). next-task reads the score
    from the task row (task_next_idx), so serving a task costs what it did."""
    if project.task_ordering == "balanced":
        return store_order_scores(project, balance_scores(project))
    if project.task_ordering == "disagreement":
        return disagreement_sweep(project)
    if project.task_ordering != "uncertainty":
        return ComparisonTask.objects.filter(project=project, order_score__gt=0).update(order_score=0)
    version = _active_reward(project)
    if version is None:  # nothing to be uncertain with: scores of an earlier ordering would be stale, so fifo
        return ComparisonTask.objects.filter(project=project, order_score__gt=0).update(order_score=0)
    open_tasks = ComparisonTask.objects.filter(project=project, status=TaskStatus.OPEN)
    scored = ReplyScore.objects.filter(response=OuterRef("pk"), version=version)
    unscored = (
        Response.objects.filter(tasks__in=open_tasks).exclude(Exists(scored)).select_related("prompt").distinct().order_by("pk")[:limit]
    )
    _score(version, list(unscored), device)
    rewards = dict(ReplyScore.objects.filter(version=version, response__tasks__in=open_tasks).values_list("response_id", "reward"))
    by_task: dict[int, list[float]] = {}
    missing: set[int] = set()
    for task_id, response_id in TaskResponse.objects.filter(task__in=open_tasks).values_list("task_id", "response_id").iterator(chunk_size=5000):
        if response_id in rewards:
            by_task.setdefault(task_id, []).append(rewards[response_id])
        else:
            missing.add(task_id)
    changed = store_order_scores(project, {task_id: uncertainty_of(values) for task_id, values in by_task.items() if task_id not in missing})
    log.info("order scores of %d open tasks of project %s updated (uncertainty under %s)", changed, project.pk, version)
    return changed


def score_judged_replies(project: Project, *, limit: int = MAX_REPLIES_PER_CALL, device=None) -> int:
    """Score (up to `limit`) judged replies not yet scored by the active reward model; the number scored."""
    version = _active_reward(project)
    if version is None:
        return 0
    count = _score(version, list(unscored_judged_replies(project, version, limit)), device)
    if count:
        log.info("scored %d judged replies of project %s with %s", count, project.pk, version)
    return count
