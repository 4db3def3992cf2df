"""Input and output serializers of the REST API, one pair per use case."""

from django.contrib.auth import get_user_model
from django.utils.functional import cached_property
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from ..exporting import AGGREGATES
from ..exporting import FORMATS as EXPORT_FORMATS
from ..importing.formats import FORMATS as IMPORT_FORMATS
from ..models import FLAG_CHOICES, Choice, ComparisonTask, ImportStatus, Judgement, Project, TaskStatus, overlap_problems
from ..services import is_labeling_admin
from .schema import LineErrorOutput


class StrictIdField(serializers.PrimaryKeyRelatedField):
    """An object's id as a JSON integer: 1.5, "1" and true are refused, not read as 1."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("incorrect_type", data_type=type(data).__name__)
        return super().to_internal_value(data)


class ProjectSerializer(serializers.ModelSerializer):
    """`annotators` (the ids of those assigned) is written and read by labeling admins only:
    an annotator's answer leaves it out, as it would tell them who else works on a project."""

    annotators = StrictIdField(
        many=True,
        required=False,
        queryset=get_user_model().objects.all(),
        help_text="ids of the users assigned to the project: they see it even when it is not open to all (admins only)",
    )

    class Meta:
        model = Project
        fields = [
            "id", "name", "guidelines", "overlap_k", "lease_seconds", "gold_rate", "max_responses", "is_active", "created_at",
            "description", "revision_hours", "open_to_all", "annotators", "task_ordering", "overlap_k_max", "disagreement_target",
        ]
        extra_kwargs = {"revision_hours": {"allow_null": False}, "task_ordering": {"allow_blank": False}}
        read_only_fields = ["id", "created_at"]

    @cached_property
    def _shows_annotators(self) -> bool:  # once per list, not once per project
        request = self.context.get("request")
        return request is None or is_labeling_admin(request.user)

    def validate(self, attrs):
        attrs = super().validate(attrs)
        current = self.instance

        def value(name):
            return attrs[name] if name in attrs else getattr(current, name, None) if current else Project._meta.get_field(name).default

        problems = overlap_problems(value("overlap_k"), value("overlap_k_max"), value("task_ordering"))
        if problems:
            raise serializers.ValidationError(problems)
        return attrs

    def to_representation(self, instance):
        data = super().to_representation(instance)
        if not self._shows_annotators:
            data.pop("annotators", None)
        return data


class ReplyOutput(serializers.Serializer):
    label = serializers.CharField()
    text = serializers.CharField()


class MessageOutput(serializers.Serializer):
    role = serializers.CharField()
    content = serializers.CharField()


class AssignmentOutput(serializers.Serializer):
    """A leased task as the annotator sees it: no model names, no response ids."""

    assignment_id = serializers.IntegerField()
    task_id = serializers.IntegerField()
    project_id = serializers.IntegerField()
    expires_at = serializers.DateTimeField()
    conversation = MessageOutput(many=True)
    replies = ReplyOutput(many=True)
    choices = serializers.ListField(child=serializers.CharField())


class JudgementInput(serializers.Serializer):
    choice = serializers.ChoiceField(choices=Choice.choices)
    strength = serializers.IntegerField(min_value=1, max_value=4, required=False, allow_null=True)
    ranks = serializers.ListField(
        child=serializers.IntegerField(min_value=1), required=False, allow_null=True,
        help_text="choice 'ranking' only: one rank per reply in display order, 1 = best, ties allowed",
    )
    rationale = serializers.CharField(required=False, allow_blank=True, max_length=5000, trim_whitespace=True)
    flags = serializers.ListField(
        child=serializers.ChoiceField(choices=FLAG_CHOICES), required=False,
        help_text="flags on the comparison as a whole; flags on single replies go in reply_flags",
    )
    reply_flags = serializers.DictField(
        child=serializers.ListField(child=serializers.ChoiceField(choices=FLAG_CHOICES)),
        required=False, allow_null=True,
        help_text='flags on single replies, by reply label: {"B": ["unsafe"]}; stored judgements list them in flags too',
    )
    time_spent_ms = serializers.IntegerField(min_value=0, max_value=24 * 3600 * 1000, required=False, allow_null=True)
    idempotency_key = serializers.CharField(required=False, allow_blank=True, max_length=100)


LABELLED_FLAGS = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))
LABELLED_FLAGS_BY_ID = serializers.DictField(child=serializers.ListField(child=serializers.CharField()),
                                             help_text='flags per reply: {"<reply id>": ["unsafe", ...]}; replies without flags left out')


class JudgementOutput(serializers.ModelSerializer):
    """What an annotator gets back about their own judgement (its latest version)."""

    task_id = serializers.IntegerField()
    assignment_id = serializers.IntegerField()
    flags = serializers.ListField(child=serializers.CharField(), help_text="every flag on the judgement, its replies' included")
    reply_flags = serializers.SerializerMethodField(help_text='flags on single replies, by reply label: {"B": ["unsafe"]}')

    class Meta:
        model = Judgement
        fields = [
            "id", "task_id", "assignment_id", "choice", "strength", "rationale", "flags", "time_spent_ms", "idempotency_key", "created_at",
            "reply_flags", "revision", "revised_at",
        ]

    @extend_schema_field(LABELLED_FLAGS)
    def get_reply_flags(self, judgement) -> dict:
        label = {str(rid): "ABCDEFGH"[i] for i, rid in enumerate(judgement.display_order)}
        return {label.get(rid, rid): flags for rid, flags in (judgement.reply_flags or {}).items()}


class JudgementAdminOutput(serializers.ModelSerializer):
    annotator = serializers.CharField(source="annotator.username")
    project_id = serializers.IntegerField(source="task.project_id")
    ranking = serializers.ListField(child=serializers.ListField(child=serializers.IntegerField()),
                                    help_text="reply ids, best group first; replies in one group are tied")
    flags = serializers.ListField(child=serializers.CharField(), help_text="every flag on the judgement, its replies' included")
    display_order = serializers.ListField(child=serializers.IntegerField(), help_text="reply ids in the order the annotator saw them")
    reply_flags = LABELLED_FLAGS_BY_ID

    class Meta:
        model = Judgement
        fields = [
            "id", "task", "project_id", "annotator", "source", "choice", "ranking", "strength", "rationale",
            "flags", "display_order", "time_spent_ms", "gold_correct", "created_at",
            "reply_flags", "revision", "revised_at",
        ]


class SkipInput(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, max_length=500)


class SkipOutput(serializers.Serializer):
    assignment_id = serializers.IntegerField()
    state = serializers.CharField(help_text="the lease's state now: skipped")


class TaskResponseOutput(serializers.Serializer):
    id = serializers.IntegerField(source="response.id")
    position = serializers.IntegerField()
    text = serializers.CharField(source="response.text")
    origin = serializers.CharField(source="response.origin")


class TaskAdminOutput(serializers.ModelSerializer):
    responses = TaskResponseOutput(source="task_responses", many=True)
    conversation = MessageOutput(source="prompt.messages", many=True)

    class Meta:
        model = ComparisonTask
        fields = ["id", "project", "prompt", "conversation", "responses", "priority", "status", "is_gold", "gold_response", "judgement_count", "created_at"]


class GoldInput(serializers.Serializer):
    gold_response = serializers.IntegerField(
        allow_null=True, min_value=1, help_text="the id of the task's reply a careful annotator must prefer; null: not a gold task"
    )


class MyTotalsOutput(serializers.Serializer):
    """Your totals. No gold figures: a change after a submit would tell a gold task apart
    (#19); labeling admins see them (/api/v1/annotators/stats/)."""

    judgements = serializers.IntegerField()
    skips = serializers.IntegerField()
    mean_time_ms = serializers.IntegerField(allow_null=True)


class ImportInput(serializers.Serializer):
    file = serializers.FileField()
    format = serializers.ChoiceField(choices=IMPORT_FORMATS)
    with_labels = serializers.BooleanField(default=False)
    skip_invalid = serializers.BooleanField(default=False)
    pairs_per_prompt = serializers.IntegerField(
        required=False, allow_null=True, default=None, min_value=1, max_value=1000,
        help_text="format replies: that many pairs of models per prompt, sampled (default: every pair)",
    )
    background = serializers.BooleanField(
        required=False, allow_null=True, default=None,
        help_text="true: a worker imports the file (202 and the job); false: in this request (201 and the report), "
        "for files up to IMPORT_INLINE_MAX_BYTES only; default: by size",
    )


class ImportCountsOutput(serializers.Serializer):
    lines_with_items = serializers.IntegerField()
    prompts_created = serializers.IntegerField()
    responses_created = serializers.IntegerField()
    tasks_created = serializers.IntegerField()
    tasks_already_present = serializers.IntegerField()
    labels_created = serializers.IntegerField()
    gold_tasks_created = serializers.IntegerField()
    skipped_count = serializers.IntegerField()


class ImportReportOutput(ImportCountsOutput):
    """What an import wrote; `skipped` lists the first 100 bad lines (skip_invalid)."""

    skipped = LineErrorOutput(many=True)


class ImportJobReportOutput(serializers.Serializer):
    ok = serializers.BooleanField(help_text="false: the file was rejected and nothing was imported")
    counts = ImportCountsOutput(required=False, help_text="what was written (when ok)")
    errors = LineErrorOutput(many=True, help_text="the first 100 bad lines")
    total_errors = serializers.IntegerField()


class ImportProgressOutput(serializers.Serializer):
    bytes_done = serializers.IntegerField()
    bytes_total = serializers.IntegerField()
    fraction = serializers.FloatField(help_text="bytes read / file size, 0 to 1")
    eta_seconds = serializers.FloatField(allow_null=True, help_text="at the rate so far; null until known")
    heartbeat_age_seconds = serializers.FloatField(allow_null=True, help_text="seconds since the worker last reported")
    cancelling = serializers.BooleanField(help_text="cancel was asked; the import rolls back at its next batch")


class ImportJobOutput(serializers.Serializer):
    """An import run by a worker (files over IMPORT_INLINE_MAX_BYTES, or background=true)."""

    id = serializers.IntegerField()
    project = serializers.IntegerField(source="project_id")
    file_name = serializers.CharField()
    size_bytes = serializers.IntegerField()
    format = serializers.CharField()
    with_labels = serializers.BooleanField()
    skip_invalid = serializers.BooleanField()
    pairs_per_prompt = serializers.IntegerField(allow_null=True)
    status = serializers.ChoiceField(choices=ImportStatus.choices)
    requested_by = serializers.CharField(source="requested_by.username", allow_null=True, default=None)
    attempts = serializers.IntegerField()
    error = serializers.CharField(help_text="why it failed or was cancelled; empty otherwise")
    report = serializers.SerializerMethodField(help_text="the counts and the numbered bad lines, once it ended")
    progress = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)

    @extend_schema_field(ImportJobReportOutput(allow_null=True))
    def get_report(self, job) -> dict | None:
        return job.report or None

    @extend_schema_field(ImportProgressOutput)
    def get_progress(self, job) -> dict:
        from ..importing.jobs import read_progress

        return read_progress(job)


class ImportJobQuery(serializers.Serializer):
    project = serializers.IntegerField(required=False, min_value=1, max_value=2**63 - 1, help_text="only this project's imports (its id)")
    status = serializers.ChoiceField(choices=ImportStatus.choices, required=False)


class ExportQuery(serializers.Serializer):
    format = serializers.ChoiceField(choices=EXPORT_FORMATS, default="trl")
    aggregate = serializers.ChoiceField(choices=AGGREGATES, default="none")
    since = serializers.DateField(required=False, help_text="first day included (YYYY-MM-DD)")
    until = serializers.DateField(required=False, help_text="last day included (YYYY-MM-DD)")
    annotator = serializers.CharField(required=False)
    exclude_paused = serializers.BooleanField(default=False, help_text="leave out annotators paused on the project")
    exclude_flagged = serializers.BooleanField(default=False, help_text="leave out annotators the quality thresholds flag")
    exclude_failed_gold = serializers.BooleanField(default=False, help_text="leave out judgements that failed their gold task")
    min_task_agreement = serializers.FloatField(
        required=False, min_value=0.0, max_value=1.0, help_text="only tasks whose human judgements agree at least this much"
    )
    include_simulated = serializers.BooleanField(default=False, help_text="also the demo's simulated judgements (left out by default)")


MAX_ID = 2**63 - 1  # a bigint primary key; larger numbers are refused, not passed to the database


def id_filter(what: str) -> serializers.IntegerField:
    return serializers.IntegerField(required=False, min_value=1, max_value=MAX_ID, help_text=f"only this {what} (its id)")


class JudgementQuery(serializers.Serializer):
    project = id_filter("project")
    task = id_filter("task")
    annotator = serializers.CharField(required=False, max_length=150, help_text="username")
    since = serializers.DateField(required=False, help_text="first day included (YYYY-MM-DD)")
    until = serializers.DateField(required=False, help_text="last day included (YYYY-MM-DD)")


class TaskQuery(serializers.Serializer):
    project = id_filter("project")
    status = serializers.ChoiceField(choices=TaskStatus.choices, required=False)
    is_gold = serializers.BooleanField(required=False, allow_null=True, default=None, help_text="true: gold tasks only; false: no gold tasks")


class ProjectQuery(serializers.Serializer):
    project = id_filter("project")


class AnnotatorStatsOutput(serializers.Serializer):
    annotator_id = serializers.IntegerField()
    username = serializers.CharField()
    judgements = serializers.IntegerField()
    skips = serializers.IntegerField()
    mean_time_ms = serializers.IntegerField(allow_null=True)
    gold_seen = serializers.IntegerField()
    gold_correct = serializers.IntegerField()
    gold_accuracy = serializers.FloatField(allow_null=True)


class ProjectProgressOutput(serializers.Serializer):
    project_id = serializers.IntegerField(source="project.pk")
    project = serializers.CharField(source="project.name")
    judged_today = serializers.IntegerField()
    judged_total = serializers.IntegerField()
    tasks_left = serializers.IntegerField()


class MyStatsOutput(serializers.Serializer):
    username = serializers.CharField()
    projects = ProjectProgressOutput(many=True)
    totals = MyTotalsOutput(allow_null=True)
