"""DPO, RLOO and GRPO as jobs (#11), run inline like the other training jobs: run kinds,
the project's policy algorithm in a cycle, the DPO promotion gate, config checks and the
settings form."""

import pytest

from labeling.models import Project
from training import services
from training.models import ModelVersion, RunStatus, TrainingRun
from training.run_config import config_problems

from .test_training_jobs import labelled_project, models_on_disk, run_now  # noqa: F401 - fixtures

TINY_DPO = {"steps": 6, "batch_size": 8, "lr": 3e-4, "max_reply_tokens": 24}
TINY_RL = {"steps": 3, "prompts_per_step": 4, "num_samples": 2, "minibatch_size": 4, "max_new_tokens": 8, "lr": 1e-4}


@pytest.mark.parametrize("kind", ["rloo", "grpo"])
def test_rloo_and_grpo_need_a_reward_model_and_register_a_policy(db, models_on_disk, kind):
    project = labelled_project()
    failed = run_now(project, kind, {kind: TINY_RL})
    assert failed.status == RunStatus.FAILED and "no active reward model" in failed.error
    run_now(project, "reward")
    run = run_now(project, kind, {kind: TINY_RL})
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert [p["step"] for p in run.metric_series] == [1, 2, 3] and "kl" in run.metric_series[0]
    assert run.metrics["algorithm"] == kind and run.metrics["eval_prompts"] == 32
    policy = ModelVersion.objects.get(produced_by=run)
    assert policy.kind == "policy" and "held-out prompts" in policy.promotion_note


def test_dpo_run_trains_on_the_judgements_and_is_gated_without_a_reward_model(db, models_on_disk):
    project = labelled_project()
    rules = services.training_settings_for(project)
    rules.sampling_config = {"max_new_tokens": 8}  # the held-out KL samples replies as generation does
    rules.save()
    run = run_now(project, "dpo", {"dpo": TINY_DPO})
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert not ModelVersion.objects.filter(project=project, kind="reward").exists()
    metrics = run.metrics
    assert metrics["algorithm"] == "dpo" and metrics["steps"] == 6 and metrics["dpo_val_pairs"] > 0
    assert metrics["kl"] is not None and metrics["kl_prompts"] == 32  # sampled on held-out prompts
    assert [p["step"] for p in run.metric_series] == list(range(1, 7)) and "rewards/accuracy" in run.metric_series[0]
    policy = ModelVersion.objects.get(produced_by=run)
    assert "held-out pairs" in policy.promotion_note
    assert "eval_wins" not in metrics  # no reward model: nothing to compare with


def test_dpo_gate_reads_held_out_pairs_and_the_sampled_kl(db):
    project = Project.objects.create(name="dpo-gates")
    learned = {"algorithm": "dpo", "dpo_val_accuracy": 0.75, "dpo_val_pairs": 40, "kl": 3.0}
    ok, note = services.promotion_decision(kind="policy", metrics=learned, project=project)
    assert ok and "30 of 40 held-out pairs" in note
    ok, note = services.promotion_decision(kind="policy", metrics={**learned, "dpo_val_accuracy": 0.55}, project=project)
    assert not ok and "a coin does that often" in note
    ok, note = services.promotion_decision(kind="policy", metrics={**learned, "kl": 40.0}, project=project)
    assert not ok and "above the bound" in note
    ok, note = services.promotion_decision(kind="policy", metrics={**learned, "dpo_val_pairs": 0}, project=project)
    assert not ok and "no held-out judgements" in note


@pytest.mark.parametrize("algorithm, stages", [("dpo", ["dpo", "generate"]), ("grpo", ["reward", "grpo", "generate"])])
def test_a_cycle_runs_the_projects_policy_algorithm(db, models_on_disk, monkeypatch, algorithm, stages):
    from training import runner

    project = labelled_project()
    rules = services.training_settings_for(project)
    rules.policy_algorithm, rules.dpo_config, rules.online_rl_config = algorithm, TINY_DPO, TINY_RL
    rules.sampling_config = {"max_new_tokens": 8}
    rules.save()
    monkeypatch.setattr(runner.services, "promotion_decision", lambda **kw: (True, "promoted by the test"))
    cycle = run_now(project, "cycle")
    assert cycle.status == RunStatus.SUCCEEDED, cycle.error
    assert [s.kind for s in TrainingRun.objects.filter(parent=cycle).order_by("pk")] == stages
    assert cycle.metrics["generate"]["tasks_created"] > 0
    if algorithm == "dpo":  # no new judgements since the DPO policy: the next cycle does nothing
        assert services.new_judgements_since_trained(project) == 0
        again = run_now(project, "cycle")
        assert [s.kind for s in TrainingRun.objects.filter(parent=again)] == [] and "kept, not retrained" in again.log_tail


def test_run_configs_of_the_new_kinds_are_checked():
    assert config_problems({"dpo": {"beta": 0.2, "loss_type": "ipo"}, "grpo": {"num_samples": 8}}) == []
    assert config_problems({"dpo": {"betta": 1}})[0][0] == "dpo.betta"
    assert config_problems({"rloo": {"algorithm": "grpo"}}) == [("rloo.algorithm", "set by the run kind: a rloo run runs RLOO")]
    assert config_problems({"grpo": {"num_samples": "four"}})[0][0] == "grpo.num_samples"


def test_the_settings_form_takes_the_algorithm_and_checks_its_overrides(admin_client):
    from django.urls import reverse

    from .test_console_projects import project_form

    bad = admin_client.post(reverse("console:project_create"), project_form(**{"training-policy_algorithm": "dpo", "training-dpo_config": '{"betta": 1}'}))
    assert bad.status_code == 200 and "dpo.betta: unknown setting" in bad.content.decode()
    good = admin_client.post(reverse("console:project_create"), project_form(**{"training-policy_algorithm": "grpo", "training-online_rl_config": '{"num_samples": 4}'}))
    assert good.status_code == 302
    rules = services.training_settings_for(Project.objects.get(name="Helpfulness round 2"))
    assert rules.policy_algorithm == "grpo" and rules.online_rl_config == {"num_samples": 4}
    page = admin_client.get(good["Location"]).content.decode()
    assert "GRPO against the reward model" in page
