"""The training dashboard from the project page (#9, part 6), API and service side: the
project query and the link back, run times and ETA, a cycle's stage metrics on its row,
and rolling the policy back to the built-in default (which generation then really uses).
The browser side is tests/test_dashboard_browser.py."""

from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from labeling.models import Project, Response
from training import runner, services
from training.exceptions import InvalidTrainingRequest, VersionNotPromotable
from training.models import ModelVersion, RunStatus, TrainingRun

from .conftest import import_items, make_items

pytestmark = [pytest.mark.django_db]


def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def version(project, kind, number, status="retired", promoted=True, **fields) -> ModelVersion:
    return ModelVersion.objects.create(
        project=project, kind=kind, number=number, artifact_path=fields.pop("artifact_path", f"/nowhere/{kind}-v{number}"),
        status=status, promoted_at=timezone.now() - timedelta(hours=10 - number) if promoted else None, **fields,
    )


def active_policy(project):
    return services.active_version(project, "policy")


# --------------------------------------------------------------------------- the page


def test_the_project_query_selects_that_project_and_the_page_links_back_to_it(client, admin_user):
    alpha, beta = Project.objects.create(name="alpha"), Project.objects.create(name="beta")
    client.force_login(admin_user)
    page = client.get("/training/", {"project": beta.pk})
    assert page.status_code == 200 and page.context["project"] == beta
    html = page.content.decode()
    assert f'data-project="{beta.pk}"' in html
    assert f'href="{reverse("console:project", args=[beta.pk])}"' in html and f"/manage/projects/{beta.pk}/" in html
    assert f'<option value="{beta.pk}" selected>' in html
    assert client.get("/training/").context["project"] == alpha  # no query: the first by name
    assert client.get("/training/", {"project": beta.pk + alpha.pk + 100}).status_code == 404  # not another project's page


def test_the_page_names_the_policy_in_use(client, admin_user):
    project = Project.objects.create(name="p")
    client.force_login(admin_user)
    assert "built-in default policy" in client.get("/training/", {"project": project.pk}).content.decode()
    version(project, "policy", 1)
    version(project, "policy", 2, status="active")
    html = client.get("/training/", {"project": project.pk}).content.decode()
    assert ">policy v2<" in html and "built-in default policy<" not in html
    assert 'id="use-builtin-policy"' in html and "dashboard.css" in html


# --------------------------------------------------------------------------- runs: times, ETA, stages


def test_runs_carry_start_finish_duration_and_an_eta_while_running(admin_user):
    project = Project.objects.create(name="times")
    now = timezone.now()
    done = TrainingRun.objects.create(
        project=project, kind="reward", status=RunStatus.SUCCEEDED, progress=1.0,
        started_at=now - timedelta(seconds=700), finished_at=now - timedelta(seconds=600),
    )
    running = TrainingRun.objects.create(project=project, kind="ppo", status=RunStatus.RUNNING, progress=0.25, started_at=now - timedelta(seconds=60))
    queued = TrainingRun.objects.create(project=project, kind="sft")
    rows = {row["id"]: row for row in api(admin_user).get("/api/v1/training-runs/", {"project": project.pk}).json()["results"]}
    assert rows[done.pk]["duration_seconds"] == pytest.approx(100.0)
    assert rows[done.pk]["started_at"] and rows[done.pk]["finished_at"] and rows[done.pk]["eta_seconds"] is None
    assert rows[running.pk]["duration_seconds"] == pytest.approx(60.0, abs=5)  # so far
    assert rows[running.pk]["eta_seconds"] == pytest.approx(180.0, abs=15)  # 25% in a minute: three more
    assert rows[running.pk]["finished_at"] is None
    assert (rows[queued.pk]["started_at"], rows[queued.pk]["duration_seconds"], rows[queued.pk]["eta_seconds"]) == (None, None, None)
    detail = api(admin_user).get(f"/api/v1/training-runs/{done.pk}/").json()
    assert detail["duration_seconds"] == pytest.approx(100.0) and detail["stages"] == []


def make_cycle(project, *, ppo_promoted=False) -> TrainingRun:
    now = timezone.now()
    cycle = TrainingRun.objects.create(project=project, kind="cycle", status=RunStatus.SUCCEEDED, progress=1.0, started_at=now, finished_at=now)
    stages = [
        ("reward", {"val_accuracy": 0.82, "val_pairs": 40, "version": 2, "promoted": True, "train_loss": 0.4, "promotion_note": "x" * 500}),
        ("ppo", {"reward_gain": 0.15, "kl": 0.42, "version": 3, "promoted": ppo_promoted, "entropy": 2.0, "eval_wins": 20}),
        ("generate", {"tasks_created": 7, "prompts": 10, "policy": "policy v3"}),
    ]
    for kind, metrics in stages:
        TrainingRun.objects.create(project=project, kind=kind, parent=cycle, status=RunStatus.SUCCEEDED, progress=1.0, metrics=metrics)
    return cycle


def test_a_cycle_row_carries_the_key_metrics_of_its_stages(admin_user):
    project = Project.objects.create(name="cycle")
    cycle = make_cycle(project)
    rows = {row["id"]: row for row in api(admin_user).get("/api/v1/training-runs/", {"project": project.pk}).json()["results"]}
    stages = rows[cycle.pk]["stages"]
    assert [(s["kind"], s["status"]) for s in stages] == [("reward", "succeeded"), ("ppo", "succeeded"), ("generate", "succeeded")]
    assert stages[0]["metrics"] == {"val_accuracy": 0.82, "val_pairs": 40, "version": 2, "promoted": True}
    assert stages[1]["metrics"] == {"reward_gain": 0.15, "kl": 0.42, "version": 3, "promoted": False}
    assert stages[2]["metrics"] == {"tasks_created": 7}
    assert all(rows[s["id"]]["parent"] == cycle.pk and rows[s["id"]]["stages"] == [] for s in stages)


def test_a_run_row_says_what_the_run_achieved_in_words(admin_user):
    project = Project.objects.create(name="outcomes")

    def outcome(kind, metrics, status=RunStatus.SUCCEEDED):
        run = TrainingRun.objects.create(project=project, kind=kind, status=status, metrics=metrics)
        return api(admin_user).get(f"/api/v1/training-runs/{run.pk}/").json()["outcome"]

    reward_refused = {"val_accuracy": 0.52, "version": 4, "promoted": False, "promotion_note": "p = 0.985: no better than chance"}
    assert outcome("cycle", {"reward": reward_refused}) == (
        "stopped after the reward model: reward model v4 not promoted, because p = 0.985: no better than chance; the policy was not trained")
    ppo_refused = {"reward_gain": 0.01, "version": 2, "promoted": False, "promotion_note": "14 wins of 32 (p = 0.81)"}
    assert outcome("cycle", {"ppo": ppo_refused, "reward": {**reward_refused, "promoted": True}}) == (
        "reward model v4 promoted; stopped after PPO: PPO policy v2 not promoted, because 14 wins of 32 (p = 0.81); "
        "no new replies were generated")
    assert outcome("cycle", {"generate": {"tasks_created": 32}, "ppo": {**ppo_refused, "promoted": True},
                             "reward": {"skipped": "no new human judgements since the active reward model"}}) == (
        "the reward model skipped (no new human judgements since the active reward model); PPO policy v2 promoted; 32 new comparison tasks")
    assert outcome("reward", reward_refused) == "reward model v4 not promoted, because p = 0.985: no better than chance"
    assert outcome("cycle", {"reward": reward_refused}, status=RunStatus.FAILED) == ""  # the status and error say it


def test_a_version_the_gate_refused_is_promoted_only_with_a_recorded_override(admin_user):
    project = Project.objects.create(name="override")
    refused = version(project, "reward", 1, status="candidate", promoted=False, gate_refused=True,
                      promotion_note="it ranked 20 of 40 held-out pairs correctly (50.0%): no better than a coin")
    by_hand = version(project, "reward", 2, status="candidate", promoted=False, promotion_note="registered as a candidate; promote it by hand")
    client = api(admin_user)
    listed = {v["id"]: v for v in client.get("/api/v1/model-versions/", {"project": project.pk}).json()["results"]}
    assert listed[refused.pk]["gate_refused"] and not listed[by_hand.pk]["gate_refused"]
    blocked = client.post(f"/api/v1/model-versions/{refused.pk}/promote/", {}, format="json")
    assert blocked.status_code == 409 and "no better than a coin" in blocked.json()["detail"] and "override=true" in blocked.json()["detail"]
    refused.refresh_from_db()
    assert refused.status == "candidate"
    assert client.post(f"/api/v1/model-versions/{refused.pk}/promote/", {"override": "yes please"}, format="json").status_code == 400
    done = client.post(f"/api/v1/model-versions/{refused.pk}/promote/", {"override": True}, format="json").json()
    assert done["status"] == "active"
    assert done["promotion_note"] == ("promoted by admin, overriding the gate, which said: "
                                      "it ranked 20 of 40 held-out pairs correctly (50.0%): no better than a coin")
    # a version the gate never judged (promote by hand) needs no override
    assert client.post(f"/api/v1/model-versions/{by_hand.pk}/promote/").json()["promotion_note"] == "promoted by admin"


def test_listing_cycles_costs_the_same_queries_for_one_or_many(admin_user):
    """The stages are prefetched: a page of cycles is not one query per cycle."""
    project = Project.objects.create(name="queries")
    make_cycle(project)
    client = api(admin_user)

    def queries():
        with CaptureQueriesContext(connection) as captured:
            assert client.get("/api/v1/training-runs/", {"project": project.pk}).status_code == 200
        return len(captured)

    one = queries()
    for _ in range(4):
        make_cycle(project)
    assert queries() == one


# --------------------------------------------------------------------------- rolling back


def test_rolling_the_policy_back_past_its_first_version_leaves_the_built_in_policy():
    project = Project.objects.create(name="rollback")
    first, second = version(project, "policy", 1), version(project, "policy", 2, status="active")
    assert services.roll_back(project=project, kind="policy") == first
    assert active_policy(project) == first
    assert services.roll_back(project=project, kind="policy") is None  # past the first: the built-in one
    assert active_policy(project) is None
    assert set(ModelVersion.objects.values_list("status", flat=True)) == {"retired"}
    with pytest.raises(VersionNotPromotable, match="built-in"):
        services.roll_back(project=project, kind="policy")  # nothing is earlier than the built-in policy
    assert services.promote_version(version=second).status == "active"  # and a version can come back


def test_use_the_built_in_policy_directly_and_twice():
    project = Project.objects.create(name="builtin")
    version(project, "policy", 1)
    current = version(project, "policy", 2, status="active")
    reward = version(project, "reward", 1, status="active")
    assert services.roll_back(project=project, kind="policy", to="builtin") is None
    current.refresh_from_db()
    assert current.status == "retired" and active_policy(project) is None
    assert services.roll_back(project=project, kind="policy", to="builtin") is None  # asking again is no error
    reward.refresh_from_db()
    assert reward.status == "active"  # the reward model is not touched


def test_a_reward_model_has_no_built_in_default():
    project = Project.objects.create(name="reward")
    only = version(project, "reward", 1, status="active")
    with pytest.raises(VersionNotPromotable, match="no earlier active version"):
        services.roll_back(project=project, kind="reward")
    with pytest.raises(InvalidTrainingRequest) as refused:
        services.roll_back(project=project, kind="reward", to="builtin")
    assert refused.value.field == "to"
    with pytest.raises(InvalidTrainingRequest):
        services.roll_back(project=project, kind="policy", to="yesterday")
    only.refresh_from_db()
    assert only.status == "active"


@pytest.fixture
def default_policy(settings, tiny_policy_dir, tmp_path):
    settings.DEFAULT_POLICY_PATH = tiny_policy_dir
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    settings.TRAINING_HEARTBEAT_SECONDS = 3600
    return Path(tiny_policy_dir)


def test_after_rolling_back_to_built_in_generation_and_ppo_start_from_the_default_policy(db, default_policy):
    project = Project.objects.create(name="fallback", overlap_k=1, gold_rate=0)
    import_items(project, make_items(4))
    # its folder does not exist: a run that still loaded it would fail
    gone = version(project, "policy", 1, status="active", artifact_path="/nowhere/policy-v1")
    assert runner._starting_policy(project) == (Path("/nowhere/policy-v1"), gone)
    services.roll_back(project=project, kind="policy", to="builtin")
    assert runner._starting_policy(project) == (default_policy, None)  # what PPO and SFT start from
    run = services.start_run(project=project, kind="generate", config={"prompts": 2}, enqueue=False)
    runner.execute(run.pk)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.metrics["policy"] == "default policy" and run.metrics["tasks_created"] > 0
    generated = Response.objects.filter(prompt__project=project, origin="default policy")
    assert generated.exists() and not generated.exclude(model_version=None).exists()


def test_rollback_endpoint_to_built_in_and_back_to_a_version(admin_user):
    project = Project.objects.create(name="endpoint")
    first = version(project, "policy", 1)
    version(project, "policy", 2, status="active")
    url = f"/api/v1/projects/{project.pk}/rollback/"
    stepped = api(admin_user).post(url, {"kind": "policy"}, format="json")
    assert stepped.status_code == 200
    assert stepped.json()["builtin"] is False and stepped.json()["active"]["id"] == first.pk
    builtin = api(admin_user).post(url, {"kind": "policy", "to": "builtin"}, format="json")
    assert builtin.status_code == 200
    assert builtin.json() == {"kind": "policy", "builtin": True, "active": None, "detail": builtin.json()["detail"]}
    assert "built-in" in builtin.json()["detail"] and active_policy(project) is None
    further = api(admin_user).post(url, {"kind": "policy"}, format="json")
    assert further.status_code == 409 and "built-in" in further.json()["detail"]
    assert api(admin_user).post(f"/api/v1/projects/{project.pk + 1000}/rollback/", {"kind": "policy", "to": "builtin"}, format="json").status_code == 404


@pytest.mark.parametrize(
    "body, field",
    [
        ({"kind": "reward", "to": "builtin"}, "to"),
        ({"kind": "policy", "to": "yesterday"}, "to"),
        ({"kind": "policy", "to": 3}, "to"),
        ({"kind": "policy", "to": None}, "to"),
        ({"kind": "nonsense"}, "kind"),
        ({"kind": ["policy"]}, "kind"),
        ({}, "kind"),
        ([{"kind": "policy"}], "non_field_errors"),
    ],
)
def test_bad_rollback_input_is_a_400_naming_the_field_and_changes_nothing(admin_user, body, field):
    project = Project.objects.create(name="bad input")
    version(project, "policy", 1)
    current = version(project, "policy", 2, status="active")
    reward = version(project, "reward", 1, status="active")
    response = api(admin_user).post(f"/api/v1/projects/{project.pk}/rollback/", body, format="json")
    assert response.status_code == 400, response.content
    errors = response.json()
    assert field in errors and errors[field] and all(isinstance(reason, str) and reason for reason in errors[field])
    assert active_policy(project) == current and services.active_version(project, "reward") == reward
