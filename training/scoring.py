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

from django.db.models import Exists, OuterRef

from labeling.models import Judgement, JudgementSource, Project, Response

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


def score_judged_replies(project: Project, *, limit: int = MAX_REPLIES_PER_CALL, device=None) -> int:
    """Score (up to `limit`) judged replies not yet scored by the active reward model; the number scored."""
    version = ModelVersion.objects.filter(project=project, kind=VersionKind.REWARD, status=VersionStatus.ACTIVE).first()
    if version is None:
        return 0
    replies = list(unscored_judged_replies(project, version, limit))
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
    log.info("scored %d judged replies of project %s with %s", len(replies), project.pk, version)
    return len(replies)
