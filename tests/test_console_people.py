"""People pages (#9) without a browser: who may open them, adding annotators and admins,
passwords, API tokens, deactivation, roles, and project assignment enforced on the home
page, the label and guidelines pages and the REST API."""

import re
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from labeling.exceptions import NotYourAssignment
from labeling.models import Assignment, Judgement, Project
from labeling.services import ADMINS_GROUP, assign_next_task, create_annotator, set_assigned_projects

from .conftest import import_items, make_items

PASSWORD = "people-pass-7Hq2x"
User = get_user_model()


@pytest.fixture
def boss(db):
    return create_annotator(username="boss", password=PASSWORD, is_admin=True)


@pytest.fixture
def kim(db):
    return create_annotator(username="kim", password=PASSWORD)


@pytest.fixture
def lee(db):
    return create_annotator(username="lee", password=PASSWORD)


@pytest.fixture
def boss_client(boss):
    client = Client()
    client.force_login(boss)
    return client


@pytest.fixture
def closed_project(db):
    project = Project.objects.create(name="closed project", overlap_k=1, gold_rate=0, open_to_all=False)
    import_items(project, make_items(3, prefix="closed"))
    return project


@pytest.fixture
def open_project(db):
    project = Project.objects.create(name="open project", overlap_k=1, gold_rate=0)
    import_items(project, make_items(3, prefix="open"))
    return project


def person_url(user, action=""):
    return reverse(f"console:person{'_' + action if action else ''}", args=[user.pk])


def token_client(key):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def signs_in(client, username, password) -> bool:
    client.post("/accounts/login/", {"username": username, "password": password})
    return "_auth_user_id" in client.session


def page_messages(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def api_names(client) -> list[str]:
    return [project["name"] for project in client.get("/api/v1/projects/").json()["results"]]


def home_projects(client) -> list[str]:
    html = client.get(reverse("labeling:home")).content.decode()
    return re.findall(r'<strong class="project-name">([^<]*)</strong>', html)


# ----------------------------------------------------------------------------- who may open the pages


def all_people_urls(someone):
    gets = [reverse("console:people"), reverse("console:person_create"), person_url(someone)]
    posts = [reverse("console:person_create")] + [
        person_url(someone, action) for action in ("password", "token", "deactivate", "reactivate", "role", "projects")
    ]
    return gets, posts


def test_anonymous_visitors_are_sent_to_sign_in(client, kim):
    gets, posts = all_people_urls(kim)
    for url in gets + posts:
        response = client.post(url, {"password": "x" * 20}) if url in posts else client.get(url)
        assert response.status_code == 302 and response["Location"].startswith(f"/accounts/login/?next={url}"), url
    kim.refresh_from_db()
    assert kim.is_active and kim.check_password(PASSWORD)


def test_annotators_get_the_apps_403_and_change_nothing(client, kim, lee, closed_project):
    client.force_login(kim)
    token = Token.objects.get(user=lee).key
    gets, posts = all_people_urls(lee)
    for url in gets:
        response = client.get(url)
        assert response.status_code == 403 and b"for labeling admins" in response.content, url
    bodies = {"password": "a-much-better-pass-1", "role": "admin", "projects": [closed_project.pk],
              "username": "sneaky", "is_admin": "on"}
    for url in posts:
        assert client.post(url, bodies).status_code == 403, url
    lee.refresh_from_db()
    assert lee.is_active and not lee.is_staff and lee.check_password(PASSWORD)
    assert Token.objects.get(user=lee).key == token and not lee.assigned_projects.exists()
    assert not User.objects.filter(username="sneaky").exists()


def test_change_urls_answer_get_with_405(boss_client, kim):
    for action in ("password", "token", "deactivate", "reactivate", "role", "projects"):
        assert boss_client.get(person_url(kim, action)).status_code == 405
    kim.refresh_from_db()
    assert kim.is_active


# ----------------------------------------------------------------------------- the list


def test_list_shows_role_status_judgements_last_login_and_assignments(boss_client, boss, kim, lee, closed_project):
    kim.last_login = timezone.now() - timedelta(days=1)
    kim.save()
    closed_project.annotators.add(kim)
    assignment = assign_next_task(project=closed_project, annotator=kim)
    Judgement.objects.create(task=assignment.task, annotator=kim, assignment=assignment, choice="tie",
                             ranking=[assignment.display_order], display_order=assignment.display_order)
    gone = create_annotator(username="gone", password=PASSWORD)
    gone.is_active = False
    gone.save()

    response = boss_client.get(reverse("console:people"))
    assert response.status_code == 200
    html = response.content.decode()
    rows = {m.group(1): m.group(0) for m in re.finditer(r'<tr data-username="([^"]+)".*?</tr>', html, re.DOTALL)}
    assert set(rows) == {"boss", "kim", "lee"}  # deactivated people are hidden by default
    assert "badge admin" in rows["boss"] and "(you)" in rows["boss"] and "every project" in rows["boss"]
    assert ">annotator<" in rows["kim"] and "closed project" in rows["kim"]
    assert re.search(r'judgement-count">1<', rows["kim"]) and re.search(r'judgement-count">0<', rows["lee"])
    assert kim.last_login.astimezone(timezone.get_current_timezone()).strftime("%Y-%m-%d %H:%M") in rows["kim"]
    assert "never" in rows["lee"] and "only projects open to all" in rows["lee"]
    assert "Show deactivated (1)" in html

    everyone = boss_client.get(reverse("console:people") + "?inactive=1").content.decode()
    assert 'data-username="gone"' in everyone and "deactivated" in everyone and "Hide deactivated" in everyone


def test_user_provided_text_is_escaped(boss_client, kim):
    evil = Project.objects.create(name='<script>alert("x")</script>', open_to_all=False)
    response = boss_client.post(person_url(kim, "projects"), {"projects": [evil.pk]}, follow=True)
    html = response.content.decode()
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html
    assert "<script>alert" not in boss_client.get(reverse("console:people")).content.decode()


# ----------------------------------------------------------------------------- adding people


def test_admin_adds_an_annotator_who_can_sign_in_and_use_the_api(boss_client, closed_project):
    response = boss_client.post(
        reverse("console:person_create"), {"username": "nora", "email": "nora@example.org", "password": PASSWORD}
    )
    nora = User.objects.get(username="nora")
    assert response.status_code == 302 and response["Location"] == person_url(nora)
    assert nora.email == "nora@example.org" and not nora.is_staff
    assert list(nora.groups.values_list("name", flat=True)) == ["annotators"]
    page = boss_client.get(response["Location"])
    assert "Added annotator “nora”" in page_messages(page)[0]
    assert Token.objects.get(user=nora).key in page.content.decode()
    assert token_client(Token.objects.get(user=nora).key).get("/api/v1/projects/").status_code == 200
    assert signs_in(Client(), "nora", PASSWORD)


def test_admin_adds_an_admin(boss_client):
    boss_client.post(reverse("console:person_create"), {"username": "ada", "password": PASSWORD, "is_admin": "on"})
    ada = User.objects.get(username="ada")
    assert ada.is_staff and not ada.is_superuser and ada.groups.filter(name=ADMINS_GROUP).exists()
    other = Client()
    other.force_login(ada)
    assert other.get(reverse("console:people")).status_code == 200


@pytest.mark.parametrize(
    "password, reason",
    [("short", "too short"), ("password123", "too common"), ("nora-smith-1", "too similar to the username")],
)
def test_a_weak_password_is_refused_with_the_validators_reason_and_the_username_kept(boss_client, password, reason):
    response = boss_client.post(reverse("console:person_create"), {"username": "nora-smith", "password": password})
    assert response.status_code == 200
    html = response.content.decode()
    assert re.search(rf'class="error field-error">Password: [^<]*{reason}', html), html
    assert 'value="nora-smith"' in html and f'value="{password}"' not in html  # the username kept, the password never echoed
    assert not User.objects.filter(username="nora-smith").exists()


def test_an_existing_username_is_refused_in_any_letter_case(boss_client, kim):
    for name in ("kim", "KIM"):
        response = boss_client.post(reverse("console:person_create"), {"username": name, "password": "another-pass-93kd"})
        assert response.status_code == 200
        assert "Username: a user with this username already exists" in response.content.decode()
    kim.refresh_from_db()
    assert kim.check_password(PASSWORD) and User.objects.filter(username__iexact="kim").count() == 1


def test_the_service_refuses_an_existing_username_when_asked_for_a_new_account(kim):
    with pytest.raises(ValidationError) as raised:
        create_annotator(username="kim", password="another-pass-93kd", only_new=True)
    assert "username" in raised.value.error_dict
    kim.refresh_from_db()
    assert kim.check_password(PASSWORD)


@pytest.mark.parametrize(
    "body, field",
    [
        ({"username": "bad name!", "password": PASSWORD}, "Username"),
        ({"username": "", "password": PASSWORD}, "Username"),
        ({"username": "x" * 151, "password": PASSWORD}, "Username"),
        ({"username": "nora", "email": "not-an-address", "password": PASSWORD}, "Email"),
        ({"username": "nora", "password": ""}, "Password"),
    ],
)
def test_invalid_input_names_the_field(boss_client, body, field):
    response = boss_client.post(reverse("console:person_create"), body)
    assert response.status_code == 200
    assert f'class="error field-error">{field}: ' in response.content.decode()
    assert not User.objects.exclude(username="boss").exists()


# ----------------------------------------------------------------------------- passwords


def test_password_reset_works_refuses_weak_ones_and_ends_the_old_sessions(boss_client, kim):
    kim_client = Client()
    kim_client.force_login(kim)
    weak = boss_client.post(person_url(kim, "password"), {"password": "password1"})
    assert weak.status_code == 200 and "New password: " in weak.content.decode()
    kim.refresh_from_db()
    assert kim.check_password(PASSWORD)
    assert kim_client.get(reverse("labeling:home")).status_code == 200

    done = boss_client.post(person_url(kim, "password"), {"password": "fresh-pass-4410x"})
    assert done.status_code == 302 and done["Location"] == person_url(kim)
    assert "Password of “kim” changed" in page_messages(boss_client.get(person_url(kim)))[0]
    assert kim_client.get(reverse("labeling:home")).status_code == 302  # the old session ended
    assert signs_in(Client(), "kim", "fresh-pass-4410x")
    assert not signs_in(Client(), "kim", PASSWORD)


def test_a_password_reset_lifts_a_sign_in_lockout(boss_client, kim):
    stranger = Client()
    for i in range(settings.AXES_FAILURE_LIMIT):
        stranger.post("/accounts/login/", {"username": "kim", "password": "wrong"}, REMOTE_ADDR=f"10.3.0.{i + 1}")
    kim_client = Client()
    locked = kim_client.post("/accounts/login/", {"username": "kim", "password": PASSWORD}, REMOTE_ADDR="10.3.1.1")
    assert locked.status_code == 429
    boss_client.post(person_url(kim, "password"), {"password": "fresh-pass-4410x"})
    ok = kim_client.post("/accounts/login/", {"username": "kim", "password": "fresh-pass-4410x"}, REMOTE_ADDR="10.3.1.1")
    assert ok.status_code == 302 and kim_client.session["_auth_user_id"] == str(kim.pk)


def test_an_admin_changing_their_own_password_stays_signed_in(boss_client, boss):
    boss_client.post(person_url(boss, "password"), {"password": "corner-office-new-77q"})
    boss.refresh_from_db()
    assert boss.check_password("corner-office-new-77q")
    assert boss_client.get(reverse("console:people")).status_code == 200


# ----------------------------------------------------------------------------- API tokens


def test_the_token_is_shown_created_when_missing_and_rotation_stops_the_old_one(boss_client, kim, open_project):
    Token.objects.filter(user=kim).delete()
    page = boss_client.get(person_url(kim)).content.decode()
    old = Token.objects.get(user=kim).key
    assert f'<code id="api-token">{old}</code>' in page
    assert token_client(old).get("/api/v1/projects/").status_code == 200

    response = boss_client.post(person_url(kim, "token"))
    assert response.status_code == 302 and response["Location"] == person_url(kim)
    new = Token.objects.get(user=kim).key
    assert new != old
    assert token_client(old).get("/api/v1/projects/").status_code == 401
    assert token_client(new).post(f"/api/v1/projects/{open_project.pk}/next-task/").status_code == 200
    after = boss_client.get(person_url(kim))
    assert new in after.content.decode() and old not in after.content.decode()
    assert "old one no longer works" in page_messages(after)[0]


# ----------------------------------------------------------------------------- deactivation


def test_deactivation_ends_leases_and_blocks_sign_in_and_api(boss_client, kim, lee, open_project):
    kim_client = Client()
    kim_client.force_login(kim)
    key = Token.objects.get(user=kim).key
    held = assign_next_task(project=open_project, annotator=kim)
    other_project = Project.objects.create(name="second", overlap_k=1, gold_rate=0)
    import_items(other_project, make_items(1, prefix="second"))
    assign_next_task(project=other_project, annotator=kim)

    response = boss_client.post(person_url(kim, "deactivate"))
    assert response.status_code == 302
    assert "2 open tasks went back to the pool" in page_messages(boss_client.get(person_url(kim)))[0]
    kim.refresh_from_db()
    assert not kim.is_active
    assert not Assignment.objects.filter(annotator=kim, state="leased", expires_at__gt=timezone.now()).exists()
    assert Assignment.objects.filter(annotator=kim).count() == 2  # kept: kim is never served them again
    # the single-overlap tasks went back to the pool: lee gets them now
    assert assign_next_task(project=other_project, annotator=lee).task_id == Assignment.objects.get(
        annotator=kim, task__project=other_project).task_id
    assert token_client(key).post(f"/api/v1/assignments/{held.pk}/submit/", {"choice": "tie"}, format="json").status_code == 401
    assert token_client(key).get("/api/v1/projects/").status_code == 401
    assert kim_client.get(reverse("labeling:home")).status_code == 302  # the session no longer signs kim in
    assert not signs_in(Client(), "kim", PASSWORD)
    with pytest.raises(NotYourAssignment):  # the lease request that waited on the lock finds the account off
        assign_next_task(project=open_project, annotator=kim)

    assert boss_client.post(person_url(kim, "reactivate")).status_code == 302
    kim.refresh_from_db()
    assert kim.is_active and signs_in(Client(), "kim", PASSWORD)
    assert token_client(key).get("/api/v1/projects/").status_code == 200


def test_an_admin_cannot_deactivate_themself(boss_client, boss):
    page = boss_client.get(person_url(boss)).content.decode()
    assert 'id="deactivate"' not in page and "cannot deactivate your own account" in page
    response = boss_client.post(person_url(boss, "deactivate"), follow=True)
    assert "Not deactivated: you cannot deactivate your own account." in page_messages(response)
    boss.refresh_from_db()
    assert boss.is_active


# ----------------------------------------------------------------------------- roles


def test_role_changes_both_ways_and_nobody_demotes_themself(boss_client, boss, kim):
    assert boss_client.post(person_url(kim, "role"), {"role": "admin"}).status_code == 302
    kim.refresh_from_db()
    assert kim.is_staff and kim.groups.filter(name=ADMINS_GROUP).exists()
    kim_client = Client()
    kim_client.force_login(kim)
    assert kim_client.get(reverse("console:people")).status_code == 200

    assert boss_client.post(person_url(kim, "role"), {"role": "annotator"}).status_code == 302
    kim.refresh_from_db()
    assert not kim.is_staff and not kim.groups.filter(name=ADMINS_GROUP).exists() and kim.groups.filter(name="annotators").exists()
    assert kim_client.get(reverse("console:people")).status_code == 403

    own = boss_client.post(person_url(boss, "role"), {"role": "annotator"})
    assert own.status_code == 200 and "Role: you cannot remove your own admin role" in own.content.decode()
    boss.refresh_from_db()
    assert boss.is_staff and boss.groups.filter(name=ADMINS_GROUP).exists()

    bad = boss_client.post(person_url(kim, "role"), {"role": "superuser"})
    assert bad.status_code == 200 and "Role: Select a valid choice" in bad.content.decode()


def test_a_labeling_admin_cannot_change_a_superuser(boss_client, kim):
    root = User.objects.create_superuser("root", password=PASSWORD)
    root_token = Token.objects.create(user=root).key
    page = boss_client.get(person_url(root)).content.decode()
    assert "only a superuser can change a superuser" in page and root_token not in page and "password-form" not in page
    for action, body in (("password", {"password": "taken-over-pass-1"}), ("token", {}), ("deactivate", {}), ("role", {"role": "annotator"})):
        assert boss_client.post(person_url(root, action), body).status_code == 403
    root.refresh_from_db()
    assert root.check_password(PASSWORD) and root.is_active and Token.objects.get(user=root).key == root_token


# ----------------------------------------------------------------------------- project assignment


def test_assignment_decides_what_an_annotator_sees_and_may_lease(client, boss_client, kim, lee, closed_project, open_project):
    client.force_login(kim)
    api = token_client(Token.objects.get(user=kim).key)
    label, guidelines = reverse("labeling:label", args=[closed_project.pk]), reverse("labeling:guidelines", args=[closed_project.pk])

    assert home_projects(client) == ["open project"]
    refused = client.get(label)
    assert refused.status_code == 403 and b"not open to you" in refused.content
    assert client.get(guidelines).status_code == 403
    next_task = api.post(f"/api/v1/projects/{closed_project.pk}/next-task/")
    assert next_task.status_code == 403 and next_task.json()["code"] == "forbidden"
    assert api_names(api) == ["open project"]
    assert api.get(f"/api/v1/projects/{closed_project.pk}/").status_code == 404
    assert [p["project"] for p in api.get("/api/v1/me/stats/").json()["projects"]] == ["open project"]
    assert not Assignment.objects.filter(annotator=kim).exists()

    response = boss_client.post(person_url(kim, "projects"), {"projects": [closed_project.pk]})
    assert response.status_code == 302
    assert "“kim” is assigned to “closed project”." in page_messages(boss_client.get(person_url(kim)))
    assert list(kim.assigned_projects.all()) == [closed_project]

    assert home_projects(client) == ["closed project", "open project"]
    assert client.get(label).status_code == 200 and client.get(guidelines).status_code == 200
    assert api.post(f"/api/v1/projects/{closed_project.pk}/next-task/").status_code == 200
    assert api_names(api) == ["closed project", "open project"]
    # lee, not assigned, still sees only the open project; the admin sees both
    lee_client = Client()
    lee_client.force_login(lee)
    assert home_projects(lee_client) == ["open project"]
    assert home_projects(boss_client) == ["closed project", "open project"]
    assert lee_client.get(reverse("labeling:label", args=[open_project.pk])).status_code == 200


def test_an_annotator_without_projects_is_told_how_to_get_one(client, kim, closed_project):
    client.force_login(kim)
    html = client.get(reverse("labeling:home")).content.decode()
    assert "No projects open to you yet" in html and "closed project" not in html


def test_unassigning_keeps_the_held_lease_but_serves_no_new_one(boss_client, kim, closed_project):
    set_assigned_projects(user=kim, projects=[closed_project], by=kim)
    api = token_client(Token.objects.get(user=kim).key)
    leased = api.post(f"/api/v1/projects/{closed_project.pk}/next-task/").json()
    assert boss_client.post(person_url(kim, "projects"), {}).status_code == 302  # nothing ticked: unassigned
    assert not kim.assigned_projects.exists()
    assert api.post(f"/api/v1/assignments/{leased['assignment_id']}/submit/", {"choice": "tie"}, format="json").status_code == 201
    assert api.post(f"/api/v1/projects/{closed_project.pk}/next-task/").status_code == 403
    assert Assignment.objects.filter(annotator=kim).count() == 1


def test_an_unknown_project_is_a_form_error_naming_the_field(boss_client, kim, closed_project):
    response = boss_client.post(person_url(kim, "projects"), {"projects": [closed_project.pk, 987654]})
    assert response.status_code == 200
    assert "Assigned projects: Select a valid choice. 987654 is not one of the available choices." in response.content.decode()
    garbage = boss_client.post(person_url(kim, "projects"), {"projects": ["x"]})
    assert garbage.status_code == 200 and "Assigned projects: " in garbage.content.decode()
    assert not kim.assigned_projects.exists()


def test_person_page_marks_open_and_archived_projects(boss_client, kim, closed_project, open_project):
    Project.objects.create(name="old project", is_active=False, open_to_all=False)
    closed_project.annotators.add(kim)
    html = boss_client.get(person_url(kim)).content.decode()
    boxes = dict(re.findall(r'<label for="[^"]+"><input type="checkbox" name="projects" value="(\d+)"([^>]*)>', html))
    assert "checked" in boxes[str(closed_project.pk)] and "checked" not in boxes[str(open_project.pk)]
    assert "(open to all: seen anyway)" in html and "(archived)" in html


# ----------------------------------------------------------------------------- the REST API's project fields


def test_projects_api_reads_and_writes_open_to_all_and_annotators_for_admins_only(kim, lee, boss):
    admin_api = token_client(Token.objects.get(user=boss).key)
    created = admin_api.post("/api/v1/projects/", {"name": "api project", "open_to_all": False, "annotators": [kim.pk]}, format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["open_to_all"] is False and body["annotators"] == [kim.pk]
    project = Project.objects.get(name="api project")

    kim_api = token_client(Token.objects.get(user=kim).key)
    listed = kim_api.get("/api/v1/projects/").json()["results"]
    assert [p["name"] for p in listed] == ["api project"] and "annotators" not in listed[0]
    assert api_names(token_client(Token.objects.get(user=lee).key)) == []

    patched = admin_api.patch(f"/api/v1/projects/{project.pk}/", {"annotators": [kim.pk, lee.pk]}, format="json")
    assert patched.status_code == 200 and sorted(patched.json()["annotators"]) == sorted([kim.pk, lee.pk])
    assert admin_api.patch(f"/api/v1/projects/{project.pk}/", {"description": "kept"}, format="json").json()["annotators"]
    for bad in ([987654], ["x"], "kim", [1.5], [str(kim.pk)], [True], None):
        refused = admin_api.patch(f"/api/v1/projects/{project.pk}/", {"annotators": bad}, format="json")
        assert refused.status_code == 400 and "annotators" in refused.json(), bad
    assert kim_api.patch(f"/api/v1/projects/{project.pk}/", {"annotators": [kim.pk]}, format="json").status_code == 403
    assert set(project.annotators.values_list("pk", flat=True)) == {kim.pk, lee.pk}

    old_client = admin_api.post("/api/v1/projects/", {"name": "old client"}, format="json").json()
    assert old_client["open_to_all"] is True and old_client["annotators"] == []  # existing clients: open to all


@pytest.mark.parametrize("password", ["alicealice", "Alice-2026-long", "my-ALICE-pass"])
def test_passwords_that_contain_the_username_are_refused(password, db):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError, match="contains the username"):
        create_annotator(username="alice", password=password)
    create_annotator(username="al", password="al-is-short-enough")  # two letters say nothing


def test_the_person_page_with_the_token_is_never_cached(client, admin_user, annotator):
    client.force_login(admin_user)
    response = client.get(f"/manage/people/{annotator.pk}/")
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]


def test_a_labeling_admin_cannot_pause_a_superuser_and_ids_are_ascii(client, admin_user, project):
    from django.contrib.auth import get_user_model

    from labeling.models import AnnotatorPause

    boss = get_user_model().objects.create_superuser("chief", password="the-top-password-9")
    client.force_login(admin_user)
    page = client.post(f"/manage/projects/{project.pk}/quality/pause/", {"annotator": str(boss.pk), "action": "pause", "reason": "x"}, follow=True)
    assert "Not paused" in page.content.decode() and not AnnotatorPause.objects.exists()
    fullwidth = "".join(chr(ord("０") + int(d)) for d in str(admin_user.pk))  # "１" is not user 1
    page = client.post(f"/manage/projects/{project.pk}/quality/pause/", {"annotator": fullwidth, "action": "pause"}, follow=True)
    assert "no such person" in page.content.decode() and not AnnotatorPause.objects.exists()
