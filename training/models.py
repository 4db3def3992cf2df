"""What is learned from the judgements: model versions (the registry) and training runs.

The database enforces: at most one active version per (project, kind), and at most one
queued-or-running run per (project, kind). Services (services.py) turn violations of the
second into a clear 409.
"""

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q

from labeling.models import Project


class VersionKind(models.TextChoices):
    POLICY = "policy", "policy"
    REWARD = "reward", "reward model"
    REFERENCE = "reference", "reference policy"


class VersionStatus(models.TextChoices):
    CANDIDATE = "candidate", "candidate"
    ACTIVE = "active", "active"
    RETIRED = "retired", "retired"


class ModelVersion(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="model_versions")
    kind = models.CharField(max_length=10, choices=VersionKind.choices)
    number = models.PositiveIntegerField(help_text="1, 2, ... per project and kind")
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children")
    artifact_path = models.CharField(max_length=500)
    produced_by = models.ForeignKey("TrainingRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="versions")
    metrics = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=VersionStatus.choices, default=VersionStatus.CANDIDATE)
    promotion_note = models.CharField(max_length=500, blank=True, help_text="why it was or was not promoted")
    gate_refused = models.BooleanField(
        default=False, help_text="the promotion gate refused it (its note says why): promoting it by hand needs an explicit override"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    promoted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["project", "kind", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["project", "kind", "number"], name="version_number_unique"),
            models.UniqueConstraint(
                fields=["project", "kind"], condition=Q(status="active"), name="one_active_version_per_kind"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} v{self.number}"


class RunKind(models.TextChoices):
    REWARD = "reward", "train reward model"
    PPO = "ppo", "PPO"
    DPO = "dpo", "DPO"
    RLOO = "rloo", "RLOO"
    GRPO = "grpo", "GRPO"
    SFT = "sft", "SFT"
    GENERATE = "generate", "generate candidates"
    ENDPOINTS = "endpoints", "replies from model endpoints"
    SIMULATE = "simulate", "simulated judgements (demo)"
    CYCLE = "cycle", "full cycle"


class RunStatus(models.TextChoices):
    QUEUED = "queued", "queued"
    RUNNING = "running", "running"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"
    CANCELLED = "cancelled", "cancelled"


ACTIVE_RUN_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING)


class TrainingRun(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="training_runs")
    kind = models.CharField(max_length=10, choices=RunKind.choices)
    status = models.CharField(max_length=10, choices=RunStatus.choices, default=RunStatus.QUEUED)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="stages")
    config = models.JSONField(default=dict, blank=True)
    progress = models.FloatField(default=0.0, validators=[MinValueValidator(0.0)])
    metrics = models.JSONField(default=dict, blank=True, help_text="final metrics")
    metric_series = models.JSONField(default=list, blank=True, help_text="one entry per step")
    log_tail = models.TextField(blank=True)
    error = models.TextField(blank=True, help_text="traceback of a failed run")
    celery_task_id = models.CharField(max_length=100, blank=True)
    cancel_requested = models.BooleanField(default=False)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    judgements_at_start = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "kind"],
                condition=Q(status__in=["queued", "running"]) & Q(parent__isnull=True),
                name="one_active_run_per_kind",
            ),
            models.CheckConstraint(condition=Q(progress__gte=0) & Q(progress__lte=1), name="run_progress_0_1"),
        ]
        indexes = [models.Index(fields=["status", "heartbeat_at"], name="run_heartbeat_idx")]

    def __str__(self) -> str:
        return f"{self.kind} run {self.pk} ({self.status})"


class PolicyAlgorithm(models.TextChoices):
    """How a cycle trains the policy on the project's judgements."""

    PPO = "ppo", "PPO against the reward model (reward model, value model)"
    DPO = "dpo", "DPO on the judgements directly (no reward model in the loop)"
    RLOO = "rloo", "RLOO against the reward model (no value model)"
    GRPO = "grpo", "GRPO against the reward model (no value model)"


class ProjectTrainingSettings(models.Model):
    """Per project: when to retrain on its own, and how many fresh replies to generate."""

    project = models.OneToOneField(Project, on_delete=models.CASCADE, related_name="training_settings")
    auto_retrain = models.BooleanField(default=True)
    retrain_min_new_judgements = models.PositiveIntegerField(
        default=100, help_text="start a full cycle when this many judgements arrived since the active reward model"
    )
    generate_prompts = models.PositiveIntegerField(default=20, help_text="prompts that get fresh replies per cycle")
    generate_replies_per_prompt = models.PositiveIntegerField(default=1, validators=[MinValueValidator(1)])
    reward_config = models.JSONField(default=dict, blank=True, help_text="RewardTrainingConfig overrides")
    ppo_config = models.JSONField(default=dict, blank=True, help_text="PPOConfig overrides")
    policy_algorithm = models.CharField(
        max_length=10, choices=PolicyAlgorithm.choices, default=PolicyAlgorithm.PPO,
        help_text="what a cycle runs after (or, for DPO, instead of) the reward model",
    )
    dpo_config = models.JSONField(default=dict, blank=True, help_text="DPOConfig overrides")
    online_rl_config = models.JSONField(default=dict, blank=True, help_text="OnlineRLConfig overrides (RLOO and GRPO)")
    sampling_config = models.JSONField(default=dict, blank=True, help_text="SamplingConfig overrides")
    reward_min_accuracy = models.FloatField(
        default=0.5, help_text="never promote a reward model whose validation accuracy is below this (0.5 = chance)"
    )
    reward_accuracy_margin = models.FloatField(
        default=0.02, help_text="promote a reward model unless its validation accuracy is lower than the active one's by more"
    )
    ppo_max_kl = models.FloatField(default=10.0, help_text="promote a policy only if its final KL to the reference is below this")
    reward_min_judgements = models.PositiveIntegerField(
        default=50, help_text="never promote a reward model trained on fewer judgements than this"
    )
    significance_level = models.FloatField(
        default=0.05,
        validators=[MinValueValidator(0.0)],
        help_text="a model is promoted only when a one-sided test of 'it learned nothing' gives p below this",
    )
    policy_eval_prompts = models.PositiveIntegerField(
        default=32, help_text="held-out prompts (never trained on) on which a new policy must beat its reference"
    )

    # the trainer overrides, each checked as a run's config is (training/run_config.py)
    STAGE_CONFIGS = {"reward_config": "reward", "ppo_config": "ppo", "dpo_config": "dpo", "online_rl_config": "rloo", "sampling_config": "sampling"}

    class Meta:
        verbose_name_plural = "project training settings"

    def __str__(self) -> str:
        return f"training settings of {self.project}"

    def clean(self):
        """What any form (the console's, the Django admin's) saves must be what a run can read."""
        from django.core.exceptions import ValidationError

        from .run_config import config_problems

        super().clean()
        problems = {}
        for field, stage in self.STAGE_CONFIGS.items():
            value = getattr(self, field)
            if not isinstance(value, dict):
                problems[field] = 'must be a JSON object, e.g. {"epochs": 2}'
                continue
            found = config_problems({stage: value})
            if found:
                problems[field] = "; ".join(f"{path}: {reason}" for path, reason in found)
        if problems:
            raise ValidationError(problems)


class ReplyScore(models.Model):
    """A reply's calibrated reward under one reward-model version (training.scoring): what
    the quality page compares with people's judgements, batch by batch (reward-model drift
    and over-optimisation show as falling agreement)."""

    response = models.ForeignKey("labeling.Response", on_delete=models.CASCADE, related_name="reward_scores")
    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="reply_scores")
    reward = models.FloatField()
    scored_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["response", "version"], name="reply_score_once_per_version")]

    def __str__(self) -> str:
        return f"reply {self.response_id} under {self.version}: {self.reward:.3f}"
