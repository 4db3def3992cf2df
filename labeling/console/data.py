"""Data pages: import in the browser (with progress and a downloadable error report),
export as a download, the task browser with filters and search, the task page with
every judgement, and the judgement list."""

from __future__ import annotations

import json
import re
import shlex
from urllib.parse import urlencode

from django import forms
from django.contrib.auth import get_user_model
from django.core.paginator import Paginator
from django.db.models import Count, Exists, OuterRef, Q, TextField, Value
from django.db.models.functions import Cast, Concat
from django.conf import settings
from django.contrib import messages
from django.http import Http404, HttpResponse, HttpResponseNotAllowed, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone

from training.models import ModelVersion

from .. import selectors, services
from ..api.views import export_disposition
from ..exceptions import AssignmentNotFound, InvalidInput, LabelingError
from ..exporting import AGGREGATES, iter_export_lines
from ..exporting import FORMATS as EXPORT_FORMATS
from ..importing.formats import FORMATS as IMPORT_FORMATS
from ..importing import jobs
from ..importing.services import LABELLED_FORMATS
from ..models import (
    Assignment,
    AssignmentState,
    ComparisonTask,
    ImportJob,
    ImportStatus,
    Judgement,
    JudgementSource,
    Project,
    Prompt,
    Response,
    TaskResponse,
    TaskStatus,
)
from ..quality_filter import JudgementFilter
from ..verdicts import level_expression, verdict_key
from .common import labeling_admin_required

PAGE_SIZE = 50
IMPORT_FORMAT_HELP = {
    "jsonl": "JSON Lines: {\"prompt\" or \"messages\", \"responses\": [text or {\"text\", \"model\"}, ...], \"metadata\", \"gold\"}",
    "csv": "CSV with prompt, response_1 … response_K and optional model_1 … model_K columns",
    "hh": "Anthropic HH-RLHF: {\"chosen\", \"rejected\"} transcripts",
    "trl": "TRL preference rows: {\"prompt\", \"chosen\", \"rejected\"}",
    "replies": "one reply per line: {\"prompt\" or \"messages\", \"model\", \"response\"}; every pair of models per prompt becomes a task",
}
AGGREGATE_HELP = {"none": "one row per judgement", "majority": "one row per task and pair, by majority vote"}
EXPORT_FORMAT_HELP = {
    "trl": "TRL RewardTrainer / DPOTrainer rows: prompt, chosen, rejected, margin",
    "hh": "HH-RLHF transcripts: chosen, rejected",
    "raw": "every judgement as stored: annotator, choice, ranking, strength, rationale, flags, display order, times",
}


def _bad_request(request, form: forms.Form, what: str):
    """A 400 page naming each bad query parameter and why."""
    problems = [f"{name}: {' '.join(errors)}" for name, errors in form.errors.items()]
    return render(request, "console/bad_request.html", {"what": what, "problems": problems}, status=400)


# --------------------------------------------------------------------------- import


class ImportForm(forms.Form):
    file = forms.FileField()
    format = forms.ChoiceField(choices=[(f, f"{f}: {IMPORT_FORMAT_HELP[f]}") for f in IMPORT_FORMATS])
    with_labels = forms.BooleanField(
        required=False,
        label="Import the file's preferences as judgements",
        help_text=f"Formats that carry a preference ({', '.join(LABELLED_FORMATS)}); stored as an imported pseudo-annotator, never counted toward overlap.",
    )
    pairs_per_prompt = forms.IntegerField(
        required=False, min_value=1, max_value=1000, label="Pairs per prompt (format replies)",
        help_text="Make that many pairs of models per prompt, sampled; empty: every pair.",
    )
    skip_invalid = forms.BooleanField(
        required=False,
        label="Skip invalid lines",
        help_text="Import the valid lines and report the others. Off: one bad line rejects the whole file.",
    )

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("with_labels") and cleaned.get("format") not in LABELLED_FORMATS:
            self.add_error("with_labels", f"needs a format that carries a preference ({', '.join(LABELLED_FORMATS)})")
        return cleaned


IMPORT_JOBS_SHOWN = 10


@labeling_admin_required
def import_page(request, project_id: int):
    """GET: the form and the project's recent imports. POST: store the file and queue its
    import (a worker runs it, whatever its size); the answer is the job's page (a redirect,
    or its URL as JSON for the page's script, which shows the upload's progress first)."""
    project = get_object_or_404(Project, pk=project_id)
    scripted = "application/json" in request.headers.get("Accept", "")
    if request.method == "POST":
        form = ImportForm(request.POST, request.FILES)
        if form.is_valid():
            data = form.cleaned_data
            try:
                job = jobs.create_job(
                    project=project, upload=data["file"], fmt=data["format"], with_labels=data["with_labels"],
                    skip_invalid=data["skip_invalid"], pairs_per_prompt=data.get("pairs_per_prompt"), requested_by=request.user,
                )
            except InvalidInput as error:
                form.add_error(error.field if error.field in form.fields else None, error.message)
            else:
                url = reverse("console:import_job", args=[job.pk])
                if scripted:
                    return HttpResponse(json.dumps({"job": url}), status=202, content_type="application/json")
                return redirect(url)
        if scripted:
            problems = [{"field": name if name != "__all__" else "", "message": " ".join(errors)} for name, errors in form.errors.items()]
            return HttpResponse(json.dumps({"errors": problems}), status=400, content_type="application/json")
        return render(request, "console/import.html", _import_context(project, form), status=400)
    return render(request, "console/import.html", _import_context(project, ImportForm()))


def _import_context(project: Project, form) -> dict:
    return {
        "project": project, "form": form, "jobs": ImportJob.objects.filter(project=project).select_related("requested_by")[:IMPORT_JOBS_SHOWN],
        "max_upload": settings.IMPORT_MAX_UPLOAD_BYTES, "max_line": settings.IMPORT_MAX_LINE_BYTES,
    }


def _job_state(job: ImportJob) -> dict:
    """What the job page's script polls: the status in words, the progress and whether it ended."""
    progress = jobs.read_progress(job)
    return {
        "status": job.status, "status_text": job.get_status_display(), "finished": job.finished,
        "fraction": progress["fraction"], "bytes_done": progress["bytes_done"], "bytes_total": progress["bytes_total"],
        "eta_seconds": progress["eta_seconds"], "cancelling": progress["cancelling"], "error": job.error,
    }


@labeling_admin_required
def import_job(request, job_id: int):
    """One import: its progress and ETA while it runs (the script polls import_job_state;
    without a script the page refreshes itself), then its report."""
    job = get_object_or_404(ImportJob.objects.select_related("project", "requested_by"), pk=job_id)
    return render(request, "console/import_job.html", {"project": job.project, "job": job, "state": _job_state(job)})


@labeling_admin_required
def import_job_state(request, job_id: int):
    job = get_object_or_404(ImportJob, pk=job_id)
    response = HttpResponse(json.dumps(_job_state(job)), content_type="application/json")
    response["Cache-Control"] = "no-store"
    return response


@labeling_admin_required
def import_job_cancel(request, job_id: int):
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    job = get_object_or_404(ImportJob, pk=job_id)
    if job.finished:
        messages.info(request, f"The import had already ended ({job.get_status_display()}).")
    else:
        jobs.request_cancel(job)
        messages.info(request, "Cancel requested: nothing of this file will be imported.")
    return redirect("console:import_job", job.pk)


@labeling_admin_required
def import_report(request, job_id: int):
    """An import's report as a text file: the outcome, then one line per bad input line."""
    job = get_object_or_404(ImportJob.objects.select_related("project"), pk=job_id)
    if not job.finished:
        return HttpResponse("This import has not ended yet.\n", status=409, content_type="text/plain; charset=utf-8")
    report = job.report or {}
    errors = report.get("errors") or []
    total_errors = report.get("total_errors", 0)
    lines = [
        f"import {job.pk} of {job.file_name} into project {job.project.name} ({job.format}), "
        f"queued {job.created_at.isoformat(timespec='seconds')}, ended {job.finished_at.isoformat(timespec='seconds') if job.finished_at else ''}",
        ("imported: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in (report.get("counts") or {}).items()))
        if job.status == ImportStatus.SUCCEEDED else f"{job.get_status_display()}: {job.error}",
        f"invalid lines: {total_errors}" + (f" (the first {len(errors)} are listed)" if total_errors > len(errors) else ""),
        "",
    ]
    lines += [f"line {error['line']}: {error['reason']}" for error in errors]
    response = HttpResponse("\n".join(lines) + "\n", content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = export_disposition(job.project.name, f"import-{job.pk}-report").replace(".jsonl", ".txt")
    return response


# --------------------------------------------------------------------------- export


class ExportForm(forms.Form):
    format = forms.ChoiceField(choices=[(f, f"{f}: {EXPORT_FORMAT_HELP[f]}") for f in EXPORT_FORMATS], initial="trl")
    aggregate = forms.ChoiceField(
        choices=[(a, f"{a}: {AGGREGATE_HELP[a]}") for a in AGGREGATES],
        initial="none",
        required=False,
    )
    since = forms.DateField(required=False, label="From (first day included)", widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(required=False, label="To (last day included)", widget=forms.DateInput(attrs={"type": "date"}))
    annotator = forms.CharField(
        required=False, max_length=150, help_text="Only this annotator's judgements (username).",
        widget=forms.TextInput(attrs={"list": "annotator-names"}),
    )
    exclude_paused = forms.BooleanField(required=False, label="Leave out annotators paused on this project")
    exclude_flagged = forms.BooleanField(required=False, label="Leave out annotators the quality thresholds flag")
    exclude_failed_gold = forms.BooleanField(required=False, label="Leave out judgements that failed their gold task")
    min_task_agreement = forms.FloatField(
        required=False, min_value=0.0, max_value=1.0, label="Only tasks whose annotators agree at least (0 to 1)",
        help_text="The share of a task's human judgements that give its most common verdict; tasks judged once are kept.",
        widget=forms.NumberInput(attrs={"step": "0.05"}),
    )
    include_simulated = forms.BooleanField(required=False, label="Include the demo's simulated judgements (left out by default)")

    def clean(self):
        cleaned = super().clean()
        cleaned["aggregate"] = cleaned.get("aggregate") or "none"
        if cleaned.get("format") == "raw" and cleaned["aggregate"] != "none":
            self.add_error("aggregate", "raw lists every judgement; aggregate applies to trl and hh")
        if cleaned.get("since") and cleaned.get("until") and cleaned["since"] > cleaned["until"]:
            self.add_error("until", "must not be before the first day")
        return cleaned


def _quality(options: dict) -> JudgementFilter:
    return JudgementFilter(
        exclude_paused=options.get("exclude_paused", False), exclude_flagged=options.get("exclude_flagged", False),
        exclude_failed_gold=options.get("exclude_failed_gold", False), min_task_agreement=options.get("min_task_agreement"),
    )


@labeling_admin_required
def export_page(request, project_id: int):
    """The export form; ?download=1 with valid options streams the file."""
    project = get_object_or_404(Project, pk=project_id)
    bound = "format" in request.GET
    form = ExportForm(request.GET if bound else None)
    if bound and form.is_valid() and request.GET.get("download") == "1":
        options = form.cleaned_data
        since, until = selectors.day_window(options.get("since"), options.get("until"))
        lines = iter_export_lines(
            project=project, fmt=options["format"], aggregate=options["aggregate"], since=since, until=until,
            annotator=options.get("annotator") or None, quality=_quality(options), include_simulated=options.get("include_simulated", False),
        )
        response = StreamingHttpResponse(lines, content_type="application/x-ndjson")
        response["Content-Disposition"] = export_disposition(project.name, options["format"])
        return response
    cli = api = None
    if bound and form.is_valid():
        options = {k: v for k, v in form.cleaned_data.items() if v not in (None, "", False)}
        flags = " ".join(
            f"--{k.replace('_', '-')}" if v is True else f"--{k.replace('_', '-')} {shlex.quote(str(v))}"
            for k, v in options.items() if k != "format" and not (k == "aggregate" and v == "none")
        )
        cli = f"python manage.py export_preferences --project {shlex.quote(project.name)} --format {options['format']} {flags} --out export.jsonl"
        api = f"{reverse('api-export', args=[project.pk])}?{urlencode({k: str(v).lower() if v is True else v for k, v in options.items()})}"
    annotators = (
        get_user_model().objects.filter(judgements__task__project=project).distinct().order_by("username").values_list("username", flat=True)
    )
    status = 400 if bound and not form.is_valid() else 200
    return render(
        request, "console/export.html",
        {"project": project, "form": form, "cli": cli, "api": api, "annotators": list(annotators[:500]), "valid": bound and form.is_valid()},
        status=status,
    )


# --------------------------------------------------------------------------- tasks


YES_NO = [("", "any"), ("yes", "yes"), ("no", "no")]


class TaskFilterForm(forms.Form):
    q = forms.CharField(required=False, max_length=200, label="Search prompts and replies")
    status = forms.ChoiceField(required=False, choices=[("", "any")] + list(TaskStatus.choices))
    gold = forms.ChoiceField(required=False, choices=YES_NO)
    source = forms.CharField(required=False, max_length=200, help_text="file the prompt came from")
    model = forms.CharField(required=False, max_length=200, label="Reply source", help_text="a model that wrote one of the replies")
    version = forms.CharField(required=False, max_length=20, label="Model version")
    disagreement = forms.ChoiceField(required=False, choices=YES_NO, label="Annotators disagree")
    page = forms.IntegerField(required=False, min_value=1, max_value=10**6)

    def clean_version(self):
        value = self.cleaned_data.get("version") or ""
        if value in ("", "imported"):
            return value
        if not value.isdigit() or not 0 < int(value) <= 2**62:
            raise forms.ValidationError("must be a model version id or 'imported'")
        return value

    def clean_q(self):
        value = self.cleaned_data.get("q") or ""
        if "\x00" in value:
            raise forms.ValidationError("must not contain NUL characters")
        return value.strip()

    def clean_model(self):
        value = self.cleaned_data.get("model") or ""
        if "\x00" in value:
            raise forms.ValidationError("must not contain NUL characters")
        return value

    def clean_source(self):
        value = self.cleaned_data.get("source") or ""
        if "\x00" in value:
            raise forms.ValidationError("must not contain NUL characters")
        return value


def disagreement_task_ids(project: Project):
    """Tasks whose human judgements do not all give the same verdict (labeling/verdicts.py:
    the ranking in response ids, which is the same whatever order each annotator saw, and
    tie apart from both bad)."""
    verdict = Concat(level_expression(), Value("|"), Cast("ranking", TextField()), output_field=TextField())
    return (
        Judgement.objects.filter(task__project=project, source=JudgementSource.ANNOTATOR)
        .values("task")
        .annotate(verdicts=Count(verdict, distinct=True))
        .filter(verdicts__gt=1)
        .values("task")
    )


def filtered_tasks(project: Project, filters: dict):
    tasks = ComparisonTask.objects.filter(project=project)
    if filters.get("status"):
        tasks = tasks.filter(status=filters["status"])
    if filters.get("gold"):
        tasks = tasks.filter(is_gold=filters["gold"] == "yes")
    if filters.get("source"):
        tasks = tasks.filter(prompt__source=filters["source"])
    if filters.get("model"):  # a reply's recorded source (an imported model, an endpoint)
        tasks = tasks.filter(Exists(TaskResponse.objects.filter(task=OuterRef("pk"), response__origin=filters["model"])))
    version = filters.get("version")
    if version == "imported":
        tasks = tasks.exclude(Exists(TaskResponse.objects.filter(task=OuterRef("pk"), response__model_version__isnull=False)))
    elif version:
        tasks = tasks.filter(Exists(TaskResponse.objects.filter(task=OuterRef("pk"), response__model_version_id=int(version))))
    if filters.get("disagreement"):
        ids = disagreement_task_ids(project)
        tasks = tasks.filter(pk__in=ids) if filters["disagreement"] == "yes" else tasks.exclude(pk__in=ids)
    if filters.get("q"):
        q = filters["q"]
        tasks = tasks.filter(
            Q(prompt__messages__icontains=q)
            | Exists(TaskResponse.objects.filter(task=OuterRef("pk"), response__text__icontains=q))
        )
    return tasks


def _last_user_turn(messages) -> str:
    for message in reversed(messages or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return str(message.get("content", ""))
    return str(messages[-1].get("content", "")) if messages else ""


@labeling_admin_required
def task_list(request, project_id: int):
    project = get_object_or_404(Project, pk=project_id)
    form = TaskFilterForm(request.GET)
    if not form.is_valid():
        return _bad_request(request, form, "task filters")
    filters = form.cleaned_data
    tasks = filtered_tasks(project, filters).select_related("prompt").annotate(replies=Count("task_responses")).order_by("-pk")
    page = Paginator(tasks, PAGE_SIZE).get_page(filters.get("page") or 1)
    rows = [{"task": task, "prompt": _last_user_turn(task.prompt.messages)} for task in page]
    query = request.GET.copy()
    query.pop("page", None)
    sources = list(
        Prompt.objects.filter(project=project).exclude(source="").values_list("source", flat=True).distinct().order_by("source")[:200]
    )
    versions = list(ModelVersion.objects.filter(project=project, kind="policy").order_by("-number")[:200])
    models = list(
        Response.objects.filter(prompt__project=project, model_version__isnull=True).exclude(origin="")
        .values_list("origin", flat=True).distinct().order_by("origin")[:200]
    )
    return render(
        request,
        "console/tasks.html",
        {
            "project": project, "form": form, "page": page, "rows": rows, "query": query.urlencode(), "models": models,
            "sources": sources, "versions": versions,
            "filtered": any(filters.get(k) for k in ("q", "status", "gold", "source", "model", "version", "disagreement")),
        },
    )


def _position_names(task: ComparisonTask) -> dict[int, str]:
    return {tr.response_id: f"#{tr.position + 1}" for tr in task.task_responses.all()}


def describe_judgement(judgement: Judgement, names: dict[int, str]) -> dict:
    """A judgement in the task's own reply numbers (each annotator saw a shuffled order)."""
    order = list(judgement.display_order or [])
    shown = ", ".join(f"{'ABCDEFGH'[i]} = {names.get(rid, '?')}" for i, rid in enumerate(order))
    ranking = " > ".join(" = ".join(sorted(names.get(rid, "?") for rid in group)) for group in judgement.ranking or [])
    if judgement.choice == "tie":
        verdict = "tie"
    elif judgement.choice == "both_bad":
        verdict = "both bad" if len(order) == 2 else "all bad"
    else:
        verdict = ranking
    reply_flags = [
        f"{names.get(int(rid), '?') if str(rid).isdigit() else '?'}: {', '.join(f.replace('_', ' ') for f in flags)}"
        for rid, flags in (judgement.reply_flags or {}).items()
    ]
    return {"choice": judgement.choice, "verdict": verdict, "shown": shown, "reply_flags": reply_flags}


@labeling_admin_required
def task_gold(request, task_id: int):
    """POST gold_response: a reply id (a gold task with that expected answer) or empty (not gold)."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    raw = request.POST.get("gold_response", "")
    try:
        if raw and not re.fullmatch(r"[0-9]{1,18}", raw):
            raise InvalidInput("choose one of the task's replies", field="gold_response")
        services.set_gold(task_id=task_id, response_id=int(raw) if raw else None)
    except AssignmentNotFound as error:
        raise Http404(error.message) from error
    except LabelingError as error:
        messages.warning(request, f"Not changed: {error.message}.")
    else:
        messages.success(request, "This is now a gold task." if raw else "This is no longer a gold task.")
    return redirect("console:task", task_id=task_id)


@labeling_admin_required
def task_detail(request, task_id: int):
    task = get_object_or_404(ComparisonTask.objects.select_related("project", "prompt", "gold_response"), pk=task_id)
    task_responses = list(task.task_responses.select_related("response__model_version"))
    names = {tr.response_id: f"#{tr.position + 1}" for tr in task_responses}
    judgements = list(task.judgements.select_related("annotator").order_by("created_at"))
    rows = [{"judgement": j, **describe_judgement(j, names)} for j in judgements]
    skips = list(
        Assignment.objects.filter(task=task, state=AssignmentState.SKIPPED).select_related("annotator").order_by("completed_at")
    )
    leases = Assignment.objects.filter(task=task, state=AssignmentState.LEASED, expires_at__gt=timezone.now()).count()
    return render(
        request,
        "console/task.html",
        {
            "project": task.project, "task": task, "replies": task_responses, "rows": rows, "skips": skips, "leases": leases,
            "gold": names.get(task.gold_response_id) if task.is_gold else None,
            "disagree": len({verdict_key(j.choice, j.ranking) for j in judgements if j.source == JudgementSource.ANNOTATOR}) > 1,
        },
    )


# --------------------------------------------------------------------------- judgements


class JudgementFilterForm(forms.Form):
    annotator = forms.CharField(required=False, max_length=150)
    since = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))
    source = forms.ChoiceField(required=False, choices=[("", "all")] + list(JudgementSource.choices))
    page = forms.IntegerField(required=False, min_value=1, max_value=10**6)

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("since") and cleaned.get("until") and cleaned["since"] > cleaned["until"]:
            self.add_error("until", "must not be before the first day")
        return cleaned


@labeling_admin_required
def judgement_list(request, project_id: int):
    project = get_object_or_404(Project, pk=project_id)
    form = JudgementFilterForm(request.GET)
    if not form.is_valid():
        return _bad_request(request, form, "judgement filters")
    filters = form.cleaned_data
    since, until = selectors.day_window(filters.get("since"), filters.get("until"))
    judgements = selectors.judgements_for(project=project, since=since, until=until, annotator=filters.get("annotator") or None)
    if filters.get("source"):
        judgements = judgements.filter(source=filters["source"])
    judgements = judgements.select_related("annotator", "task__prompt").prefetch_related("task__task_responses").order_by("-created_at", "-pk")
    page = Paginator(judgements, PAGE_SIZE).get_page(filters.get("page") or 1)
    rows = []
    for judgement in page:
        names = _position_names(judgement.task)
        rows.append({"judgement": judgement, "prompt": _last_user_turn(judgement.task.prompt.messages), **describe_judgement(judgement, names)})
    query = request.GET.copy()
    query.pop("page", None)
    annotators = list(
        get_user_model().objects.filter(judgements__task__project=project).distinct().order_by("username").values_list("username", flat=True)[:500]
    )
    return render(
        request, "console/judgements.html",
        {"project": project, "form": form, "page": page, "rows": rows, "query": query.urlencode(), "annotators": annotators},
    )
