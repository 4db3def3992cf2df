from django.apps import AppConfig


class TrainingConfig(AppConfig):
    """What is learned from the judgements: model versions and training runs (issue #3, #4)."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "training"
