"""Celery tasks: thin callers of runner.py and services.py.

runner.py (and with it torch) is imported inside the task, so that the web processes,
which only enqueue, never load PyTorch."""

from celery import shared_task

from . import services


@shared_task(name="training.tasks.run_training", acks_late=True, reject_on_worker_lost=True)
def run_training(run_id: int) -> None:
    from . import runner

    runner.execute(run_id)


@shared_task(name="training.tasks.reap_stale_runs")
def reap_stale_runs() -> list[int]:
    return services.reap_stale_runs()


@shared_task(name="training.tasks.check_retraining")
def check_retraining() -> list[int]:
    return [run.pk for run in services.start_due_cycles()]
