"""The live chat-and-compare page (labeling/live.py, labeling/live_views.py): two endpoints'
replies streamed through the app, judged with the usual controls, the conversation going on
from the chosen reply; every turn a normal judgement. Against the real `transformers serve`
(tests/conftest.py: policy_server) and, for the failures, the fault server."""

import json
import random
import re
from datetime import timedelta

import pytest
from django.utils import timezone

from inference.models import ModelEndpoint
from labeling import live
from labeling.exporting import iter_export_lines
from labeling.models import (
    AnnotatorPause, ComparisonTask, Judgement, LiveConversation, LiveTurn, LiveTurnStatus, Project, Prompt, Response, TaskStatus,
)
from labeling.quality_data import reply_sources
from labeling.services import storable_text
from training.selectors import training_judgements

pytestmark = pytest.mark.django_db


def endpoint(name, base_url, model, **extra):
    return ModelEndpoint.objects.create(name=name, base_url=base_url, model=model, timeout_seconds=extra.pop("timeout", 30), **extra)


def live_project(*endpoints, **rules) -> Project:
    project = Project.objects.create(name="live project", overlap_k=3, gold_rate=0.0)
    settings_row = live.live_settings_for(project)
    settings_row.enabled = True
    for key, value in rules.items():
        setattr(settings_row, key, value)
    settings_row.save()
    settings_row.endpoints.set(endpoints)
    return project


def events(response) -> list[tuple[str, dict]]:
    assert response["Content-Type"].startswith("text/event-stream")
    assert response["X-Accel-Buffering"] == "no"
    raw = b"".join(response.streaming_content).decode()
    found = []
    for block in raw.split("\n\n"):
        name = re.search(r"^event: (.+)$", block, re.M)
        data = re.search(r"^data: (.+)$", block, re.M)
        if name and data:
            found.append((name.group(1), json.loads(data.group(1))))
    return found


def say(client, project, text="Tell me about tea", **extra):
    response = client.post(f"/projects/{project.pk}/live/say/", {"message": text, **extra})
    return response


def stream(client, turn_id):
    return events(client.post(f"/live/turns/{turn_id}/stream/"))


@pytest.fixture
def served(policy_server):
    a = endpoint("tiny one", policy_server.base_url, str(policy_server.policies[0]), max_tokens=12, temperature=1.0)
    b = endpoint("tiny two", policy_server.base_url, str(policy_server.policies[1]), max_tokens=12, temperature=1.0)
    return a, b


def test_a_conversation_against_transformers_serve(client, annotator, served):
    project = live_project(*served, max_turns=3)
    client.force_login(annotator)
    page = client.get(f"/projects/{project.pk}/live/")
    assert page.status_code == 200 and b'id="live-composer"' in page.content
    created = say(client, project)
    assert created.status_code == 201, created.content
    turn_id = created.json()["turn"]
    got = stream(client, turn_id)
    names = [name for name, _ in got]
    assert names[0] == "start" and names[-1] == "done", got
    assert {data["side"] for name, data in got if name == "delta"} == {0, 1}  # both panes were fed
    turn = LiveTurn.objects.get(pk=turn_id)
    assert turn.status == LiveTurnStatus.READY
    task = turn.task
    assert task.status == TaskStatus.LIVE and task.prompt.messages == [{"role": "user", "content": "Tell me about tea"}]
    replies = {r.pk: r for r in task.responses.all()}
    assert {r.endpoint_id for r in replies.values()} == {e.pk for e in served}
    assert {r.origin for r in replies.values()} == {"tiny one", "tiny two"}
    # what was streamed is what is stored (NUL and lone surrogates, which a random model may
    # write, stored as U+FFFD)
    streamed = [storable_text("".join(d["text"] for n, d in got if n == "delta" and d["side"] == side).strip()) for side in (0, 1)]
    assert [replies[rid].text for rid in turn.assignment.display_order] == streamed
    # the page now shows both replies with the usual form, posting to the live judge view
    page = client.get(f"/projects/{project.pk}/live/").content.decode()
    assert 'id="judgement-form"' in page and f'/live/turns/{turn_id}/judge/' in page and 'id="choice-A"' in page
    assert "tiny one" not in page and "tiny two" not in page  # sources stay anonymous
    response = client.post(f"/live/turns/{turn_id}/judge/", {"choice": "B", "strength": "3", "rationale": "clearer", "idempotency_key": "k1"})
    assert response.status_code == 302
    judgement = Judgement.objects.get(task=task)
    assert (judgement.choice, judgement.strength, judgement.annotator_id) == ("B", 3, annotator.pk)
    chosen = replies[turn.assignment.display_order[1]].text
    # the next message continues from the chosen reply
    turn2 = LiveTurn.objects.get(pk=say(client, project, "And coffee?").json()["turn"])
    assert turn2.messages == [
        {"role": "user", "content": "Tell me about tea"}, {"role": "assistant", "content": chosen}, {"role": "user", "content": "And coffee?"},
    ]
    assert turn2.conversation_id == turn.conversation_id and turn2.number == 2
    # a normal judgement for export, quality and training; live tasks are never queued for others
    raw = [json.loads(line) for line in iter_export_lines(project=project, fmt="raw")]
    assert len(raw) == 1 and {r["origin"] for r in raw[0]["responses"]} == {"tiny one", "tiny two"}
    assert [j.choice for j in training_judgements(project)] == ["B"]
    assert set(reply_sources(project)[1]) == {"tiny one", "tiny two"}
    assert not ComparisonTask.objects.filter(project=project, status=TaskStatus.OPEN).exists()


def failing_pair(fault_server, model_b, **extra):
    return endpoint("fine", fault_server.base_url, "ok"), endpoint("broken", fault_server.base_url, model_b, **extra)


@pytest.mark.parametrize(
    "model_b, extra, words",
    [
        ("cut", {}, "ended before the reply was complete"),
        ("malformed", {}, "malformed stream event"),
        ("500", {}, "failed (HTTP 500)"),
        ("stall", {"timeout": 0.5}, "took longer than 0.5 s"),
        ("huge", {}, "longer than"),
        ("auth", {}, "refused the API key"),
    ],
)
def test_a_failed_reply_keeps_nothing_and_can_be_retried(client, annotator, fault_server, settings, model_b, extra, words):
    settings.ENDPOINT_MAX_REPLY_CHARS = 50_000
    fine, broken = failing_pair(fault_server, model_b, **extra)
    if model_b == "auth":
        from inference.services import save_endpoint

        save_endpoint(endpoint=broken, values={}, api_key="sk-wrong-SECRET-777")
    project = live_project(fine, broken)
    client.force_login(annotator)
    turn_id = say(client, project).json()["turn"]
    got = stream(client, turn_id)
    assert got[-1][0] == "error"
    message = got[-1][1]["message"]
    assert words in message and "Nothing was saved" in message
    assert "broken" not in message and "fine" not in message and "SECRET" not in message  # anonymous, no key
    turn = LiveTurn.objects.get(pk=turn_id)
    assert turn.status == LiveTurnStatus.FAILED and turn.task is None
    assert not Response.objects.filter(prompt__project=project).exists() and not ComparisonTask.objects.filter(project=project).exists()
    page = client.get(f"/projects/{project.pk}/live/").content.decode()
    assert 'id="live-retry"' in page and words in page
    # retry: the same turn streams again; with the endpoint mended it completes
    ModelEndpoint.objects.filter(pk=broken.pk).update(model="echo")
    assert stream(client, turn_id)[-1][0] == "done"
    assert LiveTurn.objects.get(pk=turn_id).attempts == 2


def test_a_turn_left_overnight_can_still_be_judged(client, annotator, fault_server):
    project = live_project(endpoint("a", fault_server.base_url, "ok"), endpoint("b", fault_server.base_url, "echo"))
    client.force_login(annotator)
    turn_id = say(client, project).json()["turn"]
    assert stream(client, turn_id)[-1][0] == "done"
    turn = LiveTurn.objects.get(pk=turn_id)
    type(turn.assignment).objects.filter(pk=turn.assignment_id).update(expires_at=timezone.now() - timedelta(hours=12))
    client.post(f"/live/turns/{turn_id}/judge/", {"choice": "A", "strength": "2", "idempotency_key": "late"})
    assert Judgement.objects.filter(task=turn.task).count() == 1
    assert LiveTurn.objects.get(pk=turn_id).status == LiveTurnStatus.JUDGED


def test_an_endpoint_down_mid_conversation_keeps_the_earlier_turns(client, annotator, fault_server):
    fine, other = endpoint("fine", fault_server.base_url, "ok"), endpoint("other", fault_server.base_url, "echo")
    project = live_project(fine, other)
    client.force_login(annotator)
    first = say(client, project).json()["turn"]
    assert stream(client, first)[-1][0] == "done"
    client.post(f"/live/turns/{first}/judge/", {"choice": "tie", "idempotency_key": "t1"})
    second = say(client, project, "more please").json()["turn"]
    ModelEndpoint.objects.filter(pk=other.pk).update(base_url="http://127.0.0.1:9/v1")  # nothing listens there
    got = stream(client, second)
    assert got[-1][0] == "error" and "unreachable" in got[-1][1]["message"]
    assert LiveTurn.objects.get(pk=first).status == LiveTurnStatus.JUDGED
    assert Judgement.objects.filter(task__project=project).count() == 1
    assert ComparisonTask.objects.filter(project=project).count() == 1


def test_a_browser_that_goes_away_leaves_the_turn_failed_not_half_made(client, annotator, fault_server):
    fault_server.delay = 0.2
    project = live_project(endpoint("drip a", fault_server.base_url, "drip"), endpoint("drip b", fault_server.base_url, "echo"))
    client.force_login(annotator)
    turn_id = say(client, project).json()["turn"]
    response = client.post(f"/live/turns/{turn_id}/stream/")
    chunks = response.streaming_content
    next(chunks)  # start
    next(chunks)
    # the browser went away: the server closes the response (the test client's wrapper does it
    # without closing the test's database connection)
    response._iterator.close()
    turn = LiveTurn.objects.get(pk=turn_id)
    assert turn.status == LiveTurnStatus.FAILED and "interrupted" in turn.error and turn.task is None
    assert not Response.objects.filter(prompt__project=project).exists()


def test_limits_per_project(client, annotator, fault_server):
    project = live_project(endpoint("a", fault_server.base_url, "ok", max_tokens=500), endpoint("b", fault_server.base_url, "echo"),
                           max_prompt_chars=20, turns_per_hour=3, max_turns=1, max_tokens=64)
    client.force_login(annotator)
    too_long = say(client, project, "x" * 21)
    assert too_long.status_code == 400 and too_long.json()["field"] == "message" and "20 characters" in too_long.json()["detail"]
    assert say(client, project, "   ").status_code == 400
    turn_id = say(client, project, "short").json()["turn"]
    assert say(client, project, "again").json()["detail"].startswith("judge the replies")  # one turn at a time
    fault_server.reset()
    stream(client, turn_id)
    assert sorted(r["body"]["max_tokens"] for r in fault_server.requests) == [64, 64]  # the project's cap under the endpoint's 500
    client.post(f"/live/turns/{turn_id}/judge/", {"choice": "A", "strength": "1", "idempotency_key": "x"})
    over = say(client, project, "turn two")
    assert over.status_code == 400 and "1 turns" in over.json()["detail"]
    assert b'id="live-finished"' in client.get(f"/projects/{project.pk}/live/").content
    client.post(f"/projects/{project.pk}/live/new/")
    assert say(client, project, "new one").status_code == 201
    # 3 messages an hour: two sent, one retry of a failed turn makes three
    LiveTurn.objects.filter(conversation__annotator=annotator).update(attempts=2)
    limited = say(client, project, "fourth")
    assert limited.status_code == 429 and limited.json()["code"] == "rate_limited"


def test_who_may_use_the_live_page(client, annotator, fault_server):
    project = live_project(endpoint("a", fault_server.base_url, "ok"))
    client.force_login(annotator)
    live.live_settings_for(project).__class__.objects.filter(project=project).update(enabled=False)
    assert client.get(f"/projects/{project.pk}/live/").status_code == 409
    assert say(client, project).status_code == 409
    live.live_settings_for(project).__class__.objects.filter(project=project).update(enabled=True)
    AnnotatorPause.objects.create(project=project, annotator=annotator, reason="too fast")
    assert client.get(f"/projects/{project.pk}/live/").status_code == 403
    assert say(client, project).json()["code"] == "paused"
    AnnotatorPause.objects.all().delete()
    Project.objects.filter(pk=project.pk).update(open_to_all=False)
    assert say(client, project).status_code == 403
    client.logout()
    assert client.post(f"/projects/{project.pk}/live/say/", {"message": "hi"}).status_code == 302  # to the login page


def test_one_endpoint_answers_twice_and_both_bad_asks_again(client, annotator, fault_server):
    project = live_project(endpoint("only", fault_server.base_url, "echo"))
    client.force_login(annotator)
    turn_id = say(client, project, "same words").json()["turn"]
    got = stream(client, turn_id)
    # the same deterministic endpoint twice: identical replies are nothing to compare
    assert got[-1][0] == "error" and "same reply" in got[-1][1]["message"]
    ModelEndpoint.objects.create(name="second", base_url=fault_server.base_url, model="ok")
    settings_row = live.live_settings_for(project)
    settings_row.endpoints.add(ModelEndpoint.objects.get(name="second"))
    client.post(f"/projects/{project.pk}/live/new/")
    turn_id = say(client, project, "first words").json()["turn"]
    assert stream(client, turn_id)[-1][0] == "done"
    client.post(f"/live/turns/{turn_id}/judge/", {"choice": "both_bad", "idempotency_key": "bb"})
    page = client.get(f"/projects/{project.pk}/live/").content.decode()
    assert 'id="live-both-bad"' in page
    assert say(client, project, "next").status_code == 400  # cannot go on from a bad reply
    again = LiveTurn.objects.get(pk=say(client, project, "", again="1").json()["turn"])
    assert again.messages == [{"role": "user", "content": "first words"}] and again.number == 2


def test_sources_are_revealed_after_the_vote_only_when_the_project_says_so(client, annotator, fault_server):
    a, b = endpoint("Model Alpha", fault_server.base_url, "ok"), endpoint("Model Beta", fault_server.base_url, "echo")
    project = live_project(a, b, reveal_sources=True)
    client.force_login(annotator)
    turn_id = say(client, project).json()["turn"]
    got = stream(client, turn_id)
    assert "Model Alpha" not in json.dumps(got) and "Model Alpha" not in client.get(f"/projects/{project.pk}/live/").content.decode()
    client.post(f"/live/turns/{turn_id}/judge/", {"choice": "A", "strength": "2", "idempotency_key": "r"})
    page = client.get(f"/projects/{project.pk}/live/").content.decode()
    assert "Model Alpha" in page and "Model Beta" in page
    live.live_settings_for(project).__class__.objects.filter(project=project).update(reveal_sources=False)
    page = client.get(f"/projects/{project.pk}/live/").content.decode()
    assert "Model Alpha" not in page and "Model Beta" not in page


def test_a_model_reply_is_untrusted_text(client, annotator, fault_server):
    project = live_project(endpoint("xss", fault_server.base_url, "xss"), endpoint("ok", fault_server.base_url, "ok"))
    client.force_login(annotator)
    turn_id = say(client, project, "<b>hi</b> <script>alert(1)</script>").json()["turn"]
    assert stream(client, turn_id)[-1][0] == "done"
    page = client.get(f"/projects/{project.pk}/live/").content.decode()
    # markup arrives as text: escaped, never a tag or a live link
    assert "<script>window.__xss" not in page and "<img" not in page and 'href="javascript' not in page
    assert "&lt;script&gt;window.__xss = 1&lt;/script&gt;" in page
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<strong>bold</strong>" in page  # markdown still renders, sanitized


def test_seed_prompts_come_from_the_project(client, annotator, fault_server):
    project = live_project(endpoint("a", fault_server.base_url, "ok"))
    client.force_login(annotator)
    assert client.get(f"/projects/{project.pk}/live/seed/").status_code == 404
    Prompt.objects.create(project=project, messages=[{"role": "user", "content": "What is a haiku?"}], content_hash="h1")
    assert client.get(f"/projects/{project.pk}/live/seed/").json() == {"text": "What is a haiku?"}


def test_balanced_pairing_draws_the_pair_compared_least(annotator, fault_server):
    a, b, c = (endpoint(name, fault_server.base_url, "ok") for name in ("a", "b", "c"))
    project = live_project(a, b, c, pairing="balanced")
    rules = live.live_settings_for(project)
    LiveConversation.objects.create(project=project, annotator=annotator, source_a=a, source_b=b)
    LiveConversation.objects.create(project=project, annotator=annotator, source_a=c, source_b=a)
    rng = random.Random(0)
    for _ in range(10):  # (b, c) is the only pair not compared yet, in either order
        assert {x.name for x in live.draw_pair(rules, rng)} == {"b", "c"}
    rules.pairing = "random"
    assert {frozenset(x.name for x in live.draw_pair(rules, rng)) for _ in range(60)} == {frozenset("ab"), frozenset("bc"), frozenset("ac")}
