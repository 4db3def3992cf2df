"""Labeling data model: projects, prompts, replies, comparison tasks, leases, judgements.

The database enforces the invariants that must never break, whatever code path writes:
one judgement per (task, annotator), one assignment per (task, annotator), valid choices
and strengths, and one idempotency key per annotator. Rules that need more than one row
(overlap k, lease expiry, gold mixing) live in services.py.
"""

import unicodedata

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q


def validate_project_name(name: str) -> None:
    """A project name is one line of visible text: no control characters, line breaks or surrogates."""
    if not name or not name.strip():
        raise ValidationError("must not be empty or only spaces")
    for index, char in enumerate(name):
        if unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp"):
            raise ValidationError(f"must not contain control characters or line breaks (U+{ord(char):04X} at position {index + 1})")


class Project(models.Model):
    name = models.CharField(max_length=200, unique=True, validators=[validate_project_name])
    guidelines = models.TextField(blank=True, help_text="Markdown shown to annotators.")
    overlap_k = models.PositiveSmallIntegerField(
        default=3,
        validators=[MinValueValidator(1), MaxValueValidator(50)],
        help_text="Judgements wanted per comparison task.",
    )
    lease_seconds = models.PositiveIntegerField(
        default=900,
        validators=[MinValueValidator(30), MaxValueValidator(24 * 3600)],
        help_text="How long an annotator holds a task before it returns to the pool.",
    )
    gold_rate = models.FloatField(
        default=0.1,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Share of served tasks drawn from gold tasks (when unseen gold remains).",
    )
    max_responses = models.PositiveSmallIntegerField(
        default=4,
        validators=[MinValueValidator(2), MaxValueValidator(8)],
        help_text="K: the most replies one comparison task may compare.",
    )
    is_active = models.BooleanField(default=True)
    description = models.CharField(
        max_length=500, blank=True, help_text="One or two sentences for the annotators' home page (plain text)."
    )
    task_ordering = models.CharField(
        max_length=12,
        choices=[
            ("fifo", "in order (priority, then fewest judgements)"),
            ("uncertainty", "most uncertain for the reward model first"),
            ("balanced", "least compared pairs of reply sources first"),
            ("disagreement", "more annotators where judgements disagree (up to overlap k max)"),
        ],
        default="fifo",
        blank=True,  # a form or client that leaves it out gets the default (clean)
        help_text="within a priority: uncertainty serves first the tasks whose replies the active reward model scores closest; "
        "balanced those comparing the sources of replies (policy versions, imported sets) people compared least "
        "(scores from the worker's periodic job, stored on the task, so serving a task costs the same); "
        "disagreement gives a task whose judgements disagree one more annotator at a time, up to overlap k max, "
        "and serves those tasks first",
    )
    overlap_k_max = models.PositiveSmallIntegerField(
        default=0,
        blank=True,  # a form or client that leaves it out gets the default (clean)
        validators=[MaxValueValidator(50)],
        help_text="Task order 'disagreement': the most judgements a task may get while its annotators disagree "
        "(0: no more than overlap k).",
    )
    disagreement_target = models.FloatField(
        default=0.75,
        blank=True,  # as overlap_k_max
        validators=[MinValueValidator(0.5), MaxValueValidator(1.0)],
        help_text="Task order 'disagreement': a task agrees once its most common verdict has at least this share of its judgements.",
    )
    revision_hours = models.PositiveIntegerField(
        default=24,
        blank=True,  # a form or client that leaves it out keeps the current value; an empty one means the default
        validators=[MaxValueValidator(24 * 366)],
        help_text="How long after submitting an annotator may revise a judgement under "
        "'My recent judgements' (0: never). Only while the project is active.",
    )
    open_to_all = models.BooleanField(
        default=True,
        help_text="Every annotator sees this project. Off: only the annotators assigned to it (and labeling admins).",
    )
    annotators = models.ManyToManyField(
        settings.AUTH_USER_MODEL,
        blank=True,
        related_name="assigned_projects",
        help_text="Annotators assigned to this project; they see it even when it is not open to all.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(gold_rate__gte=0) & Q(gold_rate__lte=1), name="project_gold_rate_0_1"
            ),
            models.CheckConstraint(
                condition=Q(max_responses__gte=2) & Q(max_responses__lte=8),
                name="project_max_responses_2_8",
            ),
            models.CheckConstraint(condition=Q(overlap_k__gte=1), name="project_overlap_k_positive"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self):
        super().clean()
        if self.revision_hours is None:
            self.revision_hours = self._meta.get_field("revision_hours").default
        if not self.task_ordering:
            self.task_ordering = self._meta.get_field("task_ordering").default
        for name in ("overlap_k_max", "disagreement_target"):
            if getattr(self, name) is None:
                setattr(self, name, self._meta.get_field(name).default)
        problems = overlap_problems(self.overlap_k, self.overlap_k_max, self.task_ordering)
        if problems:
            raise ValidationError(problems)


def overlap_problems(overlap_k, overlap_k_max, task_ordering) -> dict[str, str]:
    """{field: reason} for an inconsistent overlap_k_max (the form and the API both check it)."""
    if overlap_k_max and overlap_k and overlap_k_max < overlap_k:
        return {"overlap_k_max": f"must be 0 or at least overlap k ({overlap_k})"}
    if task_ordering == "disagreement" and (not overlap_k_max or (overlap_k and overlap_k_max <= overlap_k)):
        return {"overlap_k_max": "task order 'disagreement' needs overlap k max above overlap k: the room for more annotators"}
    return {}


class PromptFormat(models.TextChoices):
    TEXT = "text", "plain text"
    CHAT = "chat", "chat messages"
    HH = "hh", "HH-RLHF transcript"


def validate_messages(value) -> None:
    """A conversation as the importers accept it (a form that edits one, the Django admin's,
    must not store what the pages and the trainers cannot read)."""
    from .importing.formats import RecordError, check_messages

    try:
        check_messages(value)
    except RecordError as exc:
        raise ValidationError(str(exc)) from None


def validate_storable_json(value) -> None:
    """JSON any database stores: no NaN or infinity, no NUL or lone surrogate, not nested too deep."""
    import json

    from .jsonsafety import MAX_JSON_DEPTH, first_unstorable, nesting_depth_exceeds

    try:
        text = json.dumps(value, allow_nan=False)
    except (ValueError, TypeError) as exc:
        raise ValidationError(f"is not storable JSON ({exc})") from None
    except RecursionError:
        raise ValidationError(f"is nested deeper than {MAX_JSON_DEPTH} levels") from None
    if nesting_depth_exceeds(text.encode(), MAX_JSON_DEPTH):
        raise ValidationError(f"is nested deeper than {MAX_JSON_DEPTH} levels")
    where = first_unstorable(value)
    if where:
        raise ValidationError(f"{where}: contains a NUL character or a lone surrogate")


def validate_metadata(value) -> None:
    if not isinstance(value, dict):
        raise ValidationError("must be a JSON object")
    validate_storable_json(value)


class Prompt(models.Model):
    """A conversation context: a list of {role, content}, the last turn the user's."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="prompts")
    messages = models.JSONField(validators=[validate_messages, validate_storable_json])
    source_format = models.CharField(max_length=8, choices=PromptFormat.choices, default=PromptFormat.TEXT)
    source = models.CharField(max_length=200, blank=True, help_text="Where it came from (file name).")
    metadata = models.JSONField(default=dict, blank=True, validators=[validate_metadata])
    content_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "content_hash"], name="prompt_unique_per_project")
        ]

    def __str__(self) -> str:
        # also for a prompt a form is about to refuse (the admin names it on its error page)
        last = self.messages[-1] if isinstance(self.messages, list) and self.messages else None
        content = last.get("content") if isinstance(last, dict) else None
        return content[:80] if isinstance(content, str) else f"prompt {self.pk}"


class Response(models.Model):
    """One model reply to a prompt. Its origin is never shown to annotators."""

    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="responses")
    text = models.TextField()
    text_hash = models.CharField(max_length=64)
    origin = models.CharField(max_length=200, blank=True, help_text="Imported name or model version.")
    model_version = models.ForeignKey(
        "training.ModelVersion",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="responses",
        help_text="The policy version that generated it (never shown to annotators).",
    )
    endpoint = models.ForeignKey(
        "inference.ModelEndpoint",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="responses",
        help_text="The model endpoint that wrote it (never shown to annotators).",
    )
    generation_params = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["prompt", "text_hash"], name="response_unique_per_prompt")
        ]

    def __str__(self) -> str:
        return self.text[:80]


class TaskStatus(models.TextChoices):
    OPEN = "open", "open"
    COMPLETE = "complete", "complete"
    LIVE = "live", "live (judged by the annotator who asked for it)"
    ARCHIVED = "archived", "archived"


class ComparisonTask(models.Model):
    """Compare 2..K replies to one prompt. Gold tasks carry the expected answer."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="tasks")
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="tasks")
    responses = models.ManyToManyField(Response, through="TaskResponse", related_name="tasks")
    response_set_hash = models.CharField(max_length=64)
    priority = models.IntegerField(default=0)
    status = models.CharField(max_length=10, choices=TaskStatus.choices, default=TaskStatus.OPEN)
    is_gold = models.BooleanField(default=False)
    gold_response = models.ForeignKey(
        Response,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Gold tasks: the reply a careful annotator must prefer.",
    )
    judgement_count = models.PositiveIntegerField(default=0)
    extra_judgements = models.PositiveSmallIntegerField(
        default=0,
        help_text="Judgements wanted beyond the project's overlap k (task order 'disagreement': its judgements disagreed)",
    )
    order_score = models.PositiveSmallIntegerField(
        default=0,
        help_text="0..1000, served first within a priority: the reward model's uncertainty (task_ordering uncertainty) "
        "or how little its reply sources were compared (balanced); set by the periodic job, 0 in fifo",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["project", "response_set_hash"], name="task_unique_response_set"
            ),
            models.CheckConstraint(
                condition=Q(is_gold=False) | Q(gold_response__isnull=False), name="gold_task_has_answer"
            ),
        ]
        indexes = [
            # serves the next-task query: open, non-gold tasks of a project by priority
            models.Index(
                fields=["project", "status", "is_gold", "-priority", "-order_score", "judgement_count", "id"],
                name="task_next_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"task {self.pk}"


class TaskResponse(models.Model):
    task = models.ForeignKey(ComparisonTask, on_delete=models.CASCADE, related_name="task_responses")
    response = models.ForeignKey(Response, on_delete=models.CASCADE, related_name="+")
    position = models.PositiveSmallIntegerField()

    class Meta:
        ordering = ["position"]
        constraints = [
            models.UniqueConstraint(fields=["task", "response"], name="task_response_unique"),
            models.UniqueConstraint(fields=["task", "position"], name="task_position_unique"),
        ]


class AssignmentState(models.TextChoices):
    LEASED = "leased", "leased"
    SUBMITTED = "submitted", "submitted"
    SKIPPED = "skipped", "skipped"


class Assignment(models.Model):
    """A lease of one task to one annotator, with the shuffled order the replies were shown in.

    A leased assignment whose expires_at has passed no longer counts toward the task's
    overlap and can no longer be submitted; it stays in the table so the annotator is
    never served that task again.
    """

    task = models.ForeignKey(ComparisonTask, on_delete=models.CASCADE, related_name="assignments")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assignments")
    display_order = models.JSONField(help_text="Response ids in the order shown as A, B, C...")
    state = models.CharField(max_length=10, choices=AssignmentState.choices, default=AssignmentState.LEASED)
    leased_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    completed_at = models.DateTimeField(null=True, blank=True)
    skip_reason = models.CharField(max_length=500, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["task", "annotator"], name="assignment_once_per_annotator")
        ]
        indexes = [
            models.Index(fields=["task", "state", "expires_at"], name="assignment_lease_idx"),
            models.Index(fields=["annotator", "state", "expires_at"], name="assignment_annotator_idx"),
        ]

    def __str__(self) -> str:
        return f"assignment {self.pk} ({self.state})"


class Choice(models.TextChoices):
    A = "A", "A is better"
    B = "B", "B is better"
    TIE = "tie", "tie"
    BOTH_BAD = "both_bad", "both bad"
    RANKING = "ranking", "ranking (K > 2)"


class Strength(models.IntegerChoices):
    SLIGHTLY = 1, "slightly better"
    BETTER = 2, "better"
    SIGNIFICANTLY = 3, "significantly better"
    MUCH = 4, "much better"


class JudgementSource(models.TextChoices):
    ANNOTATOR = "annotator", "annotator"
    IMPORT = "import", "imported label"
    SIMULATED = "simulated", "simulated annotator (demo)"


FLAG_CHOICES = ("unsafe", "factually_wrong", "other")


class Judgement(models.Model):
    """One annotator's preference on one comparison task.

    `choice` is what the annotator picked in display terms (A = first reply shown).
    `ranking` is the same judgement in response ids: a list of groups, best first,
    replies in one group tied, e.g. [[12], [10, 11]]. Training data comes from `ranking`.
    """

    task = models.ForeignKey(ComparisonTask, on_delete=models.CASCADE, related_name="judgements")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="judgements")
    assignment = models.OneToOneField(
        Assignment, null=True, blank=True, on_delete=models.SET_NULL, related_name="judgement"
    )
    choice = models.CharField(max_length=10, choices=Choice.choices)
    ranking = models.JSONField()
    strength = models.PositiveSmallIntegerField(null=True, blank=True, choices=Strength.choices)
    rationale = models.TextField(blank=True)
    flags = models.JSONField(default=list, blank=True, help_text="Every flag on the judgement, its replies' included.")
    reply_flags = models.JSONField(
        default=dict, blank=True, help_text='Flags per reply: {"<response id>": ["unsafe", ...]}; replies without flags left out.'
    )
    display_order = models.JSONField(help_text="Response ids as shown, copied from the assignment.")
    time_spent_ms = models.PositiveIntegerField(null=True, blank=True)
    idempotency_key = models.CharField(max_length=100, blank=True)
    source = models.CharField(max_length=10, choices=JudgementSource.choices, default=JudgementSource.ANNOTATOR)
    gold_correct = models.BooleanField(null=True, blank=True, help_text="Gold tasks: did it match?")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    revision = models.PositiveSmallIntegerField(
        default=0, help_text="How often the annotator revised it; earlier versions are JudgementRevision rows."
    )
    revised_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["task", "annotator"], name="judgement_once_per_annotator"),
            models.UniqueConstraint(
                fields=["annotator", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="judgement_idempotency_key_unique",
            ),
            models.CheckConstraint(condition=Q(choice__in=Choice.values), name="judgement_choice_valid"),
            models.CheckConstraint(
                condition=Q(strength__isnull=True) | (Q(strength__gte=1) & Q(strength__lte=4)),
                name="judgement_strength_1_4",
            ),
            models.CheckConstraint(
                condition=Q(strength__isnull=True) | Q(choice__in=["A", "B", "ranking"]),
                name="judgement_strength_only_with_winner",
            ),
        ]
        indexes = [models.Index(fields=["annotator", "created_at"], name="judgement_annotator_idx")]

    def __str__(self) -> str:
        return f"judgement {self.pk}: {self.choice}"


class JudgementRevision(models.Model):
    """An earlier version of a judgement, kept when its annotator revises it.

    The Judgement row always holds the latest version (what exports and statistics read);
    these rows are its history: `number` 0 is the original submission, 1 the first
    revision, and so on. `made_at` is when that version was made, `replaced_at` when the
    next one replaced it.
    """

    judgement = models.ForeignKey(Judgement, on_delete=models.CASCADE, related_name="revisions")
    number = models.PositiveSmallIntegerField()
    choice = models.CharField(max_length=10, choices=Choice.choices)
    ranking = models.JSONField()
    strength = models.PositiveSmallIntegerField(null=True, blank=True, choices=Strength.choices)
    rationale = models.TextField(blank=True)
    flags = models.JSONField(default=list, blank=True)
    reply_flags = models.JSONField(default=dict, blank=True)
    time_spent_ms = models.PositiveIntegerField(null=True, blank=True)
    gold_correct = models.BooleanField(null=True, blank=True)
    made_at = models.DateTimeField()
    replaced_at = models.DateTimeField()

    class Meta:
        ordering = ["judgement", "number"]
        constraints = [
            models.UniqueConstraint(fields=["judgement", "number"], name="judgement_revision_unique_number")
        ]

    def __str__(self) -> str:
        return f"judgement {self.judgement_id} version {self.number}: {self.choice}"


class ProjectQualitySettings(models.Model):
    """Per project: when an annotator is flagged on the quality page, and whether a flagged
    annotator is paused automatically (labeling.tasks.check_quality, every 10 minutes)."""

    project = models.OneToOneField(Project, on_delete=models.CASCADE, related_name="quality_settings")
    min_judgements = models.PositiveIntegerField(default=30, help_text="no flag before an annotator has this many judgements")
    min_time_ms = models.PositiveIntegerField(
        default=3000, validators=[MaxValueValidator(3_600_000)], help_text="a judgement faster than this counts as too fast"
    )
    max_fast_share = models.FloatField(
        default=0.2, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)], help_text="flag above this share of too-fast judgements"
    )
    min_gold_accuracy = models.FloatField(
        default=0.7, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="flag when even the upper end of the 95% interval of gold accuracy is below this",
    )
    position_bias_margin = models.FloatField(
        default=0.15, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="flag when the first-shown reply wins this much more (or less) often than chance, and p < 0.001",
    )
    max_straight_share = models.FloatField(
        default=0.3, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="flag above this share of judgements inside runs of the same answer",
    )
    straight_run_length = models.PositiveIntegerField(
        default=10, validators=[MinValueValidator(2), MaxValueValidator(1000)], help_text="a run of the same answer this long counts"
    )
    auto_pause = models.BooleanField(default=False, help_text="pause flagged annotators automatically")

    class Meta:
        verbose_name_plural = "project quality settings"

    def __str__(self) -> str:
        return f"quality settings of {self.project}"


class AnnotatorPause(models.Model):
    """An annotator paused on a project: no new tasks there; the page says why. Lifting
    keeps the row (lifted_at), so the history stays."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="pauses")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="pauses")
    reason = models.TextField()
    paused_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="empty: paused automatically by the project's quality thresholds",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    lifted_at = models.DateTimeField(null=True, blank=True)
    lifted_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["project", "annotator"], condition=Q(lifted_at__isnull=True), name="one_open_pause_per_annotator"
            )
        ]

    def __str__(self) -> str:
        return f"{self.annotator} paused on {self.project}"


class LivePairing(models.TextChoices):
    RANDOM = "random", "a random pair of the chosen endpoints"
    BALANCED = "balanced", "the pair compared least so far"


class ProjectLiveSettings(models.Model):
    """Per project: the live chat-and-compare page (labeling/live.py). An annotator writes a
    message, two endpoints' replies stream side by side, the judgement is stored like any
    other and the conversation continues from the chosen reply."""

    project = models.OneToOneField(Project, on_delete=models.CASCADE, related_name="live_settings")
    enabled = models.BooleanField(default=False, help_text="annotators see the live page of this project")
    endpoints = models.ManyToManyField(
        "inference.ModelEndpoint", blank=True, related_name="live_projects",
        help_text="where replies come from; with one endpoint both replies are two samples of it",
    )
    pairing = models.CharField(max_length=10, choices=LivePairing.choices, default=LivePairing.RANDOM)
    max_turns = models.PositiveSmallIntegerField(default=5, validators=[MinValueValidator(1), MaxValueValidator(50)],
                                                 help_text="judged turns per conversation")
    max_prompt_chars = models.PositiveIntegerField(default=4000, validators=[MinValueValidator(1), MaxValueValidator(100_000)],
                                                   help_text="longest message an annotator may send")
    max_tokens = models.PositiveIntegerField(default=512, validators=[MinValueValidator(1), MaxValueValidator(8192)],
                                             help_text="longest reply asked of an endpoint (tokens)")
    turns_per_hour = models.PositiveIntegerField(default=60, validators=[MinValueValidator(1), MaxValueValidator(10_000)],
                                                 help_text="messages (and retries) one annotator may send per hour")
    reveal_sources = models.BooleanField(default=False, help_text="after the vote, show which endpoint wrote each reply (Chatbot Arena does)")

    class Meta:
        verbose_name_plural = "project live settings"

    def __str__(self) -> str:
        return f"live settings of {self.project}"


class LiveConversation(models.Model):
    """One annotator's live conversation: the pair of sources is drawn once, when it starts."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="live_conversations")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="live_conversations")
    source_a = models.ForeignKey("inference.ModelEndpoint", null=True, on_delete=models.SET_NULL, related_name="+")
    source_b = models.ForeignKey("inference.ModelEndpoint", null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["project", "annotator", "closed_at"], name="live_open_idx")]

    def __str__(self) -> str:
        return f"live conversation {self.pk}"


class LiveTurnStatus(models.TextChoices):
    PENDING = "pending", "waiting for its replies"
    STREAMING = "streaming", "replies streaming"
    FAILED = "failed", "a reply failed (retry)"
    READY = "ready", "waiting for the judgement"
    JUDGED = "judged", "judged"


class LiveTurn(models.Model):
    """One turn: the conversation so far ending with the annotator's message, and, once both
    replies arrived whole, the comparison task and the annotator's lease on it. A turn whose
    replies failed keeps no reply; it can be streamed again."""

    conversation = models.ForeignKey(LiveConversation, on_delete=models.CASCADE, related_name="turns")
    number = models.PositiveSmallIntegerField()
    messages = models.JSONField()
    status = models.CharField(max_length=10, choices=LiveTurnStatus.choices, default=LiveTurnStatus.PENDING)
    a_on_left = models.BooleanField(default=True, help_text="source A's reply is shown first (drawn per turn)")
    error = models.CharField(max_length=1000, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    streaming_since = models.DateTimeField(null=True, blank=True)
    task = models.OneToOneField(ComparisonTask, null=True, blank=True, on_delete=models.SET_NULL, related_name="live_turn")
    assignment = models.OneToOneField(Assignment, null=True, blank=True, on_delete=models.SET_NULL, related_name="live_turn")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["conversation", "number"]
        constraints = [models.UniqueConstraint(fields=["conversation", "number"], name="live_turn_number_unique")]

    def __str__(self) -> str:
        return f"live turn {self.number} of conversation {self.conversation_id} ({self.status})"


class ImportStatus(models.TextChoices):
    QUEUED = "queued", "waiting for a worker"
    RUNNING = "running", "importing"
    SUCCEEDED = "succeeded", "imported"
    FAILED = "failed", "rejected: nothing imported"
    CANCELLED = "cancelled", "cancelled: nothing imported"


class ImportJob(models.Model):
    """An uploaded file imported by a worker (labeling/importing/jobs.py). The file is stored
    under IMPORT_ROOT/<id>/ until the job ends; progress and a cancel request pass through
    that folder too, because the import's own transaction hides its rows until it commits.
    All or nothing, as an import in the request: `report` holds the counts and the numbered
    bad lines once it ends."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="import_jobs")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    file_name = models.CharField(max_length=255)
    size_bytes = models.BigIntegerField()
    format = models.CharField(max_length=16)
    with_labels = models.BooleanField(default=False)
    skip_invalid = models.BooleanField(default=False)
    pairs_per_prompt = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=ImportStatus.choices, default=ImportStatus.QUEUED)
    attempts = models.PositiveSmallIntegerField(default=0)
    report = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["project", "-created_at"], name="import_job_project_idx"),
                   models.Index(fields=["status"], name="import_job_status_idx")]

    def __str__(self) -> str:
        return f"import {self.pk} of {self.file_name} ({self.status})"

    @property
    def finished(self) -> bool:
        return self.status in (ImportStatus.SUCCEEDED, ImportStatus.FAILED, ImportStatus.CANCELLED)
