from django.apps import AppConfig


class LabelingConfig(AppConfig):
    """Who judges what: projects, prompts, replies, comparison tasks, leases, judgements."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "labeling"

    def ready(self):
        from django.db.models.signals import post_migrate

        post_migrate.connect(_ensure_groups, sender=self)


def _ensure_groups(sender, using="default", **kwargs):
    """After migrate: the annotators and labeling_admins groups exist, the latter with its admin permissions."""
    from django.contrib.auth.models import Group
    from django.db import router

    from .services import ensure_groups

    if router.allow_migrate_model(using, Group):
        ensure_groups()
