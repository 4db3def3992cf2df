from rest_framework import serializers

from labeling.api.serializers import id_filter

from ..models import ModelVersion, RunKind, RunStatus, TrainingRun, VersionKind, VersionStatus
from ..selectors import eta_seconds


class RunQuery(serializers.Serializer):
    project = id_filter("project")
    kind = serializers.ChoiceField(choices=RunKind.choices, required=False)
    status = serializers.ChoiceField(choices=RunStatus.choices, required=False)


class VersionQuery(serializers.Serializer):
    project = id_filter("project")
    kind = serializers.ChoiceField(choices=VersionKind.choices, required=False)
    status = serializers.ChoiceField(choices=VersionStatus.choices, required=False)


class StartRunInput(serializers.Serializer):
    project = serializers.IntegerField()
    kind = serializers.ChoiceField(choices=RunKind.choices)
    config = serializers.JSONField(required=False, default=dict)


class RunOutput(serializers.ModelSerializer):
    requested_by = serializers.CharField(source="requested_by.username", default=None)
    versions = serializers.SerializerMethodField()
    eta_seconds = serializers.SerializerMethodField(help_text="seconds left, extrapolated from progress (running runs only)")

    class Meta:
        model = TrainingRun
        fields = [
            "id", "project", "kind", "status", "parent", "config", "progress", "eta_seconds", "metrics", "metric_series", "log_tail",
            "error", "cancel_requested", "celery_task_id", "heartbeat_at", "requested_by", "created_at", "started_at",
            "finished_at", "versions",
        ]

    def get_eta_seconds(self, run) -> float | None:
        return eta_seconds(run)

    def get_versions(self, run) -> list[int]:
        return [v.pk for v in run.versions.all()]


class VersionOutput(serializers.ModelSerializer):
    class Meta:
        model = ModelVersion
        fields = ["id", "project", "kind", "number", "parent", "artifact_path", "produced_by", "metrics", "status", "promotion_note", "created_at", "promoted_at"]


class RollbackInput(serializers.Serializer):
    kind = serializers.ChoiceField(choices=VersionKind.choices)
