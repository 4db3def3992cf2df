"""Management commands, the demo set, and production settings."""

import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from django.test import RequestFactory
from django.contrib.auth import authenticate
from django.core.management import call_command
from django.core.management.base import CommandError

from labeling.management.commands.seed_demo import DEMO_ACCOUNTS, DEMO_FILE, DEMO_PROJECT
from labeling.models import ComparisonTask, Project, Response
from labeling.services import ADMINS_GROUP, ANNOTATORS_GROUP

ROOT = Path(__file__).resolve().parent.parent


def test_demo_set_is_large_varied_and_ranked():
    items = [json.loads(line) for line in DEMO_FILE.read_text().splitlines()]
    assert len(items) >= 120
    categories = Counter(item["metadata"]["category"] for item in items)
    assert set(categories) == {"coding", "writing", "advice", "facts", "safety", "multi_turn"}
    assert min(categories.values()) >= 15
    for item in items:
        assert 2 <= len(item["responses"]) <= 4
        assert sorted(item["metadata"]["ranking"]) == list(range(len(item["responses"])))
    assert sum(1 for item in items if "messages" in item and len(item["messages"]) >= 3) >= 15


def test_seed_demo_loads_project_gold_and_accounts(db):
    out = io.StringIO()
    call_command("seed_demo", stdout=out)
    project = Project.objects.get(name=DEMO_PROJECT)
    assert ComparisonTask.objects.filter(project=project).count() >= 120
    assert ComparisonTask.objects.filter(project=project, is_gold=True).count() >= 2
    # replies from named sources, so that the quality page's leaderboard ranks models (#19)
    named = set(Response.objects.filter(prompt__project=project).values_list("origin", flat=True))
    assert {"demo-careful", "demo-quick", "demo-sloppy"} <= named and "demo.jsonl" not in named
    for username, password, is_admin in DEMO_ACCOUNTS:
        assert f"{username} / {password}" in out.getvalue()
        user = authenticate(RequestFactory().post("/accounts/login/"), username=username, password=password)
        assert user is not None and user.groups.filter(name=ANNOTATORS_GROUP).exists()
        assert user.groups.filter(name=ADMINS_GROUP).exists() == is_admin
    call_command("seed_demo", stdout=io.StringIO())  # a second run changes nothing
    assert ComparisonTask.objects.filter(project=project).count() == len(DEMO_FILE.read_text().splitlines())


def test_create_annotator_prints_a_token_and_rejects_bad_names(db):
    out = io.StringIO()
    call_command("create_annotator", "dora", "--password", "s3cret-pass", stdout=out)
    assert "API token:" in out.getvalue()
    with pytest.raises(CommandError):
        call_command("create_annotator", "bad name!", "--password", "x", stdout=io.StringIO())


def test_export_command_rejects_unknown_project(db, tmp_path):
    with pytest.raises(CommandError, match="no project"):
        call_command("export_preferences", "--project", "nope", "--format", "trl", "--out", str(tmp_path / "x"))


def test_check_deploy_reports_nothing_with_production_settings(tmp_path):
    env = {
        **os.environ,
        "DEBUG": "0",
        "SECRET_KEY": "k" * 20 + "-production-secret-" + "x1y2z3" * 5,
        "ALLOWED_HOSTS": "feedback.example.org",
        "VAR_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_a_secret(tmp_path):
    env = {**os.environ, "DEBUG": "0", "SECRET_KEY": "", "VAR_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "SECRET_KEY must be set" in result.stderr
