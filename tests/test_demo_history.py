"""The demo's simulated judgement history (#20, part 3): `seed_demo --simulated-history` and
the dashboard's "Load a simulated judgement history" (a run of kind "simulate").

Here with the tiny random-init policy: what is stored, how it is marked, that people never
get these tasks and that nothing counts them as people's, and what is refused. Whether a
first full cycle then promotes a reward model and a PPO policy with the real default policy
is measured by bench/demo_cycle_bench.py (too slow for the suite)."""

import io
import json
import random
import re

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.test import APIClient

from labeling.exporting import iter_export_lines
from labeling.management.commands.seed_demo import DEMO_PROJECT
from labeling.models import ComparisonTask, Judgement, JudgementSource, Project, TaskStatus
from labeling.services import assign_next_task, create_annotator, skip_task
from training import selectors, services
from training.ml.simulated import noisy_ranking, reference_overlap
from training.models import RunStatus, TrainingRun
from training.simulated_history import ANNOTATORS, ANNOTATOR_PREFIX, demo_references

from .conftest import import_items, make_items

pytestmark = [pytest.mark.django_db]


def test_seed_demo_loads_the_policys_replies_ranked_by_simulated_annotators_and_marked(client, admin_user, tmp_path):
    """One load (the suite's only one: it samples 4 replies to each of the 135 demo prompts)
    and everything about it: what is stored, how it is marked, the annotators' rule, that
    people never get these tasks, that nothing counts them as people's, and the dashboard."""
    call_command("seed_demo", stdout=io.StringIO())
    project = Project.objects.get(name=DEMO_PROJECT)
    before = set(ComparisonTask.objects.filter(project=project).values_list("pk", flat=True))
    out = io.StringIO()
    call_command("seed_demo", "--simulated-history", stdout=out)
    run = TrainingRun.objects.get(kind="simulate")
    assert run.status == RunStatus.SUCCEEDED, run.error

    new_tasks = ComparisonTask.objects.filter(project=project).exclude(pk__in=before).prefetch_related("task_responses__response")
    references = {prompt.pk: reference for prompt, reference in demo_references(project)}
    assert run.metrics["tasks_created"] == len(new_tasks) > 0.9 * len(references)
    simulated = Judgement.objects.filter(task__in=new_tasks)
    assert run.metrics["simulated_judgements"] == simulated.count() == ANNOTATORS * len(new_tasks)
    assert f"simulated history: {simulated.count()} judgements by {ANNOTATORS} simulated annotators" in out.getvalue()
    assert set(simulated.values_list("source", flat=True)) == {JudgementSource.SIMULATED}
    for task in new_tasks:
        assert task.status == TaskStatus.COMPLETE and task.judgement_count == ANNOTATORS
        assert 2 <= task.task_responses.count() <= 4
        assert {tr.response.origin for tr in task.task_responses.all()} == {"default policy"}
    # every judgement ranks its task's replies and says that it is simulated and by which rule
    judgement = simulated.select_related("task").first()
    replies = set(judgement.task.task_responses.values_list("response_id", flat=True))
    assert sorted(r for group in judgement.ranking for r in group) == sorted(replies) == sorted(judgement.display_order)
    assert judgement.rationale.startswith("simulated annotator: ranked by word overlap with the demo's reference answer")
    # the accounts cannot log in, and their names say what they are
    people = get_user_model().objects.filter(judgements__in=simulated).distinct()
    assert sorted(p.username for p in people) == [f"{ANNOTATOR_PREFIX}{i}" for i in range(1, ANNOTATORS + 1)]
    assert all(not p.is_active and not p.has_usable_password() for p in people)
    assert "simulated judgements" in selectors.run_outcome(run)

    # the annotators follow the rule, noisily: their first choice has the highest overlap with
    # the reference answer far more often than a random pick would (the share of the replies
    # that share the highest overlap); judgements whose replies all overlap equally say nothing
    hits, chance, variance, total = 0, 0.0, 0.0, 0
    for judgement in simulated.select_related("task"):
        texts = dict(judgement.task.task_responses.values_list("response_id", "response__text"))
        overlap = {rid: reference_overlap(text, references[judgement.task.prompt_id]) for rid, text in texts.items()}
        best = max(overlap.values())
        if min(overlap.values()) == best:
            continue
        share = sum(value == best for value in overlap.values()) / len(overlap)
        hits += overlap[judgement.ranking[0][0]] == best
        chance, variance, total = chance + share, variance + share * (1 - share), total + 1
    assert total > 100
    assert hits > chance + 4 * variance**0.5, (hits, chance, total)  # 4 standard deviations above chance

    # people are never given these tasks; the training app reads them, the quality statistics do not
    assert services.human_judgement_count(project) == 0
    person = create_annotator(username="reader", password="plain-reading-7")
    for _ in range(5):
        assignment = assign_next_task(project=project, annotator=person, rng=random.Random(0))
        assert assignment.task_id in before  # only the demo's own tasks (the simulated ones are complete)
        skip_task(annotator=person, assignment_id=assignment.pk)
    assert services.reward_training_shortfall(project) is None  # a cycle may start
    api = APIClient()
    api.force_authenticate(admin_user)
    quality = api.get(f"/api/v1/projects/{project.pk}/quality/")
    assert quality.status_code == 200 and ANNOTATOR_PREFIX not in quality.content.decode()

    # exports leave them out unless asked: a trl or hh file could not say what they are
    assert list(iter_export_lines(project=project, fmt="trl")) == []
    assert len(list(iter_export_lines(project=project, fmt="trl", include_simulated=True))) >= simulated.count()
    call_command("export_preferences", "--project", DEMO_PROJECT, "--format", "raw", "--include-simulated", "--out", str(tmp_path / "all.jsonl"))
    rows = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert len(rows) == simulated.count() and {row["source"] for row in rows} == {"simulated"}
    assert api.get(f"/api/v1/projects/{project.pk}/export/", {"format": "trl"}).getvalue() == b""
    assert api.get(f"/api/v1/projects/{project.pk}/export/", {"format": "trl", "include_simulated": "true"}).getvalue()
    client.force_login(admin_user)
    download = client.get(f"/manage/projects/{project.pk}/export/", {"format": "hh", "download": "1"})
    assert b"".join(download.streaming_content) == b""

    # the project page says why its judged tasks outnumber people's judgements
    overview = client.get(f"/manage/projects/{project.pk}/").content.decode()
    assert re.search(r'id="count-judgements">0<', overview)
    assert f'<span id="count-simulated">{simulated.count()}</span> judgements of the demo\'s simulated annotators' in overview

    # the dashboard counts them and offers another round
    page = client.get("/training/", {"project": project.pk}).content.decode()
    assert f'<strong id="demo-simulated-count">{simulated.count()} simulated judgements</strong>' in page
    assert "Load another simulated round" in page


def test_seed_demo_says_why_when_the_default_policy_is_not_built(db, settings, tmp_path):
    settings.DEFAULT_POLICY_PATH = tmp_path / "policy"  # not built
    with pytest.raises(CommandError, match="no simulated history: there is no default policy"):
        call_command("seed_demo", "--simulated-history", stdout=io.StringIO())
    assert not Judgement.objects.filter(source=JudgementSource.SIMULATED).exists()


def test_refused_at_request_time_for_a_project_without_demo_prompts_or_with_one_reply(db, admin_user):
    client = APIClient()
    client.force_authenticate(admin_user)
    other = Project.objects.create(name="real work")
    import_items(other, make_items(3))
    answer = client.post("/api/v1/training-runs/", {"project": other.pk, "kind": "simulate"}, format="json")
    assert answer.status_code == 400 and answer.json()["field"] == "kind" and "demo" in answer.json()["detail"]
    call_command("seed_demo", stdout=io.StringIO())
    demo = Project.objects.get(name=DEMO_PROJECT)
    answer = client.post("/api/v1/training-runs/", {"project": demo.pk, "kind": "simulate", "config": {"replies_per_prompt": 1}}, format="json")
    assert answer.status_code == 400 and answer.json()["field"] == "replies_per_prompt"
    assert not TrainingRun.objects.exists()


def test_the_dashboard_offers_it_on_the_demo_project_only(db, client, admin_user):
    call_command("seed_demo", stdout=io.StringIO())
    demo = Project.objects.get(name=DEMO_PROJECT)
    other = Project.objects.create(name="real work")
    client.force_login(admin_user)
    page = client.get("/training/", {"project": demo.pk}).content.decode()
    assert 'id="start-simulate"' in page and 'data-kind="simulate"' in page and "simulated annotators" in page
    assert "Load a simulated judgement history" in page and "demo-simulated-count" not in page
    assert 'id="start-simulate"' not in client.get("/training/", {"project": other.pk}).content.decode()
    demo.name = "renamed"  # the card follows the demo's name; the run itself checks the prompts
    demo.save()
    assert 'id="start-simulate"' not in client.get("/training/", {"project": demo.pk}).content.decode()
    assert services.start_run(project=demo, kind="simulate", enqueue=False).kind == "simulate"


# --------------------------------------------------------------------------- the rule (training/ml/simulated.py)


def test_reference_overlap_is_the_f1_of_the_word_bags():
    assert reference_overlap("Use a list.", "use a LIST") == 1.0
    assert reference_overlap("nothing shared", "other words") == 0.0
    assert reference_overlap("", "words") == 0.0
    # 2 of 4 reply words in a 2-word reference: precision 1/2, recall 1, F1 2/3
    assert reference_overlap("sort the list now", "sort list") == pytest.approx(2 / 3)


def test_noisy_ranking_is_a_permutation_that_mostly_follows_clear_differences():
    rng = random.Random(1)
    assert noisy_ranking([0.1, 0.3, 0.2], rng, temperature=0) == [1, 2, 0]
    orders = [noisy_ranking([0.1, 0.3, 0.2], rng) for _ in range(500)]
    assert all(sorted(order) == [0, 1, 2] for order in orders)
    first = [order[0] for order in orders]
    assert first.count(1) > 400  # 0.1 apart at temperature 0.02: the best is first almost always
    even = [noisy_ranking([0.2, 0.2], rng)[0] for _ in range(500)]
    assert 150 < even.count(0) < 350  # equal qualities: a coin
    with pytest.raises(ValueError):
        noisy_ranking([0.1], rng, temperature=-1)
