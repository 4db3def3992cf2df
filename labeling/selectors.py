"""Read paths of the labeling app: queues, progress, annotator statistics, judgement lists."""

from __future__ import annotations

from datetime import date, datetime, timedelta

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Avg, Count, Exists, F, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from .models import Assignment, AssignmentState, ComparisonTask, Judgement, JudgementSource, Project, TaskStatus


def active_lease_count(now: datetime) -> Coalesce:
    """Correlated subquery: unexpired leases of the outer task."""
    leases = (
        Assignment.objects.filter(task=OuterRef("pk"), state=AssignmentState.LEASED, expires_at__gt=now)
        .order_by()
        .values("task")
        .annotate(n=Count("pk"))
        .values("n")[:1]
    )
    return Coalesce(Subquery(leases), Value(0))


def project_open_to(project: Project, user) -> bool:
    """Whether `user` may see and label `project` (active or not): it is open to all, they are
    assigned to it, or they are a labeling admin."""
    from .services import is_labeling_admin  # services imports this module

    if project.open_to_all or is_labeling_admin(user):
        return True
    return project.annotators.filter(pk=user.pk).exists()


def projects_for(user) -> QuerySet[Project]:
    """The active projects `user` sees on the home page, in the API and may lease tasks from:
    those open to all plus those assigned to them; labeling admins see every active project."""
    from .services import is_labeling_admin  # services imports this module

    projects = Project.objects.filter(is_active=True)
    if is_labeling_admin(user):
        return projects
    assigned = Project.objects.filter(pk=OuterRef("pk"), annotators=user)
    return projects.filter(Q(open_to_all=True) | Exists(assigned))


def unseen_tasks(project: Project, annotator) -> QuerySet[ComparisonTask]:
    """Open tasks of the project never assigned to this annotator (skips included)."""
    seen = Assignment.objects.filter(task=OuterRef("pk"), annotator=annotator)
    return ComparisonTask.objects.filter(project=project, status=TaskStatus.OPEN).filter(~Exists(seen))


def current_lease(*, project: Project, annotator, now: datetime) -> Assignment | None:
    """The unexpired lease an annotator already holds in a project (a reload resumes it)."""
    return (
        Assignment.objects.filter(
            task__project=project, annotator=annotator, state=AssignmentState.LEASED, expires_at__gt=now
        )
        .select_related("task__prompt")
        .order_by("leased_at")
        .first()
    )


def tasks_left_for(*, project: Project, annotator, now: datetime | None = None, holding: bool | None = None) -> int:
    """Tasks this annotator could still be served, plus the one they hold right now.

    `holding`: whether the caller already knows they hold a lease (saves a query)."""
    now = now or timezone.now()
    # = open non-gold tasks never assigned to this annotator with judgement_count < k - live
    # leases, counted in cheap parts rather than one anti-join plus a lease subquery per
    # task: the open tasks with room (task_next_idx), less those assigned to this annotator
    # (walked from their own assignments), less those whose live leases fill the rest (the
    # live leases are few: one per annotator at work). The assignment queries reach a task
    # by its primary key only and test it in the aggregate's FILTER (or in Python): so the
    # planner keeps a cheap plan even before the tables were ANALYZEd after a bulk import.
    k = project.overlap_k
    room = Q(task__project=project, task__status=TaskStatus.OPEN, task__is_gold=False, task__judgement_count__lt=F("task__extra_judgements") + k)
    with_room = ComparisonTask.objects.filter(project=project, status=TaskStatus.OPEN, is_gold=False, judgement_count__lt=F("extra_judgements") + k).count()
    seen = Assignment.objects.filter(annotator=annotator).aggregate(n=Count("pk", filter=room))["n"]
    live = Assignment.objects.filter(state=AssignmentState.LEASED, expires_at__gt=now).values_list(
        "task_id", "annotator_id", "task__project_id", "task__status", "task__is_gold", "task__judgement_count", "task__extra_judgements"
    )
    leases: dict[int, list] = {}
    for task_id, holder, project_id, status, is_gold, judged, extra in live:
        if project_id == project.pk and status == TaskStatus.OPEN and not is_gold and judged < k + extra:
            entry = leases.setdefault(task_id, [judged - extra, 0, False])
            entry[1] += 1
            entry[2] = entry[2] or holder == annotator.pk
    full = [task_id for task_id, (judged, n, mine) in leases.items() if judged + n >= k and not mine]
    if full:  # those this annotator already saw (skipped, expired) are in `seen` already
        full_unseen = len(full) - Assignment.objects.filter(annotator=annotator, task_id__in=full).count()
    else:
        full_unseen = 0
    available = with_room - seen - full_unseen
    if holding is None:
        holding = current_lease(project=project, annotator=annotator, now=now) is not None
    return available + (1 if holding else 0)


def _start_of_day(now: datetime) -> datetime:
    return timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)


# The comparison page counts the tasks left up to this many, then says "1000+" (its count
# runs on every page); the home page counts them all. At 100 they seemed to disagree (#20:
# "131 left" on the home page, "100+" on the comparison page); up to 1000 they are the same.
PAGE_LEFT_CAP = 1000


def project_progress(
    *, project: Project, annotator, now: datetime | None = None, holding: bool | None = None, cap: int = PAGE_LEFT_CAP
) -> dict:
    """The comparison page's counter: judged today (in all projects: the annotator's day, and
    an index-only count on judgement_annotator_idx, where one project's count joins every
    judgement of the day to its task), tasks left for this annotator in this project.

    It is computed on every page, so it must cost less than the rest of the page: one
    round trip counts today's judgements and the unseen open tasks with room, the latter
    stopping at cap + 1 (a LIMIT in the subquery, so a project of 100,000 tasks costs what
    one of 200 does). More than `cap` shows as "cap+" (`tasks_left_capped`); at or below it
    the count is exact (tasks_left_for's, live leases included)."""
    now = now or timezone.now()
    today = Judgement.objects.filter(annotator=annotator, created_at__gte=_start_of_day(now)).values("annotator_id")
    # NOT IN, not NOT EXISTS: PostgreSQL hashes the annotator's task ids once whatever its
    # statistics say (a correlated NOT EXISTS was planned as a scan of them per task, 13 ms,
    # while the tables were not yet ANALYZEd after an import)
    seen = Assignment.objects.filter(annotator=annotator).values("task_id")
    unseen_with_room = (
        ComparisonTask.objects.filter(
            project=project, status=TaskStatus.OPEN, is_gold=False, judgement_count__lt=F("extra_judgements") + project.overlap_k
        )
        .exclude(pk__in=seen)
        .values("pk")[: cap + 1]
    )
    today_sql, today_params = today.query.sql_with_params()
    left_sql, left_params = unseen_with_room.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT (SELECT COUNT(*) FROM ({today_sql}) today), (SELECT COUNT(*) FROM ({left_sql}) unseen)",  # noqa: S608 - ORM-built SQL, parameters bound
            (*today_params, *left_params),
        )
        judged_today, unseen = cursor.fetchone()
    if unseen > cap:
        return {"judged_today": judged_today, "tasks_left": cap, "tasks_left_capped": True}
    left = tasks_left_for(project=project, annotator=annotator, now=now, holding=holding)
    return {"judged_today": judged_today, "tasks_left": left, "tasks_left_capped": False}


def recent_judgements(*, annotator, limit: int = 20) -> QuerySet[Judgement]:
    """An annotator's own latest judgements (imported labels left out), newest first."""
    return Judgement.objects.filter(annotator=annotator, source=JudgementSource.ANNOTATOR).order_by("-created_at", "-pk")[:limit]


def annotator_progress(*, annotator, now: datetime | None = None) -> list[dict]:
    """Per active project open to this annotator: judged today, judged in total, tasks left for them."""
    now = now or timezone.now()
    start_of_day = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
    counts = {
        row["task__project"]: row
        for row in Judgement.objects.filter(annotator=annotator)
        .values("task__project")
        .annotate(total=Count("pk"), today=Count("pk", filter=Q(created_at__gte=start_of_day)))
    }
    progress = []
    for project in projects_for(annotator).order_by("name"):
        row = counts.get(project.pk, {})
        progress.append(
            {
                "project": project,
                "judged_today": row.get("today", 0),
                "judged_total": row.get("total", 0),
                "tasks_left": tasks_left_for(project=project, annotator=annotator, now=now),
            }
        )
    return progress


def annotator_stats(*, project: Project | None = None, annotator=None) -> list[dict]:
    """Per annotator: judgements, skips, mean time on task, accuracy on gold tasks."""
    judgements = Judgement.objects.filter(source=JudgementSource.ANNOTATOR)
    skips = Assignment.objects.filter(state=AssignmentState.SKIPPED)
    if project is not None:
        judgements = judgements.filter(task__project=project)
        skips = skips.filter(task__project=project)
    if annotator is not None:
        judgements = judgements.filter(annotator=annotator)
        skips = skips.filter(annotator=annotator)
    skip_counts = dict(skips.values("annotator").annotate(n=Count("pk")).values_list("annotator", "n"))
    rows = (
        judgements.values("annotator", "annotator__username")
        .annotate(
            judgements=Count("pk"),
            mean_time_ms=Avg("time_spent_ms"),
            gold_seen=Count("pk", filter=Q(gold_correct__isnull=False)),
            gold_correct=Count("pk", filter=Q(gold_correct=True)),
        )
        .order_by("annotator__username")
    )
    stats = []
    for row in rows:
        stats.append(
            {
                "annotator_id": row["annotator"],
                "username": row["annotator__username"],
                "judgements": row["judgements"],
                "skips": skip_counts.pop(row["annotator"], 0),
                "mean_time_ms": round(row["mean_time_ms"]) if row["mean_time_ms"] is not None else None,
                "gold_seen": row["gold_seen"],
                "gold_correct": row["gold_correct"],
                "gold_accuracy": row["gold_correct"] / row["gold_seen"] if row["gold_seen"] else None,
            }
        )
    usernames = dict(
        get_user_model().objects.filter(pk__in=skip_counts).values_list("pk", "username")
    )
    for annotator_id, n in skip_counts.items():  # annotators who only skipped so far
        stats.append(
            {
                "annotator_id": annotator_id,
                "username": usernames.get(annotator_id, ""),
                "judgements": 0,
                "skips": n,
                "mean_time_ms": None,
                "gold_seen": 0,
                "gold_correct": 0,
                "gold_accuracy": None,
            }
        )
    return stats


def judgements_for(
    *,
    project: Project,
    since: datetime | None = None,
    until: datetime | None = None,
    annotator: str | None = None,
) -> QuerySet[Judgement]:
    """Judgements of a project, oldest first, filtered by time window and annotator name."""
    queryset = Judgement.objects.filter(task__project=project)
    if since is not None:
        queryset = queryset.filter(created_at__gte=since)
    if until is not None:
        queryset = queryset.filter(created_at__lt=until)
    if annotator:
        queryset = queryset.filter(annotator__username=annotator)
    return queryset.order_by("pk")


def day_window(since_date, until_date) -> tuple[datetime | None, datetime | None]:
    """Dates from a filter to a half-open [since, until) window; `until` is inclusive."""
    def start(day):
        return timezone.make_aware(datetime.combine(day, datetime.min.time())) if day else None

    if until_date is not None and until_date >= date.max - timedelta(days=1):  # the calendar's end: no upper bound
        until_date = None
    if since_date is not None and since_date <= date.min + timedelta(days=1):  # its start: no lower bound
        since_date = None
    until = start(until_date)
    return start(since_date), (until + timedelta(days=1)) if until else None
