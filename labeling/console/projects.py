"""Projects: the list with counts, create, edit (labeling and training settings), archive,
the project page with its judgements-per-day chart, and the guidelines' markdown preview."""

from __future__ import annotations

from datetime import timedelta

from django import forms
from django.contrib import messages
from django.db import transaction
from django.db.models import Count, Exists, OuterRef, Q
from django.db.models.functions import TruncDate
from django.http import HttpResponse, HttpResponseNotAllowed
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone

from training.models import ModelVersion, ProjectTrainingSettings
from training.run_config import config_problems

from .. import jsonsafety, selectors
from ..models import Assignment, AssignmentState, ComparisonTask, Judgement, JudgementSource, Project, TaskStatus
from ..rendering import render_markdown
from .charts import bar_chart, day_series
from .common import labeling_admin_required

CHART_DAYS = 30
MAX_PREVIEW_CHARS = 100_000


# --------------------------------------------------------------------------- counts


def project_counts(project_ids: list[int], now=None) -> dict[int, dict]:
    """Per project: regular tasks, judged (complete), in progress (a judgement or a live
    lease, not complete), left (nobody has started), gold tasks, human judgements.
    Two grouped queries whatever the number of projects."""
    now = now or timezone.now()
    live_lease = Assignment.objects.filter(task=OuterRef("pk"), state=AssignmentState.LEASED, expires_at__gt=now)
    regular = Q(is_gold=False) & ~Q(status__in=[TaskStatus.ARCHIVED, TaskStatus.LIVE])  # live turns: their annotator's own
    started = Q(judgement_count__gt=0) | Q(live=True)
    rows = (
        ComparisonTask.objects.filter(project_id__in=project_ids)
        .annotate(live=Exists(live_lease))
        .values("project_id")
        .annotate(
            tasks=Count("id", filter=regular),
            judged=Count("id", filter=regular & Q(status=TaskStatus.COMPLETE)),
            in_progress=Count("id", filter=regular & Q(status=TaskStatus.OPEN) & started),
            left=Count("id", filter=regular & Q(status=TaskStatus.OPEN) & ~started),
            gold=Count("id", filter=Q(is_gold=True)),
        )
    )
    counts = {pk: {"tasks": 0, "judged": 0, "in_progress": 0, "left": 0, "gold": 0, "judgements": 0, "simulated": 0} for pk in project_ids}
    for row in rows:
        counts[row.pop("project_id")].update(row)
    judgements = (  # people's, and the demo's simulated ones (which complete tasks too: the legend says so)
        Judgement.objects.filter(task__project_id__in=project_ids, source__in=[JudgementSource.ANNOTATOR, JudgementSource.SIMULATED])
        .values("task__project_id", "source")
        .annotate(n=Count("id"))
    )
    for row in judgements:
        key = "judgements" if row["source"] == JudgementSource.ANNOTATOR else "simulated"
        counts[row["task__project_id"]][key] = row["n"]
    return counts


def judgements_per_day(project: Project, days: int = CHART_DAYS, now=None) -> list:
    """(day, human judgements that day) for the last `days` days, today included, in the site's time zone."""
    now = now or timezone.now()
    today = timezone.localdate(now)
    since = now - timedelta(days=days + 1)
    rows = (
        Judgement.objects.filter(task__project=project, source=JudgementSource.ANNOTATOR, created_at__gte=since)
        .annotate(day=TruncDate("created_at", tzinfo=timezone.get_current_timezone()))
        .values("day")
        .annotate(n=Count("id"))
    )
    return day_series({row["day"]: row["n"] for row in rows}, last_day=today, days=days)


# --------------------------------------------------------------------------- forms


class ProjectForm(forms.ModelForm):
    class Meta:
        model = Project
        fields = [
            "name", "description", "open_to_all", "guidelines", "overlap_k", "gold_rate", "lease_seconds", "max_responses", "revision_hours",
            "task_ordering", "overlap_k_max", "disagreement_target",
        ]
        widgets = {
            "guidelines": forms.Textarea(attrs={"rows": 12, "class": "markdown-source"}),
            "description": forms.TextInput(),
        }
        labels = {
            "overlap_k": "Judgements per task (overlap k)",
            "gold_rate": "Gold rate",
            "lease_seconds": "Lease length (seconds)",
            "max_responses": "Most replies per task",
            "revision_hours": "Revision window (hours)",
            "open_to_all": "Open to every annotator",
            "task_ordering": "Task order",
            "overlap_k_max": "Most judgements per task while annotators disagree (overlap k max)",
            "disagreement_target": "Agreement that settles a task (share of the most common verdict)",
        }
        help_texts = {"open_to_all": "Otherwise only the annotators assigned to it (People pages) see it."}


class SafeJSONField(forms.JSONField):
    """forms.JSONField through labeling.jsonsafety: deep nesting, NaN / Infinity and NUL are
    form errors, never a RecursionError (500) or a value the database refuses."""

    def to_python(self, value):
        if self.disabled or value in self.empty_values or not isinstance(value, str):
            return super().to_python(value)
        try:
            return jsonsafety.loads(value)
        except ValueError as error:
            raise forms.ValidationError(f"Enter valid JSON: {error}", code="invalid") from error

    def bound_data(self, data, initial):
        """What the form shows again: the parsed value, or the text as typed when it is not safe JSON."""
        if self.disabled or data is None or not isinstance(data, str):
            return super().bound_data(data, initial)
        try:
            return jsonsafety.loads(data)
        except ValueError:
            return forms.fields.InvalidJSONInput(data)


class TrainingSettingsForm(forms.ModelForm):
    """The project's training settings; the JSON overrides are checked as a run config is."""

    STAGES = ProjectTrainingSettings.STAGE_CONFIGS

    class Meta:
        model = ProjectTrainingSettings
        fields = [
            "auto_retrain", "retrain_min_new_judgements", "generate_prompts", "generate_replies_per_prompt",
            "reward_min_judgements", "reward_min_accuracy", "reward_accuracy_margin", "significance_level",
            "ppo_max_kl", "policy_eval_prompts", "policy_algorithm", "reward_config", "ppo_config", "dpo_config", "online_rl_config",
            "sampling_config",
        ]
        widgets = {
            name: forms.Textarea(attrs={"rows": 3, "class": "mono"})
            for name in ("reward_config", "ppo_config", "dpo_config", "online_rl_config", "sampling_config")
        }
        field_classes = {name: SafeJSONField for name in ("reward_config", "ppo_config", "dpo_config", "online_rl_config", "sampling_config")}
        labels = {
            "auto_retrain": "Retrain automatically",
            "retrain_min_new_judgements": "New judgements that start a cycle",
            "generate_prompts": "Prompts with fresh replies per cycle",
            "generate_replies_per_prompt": "Fresh replies per prompt",
            "reward_min_judgements": "Reward model: fewest judgements",
            "reward_min_accuracy": "Reward model: lowest accuracy",
            "reward_accuracy_margin": "Reward model: accuracy margin",
            "significance_level": "Significance level",
            "ppo_max_kl": "Policy: highest KL",
            "policy_eval_prompts": "Policy: held-out prompts",
            "reward_config": "Reward trainer overrides",
            "ppo_config": "PPO trainer overrides",
            "dpo_config": "DPO trainer overrides",
            "online_rl_config": "RLOO / GRPO trainer overrides",
            "policy_algorithm": "Policy algorithm of a cycle",
            "sampling_config": "Sampling overrides",
        }

    def _clean_stage(self, name: str):
        value = self.cleaned_data.get(name)
        if value in (None, ""):
            return {}
        if not isinstance(value, dict):
            raise forms.ValidationError("must be a JSON object, e.g. {\"epochs\": 2}")
        problems = config_problems({self.STAGES[name]: value})
        if problems:
            raise forms.ValidationError([f"{path}: {reason}" for path, reason in problems])
        return value

    def clean_reward_config(self):
        return self._clean_stage("reward_config")

    def clean_ppo_config(self):
        return self._clean_stage("ppo_config")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["policy_algorithm"].required = False  # a form without it keeps PPO, the default

    def clean_policy_algorithm(self):
        return self.cleaned_data.get("policy_algorithm") or ProjectTrainingSettings._meta.get_field("policy_algorithm").default

    def clean_dpo_config(self):
        return self._clean_stage("dpo_config")

    def clean_online_rl_config(self):
        return self._clean_stage("online_rl_config")

    def clean_sampling_config(self):
        return self._clean_stage("sampling_config")

    def clean(self):
        cleaned = super().clean()
        for name, low, high in (("reward_min_accuracy", 0, 1), ("reward_accuracy_margin", 0, 1), ("significance_level", 0, 1)):
            value = cleaned.get(name)
            if value is not None and not low <= value <= high:
                self.add_error(name, f"must be between {low} and {high}")
        if cleaned.get("ppo_max_kl") is not None and cleaned["ppo_max_kl"] <= 0:
            self.add_error("ppo_max_kl", "must be above 0")
        return cleaned


# --------------------------------------------------------------------------- views


@labeling_admin_required
def project_list(request):
    show_archived = request.GET.get("archived") == "1"
    projects = list(Project.objects.order_by("name") if show_archived else Project.objects.filter(is_active=True).order_by("name"))
    counts = project_counts([p.pk for p in projects])
    rows = [{"project": p, **counts[p.pk]} for p in projects]
    archived = Project.objects.filter(is_active=False).count()
    return render(request, "console/projects.html", {"rows": rows, "show_archived": show_archived, "archived": archived})


def _save_project(request, form: ProjectForm, training_form: TrainingSettingsForm, created: bool):
    with transaction.atomic():
        project = form.save()
        training_form.instance.project = project
        training_form.save()
    messages.success(request, f"Project “{project.name}” {'created' if created else 'saved'}.")
    return redirect("console:project", project_id=project.pk)


@labeling_admin_required
def project_create(request):
    form = ProjectForm(request.POST or None)
    training_form = TrainingSettingsForm(request.POST or None, prefix="training")
    if request.method == "POST" and form.is_valid() and training_form.is_valid():
        return _save_project(request, form, training_form, created=True)
    return render(request, "console/project_form.html", {"form": form, "training_form": training_form, "project": None})


@labeling_admin_required
def project_edit(request, project_id: int):
    project = get_object_or_404(Project, pk=project_id)
    settings_row, _ = ProjectTrainingSettings.objects.get_or_create(project=project)
    form = ProjectForm(request.POST or None, instance=project)
    training_form = TrainingSettingsForm(request.POST or None, instance=settings_row, prefix="training")
    if request.method == "POST" and form.is_valid() and training_form.is_valid():
        return _save_project(request, form, training_form, created=False)
    return render(request, "console/project_form.html", {"form": form, "training_form": training_form, "project": project})


@labeling_admin_required
def project_archive(request, project_id: int):
    """Archive (annotators no longer see it, nothing is deleted) or restore a project."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    project = get_object_or_404(Project, pk=project_id)
    project.is_active = request.POST.get("restore") == "1"
    project.save(update_fields=["is_active"])
    messages.success(request, f"Project “{project.name}” {'restored' if project.is_active else 'archived: annotators no longer see it'}.")
    return redirect("console:project", project_id=project.pk)


@labeling_admin_required
def project_detail(request, project_id: int):
    project = get_object_or_404(Project, pk=project_id)
    counts = project_counts([project.pk])[project.pk]
    per_day = judgements_per_day(project)
    chart = bar_chart(per_day, title=f"Judgements per day, last {CHART_DAYS} days", y_label="judgements")
    settings_row = ProjectTrainingSettings.objects.filter(project=project).first()
    # uncertainty needs an active reward model; without one tasks are served in order (training.scoring)
    uncertainty_waits = project.task_ordering == "uncertainty" and not ModelVersion.objects.filter(
        project=project, kind="reward", status="active"
    ).exists()
    return render(
        request,
        "console/project.html",
        {
            "project": project,
            "counts": counts,
            "chart": chart,
            "chart_total": sum(n for _, n in per_day),
            "chart_days": CHART_DAYS,
            "annotators": selectors.annotator_stats(project=project),
            "training": settings_row,
            "uncertainty_waits": uncertainty_waits,
        },
    )


@labeling_admin_required
def markdown_preview(request):
    """The guidelines as annotators will see them: the same sanitizing renderer."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    text = request.POST.get("text", "")[:MAX_PREVIEW_CHARS]
    return HttpResponse(render_markdown(text), content_type="text/html; charset=utf-8")
