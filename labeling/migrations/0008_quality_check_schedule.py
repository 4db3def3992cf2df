"""The periodic quality check (labeling.tasks.check_quality) every ten minutes; editable in
the Django admin under Periodic tasks."""

from django.db import migrations

NAME = "pause flagged annotators"


def create_schedule(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    interval, _ = IntervalSchedule.objects.get_or_create(every=600, period="seconds")
    PeriodicTask.objects.get_or_create(name=NAME, defaults={"task": "labeling.tasks.check_quality", "interval": interval, "queue": "default"})


def remove_schedule(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("labeling", "0007_quality_settings_and_pauses"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]
    operations = [migrations.RunPython(create_schedule, remove_schedule)]
