"""Hand probes from the attacker's report in #19: charsets that are not text encodings (a
decompression bomb among them), forms in encodings Django cannot parse, numbers too large for
a float, and file names too long for the database. Each used to answer 500 (or swallow a
gigabyte); each is now a 400 that names the problem, and nothing changes."""

import io
import json
import zlib

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from labeling.models import ComparisonTask, Prompt

BOMB = zlib.compress(b'{"reason":"x"' + b" " * 10**7 + b"}")  # 10 MB inflated (the report used 1 GB)


def api(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.mark.parametrize("charset", ["zlib", "bz2", "rot13", "base64", "hex", "unicode_escape", "utf-16", "x-no-such-codec"])
def test_a_json_body_in_a_charset_that_is_not_utf8_is_refused_unread(charset, annotator, tasks):
    body = BOMB if charset == "zlib" else b'{"reason": "x"}'
    response = api(annotator).generic(
        "POST", "/api/v1/assignments/999999/skip/", body, content_type=f"application/json; charset={charset}"
    )
    assert response.status_code == 400, response.content
    assert response.json()["field"] == "Content-Type" and charset[:10] in response.json()["detail"]


@pytest.mark.parametrize("charset", ["utf-8", "UTF8", "us-ascii"])
def test_json_in_utf8_still_works(charset, admin_user, project):
    response = api(admin_user).generic("PATCH", f"/api/v1/projects/{project.pk}/", json.dumps({"description": "fine"}),
                                       content_type=f"application/json; charset={charset}")
    assert response.status_code == 200, response.content


@pytest.mark.parametrize("charset", ["utf-16", "base64", "hex", "unicode_escape", "zlib", "iso-8859-1", "us-ascii", "UTF8"])
def test_a_form_in_an_encoding_django_cannot_parse_is_a_400(client, charset):
    client.get("/accounts/login/")
    response = client.generic(
        "POST", "/accounts/login/", "username=a&password=b".encode("utf-16") if charset == "utf-16" else b"username=a&password=b",
        content_type=f"application/x-www-form-urlencoded; charset={charset}",
    )
    assert response.status_code == 400 and b"charset" in response.content


@pytest.mark.parametrize("charset", ["utf-8", "UTF-8"])
def test_a_utf8_form_still_works(client, annotator, charset):
    response = client.generic("POST", "/accounts/login/", b"username=alice&password=wonderland-key-1",
                              content_type=f"application/x-www-form-urlencoded; charset={charset}")
    assert response.status_code == 302, response.content[:300]


@pytest.mark.parametrize("number", ["1e999", "-1e400"])
def test_numbers_too_large_for_a_float_are_bad_import_lines(number, admin_user, project, tmp_path):
    lines = ('{"prompt": "fine", "responses": ["a", "b"]}\n'
             f'{{"prompt": "big", "responses": ["a", "b"], "metadata": {{"score": {number}}}}}\n').encode()
    upload = io.BytesIO(lines)
    upload.name = "numbers.jsonl"
    response = api(admin_user).post(f"/api/v1/projects/{project.pk}/import/", {"file": upload, "format": "jsonl"}, format="multipart")
    assert response.status_code == 400
    assert response.json()["errors"] == [{"line": 2, "reason": f"malformed JSON: the number {number} is too large"}]
    path = tmp_path / "numbers.jsonl"
    path.write_bytes(lines)
    with pytest.raises(CommandError, match="line 2"):
        call_command("import_data", str(path), "--project", project.name, "--format", "jsonl")
    assert not Prompt.objects.filter(project=project).exists()
    # and in a JSON body
    response = api(admin_user).post("/api/v1/training-runs/", json.dumps({"project": project.pk, "kind": "reward", "config": {"val_fraction": float("inf")}})
                                    .replace("Infinity", number), content_type="application/json")
    assert response.status_code == 400 and "too large" in response.content.decode()


def test_an_import_file_name_of_any_length(admin_user, project):
    upload = io.BytesIO(b'{"prompt": "named", "responses": ["a", "b"]}\n')
    upload.name = "n" * 300 + ".jsonl"
    response = api(admin_user).post(f"/api/v1/projects/{project.pk}/import/", {"file": upload, "format": "jsonl"}, format="multipart")
    assert response.status_code in (200, 201), response.content
    assert Prompt.objects.get(project=project).source == ("n" * 300 + ".jsonl")[:200]
    assert ComparisonTask.objects.filter(project=project).count() == 1
