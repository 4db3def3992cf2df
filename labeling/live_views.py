"""The live chat-and-compare page and its stream (labeling/live.py holds the rules).

The page is rendered by the server in each state of the conversation's last turn: nothing
asked yet or last turn judged (the message box), pending / failed (the two reply panes and
a retry), ready (the two replies with the usual judging form, labeling/_judgement_form.html,
posted to `live_judge`: post / redirect / get as on the comparison page).

The stream (`live_stream`, POST) answers with server-sent events: `start`; `delta`
{side: 0 | 1, text}; then `done` {url} once both replies arrived whole and the task is made,
or `error` {message, side} (the turn keeps no reply and can be streamed again). Both
endpoints are called from the server, each in a thread of its own (inference.client); the
browser never sees an endpoint, a key or a source's name. Comments (": keep-alive") go out
every KEEPALIVE_SECONDS so that proxies do not close a quiet stream. Under deploy/ the stream
URL is served by its own gunicorn pool of threads with nginx's buffering off (deploy/README.md).
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
from dataclasses import replace

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from inference import client, limits
from inference.exceptions import KeyUnavailable
from inference.models import ModelEndpoint

from . import live, services
from .exceptions import AnnotatorPaused, InvalidJudgement, LabelingError, NotYourAssignment
from .models import AnnotatorPause, LiveTurn, LiveTurnStatus, Project, Prompt
from .views import _compare_context, _draft, _drop_draft, _forbidden, _keep_draft, judgement_from_form, NOT_OPEN

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 10.0
SIDES = "AB"


def _error_json(error: LabelingError) -> JsonResponse:
    return JsonResponse(error.as_dict(), status=error.status_code)


def _history(conversation, rules) -> list[dict]:
    """The judged turns, for the page: whether the conversation went on from a reply, and the
    sources when the project reveals them."""
    if conversation is None:
        return []
    turns = conversation.turns.filter(status=LiveTurnStatus.JUDGED).select_related("task", "assignment")
    return [
        {"went_on": live.chosen_reply(turn) is not None, "sources": live.sources_of(turn) if rules.reveal_sources else []}
        for turn in turns
    ]


@login_required
@require_GET
def live_page(request, project_id: int):
    project = get_object_or_404(Project, pk=project_id)
    try:
        rules = live.check_access(project, request.user)
    except NotYourAssignment:
        return _forbidden(request, NOT_OPEN)
    except AnnotatorPaused:
        pause = AnnotatorPause.objects.filter(project=project, annotator=request.user, lifted_at__isnull=True).first()
        return render(request, "labeling/paused.html", {"project": project, "pause": pause}, status=403)
    except LabelingError as error:
        return render(request, "labeling/error.html", {"message": error.message}, status=error.status_code)
    conversation = live.open_conversation(project, request.user)
    turn = conversation.turns.order_by("-number").first() if conversation else None
    context = {
        "project": project,
        "rules": rules,
        "history": _history(conversation, rules),
        "turn": turn,
        "turns_used": live.turns_used(conversation),
        "say_url": reverse("labeling:live_say", args=[project.pk]),
        "seed_url": reverse("labeling:live_seed", args=[project.pk]),
        "new_url": reverse("labeling:live_new", args=[project.pk]),
        "has_endpoints": bool(live.usable_endpoints(rules)),
        "replies": [{"letter": letter} for letter in SIDES],  # the reply panes, and the key legend's count
        "is_ranking": False,
    }
    if turn is not None and turn.status == LiveTurnStatus.READY:
        assignment = turn.assignment
        draft = _draft(request, f"assignment:{assignment.pk}")
        context.update(_compare_context(project=project, task=turn.task, display_order=assignment.display_order, values=draft and draft["values"]))
        context.update(assignment=assignment, error=draft and draft["error"], form_action=reverse("labeling:live_judge", args=[turn.pk]), skip_action="")
        context["conversation"] = turn.messages
    elif turn is not None and turn.status != LiveTurnStatus.JUDGED:
        context["conversation"] = turn.messages
        context["stream_url"] = reverse("labeling:live_stream", args=[turn.pk])
    else:  # nothing asked yet, or the last turn judged: the message box
        reply = live.chosen_reply(turn) if turn else None
        context["conversation"] = (turn.messages + ([{"role": "assistant", "content": reply}] if reply else [])) if turn else []
        context["can_continue"] = turn is None or (reply is not None and context["turns_used"] < rules.max_turns)
        context["ask_again"] = turn is not None and reply is None
    return render(request, "labeling/live.html", context)


@login_required
@require_POST
def live_say(request, project_id: int):
    """The annotator's message (form field `message`, or `again=1`): JSON {turn, stream_url}."""
    project = get_object_or_404(Project, pk=project_id)
    try:
        turn = live.say(project=project, annotator=request.user, text=request.POST.get("message", ""), again=request.POST.get("again") == "1")
    except LabelingError as error:
        return _error_json(error)
    return JsonResponse({"turn": turn.pk, "stream_url": reverse("labeling:live_stream", args=[turn.pk])}, status=201)


@login_required
@require_POST
def live_new(request, project_id: int):
    project = get_object_or_404(Project, pk=project_id)
    live.new_conversation(project=project, annotator=request.user)
    return redirect("labeling:live", project_id=project.pk)


@login_required
@require_GET
def live_seed(request, project_id: int):
    """A seed prompt of the project: the opening message of one of its single-turn prompts."""
    project = get_object_or_404(Project, pk=project_id)
    try:
        rules = live.check_access(project, request.user)
    except LabelingError as error:
        return _error_json(error)
    ids = list(Prompt.objects.filter(project=project).exclude(source="live").values_list("pk", flat=True)[:5000])
    random.shuffle(ids)
    for prompt in Prompt.objects.filter(pk__in=ids[:50]):
        users = [m for m in prompt.messages if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str)]
        if len(prompt.messages) == 1 and users and len(users[0]["content"]) <= rules.max_prompt_chars:
            return JsonResponse({"text": users[0]["content"]})
    return JsonResponse({"code": "not_found", "detail": "this project has no single-message prompts to offer: write your own"}, status=404)


@login_required
@require_POST
def live_judge(request, turn_id: int):
    try:
        turn = live.own_turn(turn_id, request.user)
    except NotYourAssignment as error:
        return _forbidden(request, error.message)
    except LabelingError as error:
        return render(request, "labeling/error.html", {"message": error.message}, status=error.status_code)
    project_id = turn.conversation.project_id
    if turn.assignment_id is None:
        return redirect("labeling:live", project_id=project_id)
    try:
        judgement = judgement_from_form(request.POST, len(turn.assignment.display_order))
        live.judge(turn_id=turn.pk, annotator=request.user, judgement=judgement)
    except InvalidJudgement as error:
        _keep_draft(request, f"assignment:{turn.assignment_id}", request.POST, len(turn.assignment.display_order), error)
    except LabelingError as error:
        from django.contrib import messages

        messages.warning(request, error.message)
    else:
        _drop_draft(request)
    return redirect("labeling:live", project_id=project_id)


# --------------------------------------------------------------------------- the stream


def _event(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode("utf-8")


def _pump(side: int, source: ModelEndpoint, spec: client.EndpointSpec, messages: list[dict], max_tokens: int, events: queue.Queue, stop: threading.Event):
    """One endpoint's reply into the queue: ("delta", side, text) pieces, then ("end", side,
    None) or ("error", side, EndpointError)."""
    try:
        with limits.slot(f"endpoint-{source.pk}", spec.concurrency, spec.name):
            for piece in client.stream_chat(
                spec, messages, max_tokens=max_tokens, should_stop=stop.is_set, max_reply_chars=settings.ENDPOINT_MAX_REPLY_CHARS
            ):
                events.put(("delta", side, piece))
        events.put(("end", side, None))
    except client.EndpointError as error:
        events.put(("error", side, error))
    except Exception as error:  # noqa: BLE001 - whatever breaks, the turn must end with a message
        log.exception("live stream of %s failed", source.name)
        events.put(("error", side, client.EndpointError(client.BAD_RESPONSE, f"{spec.name} failed ({type(error).__name__})")))


def stream_turn(turn: LiveTurn, sources: list[ModelEndpoint], max_tokens: int):
    """The server-sent events of one turn (see the module docstring). Closing it early (the
    browser went away) stops both endpoint calls and leaves the turn failed, never half-made."""
    finished = False
    stop = threading.Event()
    try:
        yield _event("start", {"turn": turn.pk})
        try:
            # anonymous names: an error message never tells the annotator which model is which
            specs = [replace(source.spec(), name=f"the model of reply {SIDES[side]}") for side, source in enumerate(sources)]
        except KeyUnavailable as error:
            log.error("live turn %s: %s", turn.pk, error.message)
            live.fail_turn(turn=turn, message="a model's API key cannot be used: tell a labeling admin")
            finished = True
            yield _event("error", {"message": "A model's API key cannot be used; a labeling admin must fix the endpoint.", "side": None})
            return
        events: queue.Queue = queue.Queue()
        for side, (source, spec) in enumerate(zip(sources, specs)):
            threading.Thread(
                target=_pump, args=(side, source, spec, turn.messages, max_tokens, events, stop), daemon=True, name=f"live-{turn.pk}-{side}"
            ).start()
        texts, ended, failure = [[], []], [False, False], None
        while not all(ended) and failure is None:
            try:
                batch = [events.get(timeout=KEEPALIVE_SECONDS)]
            except queue.Empty:
                yield b": keep-alive\n\n"
                continue
            while True:  # whatever else has arrived goes out in the same write, one event per side
                try:
                    batch.append(events.get_nowait())
                except queue.Empty:
                    break
            fresh: list[list[str]] = [[], []]
            for kind, side, value in batch:
                if kind == "delta":
                    fresh[side].append(value)
                elif kind == "end":
                    ended[side] = True
                elif failure is None:
                    failure = (side, value)
            for side, pieces in enumerate(fresh):
                texts[side].extend(pieces)
            out = b"".join(_event("delta", {"side": side, "text": "".join(pieces)}) for side, pieces in enumerate(fresh) if pieces)
            if out:
                yield out
        stop.set()
        if failure is not None:
            side, error = failure
            log.warning("live turn %s: %s (%s) failed: %s", turn.pk, sources[side].name, error.kind, error.message)
            message = f"Reply {SIDES[side]} failed: {error.message}. Nothing was saved; your conversation so far is kept."
            live.fail_turn(turn=turn, message=message)
            finished = True
            yield _event("error", {"message": message, "side": side})
            return
        try:
            live.finish_turn(turn=turn, replies=[
                services.endpoint_reply(source, "".join(text), max_tokens=spec.reply_limit(max_tokens))
                for source, text, spec in zip(sources, texts, specs)
            ])
        except LabelingError as error:
            live.fail_turn(turn=turn, message=error.message)
            finished = True
            yield _event("error", {"message": f"{error.message}. Nothing was saved.", "side": None})
            return
        finished = True
        yield _event("done", {"url": reverse("labeling:live", args=[turn.conversation.project_id])})
    finally:
        stop.set()
        if not finished:
            live.fail_turn(turn=turn, message="the stream was interrupted before both replies arrived")


@login_required
@require_POST
def live_stream(request, turn_id: int):
    try:
        turn, sources, rules = live.claim_stream(turn_id=turn_id, annotator=request.user)
    except LabelingError as error:
        return _error_json(error)
    response = StreamingHttpResponse(stream_turn(turn, sources, rules.max_tokens), content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache, no-store"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once (deploy/nginx sets it for the URL too)
    return response
