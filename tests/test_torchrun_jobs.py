"""A worker with TRAINING_PROCESSES = 2 runs stages under torchrun (gloo on CPU): progress
and metric series still reach the run's row, cancel still stops it, and a failed rank fails
the run with that rank's traceback."""

import textwrap

from training import runner
from training.models import ModelVersion, RunStatus, TrainingRun

from .test_training_jobs import labelled_project, models_on_disk, run_now  # noqa: F401 (fixture)


def test_reward_stage_under_torchrun_reports_progress_and_registers_the_model(db, models_on_disk, settings):
    settings.TRAINING_PROCESSES = 2
    project = labelled_project()
    run = run_now(project, "reward")
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert "torchrun with 2 processes" in run.log_tail
    assert [p["step"] for p in run.metric_series] == list(range(1, len(run.metric_series) + 1)) and len(run.metric_series) > 3
    assert run.metrics["val_accuracy"] > 0.8
    version = ModelVersion.objects.get(produced_by=run)
    assert version.status == "active"


def test_ppo_stage_under_torchrun_is_evaluated_in_the_worker(db, models_on_disk, settings):
    project = labelled_project()
    run_now(project, "reward")
    run = run_now(project, "ppo", {"processes": 2})
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert [p["step"] for p in run.metric_series] == [1, 2, 3]
    assert run.metrics["eval_prompts"] == 32 and "held-out prompts" in ModelVersion.objects.get(produced_by=run).promotion_note


def test_dpo_and_grpo_stages_under_torchrun(db, models_on_disk, settings):
    """#11: the new policy algorithms run as torchrun subprocesses like PPO; evaluation stays in the worker."""
    from training import services

    from .test_policy_algorithms import TINY_DPO, TINY_RL

    project = labelled_project()
    rules = services.training_settings_for(project)
    rules.sampling_config = {"max_new_tokens": 8}
    rules.save()
    dpo = run_now(project, "dpo", {"processes": 2, "dpo": TINY_DPO})
    assert dpo.status == RunStatus.SUCCEEDED, dpo.error
    assert "dpo: torchrun with 2 processes" in dpo.log_tail and [p["step"] for p in dpo.metric_series] == list(range(1, 7))
    assert dpo.metrics["dpo_val_pairs"] > 0 and dpo.metrics["kl_prompts"] == 32
    run_now(project, "reward")
    grpo = run_now(project, "grpo", {"processes": 2, "grpo": TINY_RL})
    assert grpo.status == RunStatus.SUCCEEDED, grpo.error
    assert "grpo: torchrun with 2 processes" in grpo.log_tail and [p["step"] for p in grpo.metric_series] == [1, 2, 3]
    assert grpo.metrics["eval_prompts"] == 32 and grpo.metrics["algorithm"] == "grpo"


def test_cancel_reaches_every_rank(db, models_on_disk, settings, monkeypatch):
    settings.TRAINING_PROCESSES = 2
    project = labelled_project()
    relay = runner.RunReporter.on_progress

    def cancel_after_first_step(self, metrics):
        relay(self, metrics)
        TrainingRun.objects.filter(pk=self.run_id).update(cancel_requested=True)

    monkeypatch.setattr(runner.RunReporter, "on_progress", cancel_after_first_step)
    run = run_now(project, "reward", {"reward": {"epochs": 50}})
    assert run.status == RunStatus.CANCELLED, run.error
    assert 0 < len(run.metric_series) < 100 and not ModelVersion.objects.filter(project=project).exists()


def test_a_failed_rank_fails_the_run_with_its_traceback(db, models_on_disk, settings, monkeypatch, tmp_path):
    settings.TRAINING_PROCESSES = 2
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent("""
        import os
        if os.environ.get("RANK") == "1":  # only the second rank breaks, at its first optimiser step
            import torch

            def broken_step(self, *args, **kwargs):
                raise RuntimeError("simulated failure on rank 1")

            torch.optim.AdamW.step = broken_step
    """))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    project = labelled_project()
    run = run_now(project, "reward")
    assert run.status == RunStatus.FAILED
    assert "exited with code" in run.error and "Traceback" in run.error and "simulated failure on rank 1" in run.error
    assert not ModelVersion.objects.filter(project=project).exists()
