"""The periodic reward-model scoring of judged replies (training.tasks.score_judged_replies)
every ten minutes; editable in the Django admin under Periodic tasks."""

from django.db import migrations

NAME = "score judged replies with the active reward model"


def create_schedule(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    interval, _ = IntervalSchedule.objects.get_or_create(every=600, period="seconds")
    PeriodicTask.objects.get_or_create(name=NAME, defaults={"task": "training.tasks.score_judged_replies", "interval": interval, "queue": "default"})


def remove_schedule(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("training", "0005_reply_scores"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]
    operations = [migrations.RunPython(create_schedule, remove_schedule)]
