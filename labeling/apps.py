from django.apps import AppConfig


class LabelingConfig(AppConfig):
    """Who judges what: projects, prompts, replies, comparison tasks, leases, judgements."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "labeling"
