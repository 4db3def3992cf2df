"""Annotator pages: home with progress, the comparison page, submit, skip, guidelines,
"My recent judgements" with revisions.

Thin callers of services.py / selectors.py; domain errors become a message on the page.

Post/redirect/get: a submit always answers with a redirect, never with a page, so a
reload never re-posts and never lands on the POST-only submit URL. When the judgement
is invalid, what the annotator entered (every choice, rank, flag and the rationale)
and the error wait in the session, and the comparison page shows them again.
"""

import uuid

from django.contrib import admin, messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.templatetags.static import static
from django.urls import reverse
from django.utils import timezone

from . import selectors, services
from .exceptions import AnnotatorPaused, AssignmentNotFound, InvalidJudgement, LabelingError, LeaseExpired, NotYourAssignment
from .models import FLAG_CHOICES, AnnotatorPause, Assignment, ComparisonTask, Judgement, Project, ProjectLiveSettings, Response, TaskResponse

LETTERS = "ABCDEFGH"
STRENGTHS = [(1, "slightly"), (2, "better"), (3, "significantly"), (4, "much better")]
FLAG_KEYS = {"unsafe": "U", "factually_wrong": "W", "other": "O"}
DRAFT_KEY = "labeling.draft"
MAX_DRAFT_TEXT = 20000
NOT_OPEN = "This project is not open to you. A labeling admin can assign you to it; your projects are on the home page."


@login_required
def home(request):
    progress = selectors.annotator_progress(annotator=request.user)
    live_ids = set(ProjectLiveSettings.objects.filter(enabled=True, project__in=[row["project"].pk for row in progress]).values_list("project_id", flat=True))
    return render(request, "labeling/home.html", {"progress": progress, "live_ids": live_ids})


@login_required
def guidelines(request, project_id: int):
    project = get_object_or_404(Project, pk=project_id)
    if not selectors.project_open_to(project, request.user):
        return _forbidden(request, NOT_OPEN)
    # the key legend for the kinds of task the project has (pairwise when it has none yet)
    has_ranking = TaskResponse.objects.filter(task__project=project, position=2).exists()
    has_pairwise = not has_ranking or ComparisonTask.objects.filter(project=project).exclude(task_responses__position=2).exists()
    legends = []
    if has_pairwise:
        legends.append({"is_ranking": False, "n_replies": 2})
    if has_ranking:
        legends.append({"is_ranking": True, "n_replies": project.max_responses})
    return render(request, "labeling/guidelines.html", {"project": project, "legends": legends})


# --------------------------------------------------------------------------- form values


def _blank_values(n: int) -> dict:
    return {"choice": "", "strength": "", "ranks": [""] * n, "flags": [], "reply_flags": [[] for _ in range(n)], "rationale": "", "time_spent_ms": ""}


def form_values(post, n: int) -> dict:
    """What the annotator entered, as plain JSON (kept in the session across a validation error)."""
    return {
        "choice": post.get("choice", "")[:20],
        "strength": post.get("strength", "")[:10],
        "ranks": [post.get(f"rank_{i}", "")[:10] for i in range(n)],
        "flags": [flag for flag in post.getlist("flags") if flag in FLAG_CHOICES],
        "reply_flags": [[flag for flag in post.getlist(f"reply_flags_{i}") if flag in FLAG_CHOICES] for i in range(n)],
        "rationale": post.get("rationale", "")[:MAX_DRAFT_TEXT],
        "time_spent_ms": post.get("time_spent_ms", "")[:12],
    }


def judgement_values(judgement: Judgement) -> dict:
    """The form values that reproduce a stored judgement (its latest version)."""
    order = list(judgement.display_order)
    values = _blank_values(len(order))
    values["choice"] = judgement.choice
    values["strength"] = str(judgement.strength or "")
    values["rationale"] = judgement.rationale
    if judgement.choice == "ranking":
        rank_of = {rid: str(i + 1) for i, group in enumerate(judgement.ranking) for rid in group}
        values["ranks"] = [rank_of.get(rid, "") for rid in order]
    reply_flags = judgement.reply_flags or {}
    values["reply_flags"] = [list(reply_flags.get(str(rid), [])) for rid in order]
    on_replies = {flag for flags in reply_flags.values() for flag in flags}
    values["flags"] = [flag for flag in judgement.flags if flag not in on_replies]
    return values


def _keep_draft(request, target: str, post, n: int, error: LabelingError) -> None:
    request.session[DRAFT_KEY] = {
        "target": target,
        "values": form_values(post, n),
        "error": {"field": error.field or "", "message": error.message},
    }


def _draft(request, target: str) -> dict | None:
    draft = request.session.get(DRAFT_KEY)
    return draft if isinstance(draft, dict) and draft.get("target") == target else None


def _drop_draft(request) -> None:
    request.session.pop(DRAFT_KEY, None)


def _compare_context(*, project: Project, task: ComparisonTask, display_order: list[int], values: dict | None = None) -> dict:
    n = len(display_order)
    values = values or _blank_values(n)
    texts = dict(Response.objects.filter(pk__in=display_order).values_list("pk", "text"))
    replies = [
        {
            "letter": LETTERS[i],
            "position": i,
            "text": texts[rid],
            "rank": values["ranks"][i] if i < len(values["ranks"]) else "",
            "flags": values["reply_flags"][i] if i < len(values["reply_flags"]) else [],
        }
        for i, rid in enumerate(display_order)
    ]
    return {
        "project": project,
        "conversation": task.prompt.messages,
        "replies": replies,
        "is_ranking": n > 2,
        "rank_choices": [str(r) for r in range(1, n + 1)],
        "strengths": [(str(value), name) for value, name in STRENGTHS],
        "flags": [(flag, flag.replace("_", " "), FLAG_KEYS[flag]) for flag in FLAG_CHOICES],
        "values": values,
        "idempotency_key": uuid.uuid4().hex,
        "highlighter": static("labeling/vendor/highlight/highlight.min.js"),
    }


@login_required
def label(request, project_id: int):
    """Serve the annotator's current lease, or lease the next task (of a project open to them:
    the app's 403 page otherwise, with the way to get access)."""
    project = get_object_or_404(Project, pk=project_id, is_active=True)
    try:
        assignment = services.assign_next_task(project=project, annotator=request.user)
    except NotYourAssignment:  # the project is not open to them (assign_next_task checks)
        return _forbidden(request, NOT_OPEN)
    except AnnotatorPaused:
        pause = AnnotatorPause.objects.filter(project=project, annotator=request.user, lifted_at__isnull=True).first()
        return render(request, "labeling/paused.html", {"project": project, "pause": pause}, status=403)
    if assignment is None:
        return render(request, "labeling/queue_empty.html", {"project": project})
    draft = _draft(request, f"assignment:{assignment.pk}")
    context = _compare_context(
        project=project, task=assignment.task, display_order=assignment.display_order, values=draft and draft["values"]
    )
    context.update(
        assignment=assignment,
        error=draft and draft["error"],
        progress=selectors.project_progress(project=project, annotator=request.user, holding=True, cap=selectors.PAGE_LEFT_CAP),
        form_action=reverse("labeling:submit", args=[assignment.pk]),
        skip_action=reverse("labeling:skip", args=[assignment.pk]),
    )
    return render(request, "labeling/compare.html", context)


def _int_or_none(value: str | None, field: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise InvalidJudgement("must be a whole number", field=field) from exc


def judgement_from_form(post, n_replies: int) -> services.JudgementInput:
    choice = post.get("choice", "")
    ranks = None
    if choice == "ranking":
        ranks = [_int_or_none(post.get(f"rank_{i}"), f"rank of reply {'ABCDEFGH'[i]}") for i in range(n_replies)]
        if any(rank is None for rank in ranks):
            raise InvalidJudgement("give every reply a rank", field="ranks")
    reply_flags = {LETTERS[i]: tuple(post.getlist(f"reply_flags_{i}")) for i in range(n_replies) if post.getlist(f"reply_flags_{i}")}
    return services.JudgementInput(
        reply_flags=reply_flags or None,
        choice=choice,
        strength=_int_or_none(post.get("strength"), "strength"),
        ranks=ranks,
        rationale=post.get("rationale", ""),
        flags=tuple(post.getlist("flags")),
        time_spent_ms=_int_or_none(post.get("time_spent_ms"), "time_spent_ms"),
        idempotency_key=post.get("idempotency_key", "")[:100],
    )


def _forbidden(request, message: str):
    return render(request, "labeling/error.html", {"message": message}, status=403)


@login_required
def submit(request, assignment_id: int):
    assignment = get_object_or_404(Assignment.objects.select_related("task"), pk=assignment_id)
    project_id = assignment.task.project_id
    if request.method != "POST":  # a bookmarked or reloaded submit URL: back to the task
        return redirect("labeling:label", project_id=project_id)
    try:
        judgement = judgement_from_form(request.POST, len(assignment.display_order))
        services.submit_judgement(annotator=request.user, assignment_id=assignment.pk, judgement=judgement)
    except InvalidJudgement as error:
        if assignment.annotator_id != request.user.pk:
            return _forbidden(request, "This task belongs to another annotator.")
        _keep_draft(request, f"assignment:{assignment.pk}", request.POST, len(assignment.display_order), error)
    except LeaseExpired as error:
        messages.warning(request, f"{error.message}. Here is a fresh task.")
    except NotYourAssignment as error:
        return _forbidden(request, error.message)
    except LabelingError as error:
        messages.warning(request, error.message)
    else:
        _drop_draft(request)
        messages.success(request, "Judgement saved.")
    return redirect("labeling:label", project_id=project_id)


@login_required
def skip(request, assignment_id: int):
    assignment = get_object_or_404(Assignment.objects.select_related("task"), pk=assignment_id)
    if request.method != "POST":
        return redirect("labeling:label", project_id=assignment.task.project_id)
    _drop_draft(request)
    try:
        services.skip_task(annotator=request.user, assignment_id=assignment.pk, reason=request.POST.get("reason", ""))
    except NotYourAssignment as error:
        return _forbidden(request, error.message)
    except LabelingError as error:
        messages.warning(request, error.message)
    else:
        messages.info(request, "Task skipped.")
    return redirect("labeling:label", project_id=assignment.task.project_id)


# --------------------------------------------------------------------------- my recent judgements


def _choice_summary(judgement: Judgement) -> str:
    order = list(judgement.display_order)
    if judgement.choice in ("A", "B"):
        strength = dict(STRENGTHS).get(judgement.strength, "")
        return f"{judgement.choice} is better" + (f" ({strength})" if strength else "")
    if judgement.choice == "tie":
        return "Tie" if len(order) == 2 else "All equally good"
    if judgement.choice == "both_bad":
        return "Both bad" if len(order) == 2 else "All bad"
    letter = {rid: LETTERS[i] for i, rid in enumerate(order)}
    ranking = " > ".join(" = ".join(sorted(letter[rid] for rid in group)) for group in judgement.ranking)
    strength = dict(STRENGTHS).get(judgement.strength, "")
    return f"Ranking {ranking}" + (f" ({strength})" if strength else "")


def _flag_summary(judgement: Judgement) -> list[str]:
    letter = {str(rid): LETTERS[i] for i, rid in enumerate(judgement.display_order)}
    on_replies = [
        f"{letter.get(rid, '?')}: {', '.join(flag.replace('_', ' ') for flag in flags)}"
        for rid, flags in (judgement.reply_flags or {}).items()
    ]
    carried = {flag for flags in (judgement.reply_flags or {}).values() for flag in flags}
    whole = [flag.replace("_", " ") for flag in judgement.flags if flag not in carried]
    return on_replies + ([f"whole comparison: {', '.join(whole)}"] if whole else [])


@login_required
def my_judgements(request):
    """The annotator's last N judgements, each with a link to look at it or revise it."""
    now = timezone.now()
    recent = list(
        selectors.recent_judgements(annotator=request.user, limit=services.REVIEW_LIMIT).select_related(
            "task__project", "task__prompt"
        )
    )
    ids = [judgement.pk for judgement in recent]
    rows = []
    for judgement in recent:
        prompt = judgement.task.prompt.messages
        rows.append(
            {
                "judgement": judgement,
                "project": judgement.task.project,
                "prompt": prompt[-1]["content"] if prompt else "",
                "summary": _choice_summary(judgement),
                "flags": _flag_summary(judgement),
                "refusal": services.revision_refusal(judgement, annotator=request.user, now=now, recent_ids=ids),
            }
        )
    return render(request, "labeling/my_judgements.html", {"rows": rows, "limit": services.REVIEW_LIMIT})


@login_required
def revise(request, judgement_id: int):
    """Look at one of your judgements as you made it, and revise it while the project allows."""
    judgement = get_object_or_404(
        Judgement.objects.select_related("task__project", "task__prompt"), pk=judgement_id, annotator=request.user
    )
    n = len(judgement.display_order)
    if request.method == "POST":
        try:
            _, changed = services.revise_judgement(
                annotator=request.user, judgement_id=judgement.pk, judgement=judgement_from_form(request.POST, n)
            )
        except InvalidJudgement as error:
            _keep_draft(request, f"judgement:{judgement.pk}", request.POST, n, error)
            return redirect("labeling:revise", judgement_id=judgement.pk)
        except (AssignmentNotFound, NotYourAssignment) as error:
            raise Http404(error.message) from error
        except LabelingError as error:
            messages.warning(request, f"Not revised: {error.message}.")
        else:
            _drop_draft(request)
            messages.success(request, "Judgement revised." if changed else "Nothing changed; the judgement stays as it was.")
        return redirect("labeling:my_judgements")

    draft = _draft(request, f"judgement:{judgement.pk}")
    refusal = services.revision_refusal(judgement, annotator=request.user, now=timezone.now())
    context = _compare_context(
        project=judgement.task.project,
        task=judgement.task,
        display_order=judgement.display_order,
        values=draft["values"] if draft else judgement_values(judgement),
    )
    context.update(
        judgement=judgement,
        error=draft and draft["error"],
        readonly=refusal is not None,
        refusal=refusal,
        form_action=reverse("labeling:revise", args=[judgement.pk]),
    )
    return render(request, "labeling/compare.html", context)


# --------------------------------------------------------------------------- odds and ends


def admin_login(request, *args, **kwargs):
    """The admin's sign-in page (every admin and staff page sends visitors without staff
    access here). An annotator who is signed in but not staff gets the app's 403 page
    instead of a second login form; everybody else gets the admin's own."""
    if request.user.is_authenticated and not request.user.is_staff:
        return _forbidden(request, "The admin and training pages are for labeling admins. Your projects are on the home page.")
    return admin.site.login(request, *args, **kwargs)


def favicon(request):
    return redirect(static("labeling/favicon.svg"))


def not_found(request, exception=None):
    """404: JSON under /api/ (what API clients parse), the plain page elsewhere."""
    from django.http import JsonResponse
    from django.views.defaults import page_not_found

    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Not found."}, status=404)
    return page_not_found(request, exception)
