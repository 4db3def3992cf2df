"""Annotator pages: home with progress, the comparison page, submit, skip, guidelines.

Thin callers of services.py / selectors.py; domain errors become a message on the page.
"""

import uuid

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from . import selectors, services
from .exceptions import InvalidJudgement, LabelingError, LeaseExpired, NotYourAssignment
from .models import FLAG_CHOICES, Assignment, Project, Response


@login_required
def home(request):
    return render(request, "labeling/home.html", {"progress": selectors.annotator_progress(annotator=request.user)})


@login_required
def guidelines(request, project_id: int):
    project = get_object_or_404(Project, pk=project_id)
    return render(request, "labeling/guidelines.html", {"project": project})


def _compare_context(assignment: Assignment) -> dict:
    task = assignment.task
    texts = dict(Response.objects.filter(pk__in=assignment.display_order).values_list("pk", "text"))
    replies = [{"letter": "ABCDEFGH"[i], "text": texts[rid]} for i, rid in enumerate(assignment.display_order)]
    return {
        "project": task.project,
        "assignment": assignment,
        "conversation": task.prompt.messages,
        "replies": replies,
        "is_ranking": len(replies) > 2,
        "rank_choices": list(range(1, len(replies) + 1)),
        "strengths": [(1, "slightly"), (2, "better"), (3, "significantly"), (4, "much better")],
        "flags": [(flag, flag.replace("_", " ")) for flag in FLAG_CHOICES],
        "idempotency_key": uuid.uuid4().hex,
    }


@login_required
def label(request, project_id: int):
    """Serve the annotator's current lease, or lease the next task."""
    project = get_object_or_404(Project, pk=project_id, is_active=True)
    assignment = services.assign_next_task(project=project, annotator=request.user)
    if assignment is None:
        return render(request, "labeling/queue_empty.html", {"project": project})
    return render(request, "labeling/compare.html", _compare_context(assignment))


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
    return services.JudgementInput(
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


@require_POST
@login_required
def submit(request, assignment_id: int):
    assignment = get_object_or_404(Assignment.objects.select_related("task__project", "task__prompt"), pk=assignment_id)
    project_id = assignment.task.project_id
    try:
        judgement = judgement_from_form(request.POST, len(assignment.display_order))
        services.submit_judgement(annotator=request.user, assignment_id=assignment.pk, judgement=judgement)
    except InvalidJudgement as error:
        if assignment.annotator_id != request.user.pk:
            return _forbidden(request, "This task belongs to another annotator.")
        context = _compare_context(assignment)
        context.update(error=error, posted=request.POST)
        return render(request, "labeling/compare.html", context, status=400)
    except LeaseExpired as error:
        messages.warning(request, f"{error.message}. Here is a fresh task.")
    except NotYourAssignment as error:
        return _forbidden(request, error.message)
    except LabelingError as error:
        messages.warning(request, error.message)
    else:
        messages.success(request, "Judgement saved.")
    return redirect("labeling:label", project_id=project_id)


@require_POST
@login_required
def skip(request, assignment_id: int):
    assignment = get_object_or_404(Assignment.objects.select_related("task"), pk=assignment_id)
    try:
        services.skip_task(annotator=request.user, assignment_id=assignment.pk, reason=request.POST.get("reason", ""))
    except NotYourAssignment as error:
        return _forbidden(request, error.message)
    except LabelingError as error:
        messages.warning(request, error.message)
    else:
        messages.info(request, "Task skipped.")
    return redirect("labeling:label", project_id=assignment.task.project_id)


def not_found(request, exception=None):
    """404: JSON under /api/ (what API clients parse), the plain page elsewhere."""
    from django.http import JsonResponse
    from django.views.defaults import page_not_found

    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Not found."}, status=404)
    return page_not_found(request, exception)
