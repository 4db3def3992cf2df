"""Issue #8, part 1, 2 and 5: inputs that used to draw a 500 (or corrupt an import) get a 400
naming the field and the reason, change nothing, and the import / submit edge cases hold."""

import io
import json
import tracemalloc

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from labeling.exceptions import ImportFailed
from labeling.importing.services import import_stream
from labeling.models import Assignment, ComparisonTask, Judgement, Project
from labeling.services import assign_next_task
from training.models import TrainingRun
from training.services import validate_run_config
from training.exceptions import InvalidTrainingRequest

from .conftest import import_items, make_items

DEEP = b"[" * 100_000 + b"]" * 100_000


def api(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


def counts():
    return (Project.objects.count(), ComparisonTask.objects.count(), Judgement.objects.count(), TrainingRun.objects.count())


# --------------------------------------------------------------------------- 1. query parameters


LIST_URLS = ["/api/v1/tasks/", "/api/v1/annotators/stats/", "/api/v1/training-runs/", "/api/v1/model-versions/"]


@pytest.mark.parametrize("value", ["abc", "1.5", "-3", "0", "99999999999999999999999"])
@pytest.mark.parametrize("url", LIST_URLS)
def test_a_bad_project_filter_is_a_400_naming_it(url, value, admin_user):
    response = api(admin_user).get(url, {"project": value})
    assert response.status_code == 400, (url, value, response.content)
    assert "project" in response.json()


@pytest.mark.parametrize("url, field, value", [
    ("/api/v1/tasks/", "status", "bogus"),
    ("/api/v1/tasks/", "is_gold", "maybe"),
    ("/api/v1/training-runs/", "kind", "bogus"),
    ("/api/v1/training-runs/", "status", "bogus"),
    ("/api/v1/model-versions/", "kind", "bogus"),
])
def test_other_bad_filters_are_400s(url, field, value, admin_user):
    response = api(admin_user).get(url, {field: value})
    assert response.status_code == 400 and field in response.json()


def test_good_filters_still_filter(project, admin_user):
    import_items(project, make_items(3))
    other = Project.objects.create(name="other")
    import_items(other, make_items(2, prefix="other"))
    body = api(admin_user).get("/api/v1/tasks/", {"project": str(project.pk), "is_gold": "false"}).json()
    assert body["count"] == 3
    assert api(admin_user).get("/api/v1/training-runs/", {"project": str(project.pk), "kind": "reward"}).status_code == 200


@pytest.mark.parametrize("value", ["abc", "1.5", "-1", "²"])
def test_dashboard_bad_project_is_a_plain_400(client, admin_user, value):
    client.force_login(admin_user)
    response = client.get("/training/", {"project": value})
    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/plain") and b"project" in response.content


def test_until_at_the_end_of_the_calendar_is_no_upper_bound(project, tasks, annotator, admin_user):
    assignment = assign_next_task(project=project, annotator=annotator)
    api(annotator).post(f"/api/v1/assignments/{assignment.pk}/submit/", {"choice": "tie"}, format="json")
    judgements = api(admin_user).get("/api/v1/judgements/", {"until": "9999-12-31", "since": "0001-01-01"})
    assert judgements.status_code == 200 and judgements.json()["count"] == 1
    export = api(admin_user).get(f"/api/v1/projects/{project.pk}/export/", {"until": "9999-12-31", "format": "raw"})
    assert export.status_code == 200
    assert len(b"".join(export.streaming_content).splitlines()) == 1


# --------------------------------------------------------------------------- 1. JSON bodies


@pytest.mark.parametrize("path", ["submit", "projects", "runs"])
def test_json_nested_100000_deep_is_refused_before_parsing(path, project, tasks, annotator, admin_user):
    assignment = assign_next_task(project=project, annotator=annotator)
    url, user = {
        "submit": (f"/api/v1/assignments/{assignment.pk}/submit/", annotator),
        "projects": ("/api/v1/projects/", admin_user),
        "runs": ("/api/v1/training-runs/", admin_user),
    }[path]
    before = counts()
    response = api(user).post(url, DEEP, content_type="application/json")
    assert response.status_code == 400, response.content
    assert "nested deeper than" in response.json()["detail"]
    assert counts() == before


@pytest.mark.parametrize("config, where", [
    ({"prompts": "lots"}, "'prompts' must be a whole number"),
    ({"prompts": 0}, "'prompts' must be between 1"),
    ({"reward": {"lr": "fast"}}, "'reward.lr' must be a number or null"),
    ({"reward": {"epochs": 2.5}}, "'reward.epochs' must be a whole number or null"),
    ({"ppo": {"whiten_rewards": 1}}, "'ppo.whiten_rewards' must be true or false"),
    ({"ppo": {"stepz": 3}}, "'ppo.stepz' unknown setting"),
    ({"ppo": []}, "'ppo' must be an object"),
    ({"adapters": {"target_modules": [1]}}, "'adapters.target_modules' must be a string or a list of strings"),
    ({"sampling": {"n": 10**12}}, "'sampling.n' must be between"),
    ({"bogus": 1}, "'bogus' unknown key"),
])
def test_run_config_types_are_checked_when_the_run_is_asked_for(config, where, project, admin_user):
    response = api(admin_user).post("/api/v1/training-runs/", {"project": project.pk, "kind": "reward", "config": config}, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["field"] == "config" and where in response.json()["detail"]
    assert TrainingRun.objects.count() == 0


@pytest.mark.parametrize("raw, reason", [
    ('{"project": 1, "kind": "reward", "config": {"trigger": "a\\u0000b"}}', "config.trigger: contains a NUL"),
    ('{"project": 1, "kind": "reward", "config": {"trigger": "\\ud800"}}', "config.trigger: contains a NUL character or a lone surrogate"),
    ('{"project": 1, "kind": "reward", "config": {"reward": {"lr": NaN}}}', "NaN is not valid JSON"),
    ('{"project": 1, "kind": "reward", "config": {"x\\u0000": 1}}', "config (a key)"),
])
def test_unstorable_json_is_a_400(raw, reason, admin_user):
    response = api(admin_user).post("/api/v1/training-runs/", raw.encode(), content_type="application/json")
    assert response.status_code == 400, response.content
    assert reason in response.json()["detail"]
    assert TrainingRun.objects.count() == 0


def test_valid_run_configs_pass():
    config = {"prompts": 40, "seed": 3, "reward": {"lr": 1e-4, "epochs": None, "bf16": True}, "ppo": {"steps": 5, "kl_target": 6},
              "adapters": {"lora_r": 8, "target_modules": ["c_attn"]}, "processes": 2}
    assert validate_run_config(config) == config
    with pytest.raises(InvalidTrainingRequest):
        validate_run_config({"processes": 65})


@pytest.mark.parametrize("name", ["two\nlines", "tab\there", "bell\x07", "nul\x00", "  ", "line\u2028sep"])
def test_project_names_with_control_characters_are_refused(name, admin_user, project):
    created = api(admin_user).post("/api/v1/projects/", {"name": name}, format="json")
    assert created.status_code == 400 and "name" in created.content.decode(), created.content  # {"name": [...]} or the parser's "name: ..."
    updated = api(admin_user).patch(f"/api/v1/projects/{project.pk}/", {"name": name}, format="json")
    assert updated.status_code == 400 and "name" in updated.content.decode()
    project.refresh_from_db()
    assert project.name != name


def test_export_file_name_is_safe_for_any_stored_name(admin_user):
    project = Project.objects.create(name='evil"\r\nX-Injected: 1; ../../é')  # stored before names were checked
    response = api(admin_user).get(f"/api/v1/projects/{project.pk}/export/")
    assert response.status_code == 200
    disposition = response["Content-Disposition"]
    assert "\r" not in disposition and "\n" not in disposition and disposition.isascii()
    plain = disposition.split('filename="')[1].split('"')[0]
    assert plain and all(c.isalnum() or c in "._-" for c in plain)
    assert "filename*=UTF-8''evil-X-Injected-1%3B-..-..-%C3%A9-trl.jsonl" in disposition  # no quote, line break or slash


def test_export_file_name_has_no_spaces_or_colons(admin_user):
    project = Project.objects.create(name="Demo: assistant replies")
    disposition = api(admin_user).get(f"/api/v1/projects/{project.pk}/export/")["Content-Disposition"]
    assert disposition == "attachment; filename=\"Demo-assistant-replies-trl.jsonl\"; filename*=UTF-8''Demo-assistant-replies-trl.jsonl"


# --------------------------------------------------------------------------- 2. import


def jsonl(*rows: str) -> io.BytesIO:
    return io.BytesIO(("\n".join(rows) + "\n").encode("utf-8", "surrogatepass"))


GOOD = json.dumps({"prompt": "fine", "responses": ["a", "b"]})
BAD_JSON_LINES = [
    ("nul", '{"prompt": "x\\u0000", "responses": ["a", "b"]}', "NUL character"),
    ("surrogate", '{"prompt": "x", "responses": ["\\udc00", "b"]}', "lone surrogate"),
    ("nan", '{"prompt": "x", "responses": ["a", "b"], "metadata": {"score": NaN}}', "NaN is not valid JSON"),
    ("infinity", '{"prompt": "x", "responses": ["a", "b"], "metadata": {"score": -Infinity}}', "-Infinity is not valid JSON"),
    ("deep", '{"prompt": "x", "responses": ["a", "b"], "metadata": {"d": ' + "[" * 100_000 + "]" * 100_000 + "}}", "nested deeper than"),
]


@pytest.mark.parametrize("name, bad, reason", BAD_JSON_LINES, ids=[b[0] for b in BAD_JSON_LINES])
def test_bad_json_lines_are_named_and_skippable(project, name, bad, reason):
    with pytest.raises(ImportFailed) as error:
        import_stream(project=project, stream=jsonl(GOOD, bad, json.dumps({"prompt": "later", "responses": ["c", "d"]})), fmt="jsonl")
    assert error.value.errors[0][0] == 2 and reason in error.value.errors[0][1], error.value.errors
    assert ComparisonTask.objects.count() == 0
    report = import_stream(project=project, stream=jsonl(GOOD, bad, json.dumps({"prompt": "later", "responses": ["c", "d"]})), fmt="jsonl", skip_invalid=True)
    assert report.tasks_created == 2 and [line for line, _ in report.skipped] == [2]


def csv_bytes(*rows: bytes) -> io.BytesIO:
    return io.BytesIO(b"\r\n".join(rows) + b"\r\n")


def test_csv_decode_error_names_its_line_and_skips_only_it(project):
    stream = csv_bytes(b"prompt,response_1,response_2", b"one,a,b", b'"two\nstill two",a,b', b"bad \xff\xfe,a,b", b"four,a,b")
    with pytest.raises(ImportFailed) as error:
        import_stream(project=project, stream=stream, fmt="csv")
    assert error.value.errors[0][0] == 5 and "not valid UTF-8" in error.value.errors[0][1]
    stream.seek(0)
    report = import_stream(project=project, stream=stream, fmt="csv", skip_invalid=True)
    assert [line for line, _ in report.skipped] == [5]
    assert sorted(ComparisonTask.objects.values_list("prompt__messages", flat=True), key=str) == sorted(
        [[{"role": "user", "content": text}] for text in ("one", "two\nstill two", "four")], key=str
    )


def test_csv_nul_bytes_are_a_bad_line(project):
    stream = csv_bytes(b"prompt,response_1,response_2", b"one,a,b", b"t\x00wo,a,b", b"three,a,b")
    report = import_stream(project=project, stream=stream, fmt="csv", skip_invalid=True)
    assert [line for line, _ in report.skipped] == [3] and "NUL" in report.skipped[0][1]
    assert report.tasks_created == 2


def test_csv_with_a_byte_order_mark_imports(project):
    stream = csv_bytes(b"\xef\xbb\xbfprompt,response_1,response_2", b"one,a,b")
    assert import_stream(project=project, stream=stream, fmt="csv").tasks_created == 1


def test_csv_memory_stays_flat_on_a_50_mb_line(project, settings, tmp_path):
    settings.IMPORT_MAX_LINE_BYTES = 1024 * 1024
    path = tmp_path / "big.csv"
    with path.open("wb") as f:
        f.write(b"prompt,response_1,response_2\r\none,a,b\r\n")
        f.write(b'"' + b"x" * (50 * 1024 * 1024) + b'",a,b\r\n')
        f.write(b"three,a,b\r\n")
    tracemalloc.start()
    try:
        with path.open("rb") as stream:
            report = import_stream(project=project, stream=stream, fmt="csv", skip_invalid=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [line for line, _ in report.skipped] == [3] and "longer than" in report.skipped[0][1]
    assert report.tasks_created == 2
    assert peak < 16 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB while reading a 50 MiB line"


def test_a_failed_cli_import_leaves_no_project(tmp_path, db):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"prompt": "x", "responses": ["a", "b"], "metadata": {"d": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}\n")
    with pytest.raises(CommandError, match="line 1"):
        call_command("import_data", str(bad), project="fresh", fmt="jsonl", no_progress=True)
    assert not Project.objects.filter(name="fresh").exists()
    with pytest.raises(CommandError, match="--project"):
        call_command("import_data", str(bad), project="two\nlines", fmt="jsonl", no_progress=True)
    assert Project.objects.count() == 0


# --------------------------------------------------------------------------- 5. submit


def test_all_equal_ranks_with_a_strength_is_a_400(project, annotator):
    import_items(project, make_items(1, replies=3))
    assignment = assign_next_task(project=project, annotator=annotator)
    url = f"/api/v1/assignments/{assignment.pk}/submit/"
    response = api(annotator).post(url, {"choice": "ranking", "ranks": [1, 1, 1], "strength": 2}, format="json")
    assert response.status_code == 400 and response.json()["field"] == "strength"
    assert Judgement.objects.count() == 0
    assert api(annotator).post(url, {"choice": "ranking", "ranks": [1, 1, 1]}, format="json").status_code == 201


def test_submitting_to_a_deactivated_project_is_a_409(project, tasks, annotator):
    assignment = assign_next_task(project=project, annotator=annotator)
    url = f"/api/v1/assignments/{assignment.pk}/submit/"
    body = {"choice": "A", "strength": 2, "idempotency_key": "before-close"}
    assert api(annotator).post(url, body, format="json").status_code == 201
    second = assign_next_task(project=project, annotator=annotator)
    Project.objects.filter(pk=project.pk).update(is_active=False)
    response = api(annotator).post(f"/api/v1/assignments/{second.pk}/submit/", {"choice": "tie"}, format="json")
    assert response.status_code == 409 and response.json()["code"] == "project_inactive"
    assert Judgement.objects.count() == 1 and Assignment.objects.get(pk=second.pk).state == "leased"
    assert api(annotator).post(url, body, format="json").status_code == 200  # a replay of what was stored still answers


def test_page_forms_with_nul_or_broken_bytes_store_replacement_characters(client, project, tasks, annotator):
    """The comparison page's form is not JSON: a NUL (or invalid UTF-8) in the rationale or the
    skip reason reaches the service, which stores U+FFFD instead of failing at the database."""
    client.force_login(annotator)
    first = assign_next_task(project=project, annotator=annotator)
    body = b"choice=A&strength=2&rationale=a%00b%ED%A0%80c"
    response = client.post(f"/assignments/{first.pk}/submit/", data=body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 302
    stored = Judgement.objects.get(assignment=first)
    assert "\x00" not in stored.rationale and stored.rationale.startswith("a\ufffdb")
    second = assign_next_task(project=project, annotator=annotator)
    assert client.post(f"/assignments/{second.pk}/skip/", {"reason": "no\x00pe"}).status_code == 302
    assert Assignment.objects.get(pk=second.pk).skip_reason == "no\ufffdpe"
