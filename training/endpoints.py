"""The app's own policies as model endpoints (built in, no setup): per project one for its
active policy (the built-in default while no version is active) and one per policy version
that was ever promoted. They are served by the policy server (POLICY_SERVER_URL, `manage.py
serve_policies`), which loads a policy by its folder: the endpoint's model id is the folder.

Kept in step by the registry's write paths (promote, roll back), for new projects, and after
every migrate (training.apps). Replies written through them record the policy version, so
the leaderboard ranks them with the replies of generation runs.
"""

from __future__ import annotations

from django.db import transaction

from inference.models import active_policy_key, policy_version_key
from inference.services import sync_builtin
from labeling.models import Project

from .defaults import default_policy_dir
from .models import ModelVersion, VersionKind, VersionStatus

NAME_ROOM = 60  # of a project's name in an endpoint's name (100 characters)


def _short(project: Project) -> str:
    return project.name if len(project.name) <= NAME_ROOM else project.name[: NAME_ROOM - 1] + "…"


def sync_policy_endpoints(project: Project) -> None:
    versions = ModelVersion.objects.filter(project=project, kind=VersionKind.POLICY, promoted_at__isnull=False).order_by("number")
    active = None
    for version in versions:
        sync_builtin(key=policy_version_key(version.pk), name=f"{_short(project)}: policy v{version.number}",
                     model=version.artifact_path, model_version_id=version.pk)
        if version.status == VersionStatus.ACTIVE:
            active = version
    sync_builtin(
        key=active_policy_key(project.pk), name=f"{_short(project)}: active policy",
        model=active.artifact_path if active else str(default_policy_dir()), model_version_id=active.pk if active else None,
    )


def sync_after_commit(project: Project) -> None:
    transaction.on_commit(lambda: sync_policy_endpoints(project))


def sync_all() -> None:
    for project in Project.objects.all():
        sync_policy_endpoints(project)
