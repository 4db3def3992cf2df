"""The default schedule (editable in the Django admin under Periodic tasks): reap runs whose
worker died every minute; look for projects due for retraining every ten minutes."""

from django.db import migrations

SCHEDULE = [
    ("reap stale training runs", "training.tasks.reap_stale_runs", 60),
    ("start due retraining cycles", "training.tasks.check_retraining", 600),
]


def create_schedule(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    for name, task, seconds in SCHEDULE:
        interval, _ = IntervalSchedule.objects.get_or_create(every=seconds, period="seconds")
        PeriodicTask.objects.get_or_create(name=name, defaults={"task": task, "interval": interval, "queue": "default"})


def remove_schedule(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name__in=[n for n, _, _ in SCHEDULE]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("training", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]
    operations = [migrations.RunPython(create_schedule, remove_schedule)]
