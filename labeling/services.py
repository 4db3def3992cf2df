"""Write paths of the labeling app: lease the next task, submit or skip it, manage accounts.

Each public function is one use case in one transaction. Views, API views, admin actions
and management commands call these and nothing below them.

Concurrency (assign_next_task): on PostgreSQL candidate tasks are locked with
SELECT ... FOR UPDATE SKIP LOCKED, and the open slots of the locked task are counted
again by a fresh statement (a statement snapshot taken before another transaction
committed its lease could undercount). Submit locks the assignment and then the task,
so counters on one task change one transaction at a time. On SQLite every transaction
is BEGIN IMMEDIATE (see settings), which serializes the whole use case.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Exists, F, OuterRef, Value
from django.utils import timezone
from rest_framework.authtoken.models import Token

from .exceptions import (
    AlreadyClosed,
    AnnotatorPaused,
    AssignmentNotFound,
    IdempotencyConflict,
    InvalidInput,
    InvalidJudgement,
    LeaseExpired,
    NotYourAssignment,
    ProjectInactive,
)
from .importing.formats import response_set_hash, text_hash
from .models import (
    FLAG_CHOICES,
    AnnotatorPause,
    Assignment,
    AssignmentState,
    Choice,
    ComparisonTask,
    Judgement,
    JudgementRevision,
    JudgementSource,
    Project,
    Prompt,
    Response,
    TaskResponse,
    TaskStatus,
)
from .selectors import active_lease_count, current_lease, project_open_to, recent_judgements, unseen_tasks

log = logging.getLogger(__name__)

ANNOTATORS_GROUP = "annotators"
ADMINS_GROUP = "labeling_admins"
MAX_RATIONALE_CHARS = 5000
MAX_TIME_SPENT_MS = 24 * 3600 * 1000
LETTERS = "ABCDEFGH"
# How many locked-then-full candidates one request may pass over before giving up.
MAX_CANDIDATES_TRIED = 20


# --------------------------------------------------------------------------- next task


def _open_slots(task: ComparisonTask, k: int, now: datetime) -> int:
    """Fresh count for a task whose row this transaction has locked."""
    judged, extra = ComparisonTask.objects.filter(pk=task.pk).values_list("judgement_count", "extra_judgements").get()
    leased = Assignment.objects.filter(task=task, state=AssignmentState.LEASED, expires_at__gt=now).count()
    return k + extra - judged - leased


def _lease_regular_task(project: Project, annotator, now: datetime) -> ComparisonTask | None:
    k = project.overlap_k
    candidates = (
        unseen_tasks(project, annotator)
        .filter(is_gold=False)
        .alias(leases=active_lease_count(now))
        .alias(slots=Value(k) + F("extra_judgements") - F("judgement_count") - F("leases"))
        .filter(slots__gt=0)
        .order_by("-priority", "-order_score", "judgement_count", "id")
        .select_related("prompt")  # the page shows it: no second query
        .select_for_update(skip_locked=True, of=("self",))
    )
    passed_over: list[int] = []
    for _ in range(MAX_CANDIDATES_TRIED):
        task = candidates.exclude(pk__in=passed_over).first()
        if task is None:
            return None
        if _open_slots(task, k, now) > 0:
            return task
        log.info("task %s filled while we waited for its lock; trying the next", task.pk)
        passed_over.append(task.pk)
    return None


def _lease_gold_task(project: Project, annotator) -> ComparisonTask | None:
    # Gold tasks have no overlap cap: every annotator may see each gold task once.
    return unseen_tasks(project, annotator).filter(is_gold=True).select_related("prompt").order_by("judgement_count", "id").first()


def assign_next_task(
    *, project: Project, annotator, now: datetime | None = None, rng: random.Random | None = None
) -> Assignment | None:
    """Lease the next task for `annotator`, or return None when the queue is empty.

    Only from a project open to them (open to all, or assigned to them: NotYourAssignment
    otherwise) and only while their account is active (deactivation and a lease request
    meet on the user row's lock, so a deactivated annotator never gets a new lease).

    Steps: (1) serialize this annotator's requests by locking their user row; (2) resume
    an unexpired lease they already hold; (3) with probability gold_rate try an unseen gold
    task; (4) otherwise the highest-priority, least-judged open task this annotator has
    never been assigned whose judgements plus live leases are below k; (5) when none is left,
    an unseen gold task after all (None means that nothing is left for them); (6) record the
    lease with a shuffled display order.
    """
    now = now or timezone.now()
    rng = rng or random.Random()
    if not project_open_to(project, annotator):
        raise NotYourAssignment("this project is not open to you: a labeling admin can assign you to it")
    with transaction.atomic():
        open_pause = AnnotatorPause.objects.filter(project=project, annotator=OuterRef("pk"), lifted_at__isnull=True)
        row = (
            get_user_model().objects.select_for_update(of=("self",)).filter(pk=annotator.pk)
            .annotate(paused=Exists(open_pause)).values_list("is_active", "paused").first()
        )
        if not row or not row[0]:
            raise NotYourAssignment("this account is deactivated")

        if row[1]:  # paused on this project (pausing also ended their open leases here)
            pause = AnnotatorPause.objects.filter(project=project, annotator=annotator, lifted_at__isnull=True).first()
            raise AnnotatorPaused(f"you are paused on this project: {pause.reason}" if pause else "you are paused on this project")

        current = current_lease(project=project, annotator=annotator, now=now)
        if current is not None:
            return current

        task = None
        gold_first = project.gold_rate > 0 and rng.random() < project.gold_rate
        if gold_first:
            task = _lease_gold_task(project, annotator)
        if task is None:
            task = _lease_regular_task(project, annotator, now)
        if task is None and project.gold_rate > 0 and not gold_first:
            # no regular task left: the unseen gold ones still are, so that None ("204") means nothing is left
            task = _lease_gold_task(project, annotator)
        if task is None:
            return None

        order = list(task.task_responses.values_list("response_id", flat=True))
        rng.shuffle(order)
        assignment = Assignment.objects.create(
            task=task,
            annotator=annotator,
            display_order=order,
            leased_at=now,
            expires_at=now + timedelta(seconds=project.lease_seconds),
        )
        log.info("leased task %s to %s until %s", task.pk, annotator.pk, assignment.expires_at)
        return assignment


# --------------------------------------------------------------------------- submit


@dataclass(frozen=True)
class JudgementInput:
    """What an annotator sends. `ranks` (K > 2): one rank per reply in display order, 1 = best."""

    choice: str
    strength: int | None = None
    ranks: list[int] | None = None
    rationale: str = ""
    flags: tuple[str, ...] = ()
    time_spent_ms: int | None = None
    idempotency_key: str = ""
    # flags on single replies, by display letter: {"B": ("unsafe",)}; `flags` stays for the judgement as a whole
    reply_flags: dict[str, tuple[str, ...]] | None = None


def _ranking_groups(judgement: JudgementInput, display_order: list[int]) -> list[list[int]]:
    """Turn a display-level choice into groups of response ids, best first."""
    n = len(display_order)
    choice = judgement.choice
    if choice in (Choice.TIE, Choice.BOTH_BAD):
        return [sorted(display_order)]  # a group's order means nothing: one verdict, one stored value
    if choice in (Choice.A, Choice.B):
        winner = 0 if choice == Choice.A else 1
        return [[display_order[winner]], [display_order[1 - winner]]]
    ranks = judgement.ranks or []
    by_rank: dict[int, list[int]] = {}
    for position, rank in enumerate(ranks):
        by_rank.setdefault(rank, []).append(display_order[position])
    assert len(ranks) == n
    return [sorted(by_rank[rank]) for rank in sorted(by_rank)]


def validate_judgement(judgement: JudgementInput, n_responses: int) -> None:
    """Raise InvalidJudgement naming the field and the reason."""
    choice = judgement.choice
    if choice not in Choice.values:
        raise InvalidJudgement(f"must be one of {', '.join(Choice.values)}", field="choice")
    if n_responses == 2 and choice == Choice.RANKING:
        raise InvalidJudgement("this task compares two replies: choose A, B, tie or both_bad", field="choice")
    if n_responses > 2 and choice in (Choice.A, Choice.B):
        raise InvalidJudgement(
            f"this task compares {n_responses} replies: send choice 'ranking' with ranks", field="choice"
        )
    if choice == Choice.RANKING:
        ranks = judgement.ranks
        if not isinstance(ranks, list) or len(ranks) != n_responses:
            raise InvalidJudgement(f"must list one rank per reply ({n_responses} ranks)", field="ranks")
        if any(isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= n_responses for r in ranks):
            raise InvalidJudgement(f"each rank must be an integer from 1 to {n_responses}", field="ranks")
        if min(ranks) != 1:
            raise InvalidJudgement("the best reply must have rank 1", field="ranks")
    elif judgement.ranks:
        raise InvalidJudgement("ranks are only sent with choice 'ranking'", field="ranks")

    strength = judgement.strength
    if choice in (Choice.A, Choice.B) and strength is None:
        raise InvalidJudgement("required when one reply is better (1 slightly .. 4 much better)", field="strength")
    if choice in (Choice.TIE, Choice.BOTH_BAD) and strength is not None:
        raise InvalidJudgement(f"must be empty for '{choice}'", field="strength")
    if choice == Choice.RANKING and strength is not None and len(set(judgement.ranks)) == 1:
        raise InvalidJudgement("must be empty when every reply has the same rank (nothing is better)", field="strength")
    if strength is not None and (isinstance(strength, bool) or not isinstance(strength, int) or not 1 <= strength <= 4):
        raise InvalidJudgement("must be an integer from 1 (slightly better) to 4 (much better)", field="strength")

    if not isinstance(judgement.rationale, str) or len(judgement.rationale) > MAX_RATIONALE_CHARS:
        raise InvalidJudgement(f"must be text of at most {MAX_RATIONALE_CHARS} characters", field="rationale")
    flags = list(judgement.flags)
    unknown = [flag for flag in flags if flag not in FLAG_CHOICES]
    if unknown or len(set(flags)) != len(flags):
        raise InvalidJudgement(f"each flag once, from {', '.join(FLAG_CHOICES)}", field="flags")
    _validate_reply_flags(judgement.reply_flags, n_responses)
    spent = judgement.time_spent_ms
    if spent is not None and (isinstance(spent, bool) or not isinstance(spent, int) or not 0 <= spent <= MAX_TIME_SPENT_MS):
        raise InvalidJudgement("must be milliseconds between 0 and 24 hours", field="time_spent_ms")
    if len(judgement.idempotency_key) > 100:
        raise InvalidJudgement("must be at most 100 characters", field="idempotency_key")


def _validate_reply_flags(reply_flags, n_responses: int) -> None:
    if not reply_flags:
        return
    letters = LETTERS[:n_responses]
    if not isinstance(reply_flags, dict):
        raise InvalidJudgement(f"must map reply letters ({letters[0]}..{letters[-1]}) to lists of flags", field="reply_flags")
    for letter, flags in reply_flags.items():
        if not isinstance(letter, str) or len(letter) != 1 or letter not in letters:
            raise InvalidJudgement(f"keys are reply letters {letters[0]}..{letters[-1]}", field="reply_flags")
        if isinstance(flags, str) or not isinstance(flags, (list, tuple)):
            raise InvalidJudgement("each reply's flags must be a list", field="reply_flags")
        if any(flag not in FLAG_CHOICES for flag in flags) or len(set(flags)) != len(flags):
            raise InvalidJudgement(f"each flag once, from {', '.join(FLAG_CHOICES)}", field="reply_flags")


def _stored_reply_flags(judgement: JudgementInput, display_order: list[int]) -> dict[str, list[str]]:
    """Reply flags keyed by response id (as a string: JSON keys), flags in FLAG_CHOICES order."""
    stored = {}
    for letter, flags in (judgement.reply_flags or {}).items():
        if flags:
            stored[str(display_order[LETTERS.index(letter)])] = [flag for flag in FLAG_CHOICES if flag in flags]
    return dict(sorted(stored.items(), key=lambda item: display_order.index(int(item[0]))))


def _all_flags(judgement: JudgementInput, reply_flags: dict[str, list[str]]) -> list[str]:
    """The judgement-level flags as sent, then any flag only its replies carry."""
    flags = list(judgement.flags)
    for reply in reply_flags.values():
        flags.extend(flag for flag in reply if flag not in flags)
    return flags


def _replay_differences(earlier, judgement: JudgementInput, display_order: list[int]) -> list[str]:
    """The fields in which a replayed submission differs from the judgement stored under its key.

    `earlier` is the judgement as first submitted (a revision does not change what a replay
    of the original request must repeat)."""
    differing = []
    if judgement.choice != earlier.choice:
        differing.append("choice")
    else:
        try:
            validate_judgement(judgement, len(display_order))
            same_ranking = _ranking_groups(judgement, display_order) == earlier.ranking
        except InvalidJudgement:
            same_ranking = False
        if judgement.choice == Choice.RANKING and not same_ranking:
            differing.append("ranks")
    if judgement.strength != earlier.strength:
        differing.append("strength")
    if (storable_text(judgement.rationale.strip()) if isinstance(judgement.rationale, str) else judgement.rationale) != earlier.rationale:
        differing.append("rationale")
    try:
        reply_flags = _stored_reply_flags(judgement, display_order)
    except (ValueError, IndexError, TypeError, AttributeError):
        reply_flags = None
    if reply_flags is None or sorted(_all_flags(judgement, reply_flags)) != sorted(earlier.flags):
        differing.append("flags")
    if reply_flags is not None and reply_flags != (earlier.reply_flags or {}):
        differing.append("reply_flags")
    if judgement.time_spent_ms is not None and judgement.time_spent_ms != earlier.time_spent_ms:
        differing.append("time_spent_ms")
    return differing


def _gold_correct(task: ComparisonTask, groups: list[list[int]], choice: str) -> bool | None:
    if not task.is_gold:
        return None
    return choice not in (Choice.TIE, Choice.BOTH_BAD) and groups[0] == [task.gold_response_id]


def _lock_own_assignment(annotator, assignment_id: int) -> Assignment:
    """Lock the assignment row for this transaction; 404 / 403 unless it is the caller's."""
    assignment = Assignment.objects.select_for_update().filter(pk=assignment_id).first()
    if assignment is None:
        raise AssignmentNotFound(f"assignment {assignment_id} does not exist")
    if assignment.annotator_id != annotator.pk:
        raise NotYourAssignment("this assignment belongs to another annotator")
    return assignment


def submit_judgement(
    *, annotator, assignment_id: int, judgement: JudgementInput, now: datetime | None = None
) -> tuple[Judgement, bool]:
    """Store the judgement for a leased assignment. Returns (judgement, created).

    A repeat with the same idempotency key returns the first judgement and writes nothing.
    """
    now = now or timezone.now()
    key = judgement.idempotency_key
    with transaction.atomic():
        assignment = _lock_own_assignment(annotator, assignment_id)
        if key:
            earlier = Judgement.objects.filter(annotator=annotator, idempotency_key=key).first()
            if earlier is not None:
                if earlier.assignment_id != assignment.pk:
                    raise IdempotencyConflict(
                        "this idempotency key was already used for another assignment", field="idempotency_key"
                    )
                original = earlier.revisions.filter(number=0).first() if earlier.revision else None
                differing = _replay_differences(original or earlier, judgement, list(assignment.display_order))
                if differing:
                    raise IdempotencyConflict(
                        f"this idempotency key was already used with a different {', '.join(differing)}; "
                        "a replay must repeat the same judgement (use a new key for a new one)",
                        field="idempotency_key",
                    )
                return earlier, False
        if not assignment.task.project.is_active:
            raise ProjectInactive("this project is closed to new judgements")
        if assignment.state != AssignmentState.LEASED:
            raise AlreadyClosed(f"this assignment was already {assignment.state}")
        if assignment.expires_at <= now:
            raise LeaseExpired("the lease on this task expired; ask for the next task")

        task = ComparisonTask.objects.select_for_update(of=("self",)).select_related("project").get(pk=assignment.task_id)
        display_order = list(assignment.display_order)
        validate_judgement(judgement, len(display_order))
        groups = _ranking_groups(judgement, display_order)
        reply_flags = _stored_reply_flags(judgement, display_order)
        spent = judgement.time_spent_ms
        if spent is None:
            spent = min(int((now - assignment.leased_at).total_seconds() * 1000), MAX_TIME_SPENT_MS)
        if not task.is_gold and task.judgement_count >= task.project.overlap_k + task.extra_judgements:
            # Cannot happen while leases are honoured; refuse rather than exceed k.
            raise AlreadyClosed("this task already has all the judgements it needs")

        try:
            with transaction.atomic():
                stored = Judgement.objects.create(
                    task=task,
                    annotator=annotator,
                    assignment=assignment,
                    choice=judgement.choice,
                    ranking=groups,
                    strength=judgement.strength,
                    rationale=storable_text(judgement.rationale.strip()),  # a form can carry NUL; the API refuses it
                    flags=_all_flags(judgement, reply_flags),
                    reply_flags=reply_flags,
                    display_order=display_order,
                    time_spent_ms=spent,
                    idempotency_key=key,
                    source=JudgementSource.ANNOTATOR,
                    gold_correct=_gold_correct(task, groups, judgement.choice),
                )
        except IntegrityError as exc:
            raise AlreadyClosed("this task already has a judgement from you") from exc

        assignment.state = AssignmentState.SUBMITTED
        assignment.completed_at = now
        assignment.save(update_fields=["state", "completed_at"])
        task.judgement_count = F("judgement_count") + 1
        task.save(update_fields=["judgement_count"])
        task.refresh_from_db(fields=["judgement_count"])
        if not task.is_gold and task.judgement_count >= task.project.overlap_k + task.extra_judgements:
            _settle_or_escalate(task)
        return stored, True


def _settle_or_escalate(task: ComparisonTask) -> None:
    """A task (row locked) has all the judgements it wanted: complete it, or, in task order
    'disagreement' when its judgements disagree and overlap_k_max leaves room, ask for one
    more and serve it first (labeling.ordering)."""
    from .ordering import ESCALATED_SCORE, task_verdicts, wants_another

    project = task.project
    if project.task_ordering == "disagreement" and wants_another(project, task.judgement_count, task_verdicts([task.pk]).get(task.pk, [])):
        task.extra_judgements = task.judgement_count + 1 - project.overlap_k
        task.order_score = ESCALATED_SCORE
        task.save(update_fields=["extra_judgements", "order_score"])
        log.info("task %s: judgements disagree, asking for judgement %s", task.pk, task.judgement_count + 1)
        return
    task.status = TaskStatus.COMPLETE
    fields = ["status"]
    if task.extra_judgements:  # it was served first while it waited: no longer
        task.order_score = 0
        fields.append("order_score")
    task.save(update_fields=fields)


# --------------------------------------------------------------------------- revise


REVIEW_LIMIT = 20  # "My recent judgements": the last N an annotator may look at and revise


def recent_judgement_ids(annotator, limit: int | None = None) -> list[int]:
    """The annotator's own latest judgements (imported labels left out), newest first."""
    return list(recent_judgements(annotator=annotator, limit=limit or REVIEW_LIMIT).values_list("pk", flat=True))


def revision_refusal(stored: Judgement, *, annotator, now: datetime, recent_ids: list[int] | None = None) -> str | None:
    """Why this annotator may not revise this judgement now, or None when they may."""
    project = stored.task.project
    if stored.annotator_id != annotator.pk or stored.source != JudgementSource.ANNOTATOR:
        return "this judgement is not yours to revise"
    if not project.is_active:
        return "this project is closed to new judgements"
    if not project.revision_hours:
        return "this project does not allow revisions"
    if now - stored.created_at > timedelta(hours=project.revision_hours):
        return f"judgements of this project can be revised for {project.revision_hours} h after submitting"
    if stored.pk not in (recent_ids if recent_ids is not None else recent_judgement_ids(annotator)):
        return f"only your last {REVIEW_LIMIT} judgements can be revised"
    return None


def revise_judgement(*, annotator, judgement_id: int, judgement: JudgementInput, now: datetime | None = None) -> tuple[Judgement, bool]:
    """Replace an annotator's own recent judgement with a new version. Returns (judgement, changed).

    The version it replaces is kept as a JudgementRevision; the Judgement row (what exports,
    statistics and the task's counters read) holds the latest. The task, display order,
    time on task and idempotency key stay those of the first submission; a revision equal
    to the current version writes nothing.
    """
    now = now or timezone.now()
    with transaction.atomic():
        stored = (
            Judgement.objects.select_for_update(of=("self",)).select_related("task__project").filter(pk=judgement_id).first()
        )
        if stored is None:
            raise AssignmentNotFound(f"judgement {judgement_id} does not exist")
        if stored.annotator_id != annotator.pk:
            raise NotYourAssignment("this judgement belongs to another annotator")
        refusal = revision_refusal(stored, annotator=annotator, now=now)
        if refusal:
            raise AlreadyClosed(refusal)
        display_order = list(stored.display_order)
        validate_judgement(judgement, len(display_order))
        groups = _ranking_groups(judgement, display_order)
        reply_flags = _stored_reply_flags(judgement, display_order)
        new = {
            "choice": judgement.choice,
            "ranking": groups,
            "strength": judgement.strength,
            "rationale": storable_text(judgement.rationale.strip()),
            "flags": _all_flags(judgement, reply_flags),
            "reply_flags": reply_flags,
            "gold_correct": _gold_correct(stored.task, groups, judgement.choice),
        }
        if all(getattr(stored, field) == value for field, value in new.items()):
            return stored, False
        JudgementRevision.objects.create(
            judgement=stored,
            number=stored.revision,
            choice=stored.choice,
            ranking=stored.ranking,
            strength=stored.strength,
            rationale=stored.rationale,
            flags=stored.flags,
            reply_flags=stored.reply_flags,
            time_spent_ms=stored.time_spent_ms,
            gold_correct=stored.gold_correct,
            made_at=stored.revised_at or stored.created_at,
            replaced_at=now,
        )
        for field, value in new.items():
            setattr(stored, field, value)
        stored.revision += 1
        stored.revised_at = now
        stored.save(update_fields=[*new, "revision", "revised_at"])
        log.info("judgement %s revised by %s (version %s)", stored.pk, annotator.pk, stored.revision)
        return stored, True


def skip_task(*, annotator, assignment_id: int, reason: str = "", now: datetime | None = None) -> Assignment:
    """Give a task back. The annotator is never served it again; others may take it."""
    now = now or timezone.now()
    if len(reason) > 500:
        raise InvalidJudgement("must be at most 500 characters", field="reason")
    with transaction.atomic():
        assignment = _lock_own_assignment(annotator, assignment_id)
        if assignment.state == AssignmentState.SKIPPED:
            return assignment
        if assignment.state != AssignmentState.LEASED:
            raise AlreadyClosed(f"this assignment was already {assignment.state}")
        assignment.state = AssignmentState.SKIPPED
        assignment.completed_at = now
        assignment.skip_reason = storable_text(reason.strip())
        assignment.save(update_fields=["state", "completed_at", "skip_reason"])
        return assignment


# --------------------------------------------------------------------------- gold tasks


def set_gold(*, task_id: int, response_id: int | None) -> ComparisonTask:
    """Make a task a gold task whose expected answer is `response_id` (one of its replies), or
    (None) a regular task again. The task's judgements are re-marked against the new answer.

    A gold task is open to every annotator once (it has no overlap cap): making a task gold
    reopens it; a task that stops being gold is complete once it has its overlap k
    judgements. An archived task stays archived."""
    with transaction.atomic():
        task = ComparisonTask.objects.select_for_update(of=("self",)).select_related("project").filter(pk=task_id).first()
        if task is None:
            raise AssignmentNotFound(f"task {task_id} does not exist")
        if response_id is not None and not TaskResponse.objects.filter(task=task, response_id=response_id).exists():
            raise InvalidInput(f"reply {response_id} is not one of this task's replies", field="gold_response")
        task.is_gold, task.gold_response_id = response_id is not None, response_id
        if task.status != TaskStatus.ARCHIVED:
            done = not task.is_gold and task.judgement_count >= task.project.overlap_k + task.extra_judgements
            task.status = TaskStatus.COMPLETE if done else TaskStatus.OPEN
        task.save(update_fields=["is_gold", "gold_response", "status"])
        judgements = list(Judgement.objects.filter(task=task).only("pk", "choice", "ranking"))
        for judgement in judgements:
            judgement.gold_correct = _gold_correct(task, judgement.ranking, judgement.choice)
        Judgement.objects.bulk_update(judgements, ["gold_correct"], batch_size=500)  # a gold task: every annotator's
    log.info("task %s: %s", task.pk, f"gold, expected reply {response_id}" if response_id else "not gold")
    return task


# --------------------------------------------------------------------------- generated replies


@dataclass(frozen=True)
class GeneratedReply:
    text: str
    origin: str
    model_version_id: int | None = None
    generation_params: dict | None = None
    endpoint_id: int | None = None


def endpoint_reply(endpoint, text: str, **params) -> GeneratedReply:
    """A reply a model endpoint wrote (inference.ModelEndpoint), stripped: its source is the
    endpoint (its name the origin; a built-in one's policy version), its sampling settings and
    `params` recorded. The live page and the endpoint runs store replies through this."""
    recorded = {"endpoint": endpoint.name, "model": endpoint.model, "temperature": endpoint.temperature, "top_p": endpoint.top_p,
                "max_tokens": endpoint.max_tokens, **params}
    return GeneratedReply(
        text=text.strip(), origin=endpoint.name, model_version_id=endpoint.model_version_id, endpoint_id=endpoint.pk,
        generation_params={key: value for key, value in recorded.items() if value is not None},
    )


def storable_text(text: str) -> str:
    """Text any database stores: NUL and lone surrogates replaced by U+FFFD."""
    text = text.replace("\x00", "\ufffd")
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace") if any("\ud800" <= c <= "\udfff" for c in text) else text


def add_comparison_task(
    *, prompt: Prompt, replies: list[GeneratedReply], priority: int = 0, status: str = TaskStatus.OPEN, identity: str = ""
) -> ComparisonTask | None:
    """A new task comparing these replies to `prompt` (model-generated ones, typically), or
    None (see comparison_task_of)."""
    return comparison_task_of(prompt=prompt, replies=replies, priority=priority, status=status, identity=identity)[0]


def comparison_task_of(
    *, prompt: Prompt, replies: list[GeneratedReply], priority: int = 0, status: str = TaskStatus.OPEN, identity: str = ""
) -> tuple[ComparisonTask | None, list[Response]]:
    """A new task comparing these replies to `prompt`, and its replies in the order given.

    Replies are keyed by their text like imported ones (a reply the prompt already has is
    used as it is); the task is None when fewer than two distinct non-empty replies remain or
    the same set of replies is already a task. Model output is untrusted: NUL characters and
    lone surrogates (which a byte-level tokenizer can decode to, and PostgreSQL cannot store)
    become U+FFFD. `identity` makes the task distinct from any other with the same replies (a
    live turn's task is its own, even when two annotators got the same replies); `status`
    LIVE keeps it out of the queue. A handful of statements whatever the number of replies
    (the live page waits on them), and no lock on rows other tasks share.
    """
    distinct: dict[str, GeneratedReply] = {}
    for reply in replies:
        text = storable_text(reply.text)
        if text.strip() and text not in distinct:
            distinct[text] = reply
    if len(distinct) < 2:
        return None, []
    with transaction.atomic():
        responses = [
            Response(
                prompt=prompt, text=text, text_hash=text_hash(text), origin=reply.origin, model_version_id=reply.model_version_id,
                endpoint_id=reply.endpoint_id, generation_params=reply.generation_params or {},
            )
            for text, reply in list(distinct.items())[: prompt.project.max_responses]
        ]
        # new replies inserted, existing ones (same prompt and text) left as they are and not
        # locked (ON CONFLICT DO NOTHING: many annotators may get the same reply to a seed prompt)
        Response.objects.bulk_create(responses, ignore_conflicts=True)
        ids = dict(Response.objects.filter(prompt=prompt, text_hash__in=[r.text_hash for r in responses]).values_list("text_hash", "pk"))
        for response in responses:
            response.pk = ids[response.text_hash]
        set_hash = response_set_hash(prompt.content_hash, [r.text_hash for r in responses], identity)
        task, created = ComparisonTask.objects.get_or_create(
            project=prompt.project, response_set_hash=set_hash, defaults={"prompt": prompt, "priority": priority, "status": status}
        )
        if not created:
            return None, responses
        TaskResponse.objects.bulk_create(
            TaskResponse(task=task, response=response, position=i) for i, response in enumerate(responses)
        )
    return task, responses


# --------------------------------------------------------------------------- accounts


# What the labeling_admins group may do in the Django admin: everything of daily work, nothing
# that destroys evidence (no deletes that would cascade to judgements; judgements are
# read-only) or raises privileges (users are view-only: a change_user permission would let a
# staff member make anyone a superuser).
_WORK = ("view", "add", "change")
ADMIN_PERMISSIONS = {
    "labeling": {"project": _WORK, "prompt": _WORK, "response": _WORK, "comparisontask": _WORK, "taskresponse": _WORK,
                 "assignment": ("view", "change"), "judgement": ("view",), "judgementrevision": ("view",)},
    "training": {"trainingrun": ("view", "change"), "modelversion": ("view", "change"), "projecttrainingsettings": _WORK},
    "django_celery_beat": {"periodictask": _WORK + ("delete",), "intervalschedule": _WORK + ("delete",),
                           "crontabschedule": _WORK + ("delete",), "clockedschedule": _WORK + ("delete",), "solarschedule": ("view",)},
    "axes": {"accessattempt": ("view", "delete"), "accessfailurelog": ("view", "delete"), "accesslog": ("view",)},
    "auth": {"user": ("view",), "group": ("view",)},
}


def ensure_groups() -> tuple[Group, Group]:
    """The annotators and labeling_admins groups, the latter with ADMIN_PERMISSIONS (idempotent)."""
    from django.contrib.auth.models import Permission

    annotators, _ = Group.objects.get_or_create(name=ANNOTATORS_GROUP)
    admins, _ = Group.objects.get_or_create(name=ADMINS_GROUP)
    wanted = {(app, f"{action}_{model}") for app, models in ADMIN_PERMISSIONS.items() for model, actions in models.items() for action in actions}
    permissions = [p for p in Permission.objects.filter(codename__in={c for _, c in wanted}).select_related("content_type")
                   if (p.content_type.app_label, p.codename) in wanted]
    if set(admins.permissions.values_list("pk", flat=True)) != {p.pk for p in permissions}:
        admins.permissions.set(permissions)
    return annotators, admins


def create_annotator(*, username: str, password: str, is_admin: bool = False, email: str = "", only_new: bool = False):
    """Create (or update the password of) an annotator; admins also get staff access.

    The password must pass the AUTH_PASSWORD_VALIDATORS (ValidationError otherwise).
    `only_new` (the People page): an existing username, in any letter case, is a
    ValidationError on `username` instead of a password change, checked again inside the
    transaction so that two admins adding the same name at once cannot overwrite each other."""
    users = get_user_model().objects
    taken = ValidationError({"username": "a user with this username already exists"})
    if only_new and users.filter(username__iexact=username).exists():
        raise taken
    existing = users.filter(username=username).first()
    validate_password(password, existing or get_user_model()(username=username, email=email))
    annotators, admins = ensure_groups()
    with transaction.atomic():
        user, created = users.get_or_create(username=username, defaults={"email": email})
        if only_new and not created:
            raise taken
        user.set_password(password)
        if is_admin:
            user.is_staff = True
        user.full_clean()
        user.save()
        user.groups.add(annotators)
        if is_admin:
            user.groups.add(admins)
    Token.objects.get_or_create(user=user)
    return user


def is_labeling_admin(user) -> bool:
    if not user.is_authenticated:
        return False
    return user.is_superuser or user.is_staff or user.groups.filter(name=ADMINS_GROUP).exists()


def _refuse_change(user, by) -> None:
    refusal = account_change_refusal(user=user, by=by)
    if refusal:
        raise InvalidInput(refusal)


def account_change_refusal(*, user, by) -> str | None:
    """Why `by` may not change this account on the People pages, or None when they may.

    Only a superuser changes a superuser: a labeling admin who could reset a superuser's
    password or read their token could take that account over."""
    if user.is_superuser and not by.is_superuser:
        return "only a superuser can change a superuser's account"
    return None


def set_password(*, user, password: str, by) -> None:
    """Give a user a new password (AUTH_PASSWORD_VALIDATORS apply: ValidationError otherwise).

    Their other sessions end (Django ties a session to the password), and a sign-in lockout
    on their username is lifted so that they can sign in with it at once."""
    from axes.utils import reset as reset_sign_in_failures

    _refuse_change(user, by)
    validate_password(password, user)
    user.set_password(password)
    user.save(update_fields=["password"])
    reset_sign_in_failures(username=user.username)
    log.info("password of user %s reset by %s", user.pk, by.pk)


def api_token(user) -> Token:
    """The user's API token, created on first use."""
    return Token.objects.get_or_create(user=user)[0]


def rotate_token(*, user, by) -> Token:
    """Replace the user's API token; the old key stops working at once."""
    _refuse_change(user, by)
    with transaction.atomic():
        Token.objects.filter(user=user).delete()
        token = Token.objects.create(user=user)
    log.info("API token of user %s rotated by %s", user.pk, by.pk)
    return token


def set_active(*, user, active: bool, by, now: datetime | None = None) -> int:
    """Deactivate or reactivate an account; returns how many open leases deactivating ended.

    An inactive user can neither sign in nor use their token. Their unexpired leases expire
    now, so those tasks return to the pool at once instead of after lease_seconds. The user
    row is locked first: assign_next_task locks it too and then checks is_active."""
    _refuse_change(user, by)
    if not active and user.pk == by.pk:
        raise InvalidInput("you cannot deactivate your own account")
    now = now or timezone.now()
    with transaction.atomic():
        get_user_model().objects.select_for_update().filter(pk=user.pk).first()
        user.is_active = active
        user.save(update_fields=["is_active"])
        ended = 0
        if not active:
            ended = Assignment.objects.filter(
                annotator=user, state=AssignmentState.LEASED, expires_at__gt=now
            ).update(expires_at=now)
    log.info("user %s %s by %s (%s leases ended)", user.pk, "reactivated" if active else "deactivated", by.pk, ended)
    return ended


def set_role(*, user, is_admin: bool, by) -> None:
    """Make a user a labeling admin (staff + labeling_admins) or a plain annotator.

    Nobody demotes themself (the last admin could lock everyone out of these pages), and
    a superuser stays an admin whatever their flags say."""
    _refuse_change(user, by)
    if not is_admin and user.pk == by.pk:
        raise InvalidInput("you cannot remove your own admin role", field="role")
    if not is_admin and user.is_superuser:
        raise InvalidInput("a superuser is always an admin", field="role")
    annotators, admins = ensure_groups()
    with transaction.atomic():
        user.is_staff = is_admin
        user.save(update_fields=["is_staff"])
        user.groups.add(annotators)
        if is_admin:
            user.groups.add(admins)
        else:
            user.groups.remove(admins)
    log.info("user %s made %s by %s", user.pk, "an admin" if is_admin else "an annotator", by.pk)


def set_assigned_projects(*, user, projects, by) -> None:
    """Assign a user to exactly these projects. Leases they hold in a project they lose stay
    valid until they expire; no new ones are served (assign_next_task checks)."""
    _refuse_change(user, by)
    user.assigned_projects.set(projects)
    log.info("user %s assigned to projects %s by %s", user.pk, sorted(p.pk for p in projects), by.pk)


# --------------------------------------------------------------------------- quality: pauses


def pause_annotator(*, project: Project, annotator, reason: str, by=None) -> AnnotatorPause:
    """Pause `annotator` on `project` (no new tasks there); idempotent: an open pause is kept as it is.
    `by` None: paused automatically. Their open leases in the project end, so those tasks return to the pool."""
    if by is not None:
        _refuse_change(annotator, by)  # a labeling admin cannot pause a superuser
    reason = storable_text(reason).strip()[:2000] or "paused by a labeling admin"
    with transaction.atomic():
        get_user_model().objects.select_for_update().filter(pk=annotator.pk).first()  # meets assign_next_task's lock
        pause = AnnotatorPause.objects.filter(project=project, annotator=annotator, lifted_at__isnull=True).first()
        if pause is None:
            pause = AnnotatorPause.objects.create(project=project, annotator=annotator, reason=reason, paused_by=by)
            Assignment.objects.filter(
                task__project=project, annotator=annotator, state=AssignmentState.LEASED, expires_at__gt=timezone.now()
            ).update(expires_at=timezone.now())
            log.info("paused annotator %s on project %s: %s", annotator.pk, project.pk, reason)
    return pause


def lift_pause(*, project: Project, annotator, by=None) -> bool:
    """Lift the open pause, if any (the row stays as history). True when one was lifted."""
    return bool(
        AnnotatorPause.objects.filter(project=project, annotator=annotator, lifted_at__isnull=True).update(
            lifted_at=timezone.now(), lifted_by=by
        )
    )
