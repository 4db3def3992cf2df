"""Permission matrix: every API endpoint for anonymous, annotator and admin callers."""

import io

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from labeling.models import Assignment
from labeling.services import assign_next_task

from .conftest import import_items, make_items

ANON, ANNOTATOR, ADMIN = "anonymous", "annotator", "admin"


@pytest.fixture
def world(project, annotator, admin_user):
    import_items(project, make_items(4))
    assignment = assign_next_task(project=project, annotator=annotator)
    return {"project": project, "assignment": assignment}


def client_for(role, annotator, admin_user):
    client = APIClient()
    if role != ANON:
        user = annotator if role == ANNOTATOR else admin_user
        client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get(user=user).key}")
    return client


def upload():
    f = io.BytesIO(b'{"prompt": "new", "responses": ["a", "b"]}\n')
    f.name = "x.jsonl"
    return f


# (method, url template, body, expected status per role)
MATRIX = [
    ("get", "/api/v1/projects/", None, {ANON: 401, ANNOTATOR: 200, ADMIN: 200}),
    ("get", "/api/v1/projects/{p}/", None, {ANON: 401, ANNOTATOR: 200, ADMIN: 200}),
    ("post", "/api/v1/projects/", {"name": "new project"}, {ANON: 401, ANNOTATOR: 403, ADMIN: 201}),
    ("patch", "/api/v1/projects/{p}/", {"overlap_k": 5}, {ANON: 401, ANNOTATOR: 403, ADMIN: 200}),
    ("post", "/api/v1/projects/{p}/next-task/", None, {ANON: 401, ANNOTATOR: 200, ADMIN: 200}),
    ("post", "/api/v1/assignments/{a}/submit/", {"choice": "tie"}, {ANON: 401, ANNOTATOR: 201, ADMIN: 403}),
    ("post", "/api/v1/assignments/{a}/skip/", {}, {ANON: 401, ANNOTATOR: 200, ADMIN: 403}),
    ("get", "/api/v1/me/stats/", None, {ANON: 401, ANNOTATOR: 200, ADMIN: 200}),
    ("get", "/api/v1/tasks/?project={p}", None, {ANON: 401, ANNOTATOR: 403, ADMIN: 200}),
    ("get", "/api/v1/judgements/?project={p}", None, {ANON: 401, ANNOTATOR: 403, ADMIN: 200}),
    ("post", "/api/v1/projects/{p}/import/", "upload", {ANON: 401, ANNOTATOR: 403, ADMIN: 201}),
    ("get", "/api/v1/projects/{p}/export/?format=raw", None, {ANON: 401, ANNOTATOR: 403, ADMIN: 200}),
    ("get", "/api/v1/annotators/stats/", None, {ANON: 401, ANNOTATOR: 403, ADMIN: 200}),
    ("get", "/api/schema/", None, {ANON: 401, ANNOTATOR: 200, ADMIN: 200}),
]


@pytest.mark.parametrize("role", [ANON, ANNOTATOR, ADMIN])
@pytest.mark.parametrize("method, url, body, expected", MATRIX, ids=[f"{m} {u}" for m, u, _, _ in MATRIX])
def test_permission_matrix(world, annotator, admin_user, role, method, url, body, expected):
    client = client_for(role, annotator, admin_user)
    url = url.format(p=world["project"].pk, a=world["assignment"].pk)
    if body == "upload":
        response = client.post(url, {"file": upload(), "format": "jsonl"}, format="multipart")
    elif body is None:
        response = getattr(client, method)(url)
    else:
        response = getattr(client, method)(url, body, format="json")
    assert response.status_code == expected[role], (role, url, response.content[:300])


def test_annotators_never_read_other_annotators_judgements(world, annotator, other_annotator, admin_user):
    assignment = world["assignment"]
    own = client_for(ANNOTATOR, annotator, admin_user)
    assert own.post(f"/api/v1/assignments/{assignment.pk}/submit/", {"choice": "tie", "rationale": "private note"}, format="json").status_code == 201
    other = APIClient()
    other.force_authenticate(other_annotator)
    for url in ("/api/v1/judgements/", f"/api/v1/projects/{world['project'].pk}/export/?format=raw", "/api/v1/annotators/stats/"):
        response = other.get(url)
        assert response.status_code == 403 and b"private note" not in response.content
    mine = other.get("/api/v1/me/stats/").json()
    assert mine["username"] == "bob" and mine["totals"] is None
    theirs = own.get("/api/v1/me/stats/").json()
    assert theirs["totals"]["judgements"] == 1 and theirs["projects"][0]["judged_total"] == 1


def test_next_task_payload_hides_origins_and_ids(world, annotator, admin_user):
    client = client_for(ANNOTATOR, annotator, admin_user)
    body = client.post(f"/api/v1/projects/{world['project'].pk}/next-task/").json()
    assert body["assignment_id"] == world["assignment"].pk  # resumes the held lease
    assert [r["label"] for r in body["replies"]] == ["A", "B"]
    assert set(body["replies"][0]) == {"label", "text"}
    assert body["choices"] == ["A", "B", "tie", "both_bad"]


def test_empty_queue_is_204(project, annotator, admin_user):
    client = client_for(ANNOTATOR, annotator, admin_user)
    assert client.post(f"/api/v1/projects/{project.pk}/next-task/").status_code == 204
    assert Assignment.objects.count() == 0


def test_swagger_ui_is_served_without_a_cdn(client, annotator):
    assert client.get("/api/docs/").status_code == 302  # signed-in users only
    assert client.get("/api/schema/").status_code in (401, 403)
    client.force_login(annotator)
    assert client.get("/api/schema/").status_code == 200
    page = client.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "swagger-ui" in html and "cdn" not in html.lower()
