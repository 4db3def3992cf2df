"""Celery tasks: thin callers of runner.py and services.py.

runner.py (and with it torch) is imported inside the task, so that the web processes,
which only enqueue, never load PyTorch."""

import time
from pathlib import Path

from celery import shared_task
from django.conf import settings

from . import services

PROCESSED_MESSAGES_KEPT_SECONDS = 24 * 3600


@shared_task(name="training.tasks.run_training", acks_late=True, reject_on_worker_lost=True)
def run_training(run_id: int) -> None:
    from . import runner

    runner.execute(run_id)


@shared_task(name="training.tasks.reap_stale_runs")
def reap_stale_runs() -> dict:
    """Every minute (beat): fail running runs whose worker died, and send again the queued
    runs whose task message the broker lost (a duplicate delivery is skipped by the worker)."""
    return {"reaped": services.reap_stale_runs(), "resent": services.resend_lost_runs(), "pruned": prune_processed_messages()}


def prune_processed_messages(max_age: float = PROCESSED_MESSAGES_KEPT_SECONDS) -> int:
    """The file-system broker (the demo, no Redis) keeps consumed messages in
    var/broker/processed; delete those older than a day."""
    if not settings.CELERY_BROKER_URL.startswith("filesystem://"):
        return 0
    folder = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("processed_folder")
    if not folder or not Path(folder).is_dir():
        return 0
    cutoff, pruned = time.time() - max_age, 0
    for path in Path(folder).glob("*.msg"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                pruned += 1
        except FileNotFoundError:
            continue
    return pruned


@shared_task(name="training.tasks.check_retraining")
def check_retraining() -> list[int]:
    return [run.pk for run in services.start_due_cycles()]


@shared_task(name="training.tasks.score_judged_replies")
def score_judged_replies() -> dict:
    """Score the judged replies of every active project with its active reward model
    (training.scoring): what the quality page compares with people, batch by batch; and in
    projects that order tasks by uncertainty or balance, the open tasks' order scores."""
    from labeling.models import Project

    from .scoring import score_judged_replies as score
    from .scoring import update_order_scores

    results = {}
    for project in Project.objects.filter(is_active=True):
        scored = score(project)
        ordered = update_order_scores(project)
        if scored or ordered:
            results[project.pk] = {"judged_replies_scored": scored, "open_tasks_reordered": ordered}
    return results
