"""Model endpoints: registered on the manage pages and through the API, keys encrypted and
never shown, a test action with the latency or the exact error, and the app's own policies
built in (training.endpoints)."""

import logging

import pytest
from django.db import connection
from rest_framework.test import APIClient

from inference.models import ModelEndpoint
from inference.secrets import decrypt_key
from labeling.models import ProjectLiveSettings
from training.endpoints import sync_policy_endpoints
from training.models import ModelVersion
from training.services import promote_version, roll_back
from tests.model_servers import RIGHT_KEY

SECRET = "sk-live-SECRET-abcdef-123456"


@pytest.fixture
def admin_api(admin_user):
    api = APIClient()
    api.force_authenticate(admin_user)
    return api


def register(api, fault_server, **extra):
    body = {"name": "fault ok", "base_url": fault_server.base_url, "model": "ok", "api_key": SECRET, "temperature": 0.7,
            "max_tokens": 64, "stop": ["###"], "system_prompt": "Be kind.", "timeout_seconds": 5, "concurrency": 3, **extra}
    response = api.post("/api/v1/endpoints/", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def test_register_through_the_api_key_write_only_and_encrypted(admin_api, fault_server):
    created = register(admin_api, fault_server)
    assert created["has_api_key"] is True and "api_key" not in created
    assert (created["temperature"], created["max_tokens"], created["stop"], created["concurrency"]) == (0.7, 64, ["###"], 3)
    with connection.cursor() as cursor:
        cursor.execute("SELECT api_key_encrypted FROM inference_modelendpoint WHERE id = %s", [created["id"]])
        stored = cursor.fetchone()[0]
    assert SECRET not in stored and decrypt_key(stored) == SECRET
    # PATCH without a key keeps it; clear_key removes it
    changed = admin_api.patch(f"/api/v1/endpoints/{created['id']}/", {"temperature": 0.2}, format="json").json()
    assert changed["has_api_key"] is True and changed["temperature"] == 0.2
    cleared = admin_api.patch(f"/api/v1/endpoints/{created['id']}/", {"clear_key": True}, format="json").json()
    assert cleared["has_api_key"] is False


@pytest.mark.parametrize(
    "body, field",
    [
        ({"base_url": "ftp://example.org/v1"}, "base_url"),
        ({"base_url": "http://user:pw@example.org/v1"}, "base_url"),
        ({"base_url": "http://example.org/v1?x=1"}, "base_url"),
        ({"temperature": 5}, "temperature"),
        ({"temperature": "NaN"}, "temperature"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": "###"}, "stop"),
        ({"concurrency": 0}, "concurrency"),
        ({"timeout_seconds": 10_000}, "timeout_seconds"),
        ({"api_key": "bad\nkey"}, "api_key"),
        ({"api_key": "sk-ключ"}, "api_key"),  # a header carries ASCII only
        ({"name": ""}, "name"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(admin_api, fault_server, body, field):
    payload = {"name": "x", "base_url": fault_server.base_url, "model": "ok", **body}
    response = admin_api.post("/api/v1/endpoints/", payload, format="json")
    assert response.status_code == 400, response.content
    text = response.content.decode()
    assert field in text
    assert not ModelEndpoint.objects.filter(builtin="").exists()


def test_only_admins_may_touch_endpoints(annotator, fault_server):
    api = APIClient()
    api.force_authenticate(annotator)
    assert api.get("/api/v1/endpoints/").status_code == 403
    assert api.post("/api/v1/endpoints/", {"name": "x", "base_url": fault_server.base_url, "model": "ok"}, format="json").status_code == 403


def test_the_test_action_shows_latency_or_the_exact_error_never_the_key(admin_api, fault_server, caplog):
    caplog.set_level(logging.DEBUG)
    good = register(admin_api, fault_server, name="right key", model="auth", api_key=RIGHT_KEY)
    result = admin_api.post(f"/api/v1/endpoints/{good['id']}/test/").json()
    assert result["ok"] is True and result["latency_ms"] >= 0 and "Hello" in result["reply"]
    bad = register(admin_api, fault_server, name="wrong key", model="auth")  # SECRET is the wrong key
    result = admin_api.post(f"/api/v1/endpoints/{bad['id']}/test/").json()
    assert result["ok"] is False and "refused the API key (HTTP 401)" in result["message"]
    listed = admin_api.get("/api/v1/endpoints/").content.decode()
    assert "HTTP 401" in listed  # the last test is recorded
    for text in (result["message"], listed, caplog.text):
        assert SECRET not in text


def test_manage_pages_register_edit_test(client, admin_user, fault_server, caplog):
    caplog.set_level(logging.DEBUG)
    client.force_login(admin_user)
    page = client.get("/manage/endpoints/new/")
    assert page.status_code == 200 and b'type="password"' in page.content
    response = client.post("/manage/endpoints/new/", {
        "name": "page endpoint", "base_url": fault_server.base_url, "model": "auth", "api_key": SECRET,
        "timeout_seconds": "5", "concurrency": "2", "stop_text": "END\n###", "is_active": "on",
    })
    assert response.status_code == 302, response.content.decode()[:2000]
    endpoint = ModelEndpoint.objects.get(name="page endpoint")
    assert endpoint.stop == ["END", "###"] and endpoint.has_api_key
    # the edit page never fills the key in; saving with the box empty keeps it
    edit = client.get(f"/manage/endpoints/{endpoint.pk}/")
    assert SECRET not in edit.content.decode() and "A key is stored." in edit.content.decode()
    client.post(f"/manage/endpoints/{endpoint.pk}/", {
        "name": "page endpoint", "base_url": fault_server.base_url, "model": "auth", "api_key": "",
        "timeout_seconds": "5", "concurrency": "2", "is_active": "on",
    })
    endpoint.refresh_from_db()
    assert decrypt_key(endpoint.api_key_encrypted) == SECRET and endpoint.stop == []
    listing = client.post(f"/manage/endpoints/{endpoint.pk}/test/", follow=True).content.decode()
    assert "refused the API key" in listing
    bad = client.post("/manage/endpoints/new/", {"name": "bad", "base_url": "not a url", "model": "m", "timeout_seconds": "5", "concurrency": "1"})
    assert bad.status_code == 200 and "Nothing was saved" in bad.content.decode()
    for text in (listing, edit.content.decode(), caplog.text):
        assert SECRET not in text


def test_the_projects_policies_are_built_in_endpoints(db, project, tiny_policy_dir, settings):
    settings.DEFAULT_POLICY_PATH = tiny_policy_dir
    sync_policy_endpoints(project)
    active = ModelEndpoint.objects.get(builtin=f"active-policy:{project.pk}")
    assert active.model == str(tiny_policy_dir) and active.model_version_id is None
    assert active.spec().base_url == settings.POLICY_SERVER_URL
    v1 = ModelVersion.objects.create(project=project, kind="policy", number=1, artifact_path="/models/v1")
    v2 = ModelVersion.objects.create(project=project, kind="policy", number=2, artifact_path="/models/v2", parent=v1)
    ModelVersion.objects.create(project=project, kind="policy", number=3, artifact_path="/models/v3")  # never promoted
    promote_version(version=v1)
    promote_version(version=v2)
    sync_policy_endpoints(project)  # what promote_version schedules after its commit (tests run in one transaction)
    active.refresh_from_db()
    assert (active.model, active.model_version_id) == ("/models/v2", v2.pk)
    versions = dict(ModelEndpoint.objects.filter(builtin__startswith="policy-version:").values_list("model", "name"))
    assert versions == {"/models/v1": "test project: policy v1", "/models/v2": "test project: policy v2"}
    roll_back(project=project, kind="policy", to="builtin")
    sync_policy_endpoints(project)
    active.refresh_from_db()
    assert (active.model, active.model_version_id) == (str(tiny_policy_dir), None)


def test_a_builtin_endpoint_keeps_where_it_points(admin_api, project):
    sync_policy_endpoints(project)
    active = ModelEndpoint.objects.get(builtin=f"active-policy:{project.pk}")
    response = admin_api.patch(f"/api/v1/endpoints/{active.pk}/", {"model": "/etc"}, format="json")
    assert response.status_code == 400 and response.json()["field"] == "model"
    assert admin_api.patch(f"/api/v1/endpoints/{active.pk}/", {"temperature": 0.5, "max_tokens": 32}, format="json").status_code == 200


def test_the_live_page_settings_on_the_project_console(client, admin_user, project, fault_server):
    a = ModelEndpoint.objects.create(name="first", base_url=fault_server.base_url, model="ok")
    ModelEndpoint.objects.create(name="second", base_url=fault_server.base_url, model="echo")
    ModelEndpoint.objects.create(name="switched off", base_url=fault_server.base_url, model="ok", is_active=False)
    client.force_login(admin_user)
    page = client.get(f"/manage/projects/{project.pk}/live/").content.decode()
    assert "first" in page and "second" in page and "switched off" not in page
    response = client.post(f"/manage/projects/{project.pk}/live/", {
        "enabled": "on", "endpoints": [a.pk], "pairing": "balanced", "max_turns": "4", "max_prompt_chars": "500",
        "max_tokens": "64", "turns_per_hour": "30", "reveal_sources": "on",
    })
    assert response.status_code == 302
    rules = ProjectLiveSettings.objects.get(project=project)
    assert (rules.enabled, rules.pairing, rules.max_turns, rules.reveal_sources) == (True, "balanced", 4, True)
    assert list(rules.endpoints.all()) == [a]
    bad = client.post(f"/manage/projects/{project.pk}/live/", {"enabled": "on", "pairing": "x", "max_turns": "0", "max_prompt_chars": "1",
                                                               "max_tokens": "1", "turns_per_hour": "1"})
    assert bad.status_code == 200 and "Nothing was saved" in bad.content.decode()
    assert ProjectLiveSettings.objects.get(project=project).max_turns == 4
