"""The periodic check for imports whose worker died (labeling.tasks.reap_stale_imports),
every minute; editable in the Django admin under Periodic tasks."""

from django.db import migrations

NAME = "reap stale imports"


def create_schedule(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    interval, _ = IntervalSchedule.objects.get_or_create(every=60, period="seconds")
    PeriodicTask.objects.get_or_create(name=NAME, defaults={"task": "labeling.tasks.reap_stale_imports", "interval": interval, "queue": "default"})


def remove_schedule(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("labeling", "0013_importjob"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]
    operations = [migrations.RunPython(create_schedule, remove_schedule)]
