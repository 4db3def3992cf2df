"""Celery tasks: thin callers of runner.py and services.py."""

from celery import shared_task

from . import runner, services


@shared_task(name="training.tasks.run_training", acks_late=True, reject_on_worker_lost=True)
def run_training(run_id: int) -> None:
    runner.execute(run_id)


@shared_task(name="training.tasks.reap_stale_runs")
def reap_stale_runs() -> list[int]:
    return services.reap_stale_runs()


@shared_task(name="training.tasks.check_retraining")
def check_retraining() -> list[int]:
    return [run.pk for run in services.start_due_cycles()]
