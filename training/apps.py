from django.apps import AppConfig


class TrainingConfig(AppConfig):
    """What is learned from the judgements: model versions and training runs (issue #3, #4)."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "training"

    def ready(self):
        from django.db.models.signals import post_migrate, post_save

        from labeling.models import Project

        post_migrate.connect(_sync_endpoints, sender=self)
        post_save.connect(_new_project_endpoints, sender=Project, dispatch_uid="training-project-endpoints")


def _sync_endpoints(sender, using="default", **kwargs):
    """After migrate: every project's built-in policy endpoints exist (training.endpoints)."""
    from .endpoints import sync_all

    sync_all()


def _new_project_endpoints(sender, instance, created, raw=False, **kwargs):
    if created and not raw:
        from .endpoints import sync_after_commit

        sync_after_commit(instance)
