"""Model comparison from imported replies (#19, part 1): a source per reply in every import
format, a file of one reply per model per line made into pairs, and those sources in the
leaderboard, the task browser and the raw export."""

import io
import json

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from labeling.exporting import iter_export_lines
from labeling.importing.services import import_stream
from labeling.models import ComparisonTask, Project, Response
from labeling.quality_data import reply_sources
from labeling.services import JudgementInput, assign_next_task, submit_judgement

pytestmark = pytest.mark.django_db


def jsonl(*rows) -> io.BytesIO:
    return io.BytesIO("".join(json.dumps(row) + "\n" for row in rows).encode())


def origins(project) -> dict[str, str]:
    return dict(Response.objects.filter(prompt__project=project).values_list("text", "origin"))


def test_a_source_per_reply_in_jsonl_csv_trl_and_hh(project):
    import_stream(project=project, fmt="jsonl", source="mixed.jsonl", stream=jsonl(
        {"prompt": "p1", "responses": [{"text": "a1", "model": "alpha"}, {"text": "b1", "model": "beta"}, "plain"]},
    ))
    assert origins(project) == {"a1": "alpha", "b1": "beta", "plain": "mixed.jsonl"}
    import_stream(project=project, fmt="csv", source="c.csv", stream=io.BytesIO(b"prompt,response_1,model_1,response_2,model_2\nc,x,gamma,y,\n"))
    assert origins(project)["x"] == "gamma" and origins(project)["y"] == "c.csv"
    import_stream(project=project, fmt="trl", source="t.jsonl", stream=jsonl(
        {"prompt": "t", "chosen": "good", "rejected": "bad", "chosen_model": "alpha", "rejected_model": "delta"},
    ))
    import_stream(project=project, fmt="hh", source="h.jsonl", stream=jsonl(
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello there", "rejected": "\n\nHuman: hi\n\nAssistant: go away", "chosen_model": "beta"},
    ))
    found = origins(project)
    assert (found["good"], found["bad"], found["hello there"], found["go away"]) == ("alpha", "delta", "beta", "h.jsonl")


@pytest.mark.parametrize(
    "row, fmt, reason",
    [
        ({"prompt": "p", "responses": [{"text": "a", "model": ""}, "b"]}, "jsonl", "model's name"),
        ({"prompt": "p", "responses": [{"text": "a", "model": 5}, "b"]}, "jsonl", "model's name"),
        ({"prompt": "p", "responses": [{"text": "a", "who": "x"}, "b"]}, "jsonl", "optional \"model\""),
        ({"prompt": "p", "responses": [{"model": "x"}, "b"]}, "jsonl", "optional \"model\""),
        ({"prompt": "p", "chosen": "a", "rejected": "b", "chosen_model": "m" * 201}, "trl", "model's name"),
        ({"prompt": "p", "model": "x"}, "replies", "missing field 'response'"),
        ({"prompt": "p", "response": "r"}, "replies", "missing field 'model'"),
    ],
)
def test_bad_sources_are_line_numbered_errors(admin_user, project, row, fmt, reason):
    upload = jsonl(row)
    upload.name = "bad.jsonl"
    api = APIClient()
    api.force_authenticate(admin_user)
    response = api.post(f"/api/v1/projects/{project.pk}/import/", {"file": upload, "format": fmt}, format="multipart")
    assert response.status_code == 400 and reason in response.json()["errors"][0]["reason"], response.content
    assert not Response.objects.exists()


def replies_file():
    return jsonl(
        {"prompt": "q1", "model": "alpha", "response": "alpha on q1"},
        {"prompt": "q2", "model": "alpha", "response": "alpha on q2"},
        {"prompt": "q1", "model": "beta", "response": "beta on q1"},
        {"prompt": "q1", "model": "gamma", "response": "gamma on q1"},
        {"prompt": "q2", "model": "beta", "response": "alpha on q2"},  # the same text: no pair
        {"prompt": "q2", "model": "gamma", "response": "gamma on q2"},
        {"prompt": "q3", "model": "alpha", "response": "alone"},  # one model: nothing to compare
    )


def test_one_reply_per_model_per_line_becomes_every_pair(project):
    report = import_stream(project=project, fmt="replies", source="replies.jsonl", stream=replies_file())
    assert report.lines_with_items == 7
    tasks = ComparisonTask.objects.filter(project=project)
    # q1: 3 pairs. q2: alpha and beta wrote the same text, so alpha-beta is no comparison and
    # alpha-gamma is the same task as beta-gamma (a task is its set of replies). q3: one model.
    assert tasks.count() == report.tasks_created == 3 + 1
    for task in tasks:
        assert {r.origin for r in task.responses.all()} <= {"alpha", "beta", "gamma"} and task.responses.count() == 2
    assert set(reply_sources(project)[1]) == {"alpha", "beta", "gamma"}


def test_a_sample_of_pairs_per_prompt_and_the_same_model_twice(admin_user, project, tmp_path):
    import_stream(project=project, fmt="replies", source="r", stream=replies_file(), pairs_per_prompt=1)
    assert ComparisonTask.objects.filter(project=project, prompt__messages__0__content="q1").count() == 1  # one of its 3 pairs
    other = Project.objects.create(name="twice")
    upload = jsonl({"prompt": "q", "model": "alpha", "response": "one"}, {"prompt": "q", "model": "alpha", "response": "two"})
    upload.name = "twice.jsonl"
    api = APIClient()
    api.force_authenticate(admin_user)
    response = api.post(f"/api/v1/projects/{other.pk}/import/", {"file": upload, "format": "replies"}, format="multipart")
    assert response.status_code == 400
    assert response.json()["errors"] == [{"line": 2, "reason": "model 'alpha' already answered this prompt on line 1"}]
    path = tmp_path / "r.jsonl"
    path.write_bytes(replies_file().getvalue())
    call_command("import_data", str(path), "--project", "cli replies", "--format", "replies", "--pairs-per-prompt", "2", "--no-progress")
    assert ComparisonTask.objects.filter(project__name="cli replies").count() == 2 + 1  # q2's pairs make one task at most


def test_sources_in_the_leaderboard_the_task_browser_and_the_export(client, admin_user, annotator, project):
    import_stream(project=project, fmt="replies", source="r", stream=replies_file())
    assignment = assign_next_task(project=project, annotator=annotator)
    submit_judgement(annotator=annotator, assignment_id=assignment.pk, judgement=JudgementInput(choice="A", strength=2))
    client.force_login(admin_user)
    quality = client.get(f"/api/v1/projects/{project.pk}/quality/")
    board = json.dumps(quality.json())
    judged = {r.origin for r in assignment.task.responses.all()}
    assert all(name in board for name in judged)
    listed = client.get(f"/manage/projects/{project.pk}/tasks/?model=gamma").content.decode()
    gamma_tasks = ComparisonTask.objects.filter(project=project, task_responses__response__origin="gamma")
    assert gamma_tasks.count() == 3 and all(f"/manage/tasks/{t.pk}/" in listed for t in gamma_tasks)
    alpha_only = ComparisonTask.objects.filter(project=project).exclude(task_responses__response__origin="gamma")
    assert all(f"/manage/tasks/{t.pk}/" not in listed for t in alpha_only)
    rows = [json.loads(line) for line in iter_export_lines(project=project, fmt="raw")]
    assert {r["origin"] for r in rows[0]["responses"]} == judged
