"""Gold tasks without the Django admin (#19, part 2): set in an import file, on the task page
of /manage/ and through the API; the queue says 204 only when nothing, gold included, is left;
an annotator's own statistics never tell a gold task apart."""

import io
import random

import pytest
from rest_framework.test import APIClient

from labeling.importing.services import import_stream
from labeling.models import ComparisonTask, Judgement, Project, TaskStatus
from labeling.services import JudgementInput, assign_next_task, submit_judgement

from .conftest import import_items, make_items

pytestmark = pytest.mark.django_db


def api(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


def jsonl(*lines: str) -> io.BytesIO:
    return io.BytesIO(("\n".join(lines) + "\n").encode())


def test_gold_tasks_from_every_import_format(project):
    report = import_stream(project=project, fmt="jsonl", source="t", stream=jsonl(
        '{"prompt": "p1", "responses": ["wrong", "right", "also wrong"], "gold": 2}',
        '{"prompt": "p2", "responses": ["a", "b"]}',
    ))
    assert report.gold_tasks_created == 1
    gold = ComparisonTask.objects.get(is_gold=True)
    assert gold.gold_response.text == "right" and ComparisonTask.objects.filter(is_gold=False).count() == 1
    csv = io.BytesIO(b"prompt,response_1,response_2,response_3,gold\nc1,x,,y,3\nc2,m,n,,\n")
    import_stream(project=project, fmt="csv", source="c", stream=csv)
    assert ComparisonTask.objects.get(prompt__messages__0__content="c1").gold_response.text == "y"  # the column, not the position
    import_stream(project=project, fmt="trl", source="r", stream=jsonl('{"prompt": "t1", "chosen": "good", "rejected": "bad", "gold": true}'))
    assert ComparisonTask.objects.get(prompt__messages__0__content="t1").gold_response.text == "good"


@pytest.mark.parametrize(
    "line, fmt, reason",
    [
        ('{"prompt": "p", "responses": ["a", "b"], "gold": 3}', "jsonl", "1 to 2"),
        ('{"prompt": "p", "responses": ["a", "b"], "gold": 0}', "jsonl", "1 to 2"),
        ('{"prompt": "p", "responses": ["a", "b"], "gold": "a"}', "jsonl", "1 to 2"),
        ('{"prompt": "p", "responses": ["a", "b"], "gold": true}', "jsonl", "1 to 2"),
        ('{"prompt": "p", "chosen": "a", "rejected": "b", "gold": 1}', "trl", "true"),
    ],
)
def test_a_bad_gold_field_is_a_line_numbered_error(admin_user, project, line, fmt, reason):
    upload = io.BytesIO((line + "\n").encode())
    upload.name = "gold.jsonl"
    response = api(admin_user).post(f"/api/v1/projects/{project.pk}/import/", {"file": upload, "format": fmt}, format="multipart")
    assert response.status_code == 400
    assert response.json()["errors"][0]["line"] == 1 and reason in response.json()["errors"][0]["reason"]
    assert not ComparisonTask.objects.exists()


def test_gold_through_the_api_re_marks_the_judgements(admin_user, annotator, project, tasks):
    task = tasks[0]
    assignment = assign_next_task(project=project, annotator=annotator)
    assert assignment.task_id == task.pk
    submit_judgement(annotator=annotator, assignment_id=assignment.pk, judgement=JudgementInput(choice="A", strength=2))
    preferred = assignment.display_order[0]
    other = next(rid for rid in assignment.display_order if rid != preferred)
    response = api(admin_user).patch(f"/api/v1/tasks/{task.pk}/", {"gold_response": preferred}, format="json")
    assert response.status_code == 200 and response.json()["is_gold"] is True and response.json()["gold_response"] == preferred
    assert Judgement.objects.get(task=task).gold_correct is True
    api(admin_user).patch(f"/api/v1/tasks/{task.pk}/", {"gold_response": other}, format="json")
    assert Judgement.objects.get(task=task).gold_correct is False
    task.refresh_from_db()
    assert task.status == TaskStatus.OPEN  # a gold task is for every annotator once
    assert api(admin_user).patch(f"/api/v1/tasks/{task.pk}/", {"gold_response": tasks[1].responses.first().pk}, format="json").status_code == 400
    assert api(annotator).patch(f"/api/v1/tasks/{task.pk}/", {"gold_response": None}, format="json").status_code == 403
    response = api(admin_user).patch(f"/api/v1/tasks/{task.pk}/", {"gold_response": None}, format="json")
    assert response.json()["is_gold"] is False and Judgement.objects.get(task=task).gold_correct is None
    assert api(admin_user).patch("/api/v1/tasks/999999/", {"gold_response": None}, format="json").status_code == 404


def test_gold_on_the_task_page(client, admin_user, tasks):
    task = tasks[0]
    reply = task.responses.order_by("pk").last()
    client.force_login(admin_user)
    page = client.get(f"/manage/tasks/{task.pk}/").content.decode()
    assert 'id="gold-form"' in page
    done = client.post(f"/manage/tasks/{task.pk}/gold/", {"gold_response": str(reply.pk)}, follow=True).content.decode()
    assert "now a gold task" in done and "gold: #" in done
    task.refresh_from_db()
    assert task.is_gold and task.gold_response_id == reply.pk
    bad = client.post(f"/manage/tasks/{task.pk}/gold/", {"gold_response": "１"}, follow=True).content.decode()
    assert "Not changed" in bad
    client.post(f"/manage/tasks/{task.pk}/gold/", {"gold_response": ""})
    task.refresh_from_db()
    assert not task.is_gold


def test_204_only_when_nothing_is_left(annotator, admin_user):
    """The audit's case: with a low gold rate the queue said 204 while gold tasks were left,
    then served them anyway. Regular tasks first here (the coin never picks gold), then the
    unseen gold tasks, then 204."""
    project = Project.objects.create(name="gold left", overlap_k=1, gold_rate=0.01)
    import_items(project, make_items(5))
    golds = list(ComparisonTask.objects.filter(project=project).order_by("pk")[:2])
    for task in golds:
        ComparisonTask.objects.filter(pk=task.pk).update(is_gold=True, gold_response=task.responses.first())
    client = api(annotator)
    served = []
    rng = random.Random(1)
    while True:
        assignment = assign_next_task(project=project, annotator=annotator, rng=rng)
        if assignment is None:
            break
        served.append(assignment.task_id)
        submit_judgement(annotator=annotator, assignment_id=assignment.pk, judgement=JudgementInput(choice="tie"))
    assert sorted(served) == sorted(ComparisonTask.objects.filter(project=project).values_list("pk", flat=True))
    assert client.post(f"/api/v1/projects/{project.pk}/next-task/").status_code == 204


def test_an_annotators_own_statistics_never_tell_a_gold_task_apart(annotator, project, tasks):
    ComparisonTask.objects.filter(pk=tasks[0].pk).update(is_gold=True, gold_response=tasks[0].responses.first())
    before = api(annotator).get("/api/v1/me/stats/").json()
    assignment = assign_next_task(project=project, annotator=annotator, rng=random.Random(0))
    submit_judgement(annotator=annotator, assignment_id=assignment.pk, judgement=JudgementInput(choice="A", strength=1))
    after = api(annotator).get("/api/v1/me/stats/").json()
    assert "gold" not in str(before) + str(after)
    assert after["totals"]["judgements"] == 1
