"""Exporting: pair expansion, majority aggregation, formats, filters, HH round trip."""

import io
import json
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from labeling.exceptions import InvalidInput
from labeling.exporting import iter_export_rows, majority_pairs, ranked_pairs
from labeling.models import Judgement
from labeling.services import JudgementInput, assign_next_task, create_annotator, submit_judgement

from .conftest import import_items


def votes(*rankings_and_strengths):
    return [SimpleNamespace(ranking=r, strength=s) for r, s in rankings_and_strengths]


def test_ranked_pairs_expand_groups():
    assert list(ranked_pairs([[1], [2, 3]])) == [(1, 2), (1, 3)]
    assert list(ranked_pairs([[1, 2]])) == []  # tie / both bad: no pair
    assert list(ranked_pairs([[3], [1], [2]])) == [(3, 1), (3, 2), (1, 2)]


@pytest.mark.parametrize(
    "judgements, expected",
    [
        (votes(([[1], [2]], 2), ([[1], [2]], 4), ([[2], [1]], 1)), [(1, 2, 3.0)]),  # 2 vs 1
        (votes(([[1], [2]], 2), ([[2], [1]], 3)), []),  # split
        (votes(([[1], [2]], 2), ([[1, 2]], None), ([[1, 2]], None)), []),  # ties win
        (votes(([[1], [2]], 2), ([[1], [2]], 2), ([[1, 2]], None)), [(1, 2, 2.0)]),  # 2 beat 1 tie
        (votes(([[1], [2]], None),), [(1, 2, 0.0)]),  # imported label, no strength
        (votes(([[3], [1, 2]], 1), ([[3], [1], [2]], 3)), [(3, 1, 2.0), (3, 2, 2.0)]),  # 1 vs 2: 1 win, 1 level
    ],
)
def test_majority_rule(judgements, expected):
    assert majority_pairs(judgements) == expected


@pytest.fixture
def judged_project(project):
    import_items(project, [{"prompt": "Capital of France?", "responses": ["Paris.", "Lyon."]}])
    import_items(project, [{"messages": [{"role": "user", "content": "hi"}], "responses": ["hello", "go away"]}])
    project.overlap_k = 3
    project.save()
    for name in ("u1", "u2", "u3"):
        user = create_annotator(username=name, password="a-long-test-pass")
        while (assignment := assign_next_task(project=project, annotator=user)) is not None:
            texts = {r.pk: r.text for r in assignment.task.responses.all()}
            first_good = texts[assignment.display_order[0]] in ("Paris.", "hello")
            choice = "tie" if name == "u3" else ("A" if first_good else "B")
            strength = None if choice == "tie" else (2 if name == "u1" else 4)
            submit_judgement(annotator=user, assignment_id=assignment.pk, judgement=JudgementInput(choice, strength))
    return project


def test_trl_per_judgement_and_majority(judged_project):
    rows = list(iter_export_rows(project=judged_project, fmt="trl"))
    assert len(rows) == 4  # 2 tasks x 2 annotators with a winner; the tie yields nothing
    plain = [r for r in rows if isinstance(r["prompt"], str)]
    assert {(r["prompt"], r["chosen"], r["rejected"]) for r in plain} == {("Capital of France?", "Paris.", "Lyon.")}
    assert sorted(r["margin"] for r in plain) == [2.0, 4.0]
    chat = [r for r in rows if isinstance(r["prompt"], list)]
    assert chat[0]["prompt"] == [{"role": "user", "content": "hi"}]
    assert chat[0]["chosen"] == [{"role": "assistant", "content": "hello"}]
    majority = list(iter_export_rows(project=judged_project, fmt="trl", aggregate="majority"))
    assert len(majority) == 2 and all(r["margin"] == 3.0 for r in majority)


def test_raw_has_everything_and_filters_apply(judged_project):
    rows = list(iter_export_rows(project=judged_project, fmt="raw"))
    assert len(rows) == 6
    row = rows[0]
    for key in ("annotator", "strength", "rationale", "flags", "time_spent_ms", "display_order", "choice", "ranking", "responses"):
        assert key in row
    assert {r["choice"] for r in rows if r["annotator"] == "u3"} == {"tie"}
    only_u1 = list(iter_export_rows(project=judged_project, fmt="raw", annotator="u1"))
    assert {r["annotator"] for r in only_u1} == {"u1"} and len(only_u1) == 2
    tomorrow = timezone.now() + timedelta(days=1)
    assert list(iter_export_rows(project=judged_project, fmt="raw", since=tomorrow)) == []
    assert len(list(iter_export_rows(project=judged_project, fmt="raw", until=tomorrow))) == 6
    with pytest.raises(InvalidInput):
        iter_export_rows(project=judged_project, fmt="raw", aggregate="majority")


HH_PAIRS = [
    {
        "chosen": "\n\nHuman: How do I boil an egg?\n\nAssistant: Put it in boiling water for 9 minutes.",
        "rejected": "\n\nHuman: How do I boil an egg?\n\nAssistant: Eggs are birds.",
    },
    {
        "chosen": "\n\nHuman: hi\n\nAssistant: hello!\n\nHuman: a joke?\n\nAssistant: Why did the chicken cross the road?",
        "rejected": "\n\nHuman: hi\n\nAssistant: hello!\n\nHuman: a joke?\n\nAssistant: no.",
    },
    {
        "chosen": "\n\nHuman: Code?\n\nAssistant: ```python\nprint('hi')\n```\nDone.",
        "rejected": "\n\nHuman: Code?\n\nAssistant: I can't.",
    },
]


def test_hh_round_trip_gives_the_same_pairs(project, tmp_path):
    source = tmp_path / "hh.jsonl"
    source.write_text("".join(json.dumps(p) + "\n" for p in HH_PAIRS))
    call_command("import_data", str(source), "--project", project.name, "--format", "hh", "--with-labels", "--no-progress", stdout=io.StringIO())
    out = tmp_path / "out.jsonl"
    call_command("export_preferences", "--project", project.name, "--format", "hh", "--out", str(out), stderr=io.StringIO())
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    key = lambda p: (p["chosen"], p["rejected"])  # noqa: E731
    assert sorted(exported, key=key) == sorted(HH_PAIRS, key=key)


def test_api_export_streams_jsonl(judged_project, admin_user):
    api = APIClient()
    api.force_authenticate(admin_user)
    response = api.get(f"/api/v1/projects/{judged_project.pk}/export/?format=trl&aggregate=majority")
    assert response.status_code == 200 and response.streaming
    rows = [json.loads(line) for line in b"".join(response.streaming_content).decode().splitlines()]
    assert len(rows) == 2
    bad = api.get(f"/api/v1/projects/{judged_project.pk}/export/?format=yaml")
    assert bad.status_code == 400 and "format" in bad.json()
    assert Judgement.objects.count() == 6
