"""Run kind "endpoints" (training/endpoint_runs.py): replies of two or more model endpoints to
a prompt set, as comparison tasks with their sources. Against the real `transformers serve`
(tests/conftest.py: policy_server) and, for the failures, the fault server."""

import io
import json
import threading
import time

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from rest_framework.test import APIClient

from inference.models import ModelEndpoint
from labeling.exporting import iter_export_lines
from labeling.models import ComparisonTask, Project, Prompt, Response
from labeling.quality_data import reply_sources
from labeling.services import JudgementInput, assign_next_task, submit_judgement
from training import runner, services
from training.models import RunStatus, TrainingRun


def endpoint(name, base_url, model, **extra):
    return ModelEndpoint.objects.create(name=name, base_url=base_url, model=model, timeout_seconds=extra.pop("timeout", 30), **extra)


def project_with_prompts(n=4, name="endpoint runs") -> Project:
    project = Project.objects.create(name=name, overlap_k=1, gold_rate=0.0, max_responses=4)
    for i in range(n):
        Prompt.objects.create(project=project, messages=[{"role": "user", "content": f"question number {i}"}], content_hash=f"q{i}")
    return project


def run_now(project, config):
    run = services.start_run(project=project, kind="endpoints", config=config, enqueue=False)
    runner.execute(run.pk)
    run.refresh_from_db()
    return run


def test_two_served_policies_become_comparison_tasks_with_their_sources(db, policy_server, annotator):
    project = project_with_prompts(3)
    a = endpoint("policy one", policy_server.base_url, str(policy_server.policies[0]), max_tokens=10, temperature=1.0, concurrency=2)
    b = endpoint("policy two", policy_server.base_url, str(policy_server.policies[1]), max_tokens=10, temperature=1.0, concurrency=2)
    run = run_now(project, {"endpoints": [a.pk, b.pk], "prompts": 3})
    assert run.status == RunStatus.SUCCEEDED, run.error + run.log_tail
    assert run.progress == 1.0
    metrics = run.metrics
    assert (metrics["prompts"], metrics["prompts_failed"], metrics["endpoints"]) == (3, 0, ["policy one", "policy two"])
    tasks = ComparisonTask.objects.filter(project=project)
    assert metrics["tasks_created"] + metrics["identical_pairs"] == 3 and tasks.count() == metrics["tasks_created"] >= 2
    for task in tasks:
        replies = list(task.responses.all())
        assert len(replies) == 2 and {r.endpoint_id for r in replies} == {a.pk, b.pk}
        assert {r.origin for r in replies} == {"policy one", "policy two"}
        assert all(r.generation_params["endpoint"] in ("policy one", "policy two") and r.generation_params["max_tokens"] == 10 for r in replies)
    assert set(reply_sources(project)[1]) == {"policy one", "policy two"}
    # annotators judge them as any task; the raw export carries the sources
    assignment = assign_next_task(project=project, annotator=annotator)
    submit_judgement(annotator=annotator, assignment_id=assignment.pk, judgement=JudgementInput(choice="A", strength=2))
    rows = [json.loads(line) for line in iter_export_lines(project=project, fmt="raw")]
    assert {r["origin"] for r in rows[0]["responses"]} == {"policy one", "policy two"}


def test_a_prompt_whose_endpoint_failed_is_listed_and_makes_no_task(db, fault_server):
    project = project_with_prompts(3)
    good, bad = endpoint("good", fault_server.base_url, "echo"), endpoint("bad", fault_server.base_url, "500")
    run = run_now(project, {"endpoints": [good.pk, bad.pk]})
    assert run.status == RunStatus.SUCCEEDED
    assert (run.metrics["prompts_failed"], run.metrics["tasks_created"]) == (3, 0)
    failure = run.metrics["failures"][0]
    assert failure["reasons"] == {"bad": "bad failed (HTTP 500): the model crashed"} and failure["prompt"].startswith("question number")
    assert "left out: bad failed (HTTP 500)" in run.log_tail
    assert not ComparisonTask.objects.filter(project=project).exists()
    assert not Response.objects.filter(prompt__project=project).exists()


def test_429_and_flaky_500_are_retried(db, fault_server):
    fault_server.reset()
    project = project_with_prompts(1)
    limited, flaky = endpoint("limited", fault_server.base_url, "429"), endpoint("flaky", fault_server.base_url, "flaky500")
    run = run_now(project, {"endpoints": [limited.pk, flaky.pk]})
    assert run.status == RunStatus.SUCCEEDED and run.metrics["prompts_failed"] == 0 and run.metrics["retries"] == 4
    assert "limited is rate limiting us (HTTP 429) (Retry-After 1 s): slow down; retrying in 1.0 s" in run.log_tail
    assert fault_server.count("429") == 3 and fault_server.count("flaky500") == 3
    # identical replies are no comparison: an "ok" endpoint twice makes no task
    twin = endpoint("twin", fault_server.base_url, "ok")
    other = endpoint("twin too", fault_server.base_url, "ok")
    run = run_now(project, {"endpoints": [twin.pk, other.pk], "prompts": 1})
    assert (run.metrics["tasks_created"], run.metrics["identical_pairs"]) == (0, 1)


def test_pairs_or_one_task_comparing_every_endpoint(db, fault_server):
    project = project_with_prompts(2)
    ids = [endpoint(name, fault_server.base_url, model).pk for name, model in (("e1", "ok"), ("e2", "echo"), ("e3", "xss"))]
    run = run_now(project, {"endpoints": ids})
    assert run.metrics["tasks_created"] == 6  # 3 pairs x 2 prompts
    assert all(task.responses.count() == 2 for task in ComparisonTask.objects.filter(project=project))
    other = project_with_prompts(2, name="all at once")
    run = run_now(other, {"endpoints": ids, "pairing": "all"})
    assert run.metrics["tasks_created"] == 2
    assert [task.responses.count() for task in ComparisonTask.objects.filter(project=other)] == [3, 3]


@pytest.mark.django_db(transaction=True)
def test_cancel_stops_the_run_and_leaves_only_whole_tasks(fault_server):
    fault_server.delay = 1.0
    project = project_with_prompts(6)
    slow, fast = endpoint("slow", fault_server.base_url, "slow", concurrency=1), endpoint("fast", fault_server.base_url, "echo")
    run = services.start_run(project=project, kind="endpoints", config={"endpoints": [slow.pk, fast.pk], "prompts": 6}, enqueue=False)
    worker = threading.Thread(target=lambda: (runner.execute(run.pk), connection.close()))
    worker.start()
    deadline = time.monotonic() + 60
    while TrainingRun.objects.get(pk=run.pk).progress == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    services.cancel_run(run=run)
    worker.join(timeout=60)
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    made = ComparisonTask.objects.filter(project=project)
    assert 1 <= made.count() < 6
    assert all(task.responses.count() == 2 for task in made)  # no task with one reply


def test_api_runs_on_project_prompts_or_an_uploaded_file(db, admin_user, fault_server):
    project = project_with_prompts(2)
    a, b = endpoint("a", fault_server.base_url, "ok"), endpoint("b", fault_server.base_url, "echo")
    api = APIClient()
    api.force_authenticate(admin_user)
    url = f"/api/v1/projects/{project.pk}/endpoint-runs/"
    started = api.post(url, {"endpoints": [a.pk, b.pk], "prompts": 2}, format="json")
    assert started.status_code == 202, started.content
    assert started.json()["kind"] == "endpoints" and started.json()["config"]["endpoints"] == [a.pk, b.pk]
    TrainingRun.objects.filter(pk=started.json()["id"]).update(status=RunStatus.SUCCEEDED)
    lines = b'{"prompt": "uploaded one"}\n{"messages": [{"role": "user", "content": "uploaded two"}]}\n{"prompt": "uploaded one"}\n'
    upload = io.BytesIO(lines)
    upload.name = "prompts.jsonl"
    started = api.post(url, {"endpoints": f"{a.pk},{b.pk}", "file": upload}, format="multipart")
    assert started.status_code == 202, started.content
    ids = started.json()["config"]["prompt_ids"]
    assert [Prompt.objects.get(pk=i).messages[0]["content"] for i in ids] == ["uploaded one", "uploaded two"]
    assert Prompt.objects.get(pk=ids[0]).source == "prompts.jsonl"
    run = TrainingRun.objects.get(pk=started.json()["id"])
    runner.execute(run.pk)
    run.refresh_from_db()
    assert run.metrics["prompts"] == 2 and run.metrics["tasks_created"] == 2


@pytest.mark.parametrize(
    "body, words",
    [
        ({"endpoints": [1]}, "endpoints"),
        ({"endpoints": [1, 1]}, "different endpoints"),
        ({"endpoints": [1, 99999]}, "no endpoint with id 99999"),
        ({"endpoints": [1, 2], "pairing": "some"}, "pairing"),
        ({"endpoints": [1, 2], "prompts": 0}, "prompts"),
        ({"endpoints": "x,y"}, "endpoints"),
    ],
)
def test_api_refuses_bad_requests(db, admin_user, fault_server, body, words):
    project = project_with_prompts(1)
    ids = [endpoint("a", fault_server.base_url, "ok").pk, endpoint("b", fault_server.base_url, "echo").pk]
    body = json.loads(json.dumps(body).replace("[1, 99999]", f"[{ids[0]}, 99999]").replace("[1, 2]", json.dumps(ids)).replace("[1, 1]", json.dumps([ids[0]] * 2)).replace("[1]", json.dumps(ids[:1])))
    api = APIClient()
    api.force_authenticate(admin_user)
    response = api.post(f"/api/v1/projects/{project.pk}/endpoint-runs/", body, format="json")
    assert response.status_code == 400 and words in response.content.decode(), response.content
    assert not TrainingRun.objects.exists()


def test_a_bad_prompts_file_imports_nothing_and_says_which_lines(db, admin_user, fault_server, tmp_path):
    project = project_with_prompts(1)
    ids = [endpoint("a", fault_server.base_url, "ok").pk, endpoint("b", fault_server.base_url, "echo").pk]
    bad = b'{"prompt": "fine"}\n{"prompt": ""}\nnot json\n{"prompt": "x", "responses": ["a", "b"]}\n'
    api = APIClient()
    api.force_authenticate(admin_user)
    upload = io.BytesIO(bad)
    upload.name = "bad.jsonl"
    response = api.post(f"/api/v1/projects/{project.pk}/endpoint-runs/", {"endpoints": ids, "file": upload}, format="multipart")
    assert response.status_code == 400
    assert [e["line"] for e in response.json()["errors"]] == [2, 3, 4]
    assert Prompt.objects.filter(project=project).count() == 1 and not TrainingRun.objects.exists()
    path = tmp_path / "bad.jsonl"
    path.write_bytes(bad)
    with pytest.raises(CommandError) as caught:
        call_command("start_run", "endpoints", "--project", project.name, "--config", json.dumps({"endpoints": ids}), "--prompts-file", str(path))
    assert "line 2:" in str(caught.value) and "line 3: malformed JSON" in str(caught.value)
    assert not TrainingRun.objects.exists()


def test_start_run_command_with_a_prompts_file(db, fault_server, tmp_path):
    project = project_with_prompts(1)
    ids = [endpoint("a", fault_server.base_url, "ok").pk, endpoint("b", fault_server.base_url, "echo").pk]
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "from the command line"}\n')
    call_command("start_run", "endpoints", "--project", project.name, "--config", json.dumps({"endpoints": ids}), "--prompts-file", str(path))
    run = TrainingRun.objects.get(kind="endpoints")
    assert [Prompt.objects.get(pk=i).messages[0]["content"] for i in run.config["prompt_ids"]] == ["from the command line"]
