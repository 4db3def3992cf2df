"""Importing: every format, all-or-nothing failures naming the line, skip-invalid, re-import."""

import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from labeling.exceptions import ImportFailed, InvalidInput
from labeling.importing.services import import_stream
from labeling.models import ComparisonTask, Judgement, Project, Prompt, Response

from .conftest import import_items, jsonl, make_items

GOOD = {"prompt": "What is 2+2?", "responses": ["4", "5"]}


def counts():
    return (Prompt.objects.count(), Response.objects.count(), ComparisonTask.objects.count(), Judgement.objects.count())


def lines(*rows: str) -> io.BytesIO:
    return io.BytesIO(("\n".join(rows) + "\n").encode())


BAD_LINES = [
    ("malformed JSON", '{"prompt": "x", "responses": ["a", "b"]', "malformed JSON"),
    ("missing field", json.dumps({"prompt": "x"}), "missing field 'responses'"),
    ("prompt wrong type", json.dumps({"prompt": 3, "responses": ["a", "b"]}), "'prompt' must be a non-empty string"),
    ("responses wrong type", json.dumps({"prompt": "x", "responses": "a"}), "'responses' must be a list"),
    ("reply wrong type", json.dumps({"prompt": "x", "responses": ["a", 7]}), "'responses[1]' must be a string"),
    ("empty reply", json.dumps({"prompt": "x", "responses": ["a", "  "]}), "'responses[1]' is empty"),
    ("duplicate replies", json.dumps({"prompt": "x", "responses": ["a", "a"]}), "same reply twice"),
    ("one reply", json.dumps({"prompt": "x", "responses": ["a"]}), "2 to 4 replies, got 1"),
    ("more than K", json.dumps({"prompt": "x", "responses": list("abcde")}), "2 to 4 replies, got 5"),
    ("not an object", json.dumps(["x"]), "must be a JSON object"),
    ("bad messages", json.dumps({"messages": [{"role": "bot", "content": "x"}], "responses": ["a", "b"]}), "role' must be one of"),
    ("ends with assistant", json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}], "responses": ["a", "b"]}), "last turn"),
    ("metadata not object", json.dumps({"prompt": "x", "responses": ["a", "b"], "metadata": [1]}), "'metadata' must be an object"),
]


@pytest.mark.parametrize("name, bad, reason", BAD_LINES, ids=[b[0] for b in BAD_LINES])
def test_one_bad_line_rejects_the_file_and_names_the_line(project, name, bad, reason):
    good = json.dumps(GOOD)
    before = counts()
    with pytest.raises(ImportFailed) as error:
        import_stream(project=project, stream=lines(good, json.dumps({**GOOD, "prompt": "other"}), bad, good), fmt="jsonl")
    assert error.value.errors[0][0] == 3
    assert reason in error.value.errors[0][1]
    assert "line 3" in error.value.message
    assert counts() == before


def test_oversized_line_is_rejected_without_reading_it_whole(project, settings):
    settings.IMPORT_MAX_LINE_BYTES = 200
    huge = json.dumps({"prompt": "x" * 1000, "responses": ["a", "b"]})
    with pytest.raises(ImportFailed) as error:
        import_stream(project=project, stream=lines(json.dumps(GOOD), huge, json.dumps({**GOOD, "prompt": "y"})), fmt="jsonl")
    assert error.value.errors == [(2, "line is longer than 200 bytes")]
    assert counts() == (0, 0, 0, 0)


def test_wrong_format_flag_names_the_first_line(project):
    with pytest.raises(ImportFailed) as error:
        import_stream(project=project, stream=lines(json.dumps(GOOD)), fmt="hh")
    assert error.value.errors[0] == (1, "missing field 'chosen'")
    with pytest.raises(InvalidInput) as unknown:
        import_stream(project=project, stream=lines(json.dumps(GOOD)), fmt="xml")
    assert unknown.value.field == "format"
    assert counts() == (0, 0, 0, 0)


def test_all_errors_are_listed(project):
    rows = [json.dumps(GOOD), "{", json.dumps({"prompt": "x"}), json.dumps({**GOOD, "prompt": "fine"}), "[]"]
    with pytest.raises(ImportFailed) as error:
        import_stream(project=project, stream=lines(*rows), fmt="jsonl")
    assert [line for line, _ in error.value.errors] == [2, 3, 5]


def test_skip_invalid_imports_valid_lines_and_reports_the_rest(project):
    rows = [json.dumps(GOOD), "{", json.dumps({"prompt": "x"}), json.dumps({**GOOD, "prompt": "fine"})]
    report = import_stream(project=project, stream=lines(*rows), fmt="jsonl", skip_invalid=True)
    assert report.tasks_created == 2
    assert [line for line, _ in report.skipped] == [2, 3]
    assert counts() == (2, 4, 2, 0)


def test_reimport_is_a_no_op_and_batches_span_many_lines(project):
    items = make_items(1203)
    first = import_items(project, items)
    assert (first.tasks_created, first.prompts_created, first.responses_created) == (1203, 1203, 2406)
    before = counts()
    again = import_items(project, items)
    assert again.tasks_created == 0 and again.tasks_already_present == 1203
    assert counts() == before


def test_duplicate_lines_within_a_file_become_one_task(project):
    report = import_items(project, [GOOD, GOOD])
    assert report.tasks_created == 1 and counts() == (1, 2, 1, 0)


def test_messages_and_metadata_are_kept(project):
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "capital of France?"},
    ]
    import_items(project, [{"messages": messages, "responses": ["Paris", "Lyon", "Nice"], "metadata": {"topic": "geo"}}])
    prompt = Prompt.objects.get()
    assert prompt.messages == messages and prompt.metadata == {"topic": "geo"} and prompt.source_format == "chat"
    task = ComparisonTask.objects.get()
    assert [tr.response.text for tr in task.task_responses.all()] == ["Paris", "Lyon", "Nice"]


def test_csv_layout(project):
    data = (
        "prompt,response_1,response_2,response_3,metadata\n"
        'What is 2+2?,4,5,,"{""k"": 1}"\n'
        '"multi\nline prompt",yes,no,maybe,\n'
    )
    report = import_stream(project=project, stream=io.BytesIO(data.encode()), fmt="csv")
    assert report.tasks_created == 2
    assert Prompt.objects.get(metadata={"k": 1}).messages[0]["content"] == "What is 2+2?"
    bad = "prompt,response_1,response_2\nfine,a,b\nbroken,a,a\n"
    with pytest.raises(ImportFailed) as error:
        import_stream(project=project, stream=io.BytesIO(bad.encode()), fmt="csv")
    assert error.value.errors[0][0] == 3 and "same reply twice" in error.value.errors[0][1]


HH_LINE = {
    "chosen": "\n\nHuman: How do I boil an egg?\n\nAssistant: Put it in boiling water for 9 minutes.",
    "rejected": "\n\nHuman: How do I boil an egg?\n\nAssistant: Eggs are birds.",
}


def test_hh_splits_the_shared_conversation_and_stores_labels(project):
    multi = {
        "chosen": "\n\nHuman: hi\n\nAssistant: hello!\n\nHuman: a joke?\n\nAssistant: Why did the chicken cross the road?",
        "rejected": "\n\nHuman: hi\n\nAssistant: hello!\n\nHuman: a joke?\n\nAssistant: no.",
    }
    report = import_items(project, [HH_LINE, multi], fmt="hh", with_labels=True)
    assert report.labels_created == 2
    prompt = Prompt.objects.get(source_format="hh", messages__0__content="hi")
    assert prompt.messages == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello!"},
        {"role": "user", "content": "a joke?"},
    ]
    label = Judgement.objects.get(task__prompt=prompt)
    assert label.annotator.username == "imported:hh" and not label.annotator.is_active
    chosen = Response.objects.get(pk=label.ranking[0][0])
    assert chosen.text == "Why did the chicken cross the road?"
    again = import_items(project, [HH_LINE, multi], fmt="hh", with_labels=True)
    assert again.labels_created == 0 and Judgement.objects.count() == 2


def test_hh_with_different_conversations_is_rejected(project):
    bad = {"chosen": HH_LINE["chosen"], "rejected": "\n\nHuman: other\n\nAssistant: x"}
    with pytest.raises(ImportFailed) as error:
        import_items(project, [HH_LINE, bad], fmt="hh")
    assert error.value.errors[0][0] == 2 and "same conversation" in error.value.errors[0][1]


def test_trl_plain_and_conversational(project):
    plain = {"prompt": "Sky colour?", "chosen": "Blue.", "rejected": "Green."}
    chat = {
        "prompt": [{"role": "user", "content": "Sky colour at night?"}],
        "chosen": [{"role": "assistant", "content": "Dark."}],
        "rejected": [{"role": "assistant", "content": "Pink."}],
    }
    report = import_items(project, [plain, chat], fmt="trl", with_labels=True)
    assert report.tasks_created == 2 and report.labels_created == 2
    assert set(Prompt.objects.values_list("source_format", flat=True)) == {"text", "chat"}
    mixed = {"prompt": "x", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"}
    with pytest.raises(ImportFailed) as error:
        import_items(project, [mixed], fmt="trl")
    assert error.value.errors[0][0] == 1


def test_with_labels_needs_a_labelled_format(project):
    with pytest.raises(InvalidInput):
        import_items(project, [GOOD], with_labels=True)


def test_command_reports_line_numbers_and_changes_nothing(tmp_path, db):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps({"prompt": "x", "responses": ["a"]}) + "\n")
    with pytest.raises(CommandError) as error:
        call_command("import_data", str(path), "--project", "cli", "--format", "jsonl", "--no-progress")
    assert "line 2" in str(error.value)
    assert not Project.objects.filter(name="cli").exists() and counts() == (0, 0, 0, 0)
    out = io.StringIO()
    call_command("import_data", str(path), "--project", "cli", "--format", "jsonl", "--skip-invalid", "--no-progress", stdout=out, stderr=io.StringIO())
    assert "1 tasks" in out.getvalue() and counts() == (1, 2, 1, 0)


def test_api_import_is_all_or_nothing(project, admin_user, client):
    from rest_framework.test import APIClient

    api = APIClient()
    api.force_authenticate(admin_user)
    bad = io.BytesIO((json.dumps(GOOD) + "\n{oops\n").encode())
    bad.name = "bad.jsonl"
    response = api.post(f"/api/v1/projects/{project.pk}/import/", {"file": bad, "format": "jsonl"}, format="multipart")
    assert response.status_code == 400
    assert response.json()["errors"][0]["line"] == 2
    assert counts() == (0, 0, 0, 0)
    good = jsonl(make_items(3))
    good.name = "good.jsonl"
    response = api.post(f"/api/v1/projects/{project.pk}/import/", {"file": good, "format": "jsonl"}, format="multipart")
    assert response.status_code == 201 and response.json()["tasks_created"] == 3
