"""Executes one TrainingRun inside a worker process.

claim the run (queued -> running; anything else means a redelivery or a cancel: skip) ->
load data through selectors -> call training.ml with hooks that write progress, metric
series and heartbeats to the row and read its cancel flag -> write the model folder under
a temporary name and rename it into place -> register a ModelVersion -> promote it only if
the stated rule passes (services.promotion_decision). A crash at any point leaves the run
failed (the traceback on the row, or the reaper when the process died) and no new version
active.

Model folders: ARTIFACT_ROOT/projects/<project id>/<kind>/run-<run id>.

Devices and processes. Every stage runs on the worker's device (TRAINING_DEVICE: auto
picks CUDA when present); GPU memory is handed back after each stage. With
TRAINING_PROCESSES > 1 (or a run's "processes") the reward, SFT and PPO stages run as a
`torchrun --nproc_per_node=N` subprocess of the engine's command line (launcher.py),
which still reports progress, metrics and heartbeats and honours cancel; evaluation for
the gates and generation run in the worker itself.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from pathlib import Path

import functools
import hashlib
import json

import torch
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from labeling.services import GeneratedReply, add_comparison_task
from labeling.quality_filter import JudgementFilter

from . import launcher, selectors, services, simulated_history
from .endpoint_runs import stage_endpoints
from .exceptions import TrainingFailed
from .defaults import default_policy_dir, reward_backbone_dir
from .models import ModelVersion, RunKind, RunStatus, TrainingRun, VersionKind
from .ml.adapters import AdapterConfig, has_adapters, prepare_model
from .ml.checkpoint import load_policy, save_policy
from .ml.data import build_examples, split_by_prompt
from .ml.device import describe, free_memory, prepare, resolve_device
from .ml.dpo import DPOConfig, DPOTrainer
from .ml.evaluation import compare_policies, sampled_kl
from .ml.generation import SamplingConfig, generate
from .ml.hooks import TrainerHooks, TrainingCancelled
from .ml.ppo import PPOConfig, PPOTrainer, ValueModel, ppo_defaults_for
from .ml.reward import PRETRAINED_WEIGHT_SCALE, RewardTrainingConfig, backbone_weight_scale, evaluate, tokenize_examples, train_reward_model
from .ml.reward_model import RewardModel, RewardScorer
from .ml.rloo import OnlineRLConfig, OnlineRLTrainer, online_rl_defaults_for
from .ml.sft import SFTConfig, train_sft
from .ml.text import position_limit

log = logging.getLogger(__name__)
SERIES_KEYS = {
    "reward": ("loss", "lr", "val_accuracy"),
    "ppo": ("reward_mean", "kl", "kl_k3", "entropy", "clipfrac", "approx_kl", "value_loss", "explained_variance", "response_length"),
    "sft": ("loss", "lr"),
    "dpo": ("loss", "rewards/accuracy", "rewards/margin", "kl", "lr"),
    "rloo": ("reward_mean", "kl", "kl_k3", "entropy", "clipfrac", "approx_kl", "response_length"),
    "grpo": ("reward_mean", "kl", "kl_k3", "entropy", "clipfrac", "approx_kl", "response_length"),
}
MAX_SERIES = 2000
WRITE_EVERY_SECONDS = 0.5  # progress, heartbeat and the cancel flag
SERIES_EVERY_SECONDS = 2.0  # the metric series (up to MAX_SERIES points) is the larger write


class RunReporter:
    """TrainerHooks that write to the run's row, plus a heartbeat thread for long steps."""

    def __init__(self, run: TrainingRun, *, weight: float = 1.0, offset: float = 0.0, parent: "RunReporter | None" = None):
        self.run_id, self.kind = run.pk, run.kind
        self.weight, self.offset, self.parent = weight, offset, parent
        self.series: list[dict] = []
        self.log_lines: list[str] = []
        self._last_write = 0.0
        self._last_series_write = 0.0
        self._last_cancel_check = 0.0
        self._cancelled = False
        self._stop = threading.Event()
        self._heartbeat = None

    def hooks(self) -> TrainerHooks:
        return TrainerHooks(on_progress=self.on_progress, should_stop=self.should_stop)

    def log(self, line: str) -> None:
        log.info("run %s: %s", self.run_id, line)
        self.log_lines = (self.log_lines + [f"{timezone.now():%H:%M:%S} {line}"])[-50:]
        TrainingRun.objects.filter(pk=self.run_id).update(log_tail="\n".join(self.log_lines), heartbeat_at=timezone.now())

    def on_progress(self, metrics: dict) -> None:
        fraction = min(1.0, float(metrics.get("fraction", 0.0)))
        keys = SERIES_KEYS.get(self.kind, ())
        point = {"step": metrics["step"], **{k: metrics[k] for k in keys if metrics.get(k) is not None}}
        if len(point) > 1 and (not self.series or self.series[-1]["step"] != point["step"]):
            self.series = (self.series + [point])[-MAX_SERIES:]
        now = time.monotonic()
        if now - self._last_write >= WRITE_EVERY_SECONDS or fraction >= 1.0:
            self._last_write = now
            fields = {"progress": fraction, "heartbeat_at": timezone.now()}
            if now - self._last_series_write >= SERIES_EVERY_SECONDS or fraction >= 1.0:
                self._last_series_write = now
                fields["metric_series"] = self.series
            TrainingRun.objects.filter(pk=self.run_id).update(**fields)
            if self.parent is not None:
                self.parent.set_progress(self.offset + self.weight * fraction)

    def set_progress(self, fraction: float) -> None:
        TrainingRun.objects.filter(pk=self.run_id).update(progress=min(1.0, fraction), heartbeat_at=timezone.now())

    def should_stop(self) -> bool:
        now = time.monotonic()
        if now - self._last_cancel_check >= WRITE_EVERY_SECONDS:
            self._last_cancel_check = now
            ids = [self.run_id] + ([self.parent.run_id] if self.parent else [])
            self._cancelled = TrainingRun.objects.filter(pk__in=ids, cancel_requested=True).exists()
        return self._cancelled

    def start_heartbeat(self) -> None:
        def beat():
            try:
                while not self._stop.wait(settings.TRAINING_HEARTBEAT_SECONDS):
                    TrainingRun.objects.filter(Q(pk=self.run_id) | Q(parent_id=self.run_id), status=RunStatus.RUNNING).update(
                        heartbeat_at=timezone.now()
                    )
            finally:
                connection.close()

        self._heartbeat = threading.Thread(target=beat, name=f"heartbeat-run-{self.run_id}", daemon=True)
        self._heartbeat.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)


def artifact_dir(run: TrainingRun, kind: str) -> Path:
    return Path(settings.ARTIFACT_ROOT) / "projects" / str(run.project_id) / kind / f"run-{run.pk}"


@functools.lru_cache(maxsize=1)
def worker_device() -> torch.device:
    """The device of this worker (TRAINING_DEVICE), resolved once per process."""
    device = prepare(resolve_device(settings.TRAINING_DEVICE))
    log.info("training device: %s", describe(device))
    return device


def processes_for(run: TrainingRun) -> int:
    return int(run.config.get("processes") or settings.TRAINING_PROCESSES)


def adapters_for(run: TrainingRun) -> AdapterConfig:
    """The run's large-model options (LoRA, gradient checkpointing, save mode): config["adapters"]."""
    try:
        return AdapterConfig.from_dict(run.config.get("adapters"))
    except (TypeError, ValueError) as exc:
        raise TrainingFailed(f"adapters: {exc}") from exc


def _merged(cls, *overrides: dict):
    values: dict = {}
    for override in overrides:
        values.update(override or {})
    known = set(cls.__dataclass_fields__)
    unknown = set(values) - known
    if unknown:
        raise TrainingFailed(f"unknown {cls.__name__} settings: {', '.join(sorted(unknown))}")
    return cls(**values)


def _starting_policy(project) -> tuple[Path, ModelVersion | None]:
    current = services.active_version(project, VersionKind.POLICY)
    if current is not None:
        return Path(current.artifact_path), current
    path = default_policy_dir()
    if not (path / "config.json").exists():
        raise TrainingFailed(f"no policy: {path} is empty (run `manage.py bootstrap_models` or set DEFAULT_POLICY_PATH)")
    return path, None


def _register(run: TrainingRun, kind: str, path: Path, metrics: dict, parent: ModelVersion | None, reporter: RunReporter, auto_promote: bool = True) -> ModelVersion:
    version = services.register_version(project=run.project, kind=kind, artifact_path=str(path), run=run, metrics=metrics, parent=parent)
    ok, note = services.promotion_decision(kind=kind, metrics=metrics, project=run.project) if auto_promote else (False, "registered as a candidate; promote it by hand")
    if ok:
        services.promote_version(version=version, note=note)
        reporter.log(f"{kind} v{version.number} promoted: {note}")
    else:
        ModelVersion.objects.filter(pk=version.pk).update(promotion_note=note, gate_refused=auto_promote)
        reporter.log(f"{kind} v{version.number} kept as candidate: {note}")
    version.refresh_from_db()
    return version


# --------------------------------------------------------------------------- stages


def _read_judgements(run: TrainingRun, reporter: RunReporter) -> list:
    """The human judgements a reward or DPO run learns from, through the run's quality filter;
    the count it starts from is stored first (what the periodic check counts "new judgements" from)."""
    TrainingRun.objects.filter(pk=run.pk).update(judgements_at_start=services.human_judgement_count(run.project))
    quality = JudgementFilter.from_options(run.config.get("filter"))
    judgements = selectors.training_judgements(run.project, quality=quality)
    if quality.active:
        reporter.log(f"quality filter: {quality.describe()} ({len(judgements)} judgements left)")
    return judgements


def stage_reward(run: TrainingRun, reporter: RunReporter) -> dict:
    rules = services.training_settings_for(run.project)
    config = _merged(RewardTrainingConfig, rules.reward_config, run.config.get("reward"))
    judgements = _read_judgements(run, reporter)
    use_margin, val_fraction = bool(run.config.get("use_margin")), float(run.config.get("val_fraction", 0.2))
    examples = build_examples(judgements, use_margin=use_margin, include_ties=config.tie_weight > 0)
    train, val = split_by_prompt(examples, val_fraction, seed=config.seed)
    if len(train) < 2:
        raise TrainingFailed(f"only {len(examples)} usable judgements: need a few with a winner to train a reward model")
    device, processes, adapters = worker_device(), processes_for(run), adapters_for(run)
    reporter.log(f"reward model: {len(train)} training and {len(val)} validation judgements on {describe(device)}, {processes} process(es)")
    path = artifact_dir(run, "reward")
    if processes > 1:
        metrics = launcher.run_engine(
            run, reporter, "reward", processes, device,
            inputs={"data": launcher.raw_export_lines(judgements)},
            args=["--backbone", str(reward_backbone_dir()), "--val-fraction", str(val_fraction), "--out", str(path)]
            + ["--adapters", json.dumps(adapters.to_dict())] + (["--use-margin"] if use_margin else []),
            config=config,
        )
    else:
        torch.manual_seed(config.seed)
        model, tokenizer = RewardModel.from_backbone(reward_backbone_dir(), adapters=adapters)
        model.to(device)
        metrics = train_reward_model(model, tokenizer, train, val, config, hooks=reporter.hooks())
        metrics.pop("config", None)  # not part of the saved model's metrics
        model.save_pretrained(path, tokenizer, extra={"metrics": metrics}, mode=adapters.save)
        del model
    metrics.pop("config", None)
    metrics["train_judgements"] = len(train)
    current = services.active_version(run.project, VersionKind.REWARD)
    if current is not None and val:
        metrics["active_val_accuracy"] = _accuracy_on(current, val, config, device, reporter)
    version = _register(run, VersionKind.REWARD, path, metrics, current, reporter)
    return {**metrics, "version": version.number, "promoted": version.status == "active", "promotion_note": version.promotion_note}


def _accuracy_on(version: ModelVersion, examples, config: RewardTrainingConfig, device, reporter: RunReporter) -> float | None:
    """The pair accuracy of an existing reward model on these examples (the new model's validation pairs)."""
    try:
        model, tokenizer = RewardModel.from_pretrained(version.artifact_path)
    except (OSError, ValueError, KeyError) as exc:
        reporter.log(f"could not load the active reward model v{version.number} to compare with: {exc}")
        return None
    model.to(device)
    accuracy = evaluate(model, tokenize_examples(examples, tokenizer, config, position_limit(model)), tokenizer.pad_token_id, config)["val_accuracy"]
    reporter.log(f"the active reward model v{version.number} ranks {accuracy:.1%} of these validation pairs right")
    return accuracy


def split_eval_prompts(prompts: list[list[dict]], wanted: int) -> tuple[list[list[dict]], list[list[dict]]]:
    """(training prompts, held-out evaluation prompts): a stable choice by content hash, at
    most a quarter of the prompts held out, so PPO keeps most of them."""
    n_eval = min(wanted, len(prompts) // 4)
    digests = [hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest() for messages in prompts]
    held = set(sorted(range(len(prompts)), key=digests.__getitem__)[:n_eval])
    return [m for i, m in enumerate(prompts) if i not in held], [prompts[i] for i in sorted(held, key=digests.__getitem__)]


def _rl_against_reward(run: TrainingRun, reporter: RunReporter, algorithm: str, config, train_in_worker) -> dict:
    """PPO, RLOO or GRPO against the active reward model: the shared frame of the three
    stages (prompts with a held-out share, the torchrun subprocess or the worker itself,
    the head-to-head on the held-out prompts, the gate). `train_in_worker(policy,
    reference, tokenizer, scorer, prompts)` trains the policy in place and returns its
    history; reference is None with LoRA (the policy with its adapters off)."""
    rules = services.training_settings_for(run.project)
    device, processes, adapters = worker_device(), processes_for(run), adapters_for(run)
    reward_version = services.active_version(run.project, VersionKind.REWARD)
    if reward_version is None:
        raise TrainingFailed("no active reward model: train one first")
    start_path, start_version = _starting_policy(run.project)
    train_prompts, eval_prompts = split_eval_prompts(selectors.policy_prompts(run.project), rules.policy_eval_prompts)
    if not train_prompts:
        raise TrainingFailed("the project has no prompts")
    reporter.log(
        f"{algorithm.upper()} from {start_version or 'the default policy'} against reward v{reward_version.number} on {describe(device)}, "
        f"{processes} process(es): {len(train_prompts)} training prompts, {len(eval_prompts)} held out, {config.steps} steps"
    )
    path = artifact_dir(run, "policy")
    if processes > 1:
        result = launcher.run_engine(
            run, reporter, algorithm, processes, device,
            inputs={"prompts": [json.dumps({"messages": m}) for m in train_prompts]},
            args=["--policy", str(start_path), "--reward-model", reward_version.artifact_path, "--out", str(path), "--adapters", json.dumps(adapters.to_dict())],
            config=config,
        )
        history = result["history"]
        policy, tokenizer = load_policy(path)
        policy.to(device)
    else:
        torch.manual_seed(config.seed)
        policy, tokenizer = load_policy(start_path)
        policy = prepare_model(policy, adapters, task="causal")
        # the run's starting policy, frozen: with LoRA the policy itself with its adapters off
        reference = None if adapters.lora else load_policy(start_path)[0]
        for model in (policy, reference):
            if model is not None:
                model.to(device)
        scorer = RewardScorer(*_on(device, RewardModel.from_pretrained(reward_version.artifact_path)))
        history = train_in_worker(policy, reference, tokenizer, scorer, train_prompts)
        save_policy(policy, tokenizer, path, mode=adapters.save)
        del reference, scorer
        free_memory()
    metrics = {key: _mean_of_last(history, key) for key in ("reward_mean", "kl", "kl_k3", "entropy", "response_length")}
    metrics.update({"algorithm": algorithm, "steps": len(history), "start_reward_mean": history[0]["reward_mean"], "reward_version": reward_version.number})
    sampling = SamplingConfig(temperature=config.temperature, top_p=config.top_p, max_new_tokens=config.max_new_tokens, max_prompt_tokens=config.max_prompt_tokens)
    metrics.update(_head_to_head(policy, tokenizer, start_path, reward_version, eval_prompts, sampling, config.seed, reporter))
    version = _register(run, VersionKind.POLICY, path, metrics, start_version, reporter)
    return {**metrics, "version": version.number, "promoted": version.status == "active", "promotion_note": version.promotion_note}


def ppo_config(run: TrainingRun) -> PPOConfig:
    """The run's PPOConfig: the device's defaults, then the project's and the run's overrides."""
    rules = services.training_settings_for(run.project)
    return _merged(PPOConfig, ppo_defaults_for(worker_device()), rules.ppo_config, run.config.get("ppo"))


def stage_ppo(run: TrainingRun, reporter: RunReporter) -> dict:
    config = ppo_config(run)
    adapters = adapters_for(run)

    def train(policy, reference, tokenizer, scorer, prompts):
        start_path, _ = _starting_policy(run.project)
        value_model = ValueModel.from_policy_folder(start_path)
        value_model.backbone = prepare_model(value_model.backbone, adapters, task="feature")
        value_model.to(worker_device())
        trainer = PPOTrainer(policy, reference, value_model, tokenizer, scorer, prompts, config, hooks=reporter.hooks())
        trainer.train()
        return trainer.history

    return _rl_against_reward(run, reporter, "ppo", config, train)


def stage_online_rl(run: TrainingRun, reporter: RunReporter) -> dict:
    """RLOO or GRPO (the run's kind) against the active reward model: as PPO, without a
    value model (training/ml/rloo.py); the same held-out head-to-head and KL gate."""
    algorithm = run.kind
    rules = services.training_settings_for(run.project)
    config = _merged(OnlineRLConfig, online_rl_defaults_for(worker_device()), rules.online_rl_config, run.config.get(algorithm), {"algorithm": algorithm})

    def train(policy, reference, tokenizer, scorer, prompts):
        trainer = OnlineRLTrainer(policy, reference, tokenizer, scorer, prompts, config, hooks=reporter.hooks())
        trainer.train()
        return trainer.history

    return _rl_against_reward(run, reporter, algorithm, config, train)


def _on(device, loaded: tuple):
    model, tokenizer = loaded
    return model.to(device), tokenizer


def _head_to_head(policy, tokenizer, reference_path: Path, reward_version: ModelVersion, prompts, sampling: SamplingConfig, seed: int, reporter) -> dict:
    """The new policy against its reference on held-out prompts, judged by the reward model."""
    if not prompts:
        return {}
    device = worker_device()
    reporter.log(f"comparing the new policy with its reference on {len(prompts)} held-out prompts")
    reference = None  # with LoRA: the policy with its adapters off
    if not has_adapters(policy):
        reference, _ = load_policy(reference_path)
        reference.to(device)
    scorer = RewardScorer(*_on(device, RewardModel.from_pretrained(reward_version.artifact_path)))
    result = compare_policies(policy, reference, tokenizer, scorer, prompts, sampling, seed=seed)
    reporter.log(
        f"held-out: new policy preferred {result['wins']} times, reference {result['losses']} times "
        f"(mean reward {result['reward_candidate']:+.3f} vs {result['reward_reference']:+.3f}, sign test p = {result['p_value']:.3g})"
    )
    return {f"eval_{k}" if k in ("wins", "losses", "ties", "p_value", "samples") else k: v for k, v in result.items()}


def _mean_of_last(history: list[dict], key: str, n: int = 3) -> float | None:
    """The final value of a noisy per-step metric: the mean over the last n steps."""
    values = [h[key] for h in history[-n:] if h.get(key) is not None]
    return sum(values) / len(values) if values else None


def dpo_defaults(device, policy, n_train: int) -> dict:
    """DPOConfig values from the policy and the data, before the project's and the run's
    overrides: TRL's (and the paper's) learning rate 1e-6 for a pretrained policy, 1e-4 for
    one still at its initial weight scale (our default policy, trained from scratch on
    little text: at 1e-6 it does not move); 3 epochs under 2,000 judgements, 1 above; a
    batch of 8 judgements on a CPU, 32 on a GPU."""
    pretrained = backbone_weight_scale(policy) >= PRETRAINED_WEIGHT_SCALE
    return {"lr": 1e-6 if pretrained else 1e-4, "epochs": 3 if n_train < 2000 else 1, "batch_size": 32 if device.type == "cuda" else 8}


def stage_dpo(run: TrainingRun, reporter: RunReporter) -> dict:
    """DPO on the project's judgements (training/ml/dpo.py): no reward model in the loop.
    Held out by prompt, as for the reward model: the new policy is promoted when its
    implicit reward ranks people's held-out pairs better than a coin (binomial test) and
    its KL to the starting policy, measured on its own samples for the evaluation prompts, is
    within the bound (services.promotion_decision)."""
    rules = services.training_settings_for(run.project)
    device, processes, adapters = worker_device(), processes_for(run), adapters_for(run)
    start_path, start_version = _starting_policy(run.project)
    overrides = {**(rules.dpo_config or {}), **(run.config.get("dpo") or {})}
    judgements = _read_judgements(run, reporter)
    val_fraction = float(run.config.get("val_fraction", 0.2))
    examples = [e for e in build_examples(judgements, use_margin=bool(overrides.get("use_margin")), include_ties=False) if e.pairs]
    train, val = split_by_prompt(examples, val_fraction, seed=int(overrides.get("seed", 0)))
    policy, tokenizer = load_policy(start_path)
    config = _merged(DPOConfig, dpo_defaults(device, policy, len(train)), overrides)
    if len(train) < 2:
        raise TrainingFailed(f"only {len(examples)} judgements with a winner: DPO needs preference pairs (ties and both-bad carry none)")
    reporter.log(
        f"DPO from {start_version or 'the default policy'} on {describe(device)}, {processes} process(es): "
        f"{len(train)} training and {len(val)} held-out judgements, beta {config.beta}, {config.loss_type} loss"
    )
    path = artifact_dir(run, "policy")
    if processes > 1:
        metrics = launcher.run_engine(
            run, reporter, "dpo", processes, device,
            inputs={"data": launcher.raw_export_lines(judgements)},
            args=["--policy", str(start_path), "--val-fraction", str(val_fraction), "--out", str(path), "--adapters", json.dumps(adapters.to_dict())],
            config=config,
        )
        history = metrics.pop("history", [])
        policy, tokenizer = load_policy(path)
        policy.to(device)
    else:
        torch.manual_seed(config.seed)
        policy = prepare_model(policy, adapters, task="causal")
        policy.to(device)
        # the reference is the starting policy: its log-probs are computed once before the first update
        trainer = DPOTrainer(policy, tokenizer, train, config, eval_examples=val, hooks=reporter.hooks())
        metrics = trainer.train()
        history = trainer.history
        save_policy(policy, tokenizer, path, mode=adapters.save)
        del trainer
        free_memory()
    summary = {
        "algorithm": "dpo", "steps": len(history), "train_judgements": len(train),
        "dpo_val_accuracy": metrics.get("val_accuracy"), "dpo_val_pairs": metrics.get("val_pairs") or 0,
        "dpo_val_margin": metrics.get("val_margin"), "train_accuracy": _mean_of_last(history, "rewards/accuracy"),
        "train_loss": _mean_of_last(history, "loss"), "train_log_ratio": _mean_of_last(history, "kl"),
        **{key: metrics.get(key) for key in ("early_stopping_examples", "es_loss", "es_accuracy", "best_step", "stopped_early", "restored_best")},
    }
    _, eval_prompts = split_eval_prompts(selectors.policy_prompts(run.project), rules.policy_eval_prompts)
    sampling = _merged(SamplingConfig, rules.sampling_config, run.config.get("sampling"), {"n": 1})
    if eval_prompts:
        reference = None if has_adapters(policy) else load_policy(start_path)[0].to(device)
        summary.update(sampled_kl(policy, reference, tokenizer, eval_prompts, sampling, seed=config.seed))
        reporter.log(f"KL to the starting policy on its own samples for {len(eval_prompts)} evaluation prompts: {summary['kl']:.3f}")
        del reference
    reward_version = services.active_version(run.project, VersionKind.REWARD)
    if reward_version is not None and eval_prompts:  # for the record: the gate reads people's held-out pairs
        summary.update(_head_to_head(policy, tokenizer, start_path, reward_version, eval_prompts, sampling, config.seed, reporter))
    version = _register(run, VersionKind.POLICY, path, summary, start_version, reporter)
    return {**summary, "version": version.number, "promoted": version.status == "active", "promotion_note": version.promotion_note}


def stage_sft(run: TrainingRun, reporter: RunReporter) -> dict:
    config = _merged(SFTConfig, run.config.get("sft"))
    demos = selectors.demonstrations(run.project)
    if not demos:
        raise TrainingFailed("no clear winners among the judgements to learn from")
    start_path, start_version = _starting_policy(run.project)
    device, processes, adapters = worker_device(), processes_for(run), adapters_for(run)
    path = artifact_dir(run, "policy")
    if processes > 1:
        rows = [json.dumps({"messages": messages, "reply": reply}) for messages, reply in demos]
        metrics = launcher.run_engine(
            run, reporter, "sft", processes, device, inputs={"data": rows},
            args=["--policy", str(start_path), "--val-fraction", "0", "--out", str(path), "--adapters", json.dumps(adapters.to_dict())],
            config=config,
        )
    else:
        policy, tokenizer = load_policy(start_path)
        policy = prepare_model(policy, adapters, task="causal").to(device)
        metrics = train_sft(policy, tokenizer, demos, config, hooks=reporter.hooks())
        save_policy(policy, tokenizer, path, mode=adapters.save)
    metrics.pop("config", None)
    version = _register(run, VersionKind.POLICY, path, metrics, start_version, reporter, auto_promote=False)
    return {**metrics, "version": version.number, "promoted": False}


def stage_generate(run: TrainingRun, reporter: RunReporter) -> dict:
    """Fresh replies of the active policy against its predecessor's, as new comparison tasks."""
    rules = services.training_settings_for(run.project)
    sampling = _merged(SamplingConfig, rules.sampling_config, run.config.get("sampling"))
    new_path, new_version = _starting_policy(run.project)
    old_version = new_version.parent if new_version else None
    old_path = Path(old_version.artifact_path) if old_version else (default_policy_dir() if new_version else None)
    n_prompts = int(run.config.get("prompts", rules.generate_prompts))
    prompts = selectors.prompts_for_generation(run.project, n_prompts, seed=run.pk)
    messages = [p.messages for p in prompts]
    torch.manual_seed(int(run.config.get("seed", run.pk)))
    policy, tokenizer = load_policy(new_path)
    policy.to(worker_device())
    sampling.n = max(1, int(run.config.get("replies_per_prompt", rules.generate_replies_per_prompt)))
    new_samples = generate(policy, tokenizer, messages, sampling)
    reporter.on_progress({"step": 1, "fraction": 0.5})
    old_samples = None
    if old_path is not None:
        old_policy, old_tokenizer = load_policy(old_path)
        old_policy.to(worker_device())
        old_sampling = SamplingConfig(**{**sampling.__dict__, "n": 1})
        old_samples = generate(old_policy, old_tokenizer, messages, old_sampling)
    new_name = f"policy v{new_version.number}" if new_version else "default policy"
    old_name = f"policy v{old_version.number}" if old_version else "default policy"
    params = {k: v for k, v in sampling.__dict__.items() if k != "batch_size"}
    existing = selectors.first_replies(prompts) if old_samples is None else {}
    created = 0
    for i, prompt in enumerate(prompts):
        replies = [GeneratedReply(s.text, new_name, new_version.pk if new_version else None, {**params, "logprob": s.logprob}) for s in new_samples[i]]
        if old_samples is not None:
            replies.append(GeneratedReply(old_samples[i][0].text, old_name, old_version.pk if old_version else None, params))
        elif prompt.pk in existing:
            replies.append(GeneratedReply(existing[prompt.pk], "existing reply"))
        if add_comparison_task(prompt=prompt, replies=replies, priority=10) is not None:
            created += 1
    reporter.on_progress({"step": 2, "fraction": 1.0})
    compared_with = old_name if old_samples is not None else "existing replies"
    reporter.log(f"{created} new comparison tasks from {new_name} against {compared_with}")
    return {"tasks_created": created, "prompts": len(prompts), "policy": new_name, "compared_with": compared_with}


def stage_simulate(run: TrainingRun, reporter: RunReporter) -> dict:
    """The demo's simulated judgement history (training/simulated_history.py): the project's
    policy writes replies_per_prompt replies to every demo prompt, sampled as PPO samples
    them (its temperature and reply length), and simulated annotators rank them."""
    references = simulated_history.demo_references(run.project)
    if not references:
        raise TrainingFailed("the project has no demo prompts with reference answers")
    options = simulated_history.options(run.config)
    ppo = ppo_config(run)
    sampling = SamplingConfig(n=int(options["replies_per_prompt"]), temperature=ppo.temperature, top_p=ppo.top_p,
                              max_new_tokens=ppo.max_new_tokens, max_prompt_tokens=ppo.max_prompt_tokens)
    path, version = _starting_policy(run.project)
    name = f"policy v{version.number}" if version else "default policy"
    reporter.log(f"{name} writes {sampling.n} replies to each of {len(references)} demo prompts for the simulated annotators")
    policy, tokenizer = load_policy(path)
    policy.to(worker_device())
    torch.manual_seed(int(options["seed"]))
    replies = []
    for start in range(0, len(references), sampling.batch_size):
        reporter.hooks().check_cancelled()
        chunk = [prompt.messages for prompt, _ in references[start : start + sampling.batch_size]]
        replies.extend([sample.text for sample in samples] for samples in generate(policy, tokenizer, chunk, sampling))
        reporter.on_progress({"step": start + len(chunk), "fraction": 0.9 * (start + len(chunk)) / len(references)})
    params = {"temperature": sampling.temperature, "top_p": sampling.top_p, "max_new_tokens": sampling.max_new_tokens, "simulated_history": True}
    result = simulated_history.record(
        run.project, references, replies, origin=name, version_id=version.pk if version else None, params=params,
        annotators=int(options["annotators"]), temperature=float(options["temperature"]), seed=int(options["seed"]),
    )
    reporter.log(
        f"{result['annotators']} simulated annotators ranked the replies of {result['tasks_created']} new tasks: "
        f"{result['simulated_judgements']} simulated judgements (mean word overlap with the reference: best reply "
        f"{result['mean_best_overlap']}, worst {result['mean_worst_overlap']})"
    )
    return {**result, "policy": name}


def stage_cycle(run: TrainingRun, reporter: RunReporter) -> dict:
    """The project's policy algorithm, then generation; each stage is a child run with its own row.

    PPO, RLOO, GRPO: reward model, then the policy against it, then generation. The reward
    model is retrained only when human judgements arrived since the active one. DPO: the
    policy learns from the judgements directly, then generation (run only when judgements
    arrived since the active DPO policy). The cycle stops at the first stage that promotes
    nothing (no policy trained against a reward model that learned nothing, no new replies
    from a policy that did not improve).
    """
    rules = services.training_settings_for(run.project)
    algorithm = rules.policy_algorithm
    results = {}
    if algorithm == "dpo":
        plan = [(RunKind.DPO, 0.9), (RunKind.GENERATE, 0.1)]
    else:
        plan = [(RunKind.REWARD, 0.3), (RunKind(algorithm), 0.6), (RunKind.GENERATE, 0.1)]
    reporter.log(f"cycle: {' -> '.join(kind for kind, _ in plan)}")
    offset = 0.0
    new_judgements = services.new_judgements_since_trained(run.project)
    for kind, weight in plan:
        if kind in (RunKind.REWARD, RunKind.DPO) and new_judgements == 0:
            what = "reward model" if kind == RunKind.REWARD else "DPO policy"
            reporter.log(f"no new human judgements since the active {what}: it is kept, not retrained")
            results[kind] = {"skipped": f"no new human judgements since the active {what}"}
            offset += weight
            if kind == RunKind.DPO:
                break  # the active policy generated its replies already
            continue
        child = TrainingRun.objects.create(project=run.project, kind=kind, parent=run, config=run.config, requested_by=run.requested_by)
        child_reporter = RunReporter(child, weight=weight, offset=offset, parent=reporter)
        result = execute(child.pk, reporter=child_reporter, raise_errors=True)
        results[kind] = result
        offset += weight
        if kind == RunKind.REWARD and not result.get("promoted"):
            reporter.log(f"the new reward model was not promoted ({result.get('promotion_note')}): the cycle stops before {algorithm.upper()}")
            break
        if kind not in (RunKind.REWARD, RunKind.GENERATE) and not result.get("promoted"):
            reporter.log(f"the new policy was not promoted ({result.get('promotion_note')}): no new replies generated")
            break
    return results


STAGES = {
    RunKind.REWARD: stage_reward,
    RunKind.PPO: stage_ppo,
    RunKind.DPO: stage_dpo,
    RunKind.RLOO: stage_online_rl,
    RunKind.GRPO: stage_online_rl,
    RunKind.SFT: stage_sft,
    RunKind.GENERATE: stage_generate,
    RunKind.CYCLE: stage_cycle,
    RunKind.ENDPOINTS: stage_endpoints,
    RunKind.SIMULATE: stage_simulate,
}


def _claim(run_id: int) -> TrainingRun | None:
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update(of=("self",)).select_related("project").filter(pk=run_id).first()
        if run is None or run.status != RunStatus.QUEUED:
            return None
        now = timezone.now()
        run.status, run.started_at, run.heartbeat_at = RunStatus.RUNNING, now, now
        run.save(update_fields=["status", "started_at", "heartbeat_at"])
        return run


def _finish(run_id: int, status: str, **fields) -> None:
    TrainingRun.objects.filter(pk=run_id).update(status=status, finished_at=timezone.now(), **fields)


def execute(run_id: int, *, reporter: RunReporter | None = None, raise_errors: bool = False) -> dict:
    """Run a queued TrainingRun to its end; return its metrics ({} when it was not claimed)."""
    run = _claim(run_id)
    if run is None:
        log.warning("run %s is not queued (redelivered, cancelled or unknown): skipped", run_id)
        return {}
    reporter = reporter or RunReporter(run)
    top_level = reporter.parent is None
    if top_level:
        reporter.start_heartbeat()
    try:
        result = STAGES[run.kind](run, reporter)
    except TrainingCancelled:
        _finish(run_id, RunStatus.CANCELLED, log_tail="\n".join(reporter.log_lines + ["cancelled on request"]))
        if raise_errors:
            raise
        return {}
    except Exception as exc:
        message = str(exc) if isinstance(exc, TrainingFailed) else traceback.format_exc()
        _finish(run_id, RunStatus.FAILED, error=message)
        log.error("run %s failed: %s", run_id, message)
        if raise_errors:
            raise
        return {}
    finally:
        free_memory()
        if top_level:
            reporter.stop_heartbeat()
    _finish(run_id, RunStatus.SUCCEEDED, metrics=_jsonable(result), progress=1.0, metric_series=reporter.series)
    return result


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value
