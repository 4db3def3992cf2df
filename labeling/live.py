"""Live chat-and-compare (HH-RLHF and Chatbot Arena style): the write paths.

An annotator writes a message (or takes a seed prompt of the project); two model endpoints,
drawn by the project's rule, answer; both replies stream side by side through the app
(labeling/live_views.py: server-sent events; the browser never talks to an endpoint); the
annotator judges with the usual controls; the conversation continues from the chosen reply,
up to the project's number of turns.

Every judged turn is a normal comparison task (status "live": never served to anybody else)
with a normal judgement: the conversation so far as its prompt, the two replies with their
sources (Response.endpoint, and the policy version for the app's own policies). Export,
quality statistics, the leaderboard and training read it like any other.

Steps of a turn, each one transaction:
1. `say`: check the project's limits (message length, turns, messages per hour), start a
   conversation (drawing its pair of sources) or continue the open one from the reply the
   last judgement chose; the turn is "pending".
2. `claim_stream`: pending or failed -> streaming (a stream whose process died is taken
   over after STALE_STREAM_SECONDS); decides which source is shown on the left.
3. `finish_turn` once both replies arrived whole: the prompt, the replies, the task and the
   annotator's lease on it, in one transaction; the turn is "ready". Or `fail_turn`: the
   turn keeps no reply and can be streamed again; earlier turns are untouched.
4. `judge`: services.submit_judgement on the lease; the turn is "judged".
"""

from __future__ import annotations

import logging
import random
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Count, Subquery
from django.utils import timezone

from inference.models import ModelEndpoint

from . import services
from .exceptions import AlreadyClosed, AnnotatorPaused, AssignmentNotFound, InvalidInput, LabelingError, NotYourAssignment, ProjectInactive
from .importing.formats import content_hash
from .models import (
    AnnotatorPause,
    Assignment,
    AssignmentState,
    Choice,
    Judgement,
    LiveConversation,
    LivePairing,
    LiveTurn,
    LiveTurnStatus,
    Project,
    ProjectLiveSettings,
    Prompt,
    PromptFormat,
    TaskStatus,
)
from .selectors import project_open_to

log = logging.getLogger(__name__)

STALE_STREAM_SECONDS = 15 * 60  # a "streaming" turn older than this lost its stream (the process died)
MAX_ATTEMPTS = 20


class LiveUnavailable(LabelingError):
    status_code = 409
    code = "live_unavailable"


class LiveRateLimited(LabelingError):
    status_code = 429
    code = "rate_limited"


def live_settings_for(project: Project) -> ProjectLiveSettings:
    return ProjectLiveSettings.objects.get_or_create(project=project)[0]


def usable_endpoints(settings_row: ProjectLiveSettings) -> list[ModelEndpoint]:
    return list(settings_row.endpoints.filter(is_active=True).order_by("pk"))


def check_access(project: Project, annotator) -> ProjectLiveSettings:
    """The project's live settings, when this annotator may use its live page now."""
    if not project_open_to(project, annotator):
        raise NotYourAssignment("this project is not open to you: a labeling admin can assign you to it")
    if not project.is_active:
        raise ProjectInactive("this project is closed to new judgements")
    pause = AnnotatorPause.objects.filter(project=project, annotator=annotator, lifted_at__isnull=True).values("reason")[:1]
    rules = ProjectLiveSettings.objects.filter(project=project).annotate(pause_reason=Subquery(pause)).first()  # one query for both
    if rules is None or not rules.enabled:
        raise LiveUnavailable("live comparison is not switched on for this project")
    if rules.pause_reason is not None:
        raise AnnotatorPaused(f"you are paused on this project: {rules.pause_reason}")
    return rules


def open_conversation(project: Project, annotator) -> LiveConversation | None:
    return LiveConversation.objects.filter(project=project, annotator=annotator, closed_at__isnull=True).order_by("-pk").first()


def draw_pair(rules: ProjectLiveSettings, rng: random.Random | None = None) -> tuple[ModelEndpoint, ModelEndpoint]:
    """Two sources by the project's rule: `random`, any two distinct endpoints; `balanced`,
    the pair with the fewest live conversations so far (ties at random). One endpoint
    alone answers twice (two samples of one model, as HH-RLHF's first data was collected)."""
    rng = rng or random.Random()
    endpoints = usable_endpoints(rules)
    if not endpoints:
        raise LiveUnavailable("no active model endpoint is chosen for this project's live page: a labeling admin can choose some")
    if len(endpoints) == 1:
        return endpoints[0], endpoints[0]
    pairs = [(a, b) for i, a in enumerate(endpoints) for b in endpoints[i + 1:]]
    if rules.pairing == LivePairing.BALANCED:
        used = (
            LiveConversation.objects.filter(project=rules.project)
            .values("source_a", "source_b").annotate(n=Count("pk")).values_list("source_a", "source_b", "n")
        )
        count = {}
        for a, b, n in used:
            key = (min(a or 0, b or 0), max(a or 0, b or 0))
            count[key] = count.get(key, 0) + n
        fewest = min(count.get((a.pk, b.pk), 0) for a, b in pairs)
        pairs = [(a, b) for a, b in pairs if count.get((a.pk, b.pk), 0) == fewest]
    a, b = rng.choice(pairs)
    return (a, b) if rng.random() < 0.5 else (b, a)


def chosen_reply(turn: LiveTurn) -> str | None:
    """The reply the conversation continues from: the judged winner; for a tie the reply
    shown first; None when both were bad (the conversation cannot go on from either)."""
    judgement = Judgement.objects.filter(assignment_id=turn.assignment_id).first() if turn.assignment_id else None
    if judgement is None or judgement.choice == Choice.BOTH_BAD:
        return None
    if judgement.choice == Choice.TIE:
        winner = judgement.display_order[0]
    else:
        winner = judgement.ranking[0][0]
    return turn.task.responses.filter(pk=winner).values_list("text", flat=True).first()


def _recent_messages(project: Project, annotator, now) -> int:
    """Messages and retries this annotator sent in the last hour (what turns_per_hour limits)."""
    since = now - timedelta(hours=1)
    turns = LiveTurn.objects.filter(conversation__project=project, conversation__annotator=annotator, created_at__gte=since)
    return turns.count() + sum(max(0, attempts - 1) for attempts in turns.values_list("attempts", flat=True))


def say(*, project: Project, annotator, text: str, again: bool = False, now=None, rng: random.Random | None = None) -> LiveTurn:
    """The annotator's next message: a new turn (pending). `again` asks the same message
    once more after a turn whose replies were both bad (a new pair of replies, a new task)."""
    now = now or timezone.now()
    rules = check_access(project, annotator)
    if not isinstance(text, str):
        raise InvalidInput("must be text", field="message")
    text = services.storable_text(text).strip()
    with transaction.atomic():
        # one message at a time per annotator: their user row is the lock (as assign_next_task's)
        get_user_model().objects.select_for_update().filter(pk=annotator.pk).first()
        if _recent_messages(project, annotator, now) >= rules.turns_per_hour:
            raise LiveRateLimited(f"you sent {rules.turns_per_hour} messages in the last hour, this project's limit: wait a little")
        conversation = open_conversation(project, annotator)
        last = conversation.turns.order_by("-number").first() if conversation else None
        if last is not None and last.status != LiveTurnStatus.JUDGED:
            raise InvalidInput("judge the replies to your last message first (or retry them)", field="message")
        if again:
            if last is None:
                raise InvalidInput("there is no message to ask again", field="message")
            if chosen_reply(last) is not None:
                raise InvalidInput("your last judgement chose a reply: the conversation goes on from it", field="message")
            messages = list(last.messages)
        else:
            if not text:
                raise InvalidInput("write a message", field="message")
            if len(text) > rules.max_prompt_chars:
                raise InvalidInput(f"is longer than this project's limit of {rules.max_prompt_chars} characters", field="message")
            if last is not None:
                reply = chosen_reply(last)
                if reply is None:
                    raise InvalidInput("both replies to your last message were bad: ask again, or start a new conversation", field="message")
                messages = list(last.messages) + [{"role": "assistant", "content": reply}, {"role": "user", "content": text}]
            else:
                messages = [{"role": "user", "content": text}]
        judged = conversation.turns.filter(status=LiveTurnStatus.JUDGED).count() if conversation else 0
        if conversation is not None and judged >= rules.max_turns and not again:
            raise InvalidInput(f"this conversation has reached this project's {rules.max_turns} turns: start a new one", field="message")
        if conversation is None:
            source_a, source_b = draw_pair(rules, rng)
            conversation = LiveConversation.objects.create(project=project, annotator=annotator, source_a=source_a, source_b=source_b)
        number = (last.number + 1) if last else 1
        turn = LiveTurn.objects.create(conversation=conversation, number=number, messages=messages)
    log.info("live turn %s: annotator %s, conversation %s, turn %s", turn.pk, annotator.pk, conversation.pk, number)
    return turn


def new_conversation(*, project: Project, annotator, now=None) -> None:
    """Close the open conversation (its judged turns stay); the next message starts another."""
    LiveConversation.objects.filter(project=project, annotator=annotator, closed_at__isnull=True).update(closed_at=now or timezone.now())


def own_turn(turn_id: int, annotator, *, lock: bool = False) -> LiveTurn:
    """The annotator's turn, with its conversation, project and sources (one query); `lock`
    takes its row lock for the transaction."""
    turns = LiveTurn.objects.select_related("conversation__project", "conversation__source_a", "conversation__source_b")
    if lock:
        turns = turns.select_for_update(of=("self",))
    turn = turns.filter(pk=turn_id).first()
    if turn is None:
        raise AssignmentNotFound(f"live turn {turn_id} does not exist")
    if turn.conversation.annotator_id != annotator.pk:
        raise NotYourAssignment("this live turn belongs to another annotator")
    return turn


def claim_stream(
    *, turn_id: int, annotator, now=None, rng: random.Random | None = None
) -> tuple[LiveTurn, list[ModelEndpoint], ProjectLiveSettings]:
    """Take a pending or failed turn to "streaming"; returns it, its sources (left first) and
    the project's live settings. Few queries: the time they take is the annotator's wait for
    the first token.

    A retry counts against the annotator's messages per hour; a turn may be tried
    MAX_ATTEMPTS times."""
    now = now or timezone.now()
    rng = rng or random.Random()
    with transaction.atomic():
        turn = own_turn(turn_id, annotator, lock=True)
        rules = check_access(turn.conversation.project, annotator)
        stale = turn.status == LiveTurnStatus.STREAMING and turn.streaming_since and now - turn.streaming_since > timedelta(seconds=STALE_STREAM_SECONDS)
        if turn.status not in (LiveTurnStatus.PENDING, LiveTurnStatus.FAILED) and not stale:
            raise AlreadyClosed(f"this turn is {turn.get_status_display()}")
        if turn.attempts >= MAX_ATTEMPTS:
            raise LiveRateLimited(f"this turn was tried {MAX_ATTEMPTS} times: start a new conversation")
        if turn.attempts and _recent_messages(turn.conversation.project, annotator, now) >= rules.turns_per_hour:
            raise LiveRateLimited(f"you sent {rules.turns_per_hour} messages in the last hour, this project's limit: wait a little")
        sources = [turn.conversation.source_a, turn.conversation.source_b]
        if any(source is None or not source.is_active for source in sources):
            raise LiveUnavailable("a model endpoint of this conversation was switched off or removed: start a new conversation")
        turn.status, turn.streaming_since, turn.error = LiveTurnStatus.STREAMING, now, ""
        turn.attempts += 1
        turn.a_on_left = rng.random() < 0.5
        turn.save(update_fields=["status", "streaming_since", "error", "attempts", "a_on_left"])
    return turn, (sources if turn.a_on_left else sources[::-1]), rules


def fail_turn(*, turn: LiveTurn, message: str) -> None:
    LiveTurn.objects.filter(pk=turn.pk, status=LiveTurnStatus.STREAMING).update(status=LiveTurnStatus.FAILED, error=message[:1000])
    log.info("live turn %s failed: %s", turn.pk, message)


def _prompt_for(project: Project, messages: list[dict]) -> Prompt:
    """The project's prompt for this conversation: the existing one (read, not locked: many
    annotators may start from the same seed prompt), or a new one."""
    prompt, _ = Prompt.objects.get_or_create(
        project=project, content_hash=content_hash(messages), defaults={"messages": messages, "source_format": PromptFormat.CHAT, "source": "live"}
    )
    return prompt


def finish_turn(*, turn: LiveTurn, replies: list[services.GeneratedReply], now=None) -> Assignment:
    """Both replies arrived whole (left first): the prompt, the replies, the task and the
    annotator's lease on it, in one transaction. The turn must still be this stream's."""
    now = now or timezone.now()
    with transaction.atomic():
        locked = LiveTurn.objects.select_for_update().filter(pk=turn.pk, status=LiveTurnStatus.STREAMING).values_list("attempts", flat=True).first()
        if locked is None or locked != turn.attempts:
            raise AlreadyClosed("this turn was taken over by another stream")
        project = turn.conversation.project
        task, responses = services.comparison_task_of(
            prompt=_prompt_for(project, turn.messages), replies=replies, status=TaskStatus.LIVE,
            identity=f"live-turn:{turn.pk}:{turn.attempts}",
        )
        if task is None or len(responses) != 2:
            raise InvalidInput("both endpoints gave the same reply, so there is nothing to compare: retry for new replies")
        assignment = Assignment.objects.create(
            task=task, annotator_id=turn.conversation.annotator_id, display_order=[r.pk for r in responses],
            leased_at=now, expires_at=now + timedelta(seconds=max(project.lease_seconds, 3600)),
        )
        LiveTurn.objects.filter(pk=turn.pk).update(status=LiveTurnStatus.READY, task=task, assignment=assignment, error="")
    turn.status, turn.task, turn.assignment, turn.error = LiveTurnStatus.READY, task, assignment, ""
    return assignment


def judge(*, turn_id: int, annotator, judgement: services.JudgementInput):
    """The annotator's judgement of a ready turn, stored by services.submit_judgement."""
    turn = own_turn(turn_id, annotator)
    if turn.assignment_id is None:
        raise AlreadyClosed("the replies to this turn are not complete yet")
    # a live task is its annotator's alone: a lease that ran out while they were away is renewed
    now = timezone.now()
    Assignment.objects.filter(pk=turn.assignment_id, state=AssignmentState.LEASED, expires_at__lte=now).update(
        expires_at=now + timedelta(hours=1)
    )
    stored, created = services.submit_judgement(annotator=annotator, assignment_id=turn.assignment_id, judgement=judgement)
    LiveTurn.objects.filter(pk=turn.pk, status=LiveTurnStatus.READY).update(status=LiveTurnStatus.JUDGED)
    return stored, created


def sources_of(turn: LiveTurn) -> list[dict]:
    """For the reveal after the vote: each reply's source by display position."""
    if turn.assignment_id is None:
        return []
    responses = {r.pk: r for r in turn.task.responses.select_related("endpoint")}
    return [
        {"letter": "AB"[i], "name": responses[rid].origin or (responses[rid].endpoint.name if responses[rid].endpoint else "?")}
        for i, rid in enumerate(turn.assignment.display_order)
    ]


def turns_used(conversation: LiveConversation | None) -> int:
    return conversation.turns.filter(status=LiveTurnStatus.JUDGED).count() if conversation else 0

