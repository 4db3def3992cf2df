"""Quality statistics read from the database (#10): verdicts in the task's own reply order
whatever order each annotator saw, checked against the krippendorff package."""

from datetime import timedelta

import krippendorff
import numpy as np
import pytest
from django.utils import timezone

from labeling.models import Assignment, ComparisonTask, Project
from labeling.quality_data import agreement_summary, judgement_arrays
from labeling.services import JudgementInput, create_annotator, submit_judgement

from .conftest import import_items, make_items

PASSWORD = "quality-pass-3n8v"


def judge(task, user, order, winner=None, choice=None, strength=2, ranks=None):
    """`winner`: the task position that wins (the letter is derived from the display order)."""
    assignment = Assignment.objects.create(
        task=task, annotator=user, display_order=order, leased_at=timezone.now(), expires_at=timezone.now() + timedelta(minutes=5)
    )
    if ranks is not None:
        judgement = JudgementInput("ranking", ranks=ranks)
    elif choice is not None:
        judgement = JudgementInput(choice)
    else:
        position_ids = [r for r, in task.task_responses.order_by("position").values_list("response_id")]
        letter = "AB"[order.index(position_ids[winner])]
        judgement = JudgementInput(letter, strength)
    submit_judgement(annotator=user, assignment_id=assignment.pk, judgement=judgement)


@pytest.fixture
def people(db):
    return [create_annotator(username=f"q{i}", password=PASSWORD) for i in range(3)]


def test_pairwise_verdicts_are_in_task_order_and_alpha_matches_the_oracle(people):
    project = Project.objects.create(name="quality", overlap_k=3, gold_rate=0)
    import_items(project, make_items(6))
    tasks = list(ComparisonTask.objects.filter(project=project).order_by("pk"))
    # verdicts per task (task positions), per annotator; None = not judged
    plan = [
        (0, 0, 0), (1, 1, 0), ("tie", "tie", 1), (0, "both_bad", 0), (1, 1, 1), (0, None, 1),
    ]
    for task, verdicts in zip(tasks, plan):
        ids = [r for r, in task.task_responses.order_by("position").values_list("response_id")]
        for person, verdict, order in zip(people, verdicts, (ids, ids[::-1], ids)):
            if verdict is None:
                continue
            if isinstance(verdict, str):
                judge(task, person, order, choice=verdict)
            else:
                judge(task, person, order, winner=verdict, strength=1 + (task.pk % 3))
    data = judgement_arrays(project)
    assert data["pair_task"].size == 17
    code = {0: 1, 1: 2, "tie": 3, "both_bad": 4, None: np.nan}  # the oracle's values, 1-based
    matrix = np.array([[code[verdicts[c]] for verdicts in plan] for c in range(3)], dtype=float)
    expected = krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal", value_domain=[1, 2, 3, 4])
    summary = agreement_summary(project, draws=200)
    assert summary["alpha"]["nominal"]["alpha"] == pytest.approx(expected, abs=1e-9)
    assert summary["alpha"]["nominal"]["low"] <= summary["alpha"]["nominal"]["alpha"] <= summary["alpha"]["nominal"]["high"]
    # q1 saw every pair reversed: its "B" on task 0 is reply #1, so it agrees with q0 there
    kappa = {(row["annotator_a"], row["annotator_b"]): row for row in summary["kappa_pairs"]}
    assert kappa[("q0", "q1")]["shared"] == 5 and kappa[("q0", "q1")]["observed"] == pytest.approx(4 / 5)
    majority = {row["annotator"]: row for row in summary["majority_agreement"]}
    assert majority["q2"]["compared"] == 5 and majority["q2"]["agreed"] == 2  # task 3: the others split
    assert summary["alpha_by_week"] and summary["alpha_by_week"][0]["alpha"] == pytest.approx(expected, abs=1e-9)
    # the other agreement figures over time: one week here, so they equal the totals
    (week,) = summary["by_week"]
    assert week["judgements"] == 17 and week["week"] == summary["alpha_by_week"][0]["week"]
    rows = summary["majority_agreement"]
    assert week["majority_rate"] == pytest.approx(sum(r["agreed"] for r in rows) / sum(r["compared"] for r in rows))
    pairs = [r for r in summary["kappa_pairs"] if r["kappa"] is not None]
    assert week["mean_kappa"] == pytest.approx(sum(r["kappa"] * r["shared"] for r in pairs) / sum(r["shared"] for r in pairs))
    from labeling.models import Judgement

    Judgement.objects.filter(task__in=tasks[:3]).update(created_at=timezone.now() - timedelta(days=14))
    weeks = agreement_summary(project, draws=0)["by_week"]
    assert [w["judgements"] for w in weeks] == [9, 8] and weeks[0]["week"] < weeks[1]["week"]


def test_ordinal_strength_scale_and_rankings(people):
    project = Project.objects.create(name="ranks", overlap_k=3, gold_rate=0, max_responses=3)
    import_items(project, make_items(2, replies=3) + make_items(1, prefix="pair"))
    ranking_tasks = list(ComparisonTask.objects.filter(project=project, task_responses__position=2).order_by("pk"))
    pair_task = ComparisonTask.objects.filter(project=project).exclude(pk__in=[t.pk for t in ranking_tasks]).get()
    ids = [r for r, in pair_task.task_responses.order_by("position").values_list("response_id")]
    judge(pair_task, people[0], ids, winner=0, strength=4)  # #1 much better: 0
    judge(pair_task, people[1], ids[::-1], winner=1, strength=1)  # #2 slightly better: 5
    judge(pair_task, people[2], ids, choice="tie")  # 4
    task = ranking_tasks[0]
    order = [r for r, in task.task_responses.order_by("position").values_list("response_id")]
    judge(task, people[0], order, ranks=[1, 2, 3])
    judge(task, people[1], order[::-1], ranks=[1, 2, 2])  # in task order: #3 best, #1 and #2 tied
    data = judgement_arrays(project)
    assert sorted(data["pair_ordinal"].tolist()) == [0, 4, 5]
    by_annotator = {}
    for position, annotator, rank in zip(data["rank_unit_position"], data["rank_annotator"], data["rank_rank"]):
        by_annotator.setdefault(int(annotator), {})[int(position)] = int(rank)
    assert by_annotator[people[0].pk] == {0: 0, 1: 1, 2: 2}
    assert by_annotator[people[1].pk] == {2: 0, 0: 1, 1: 1}
    summary = agreement_summary(project, draws=0)
    matrix = np.array([[0, 1, 2], [1, 1, 0]], dtype=float) + 1
    assert summary["alpha"]["ordinal_rankings"]["alpha"] == pytest.approx(
        krippendorff.alpha(reliability_data=matrix, level_of_measurement="ordinal", value_domain=[1, 2, 3]), abs=1e-9
    )


def test_quality_page_and_api(client, people):
    from rest_framework.test import APIClient

    project = Project.objects.create(name="quality page", overlap_k=3, gold_rate=0)
    import_items(project, make_items(3))
    for task in ComparisonTask.objects.filter(project=project):
        ids = [r for r, in task.task_responses.order_by("position").values_list("response_id")]
        for person in people:
            judge(task, person, ids, winner=0)
    boss = create_annotator(username="qboss", password=PASSWORD, is_admin=True)
    client.force_login(boss)
    page = client.get(f"/manage/projects/{project.pk}/quality/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="alpha-nominal"' in html and 'id="majority"' in html and "q0 · q1" in html
    client.force_login(people[0])
    assert client.get(f"/manage/projects/{project.pk}/quality/").status_code == 403
    api = APIClient()
    api.force_authenticate(boss)
    body = api.get(f"/api/v1/projects/{project.pk}/quality/").json()
    assert body["agreement"]["pairwise_judgements"] == 9
    assert body["agreement"]["alpha"]["nominal"]["alpha"] is None  # everybody agreed on one value: alpha undefined
    assert [row["rate"] for row in body["agreement"]["majority_agreement"]] == [1.0, 1.0, 1.0]
    api.force_authenticate(people[0])
    assert api.get(f"/api/v1/projects/{project.pk}/quality/").status_code == 403


def test_a_paused_annotator_gets_no_tasks_and_a_page_that_says_why(client, people):
    from rest_framework.test import APIClient

    from labeling.models import AnnotatorPause
    from labeling.services import assign_next_task, lift_pause, pause_annotator

    project = Project.objects.create(name="pausing", overlap_k=1, gold_rate=0)
    import_items(project, make_items(3))
    kim = people[0]
    held = assign_next_task(project=project, annotator=kim)
    pause_annotator(project=project, annotator=kim, reason="position bias: picks the first reply 95% of the time <b>", by=None)
    pause_annotator(project=project, annotator=kim, reason="again")  # idempotent
    assert AnnotatorPause.objects.filter(project=project, annotator=kim, lifted_at__isnull=True).count() == 1
    held.refresh_from_db()
    assert held.expires_at <= timezone.now()  # the held task went back to the pool
    client.force_login(kim)
    page = client.get(f"/projects/{project.pk}/label/")
    assert page.status_code == 403
    html = page.content.decode()
    assert "picks the first reply 95% of the time &lt;b&gt;" in html and "quality checks have paused" in html
    api = APIClient()
    api.force_authenticate(kim)
    response = api.post(f"/api/v1/projects/{project.pk}/next-task/")
    assert response.status_code == 403 and response.json()["code"] == "paused"
    assert assign_next_task(project=project, annotator=people[1]) is not None  # others carry on
    assert lift_pause(project=project, annotator=kim, by=people[2]) is True
    assert lift_pause(project=project, annotator=kim) is False
    assert client.get(f"/projects/{project.pk}/label/").status_code == 200
    assert AnnotatorPause.objects.filter(project=project, annotator=kim).count() == 1  # history kept


def test_the_quality_filter_in_exports_and_the_reward_stage(people):
    import json as jsonlib

    from labeling.exceptions import InvalidInput
    from labeling.exporting import iter_export_lines
    from labeling.quality_filter import JudgementFilter, low_agreement_tasks
    from labeling.services import pause_annotator
    from training.run_config import config_problems
    from training.selectors import training_judgements

    project = Project.objects.create(name="filtered", overlap_k=3, gold_rate=0)
    import_items(project, make_items(3))
    agreed, split, gold = ComparisonTask.objects.filter(project=project).order_by("pk")
    gold.is_gold, gold.gold_response = True, gold.task_responses.get(position=0).response
    gold.save()
    for task, winners in ((agreed, (0, 0, 0)), (split, (0, 1, 1))):
        ids = [r for r, in task.task_responses.order_by("position").values_list("response_id")]
        for person, winner in zip(people, winners):
            judge(task, person, ids, winner=winner)
    ids = [r for r, in gold.task_responses.order_by("position").values_list("response_id")]
    judge(gold, people[0], ids, winner=0)  # passes gold
    judge(gold, people[1], ids, winner=1)  # fails gold
    assert sorted(low_agreement_tasks(project, 0.7)) == [split.pk, gold.pk]  # 2 of 3 agree: 0.67; gold 1 of 2
    assert low_agreement_tasks(project, 0.6) == [gold.pk]
    assert low_agreement_tasks(project, 0.5) == []

    def exported(**options):
        lines = iter_export_lines(project=project, fmt="raw", quality=JudgementFilter(**options))
        return sorted((row["task_id"], row["annotator"]) for row in map(jsonlib.loads, lines))

    everything = exported()
    assert len(everything) == 8
    assert (gold.pk, "q1") not in exported(exclude_failed_gold=True) and len(exported(exclude_failed_gold=True)) == 7
    assert {t for t, _ in exported(min_task_agreement=0.7)} == {agreed.pk}
    assert exported(exclude_paused=True) == everything
    pause_annotator(project=project, annotator=people[2], reason="test")
    assert {a for _, a in exported(exclude_paused=True)} == {"q0", "q1"}
    quality = JudgementFilter.from_options({"exclude_paused": True, "min_task_agreement": 0.7})
    assert len(training_judgements(project, quality=quality)) == 2  # the agreed task, by q0 and q1
    assert len(training_judgements(project)) == 8
    assert config_problems({"filter": {"exclude_paused": "yes", "min_task_agreement": 2, "sharpness": 1}}) == [
        ("filter.exclude_paused", "must be true or false"),
        ("filter.min_task_agreement", "must be a number from 0 to 1, or null"),
        ("filter.sharpness", "unknown option; the filter takes exclude_failed_gold, exclude_flagged, exclude_paused, min_task_agreement"),
    ]
    assert config_problems({"filter": [1]}) == [("filter", "must be an object of filter options")]
    assert config_problems({"filter": {"exclude_failed_gold": True}}) == []
    with pytest.raises(InvalidInput):
        JudgementFilter.from_options({"min_task_agreement": float("nan")})


def test_flags_pause_and_lift_on_the_quality_page(client, people):
    from labeling.models import AnnotatorPause, ProjectQualitySettings
    from labeling.quality_data import flagged_annotators

    project = Project.objects.create(name="biased", overlap_k=3, gold_rate=0)
    import_items(project, make_items(40))
    ProjectQualitySettings.objects.create(project=project, min_judgements=10, min_time_ms=0)
    rng = np.random.default_rng(0)
    for task in ComparisonTask.objects.filter(project=project):
        ids = [r for r, in task.task_responses.order_by("position").values_list("response_id")]
        for person in people:
            order = list(rng.permutation(ids))
            shown_first = order[0]
            winner = ids.index(shown_first) if person == people[0] else int(rng.integers(0, 2))  # q0 always picks what it saw first
            judge(task, person, [int(i) for i in order], winner=winner)
    flagged = flagged_annotators(project)
    assert list(flagged) == [people[0].pk]
    assert "first-shown reply in 100% of 40" in flagged[people[0].pk][0]
    boss = create_annotator(username="qboss2", password=PASSWORD, is_admin=True)
    client.force_login(boss)
    html = client.get(f"/manage/projects/{project.pk}/quality/").content.decode()
    row = html.split(f'data-annotator="{people[0].pk}"')[1].split("</tr>")[0]
    assert row.startswith(' class="flagged-row"')
    assert "first-shown reply in 100% of 40" in row, row
    response = client.post(f"/manage/projects/{project.pk}/quality/pause/", {"annotator": people[0].pk, "action": "pause", "reason": flagged[people[0].pk][0]})
    assert response.status_code == 302
    pause = AnnotatorPause.objects.get(project=project, annotator=people[0], lifted_at__isnull=True)
    assert pause.paused_by == boss and "first-shown" in pause.reason
    client.post(f"/manage/projects/{project.pk}/quality/pause/", {"annotator": people[0].pk, "action": "lift"})
    pause.refresh_from_db()
    assert pause.lifted_at is not None and pause.lifted_by == boss
    assert client.post(f"/manage/projects/{project.pk}/quality/pause/", {"annotator": "x99"}).status_code == 302  # a message, no 500
    assert client.get(f"/manage/projects/{project.pk}/quality/pause/").status_code == 405
    client.post(f"/manage/projects/{project.pk}/quality/settings/", {
        "min_judgements": "10", "min_time_ms": "0", "max_fast_share": "0.2", "min_gold_accuracy": "0.7",
        "position_bias_margin": "0.6", "max_straight_share": "0.3", "straight_run_length": "10",
    })
    assert ProjectQualitySettings.objects.get(project=project).position_bias_margin == 0.6
    # a 60-point margin: q0's position bias no longer flags, but always pressing A is straight-lining
    assert [reason.split(" judgements")[0] for reason in flagged_annotators(project)[people[0].pk]] == ["100% of"]
    ProjectQualitySettings.objects.filter(project=project).update(max_straight_share=1.0)
    assert flagged_annotators(project) == {}
    bad = client.post(f"/manage/projects/{project.pk}/quality/settings/", {"min_judgements": "x"})
    assert bad.status_code == 302 and ProjectQualitySettings.objects.get(project=project).min_judgements == 10


def test_leaderboard_over_reply_sources(client, people):
    from labeling.importing.services import import_stream
    from labeling.quality_data import leaderboard_summary
    from training.models import ModelVersion

    from .conftest import jsonl

    project = Project.objects.create(name="arena", overlap_k=3, gold_rate=0)
    import_stream(project=project, stream=jsonl(make_items(30)), fmt="jsonl", source="baseline.jsonl")
    version = ModelVersion.objects.create(project=project, kind="policy", number=2, artifact_path="/tmp/x", status="active")
    for task in ComparisonTask.objects.filter(project=project):
        task.task_responses.get(position=1).response.__class__.objects.filter(pk=task.task_responses.get(position=1).response_id).update(model_version=version)
    for n, task in enumerate(ComparisonTask.objects.filter(project=project).order_by("pk")):
        ids = [r for r, in task.task_responses.order_by("position").values_list("response_id")]
        for k, person in enumerate(people):
            judge(task, person, ids, winner=1 if (n + k) % 4 else 0)  # the policy's reply wins 3 times in 4
    board = leaderboard_summary(project, draws=300)
    assert board["names"] == ["baseline.jsonl", "policy v2"] or set(board["names"]) == {"baseline.jsonl", "policy v2"}
    top = board["sources"][0]
    assert top["name"] == "policy v2" and top["rank"] == 1
    assert top["comparisons"] == 90 and top["wins"] == 68 and top["losses"] == 22
    assert top["elo_low"] > 1000 > board["sources"][1]["elo_high"]  # the interval says the policy is better
    i, j = board["names"].index("policy v2"), board["names"].index("baseline.jsonl")
    assert board["win_matrix"][i][j] == pytest.approx(68 / 90)
    boss = create_annotator(username="qboss3", password=PASSWORD, is_admin=True)
    client.force_login(boss)
    html = client.get(f"/manage/projects/{project.pk}/quality/").content.decode()
    assert 'data-source="policy v2"' in html and 'id="win-matrix"' in html and "76%" in html


def test_the_periodic_check_pauses_flagged_annotators_once(people):
    from django_celery_beat.models import PeriodicTask

    from labeling.models import AnnotatorPause, ProjectQualitySettings
    from labeling.services import lift_pause
    from labeling.tasks import check_quality

    assert PeriodicTask.objects.filter(task="labeling.tasks.check_quality").exists()
    project = Project.objects.create(name="auto", overlap_k=3, gold_rate=0)
    import_items(project, make_items(40))
    settings_row = ProjectQualitySettings.objects.create(project=project, min_judgements=10, min_time_ms=0)
    rng = np.random.default_rng(1)
    for task in ComparisonTask.objects.filter(project=project):
        ids = [r for r, in task.task_responses.order_by("position").values_list("response_id")]
        for person in people:
            order = [int(i) for i in rng.permutation(ids)]
            judge(task, person, order, winner=ids.index(order[0]) if person == people[0] else int(rng.integers(0, 2)))
    assert check_quality()["paused"] == {}  # auto pause is off
    settings_row.auto_pause = True
    settings_row.save()
    assert check_quality()["paused"] == {project.pk: [people[0].pk]}
    pause = AnnotatorPause.objects.get(project=project, lifted_at__isnull=True)
    assert pause.paused_by is None and pause.reason.startswith("automatic: chose the first-shown reply")
    assert check_quality()["paused"] == {}  # already paused
    lift_pause(project=project, annotator=people[0], by=people[1])
    assert check_quality()["paused"] == {}  # lifted by an admin, nothing new since


def test_reward_model_against_people(client, people, tiny_policy_dir, tmp_path):
    from training.ml.reward_model import RewardModel
    from training.models import ModelVersion, ReplyScore
    from training.scoring import score_judged_replies
    from training.tasks import score_judged_replies as periodic

    from labeling.quality_data import reward_vs_people

    project = Project.objects.create(name="rm vs people", overlap_k=2, gold_rate=0)
    import_items(project, make_items(6))
    assert score_judged_replies(project) == 0  # no active reward model
    model, tokenizer = RewardModel.from_backbone(tiny_policy_dir)
    model.save_pretrained(tmp_path / "rm", tokenizer)
    version = ModelVersion.objects.create(project=project, kind="reward", number=1, artifact_path=str(tmp_path / "rm"), status="active")
    tasks = list(ComparisonTask.objects.filter(project=project).order_by("pk"))
    for task in tasks[:4]:
        ids = [r for r, in task.task_responses.order_by("position").values_list("response_id")]
        judge(task, people[0], ids, winner=0)
        judge(task, people[1], ids, choice="tie")  # ties are left out
    assert periodic() == {project.pk: {"judged_replies_scored": 8, "open_tasks_reordered": 0}}  # the 8 replies of the 4 judged tasks, once
    assert score_judged_replies(project) == 0
    scores = dict(ReplyScore.objects.filter(version=version).values_list("response_id", "reward"))
    expected = sum(
        1.0 if scores[a] > scores[b] else 0.5 if scores[a] == scores[b] else 0.0
        for a, b in (
            [r for r, in task.task_responses.order_by("position").values_list("response_id")] for task in tasks[:4]
        )
    )
    result = reward_vs_people(project)["versions"]
    assert len(result) == 1 and result[0]["version"] == "reward v1" and result[0]["pairs"] == 4
    assert result[0]["rate"] == pytest.approx(expected / 4)
    assert result[0]["low"] <= result[0]["rate"] <= result[0]["high"]
    boss = create_annotator(username="qboss4", password=PASSWORD, is_admin=True)
    client.force_login(boss)
    html = client.get(f"/manage/projects/{project.pk}/quality/").content.decode()
    assert 'id="rm-versions"' in html and "reward v1" in html and '<svg class="chart"' in html.split('id="rm-chart"')[1][:100]


def test_uncertainty_ordering_serves_the_closest_call_first(people, tiny_policy_dir, tmp_path):
    from labeling.services import assign_next_task
    from training.ml.reward_model import RewardModel
    from training.models import ModelVersion, ReplyScore
    from training.scoring import uncertainty_of, update_order_scores

    assert uncertainty_of([0.3, 0.3]) == 1000 and uncertainty_of([2.0, 0.0, -1.0]) == 18 and uncertainty_of([1.0]) == 0
    project = Project.objects.create(name="active learning", overlap_k=1, gold_rate=0)
    import_items(project, make_items(8, prefix="uncertain"))
    model, tokenizer = RewardModel.from_backbone(tiny_policy_dir)
    torch_seeded = tmp_path / "rm"
    model.save_pretrained(torch_seeded, tokenizer)
    version = ModelVersion.objects.create(project=project, kind="reward", number=1, artifact_path=str(torch_seeded), status="active")
    assert update_order_scores(project) == 0  # fifo: nothing to do
    project.task_ordering = "uncertainty"
    project.save()
    assert update_order_scores(project) > 0
    assert ReplyScore.objects.filter(version=version).count() == 16
    rewards = dict(ReplyScore.objects.filter(version=version).values_list("response_id", "reward"))
    gaps = {
        task.pk: uncertainty_of([rewards[r] for r in task.task_responses.values_list("response_id", flat=True)])
        for task in ComparisonTask.objects.filter(project=project)
    }
    assert dict(ComparisonTask.objects.filter(project=project).values_list("pk", "order_score")) == gaps
    most_uncertain = max(gaps, key=lambda pk: (gaps[pk], -pk))
    assert assign_next_task(project=project, annotator=people[0]).task_id == most_uncertain
    project.task_ordering = "fifo"
    project.save()
    update_order_scores(project)
    assert not ComparisonTask.objects.filter(project=project, order_score__gt=0).exists()
    first = ComparisonTask.objects.filter(project=project).exclude(assignments__isnull=False).order_by("pk").first()
    assert assign_next_task(project=project, annotator=people[1]).task_id == first.pk  # back to the plain order



def test_task_ordering_over_the_api(people):
    from rest_framework.test import APIClient

    boss = create_annotator(username="qboss5", password=PASSWORD, is_admin=True)
    api = APIClient()
    api.force_authenticate(boss)
    created = api.post("/api/v1/projects/", {"name": "ordered", "task_ordering": "uncertainty"}, format="json")
    assert created.status_code == 201 and created.json()["task_ordering"] == "uncertainty"
    bad = api.patch(f"/api/v1/projects/{created.json()['id']}/", {"task_ordering": ""}, format="json")
    assert bad.status_code == 400 and "task_ordering" in bad.json()
    assert api.post("/api/v1/projects/", {"name": "plain"}, format="json").json()["task_ordering"] == "fifo"


def test_balanced_ordering_serves_the_least_compared_sources_first(people):
    from labeling.importing.services import import_stream
    from labeling.ordering import balance_scores
    from labeling.services import assign_next_task
    from training.scoring import update_order_scores

    from .conftest import jsonl

    project = Project.objects.create(name="balanced", overlap_k=1, gold_rate=0, task_ordering="balanced")
    for source, prefix in (("a-vs-b.jsonl", "ab"), ("c-vs-d.jsonl", "cd")):
        import_stream(project=project, stream=jsonl(make_items(4, prefix=prefix)), fmt="jsonl", source=source)
    # replies take their file's name as origin: a task compares two replies of one source...
    assert set(balance_scores(project).values()) == {0}
    # ...so give each task's second reply its own source: "ab" tasks compare ab-file vs x, "cd" tasks cd-file vs y
    from labeling.models import Response

    for task in ComparisonTask.objects.filter(project=project):
        second = task.task_responses.get(position=1).response_id
        Response.objects.filter(pk=second).update(origin="x" if task.prompt.source == "a-vs-b.jsonl" else "y")
    ab = list(ComparisonTask.objects.filter(project=project, prompt__source="a-vs-b.jsonl").order_by("pk"))
    for task in ab[:2]:  # people compared the ab pair twice already
        ids = [r for r, in task.task_responses.order_by("position").values_list("response_id")]
        judge(task, people[0], ids, winner=0)
    scores = balance_scores(project)
    assert {scores[t.pk] for t in ab[2:]} == {909}  # 1000 / (1 + 2 / 20)
    assert {v for k, v in scores.items() if k not in {t.pk for t in ab}} == {1000}
    assert update_order_scores(project) == 6
    lease = assign_next_task(project=project, annotator=people[1])
    assert lease.task.prompt.source == "c-vs-d.jsonl"  # the never compared pair first, though its tasks came later



def _tables_equal(fast, slow):
    import dataclasses

    for f in dataclasses.fields(fast):
        a, b = getattr(fast, f.name), getattr(slow, f.name)
        if isinstance(a, dict):
            assert a.keys() == b.keys(), f.name
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{f.name}.{key}")
        elif isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b, err_msg=f.name)
        else:
            assert a == b, f.name


def test_the_vectorised_table_equals_the_row_by_row_definition(people):
    """build_table reads standard pairwise judgements from SQL columns and parsed JSON text,
    and everything else row by row (_row_columns): both ways give the same table on a
    project with every kind of verdict, odd stored rankings included."""
    from labeling.models import Judgement, JudgementSource, Response
    from labeling.quality_table import build_table

    project = Project.objects.create(name="table", overlap_k=3, gold_rate=0, max_responses=3)
    import_items(project, make_items(6) + make_items(2, replies=3, prefix="three"))
    tasks = list(ComparisonTask.objects.filter(project=project).order_by("pk"))
    pairs = [t for t in tasks if t.task_responses.count() == 2]
    triples = [t for t in tasks if t.task_responses.count() == 3]
    for task in pairs[:2]:  # reply #2 longer: people[0] picks #1 on the first, #2 on the second
        Response.objects.filter(pk=task.task_responses.get(position=1).response_id).update(text="a much longer reply " * 5)
    for n, task in enumerate(pairs):
        ids = [r for r, in task.task_responses.order_by("position").values_list("response_id")]
        judge(task, people[0], ids, winner=n % 2, strength=1 + n % 4)
        judge(task, people[1], ids[::-1], choice="tie" if n % 2 else "both_bad")
        judge(task, people[2], ids[::-1], winner=0, strength=4)
    for task in triples:
        order = [r for r, in task.task_responses.order_by("position").values_list("response_id")]
        judge(task, people[0], order, ranks=[2, 1, 2])
        judge(task, people[1], order[::-1], ranks=[1, 2, 3])
    # odd stored values the API never writes, as an old import or a hand edit might: a
    # ranking of one group for "A", an id that is not the task's, strings, an empty
    # display order, an imported label (left out: not a person of this project)
    odd = list(Judgement.objects.filter(task__in=pairs, annotator=people[2]).order_by("pk"))
    odd[0].ranking = [[odd[0].ranking[0][0]]]
    odd[1].ranking = [[999999], [odd[1].ranking[1][0]]]
    odd[2].ranking, odd[2].display_order = [["x"], ["y"]], []
    odd[3].display_order = [odd[3].display_order[0]]
    odd[4].time_spent_ms, odd[4].gold_correct = None, False
    for j in odd[:5]:
        j.save()
    Judgement.objects.filter(pk=odd[5].pk).update(source=JudgementSource.IMPORT)
    fast, slow = build_table(project), build_table(project, vectorize=False)
    _tables_equal(fast, slow)
    assert fast.size == Judgement.objects.filter(task__project=project, source=JudgementSource.ANNOTATOR).count() == 21
    assert (fast.nominal >= 0).sum() == 15  # 6 pairwise tasks x 3, less the imported label, the foreign winner and the strings
    assert sorted(fast.rank["rank"].tolist()) == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2]
    assert set(fast.chose_longer.tolist()) == {-1, 0, 1}
    # the summaries agree as well
    assert agreement_summary(project, draws=50, table=fast) == agreement_summary(project, draws=50, table=slow)


def test_parse_id_lists_reads_only_the_exact_shapes():
    from labeling.quality_table import parse_id_lists

    texts = [
        "[[12], [345]]", "[[7, 8]]", "[5, 6]", "[[1], [2], [3]]", "[[1, 2], []]", "[[[1], 2]]", "[]", "null",
        "[[1.5], [2]]", "[[-1], [2]]", '[["1"], [2]]', "[[12345678901234567890], [1]]", "[[0], [0]]", "[1, 2, 3]",
    ]
    out = parse_id_lists("\n".join(texts).encode(), len(texts))
    assert out[:3].tolist() == [[1, 12, 345], [2, 7, 8], [3, 5, 6]]
    assert out[3:12, 0].tolist() == [0] * 9 and (out[3:12, 1:] == -1).all()
    assert out[12].tolist() == [1, 0, 0] and out[13, 0] == 0
    assert parse_id_lists(b"", 0).shape == (0, 3)
    with pytest.raises(ValueError):
        parse_id_lists(b"[1, 2]\n[3, 4]", 3)


@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"])
def test_local_days_match_localtime_across_offsets(zone, settings):
    from datetime import datetime, timezone as dt_timezone

    from labeling.quality_table import local_days

    settings.TIME_ZONE = zone
    rng = np.random.default_rng(1)
    start = datetime(2026, 3, 1, tzinfo=dt_timezone.utc).timestamp()
    epoch = np.sort(start + rng.uniform(0, 250 * 86400, 5000))  # both DST changes of 2026
    with timezone.override(zone):
        expected = [timezone.localtime(datetime.fromtimestamp(t, dt_timezone.utc)).date().toordinal() for t in epoch]
        assert local_days(epoch).tolist() == expected


def test_disagreement_ordering_adds_annotators_until_the_task_agrees_or_reaches_k_max(people):
    """Task order 'disagreement': k = 2, k max = 4, settled at 3/4 agreement. A split task
    gets a third and a fourth annotator, served before fresh tasks; an agreeing task
    completes at k; at k max a task completes whatever its judgements say."""
    from labeling.services import assign_next_task

    crowd = people + [create_annotator(username=f"q{i}", password=PASSWORD) for i in range(3, 6)]
    project = Project.objects.create(name="disagree", overlap_k=2, overlap_k_max=4, gold_rate=0, task_ordering="disagreement")
    import_items(project, make_items(4))
    split, agreed, *fresh = ComparisonTask.objects.filter(project=project).order_by("pk")

    def ids(task):
        return [r for r, in task.task_responses.order_by("position").values_list("response_id")]

    for person, winner in zip(crowd[:2], (0, 0)):
        judge(agreed, person, ids(agreed), winner=winner)
    judge(split, crowd[0], ids(split), winner=0)
    judge(split, crowd[1], ids(split)[::-1], choice="tie")
    agreed.refresh_from_db()
    split.refresh_from_db()
    assert agreed.status == "complete" and agreed.extra_judgements == 0
    assert split.status == "open" and split.extra_judgements == 1 and split.order_score == 1000
    lease = assign_next_task(project=project, annotator=crowd[2])
    assert lease.task_id == split.pk  # waiting for its third judgement: served before the fresh tasks
    lease.delete()
    judge(split, crowd[2], ids(split), winner=1)  # 1 of 3 for each verdict
    split.refresh_from_db()
    assert split.status == "open" and split.extra_judgements == 2
    judge(split, crowd[3], ids(split), winner=0)  # 2 of 4: still split, but k max reached
    split.refresh_from_db()
    assert split.status == "complete" and split.judgement_count == 4 and split.order_score == 0
    assert assign_next_task(project=project, annotator=crowd[4]).task_id in {t.pk for t in fresh}

    # the same split under fifo completes at k
    plain = Project.objects.create(name="plain order", overlap_k=2, overlap_k_max=4, gold_rate=0)
    import_items(plain, make_items(1, prefix="plain"))
    task = ComparisonTask.objects.get(project=plain)
    judge(task, crowd[0], ids(task), winner=0)
    judge(task, crowd[1], ids(task), winner=1)
    task.refresh_from_db()
    assert task.status == "complete"

    # switched to disagreement later, the periodic job reopens it for a third judgement
    from training.scoring import update_order_scores

    plain.task_ordering = "disagreement"
    plain.save()
    assert update_order_scores(plain) == 1
    task.refresh_from_db()
    assert task.status == "open" and task.extra_judgements == 1 and task.order_score == 1000
    assert update_order_scores(plain) == 0  # nothing more to do
    judge(task, crowd[2], ids(task), winner=0)
    judge(task, crowd[3], ids(task)[::-1], winner=0)  # 3 of 4 agree
    task.refresh_from_db()
    assert task.status == "complete" and task.judgement_count == 4


def test_disagreement_settings_are_checked(people):
    from rest_framework.test import APIClient

    boss = create_annotator(username="qboss6", password=PASSWORD, is_admin=True)
    api = APIClient()
    api.force_authenticate(boss)
    bad = api.post("/api/v1/projects/", {"name": "d1", "task_ordering": "disagreement", "overlap_k": 3}, format="json")
    assert bad.status_code == 400 and "overlap k max above overlap k" in bad.json()["overlap_k_max"][0]
    bad = api.post("/api/v1/projects/", {"name": "d2", "overlap_k": 3, "overlap_k_max": 2}, format="json")
    assert bad.status_code == 400 and "at least overlap k (3)" in bad.json()["overlap_k_max"][0]
    bad = api.post("/api/v1/projects/", {"name": "d3", "disagreement_target": 0.3}, format="json")
    assert bad.status_code == 400 and "disagreement_target" in bad.json()
    good = api.post("/api/v1/projects/", {"name": "d4", "task_ordering": "disagreement", "overlap_k": 3, "overlap_k_max": 5}, format="json")
    assert good.status_code == 201 and good.json()["overlap_k_max"] == 5 and good.json()["disagreement_target"] == 0.75
    lowered = api.patch(f"/api/v1/projects/{good.json()['id']}/", {"overlap_k_max": 3}, format="json")
    assert lowered.status_code == 400  # the stored ordering is still 'disagreement'
    assert Project.objects.get(name="d4").overlap_k_max == 5


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_the_table_is_read_by_parallel_queries(monkeypatch):
    """build_table runs its queries side by side on their own connections when no
    transaction is open (a web request, the benchmark); the table is the same."""
    import threading

    from labeling import quality_table

    people = [create_annotator(username=f"p{i}", password=PASSWORD) for i in range(2)]
    project = Project.objects.create(name="parallel", overlap_k=2, gold_rate=0)
    import_items(project, make_items(4))
    for task in ComparisonTask.objects.filter(project=project):
        ids = [r for r, in task.task_responses.order_by("position").values_list("response_id")]
        judge(task, people[0], ids, winner=0)
        judge(task, people[1], ids[::-1], winner=1)
    started = []
    real_start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda self: (started.append(self), real_start(self))[1])
    fast = quality_table.build_table(project)
    assert len(started) == 2  # replies and task positions in threads, the judgements here
    _tables_equal(fast, quality_table.build_table(project, vectorize=False))
    assert fast.size == 8 and (fast.nominal >= 0).sum() == 8
