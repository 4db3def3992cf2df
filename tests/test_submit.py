"""submit_judgement and the submit API: idempotency, validation, expiry, ownership."""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from labeling.exceptions import IdempotencyConflict, InvalidJudgement, LeaseExpired, NotYourAssignment
from labeling.models import Assignment, ComparisonTask, Judgement
from labeling.services import JudgementInput, assign_next_task, submit_judgement

from .conftest import import_items, make_items


def api(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


def db_state():
    return (
        list(Judgement.objects.values_list("pk", "choice")),
        list(Assignment.objects.values_list("pk", "state")),
        list(ComparisonTask.objects.values_list("pk", "judgement_count", "status")),
    )


def test_repeat_with_same_key_returns_first_result_and_writes_nothing(project, tasks, annotator):
    assignment = assign_next_task(project=project, annotator=annotator)
    body = {"choice": "B", "strength": 3, "rationale": "B is right", "idempotency_key": "k-1", "flags": ["other"]}
    first = api(annotator).post(f"/api/v1/assignments/{assignment.pk}/submit/", body, format="json")
    assert first.status_code == 201, first.content
    before = db_state()
    again = api(annotator).post(f"/api/v1/assignments/{assignment.pk}/submit/", body, format="json")
    assert again.status_code == 200
    assert again.json() == first.json()
    assert db_state() == before
    changed = api(annotator).post(f"/api/v1/assignments/{assignment.pk}/submit/", {**body, "choice": "A", "rationale": "no"}, format="json")
    assert changed.status_code == 409, changed.content
    assert changed.json()["field"] == "idempotency_key" and "choice, rationale" in changed.json()["detail"]
    assert db_state() == before
    judgement = Judgement.objects.get()
    assert judgement.choice == "B" and judgement.strength == 3 and judgement.flags == ["other"]
    assert judgement.ranking == [[assignment.display_order[1]], [assignment.display_order[0]]]
    assert judgement.display_order == assignment.display_order


def test_same_key_for_another_assignment_is_a_conflict(project, tasks, annotator):
    first = assign_next_task(project=project, annotator=annotator)
    submit_judgement(annotator=annotator, assignment_id=first.pk, judgement=JudgementInput("A", 1, idempotency_key="dup"))
    second = assign_next_task(project=project, annotator=annotator)
    with pytest.raises(IdempotencyConflict):
        submit_judgement(annotator=annotator, assignment_id=second.pk, judgement=JudgementInput("A", 1, idempotency_key="dup"))


def test_second_submit_without_key_is_refused(project, tasks, annotator):
    assignment = assign_next_task(project=project, annotator=annotator)
    url = f"/api/v1/assignments/{assignment.pk}/submit/"
    assert api(annotator).post(url, {"choice": "tie"}, format="json").status_code == 201
    response = api(annotator).post(url, {"choice": "tie"}, format="json")
    assert response.status_code == 409
    assert Judgement.objects.count() == 1


@pytest.mark.parametrize(
    "body, field",
    [
        ({"choice": "C"}, "choice"),
        ({"choice": "A"}, "strength"),
        ({"choice": "A", "strength": 5}, "strength"),
        ({"choice": "A", "strength": "much"}, "strength"),
        ({"choice": "tie", "strength": 2}, "strength"),
        ({"choice": "ranking", "ranks": [1, 2]}, "choice"),
        ({"choice": "B", "strength": 1, "flags": ["rude"]}, "flags"),
        ({"choice": "B", "strength": 1, "rationale": "x" * 5001}, "rationale"),
        ({"choice": "B", "strength": 1, "time_spent_ms": -5}, "time_spent_ms"),
        ({}, "choice"),
    ],
)
def test_invalid_input_is_400_naming_the_field_and_changes_nothing(project, tasks, annotator, body, field):
    assignment = assign_next_task(project=project, annotator=annotator)
    before = db_state()
    response = api(annotator).post(f"/api/v1/assignments/{assignment.pk}/submit/", body, format="json")
    assert response.status_code == 400
    payload = response.json()
    assert field in payload or payload.get("field") == field, payload
    assert db_state() == before


def test_ranking_for_more_than_two_replies(project, annotator):
    import_items(project, make_items(1, replies=3))
    assignment = assign_next_task(project=project, annotator=annotator)
    url = f"/api/v1/assignments/{assignment.pk}/submit/"
    bad = api(annotator).post(url, {"choice": "A", "strength": 2}, format="json")
    assert bad.status_code == 400 and bad.json()["field"] == "choice"
    bad_ranks = api(annotator).post(url, {"choice": "ranking", "ranks": [2, 3, 3]}, format="json")
    assert bad_ranks.status_code == 400 and bad_ranks.json()["field"] == "ranks"
    ok = api(annotator).post(url, {"choice": "ranking", "ranks": [2, 1, 2]}, format="json")
    assert ok.status_code == 201, ok.content
    order = assignment.display_order
    assert Judgement.objects.get().ranking == [[order[1]], sorted([order[0], order[2]])]


def test_expired_lease_is_409_and_changes_nothing(project, tasks, annotator):
    now = timezone.now()
    assignment = assign_next_task(project=project, annotator=annotator, now=now)
    with pytest.raises(LeaseExpired):
        submit_judgement(
            annotator=annotator,
            assignment_id=assignment.pk,
            judgement=JudgementInput("A", 2),
            now=now + timedelta(seconds=project.lease_seconds + 1),
        )
    assert Judgement.objects.count() == 0
    Assignment.objects.filter(pk=assignment.pk).update(expires_at=now - timedelta(seconds=1))
    response = api(annotator).post(f"/api/v1/assignments/{assignment.pk}/submit/", {"choice": "tie"}, format="json")
    assert response.status_code == 409 and response.json()["code"] == "lease_expired"


def test_foreign_assignment_is_403(project, tasks, annotator, other_annotator):
    assignment = assign_next_task(project=project, annotator=annotator)
    with pytest.raises(NotYourAssignment):
        submit_judgement(annotator=other_annotator, assignment_id=assignment.pk, judgement=JudgementInput("tie"))
    response = api(other_annotator).post(f"/api/v1/assignments/{assignment.pk}/submit/", {"choice": "tie"}, format="json")
    assert response.status_code == 403
    skip = api(other_annotator).post(f"/api/v1/assignments/{assignment.pk}/skip/", {}, format="json")
    assert skip.status_code == 403
    assert Judgement.objects.count() == 0
    assert Assignment.objects.get(pk=assignment.pk).state == "leased"


def test_unknown_assignment_is_404(annotator, db):
    response = api(annotator).post("/api/v1/assignments/999999/submit/", {"choice": "tie"}, format="json")
    assert response.status_code == 404


def test_time_on_task_defaults_to_time_since_lease(project, tasks, annotator):
    now = timezone.now()
    assignment = assign_next_task(project=project, annotator=annotator, now=now)
    judgement, _ = submit_judgement(
        annotator=annotator, assignment_id=assignment.pk, judgement=JudgementInput("tie"), now=now + timedelta(seconds=42)
    )
    assert judgement.time_spent_ms == 42_000


def test_service_validation_rejects_bad_strength_type(project, tasks, annotator):
    assignment = assign_next_task(project=project, annotator=annotator)
    with pytest.raises(InvalidJudgement) as error:
        submit_judgement(annotator=annotator, assignment_id=assignment.pk, judgement=JudgementInput("A", True))
    assert error.value.field == "strength"
