from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from labeling.api.serializers import id_filter

from ..models import ModelVersion, RunKind, RunStatus, TrainingRun, VersionKind, VersionStatus
from ..selectors import duration_seconds, eta_seconds, run_outcome, stage_summaries, typical_duration


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


class IdListField(serializers.ListField):
    """Ids as a JSON list, or in a form as repeated fields or one comma-separated value."""

    child = serializers.IntegerField(min_value=1)

    def get_value(self, dictionary):
        if hasattr(dictionary, "getlist"):
            values = [part.strip() for value in dictionary.getlist(self.field_name) for part in str(value).split(",") if part.strip()]
            return values if values else serializers.empty
        return super().get_value(dictionary)


class EndpointRunInput(serializers.Serializer):
    endpoints = IdListField(min_length=2, max_length=8, help_text="ids of 2 to 8 model endpoints")
    prompts = serializers.IntegerField(min_value=1, max_value=100_000, required=False,
                                       help_text="how many of the project's prompts (fewest tasks first); or upload `file`")
    pairing = serializers.ChoiceField(choices=["pairs", "all"], default="pairs",
                                      help_text="pairs: a task per pair of endpoints; all: one task comparing every reply")
    max_tokens = serializers.IntegerField(min_value=1, max_value=32768, required=False)
    file = serializers.FileField(required=False, help_text='a prompts-only JSON Lines file: {"prompt": ...} or {"messages": [...]} per line')


class StageOutput(serializers.Serializer):
    id = serializers.IntegerField()
    kind = serializers.ChoiceField(choices=RunKind.choices)
    status = serializers.CharField(help_text="the stage run's status: " + ", ".join(RunStatus.values))  # not an enum: its name would collide
    metrics = serializers.DictField(help_text="the stage's key metrics only (selectors.STAGE_KEY_METRICS)")


class RunOutput(serializers.ModelSerializer):
    requested_by = serializers.CharField(
        source="requested_by.username", default=None, allow_null=True, help_text="who asked; null for scheduled runs and stages"
    )
    versions = serializers.SerializerMethodField()
    eta_seconds = serializers.SerializerMethodField(
        help_text="seconds left (running runs only): from how long the project's earlier runs of this kind took, "
        "moving to the extrapolation from progress as the run goes"
    )
    duration_seconds = serializers.SerializerMethodField(help_text="finished_at - started_at; for a running run, the time so far")
    stages = serializers.SerializerMethodField(help_text="a cycle's child runs with their key metrics, in the order they ran")
    outcome = serializers.SerializerMethodField(
        help_text="what a succeeded run achieved, in words (a cycle that promoted nothing says after which stage it stopped, and why); "
        "empty otherwise"
    )
    config = serializers.DictField(help_text="the run's configuration as given (its keys depend on the kind)")
    metrics = serializers.DictField(help_text="final metrics, by name (their names depend on the kind: accuracy, kl, ...)")
    metric_series = serializers.ListField(
        child=serializers.DictField(child=serializers.FloatField()),
        help_text='one point per step: {"step": 3, "<metric>": value, ...}',
    )

    class Meta:
        model = TrainingRun
        fields = [
            "id", "project", "kind", "status", "parent", "config", "progress", "eta_seconds", "metrics", "metric_series", "log_tail",
            "error", "cancel_requested", "celery_task_id", "heartbeat_at", "requested_by", "created_at", "started_at",
            "finished_at", "duration_seconds", "versions", "stages", "outcome",
        ]

    def get_eta_seconds(self, run) -> float | None:
        if run.status != RunStatus.RUNNING:
            return None
        return eta_seconds(run, typical=typical_duration(run) if run.parent_id is None else None)

    def get_duration_seconds(self, run) -> float | None:
        return duration_seconds(run)

    @extend_schema_field(StageOutput(many=True))
    def get_stages(self, run) -> list[dict]:
        return stage_summaries(run)

    def get_outcome(self, run) -> str:
        return run_outcome(run)

    def get_versions(self, run) -> list[int]:
        return [v.pk for v in run.versions.all()]


class VersionOutput(serializers.ModelSerializer):
    metrics = serializers.DictField(help_text="what the version measured when it was made, by name (depends on the kind)")

    class Meta:
        model = ModelVersion
        fields = ["id", "project", "kind", "number", "parent", "artifact_path", "produced_by", "metrics", "status", "promotion_note",
                  "gate_refused", "created_at", "promoted_at"]


class PromoteInput(serializers.Serializer):
    override = serializers.BooleanField(default=False, help_text="promote a version the promotion gate refused (recorded with your name)")


class RollbackInput(serializers.Serializer):
    kind = serializers.ChoiceField(choices=VersionKind.choices)
    to = serializers.ChoiceField(
        choices=[("previous", "the version active before the current one"), ("builtin", "the built-in default policy (policy only)")],
        default="previous",
        help_text="previous: the version active before the current one (a policy with none goes back to the built-in default); "
        "builtin: no policy version active, generation and PPO start from the built-in default policy",
    )

    def validate(self, data):
        if data["to"] == "builtin" and data["kind"] != VersionKind.POLICY:
            raise serializers.ValidationError({"to": [f"only a policy has a built-in default, not a {data['kind']}"]})
        return data


class RollbackOutput(serializers.Serializer):
    kind = serializers.ChoiceField(choices=VersionKind.choices)
    builtin = serializers.BooleanField(help_text="true: no version of this kind is active; the built-in default policy is used")
    active = VersionOutput(allow_null=True, help_text="the version now active (null with builtin)")
    detail = serializers.CharField()


class DefaultPolicyOutput(serializers.Serializer):
    state = serializers.ChoiceField(choices=["ready", "building", "failed", "missing"])
    fraction = serializers.FloatField(help_text="how far the build is, 0 to 1")
    eta_seconds = serializers.IntegerField(allow_null=True, help_text="seconds left at the rate so far (building)")
    message = serializers.CharField(help_text="the state in words, with what to do when it failed or is missing")
