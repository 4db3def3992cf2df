"""Command line for the training engine, for a worker on another machine or torchrun.

    python -m training.ml.cli reward --data raw.jsonl --backbone DIR --out DIR
    torchrun --nproc_per_node=2 -m training.ml.cli reward --data raw.jsonl --backbone DIR --out DIR
    python -m training.ml.cli sft --data demos.jsonl --policy DIR --out DIR
    python -m training.ml.cli ppo --policy DIR --reward-model DIR --prompts prompts.jsonl --out DIR
    python -m training.ml.cli dpo --data raw.jsonl --policy DIR --out DIR
    python -m training.ml.cli grpo --policy DIR --reward-model DIR --prompts prompts.jsonl --out DIR   (or rloo)
    python -m training.ml.cli generate --policy DIR --prompts prompts.jsonl --n 4 --out samples.jsonl

Data files are JSON Lines: `reward` and `dpo` read the labeling app's raw export; `sft` reads
{"messages": [...], "reply": "..."}; `ppo`, `rloo`, `grpo` and `generate` read {"messages": [...]} (or
{"prompt": "..."}). --config takes a JSON object of the trainer's config fields. Rank 0
writes the model folder and, with --metrics-out, the final metrics as JSON. --device
(auto, cpu, cuda, cuda:N) places every model; under torchrun `cuda` is each rank's
LOCAL_RANK GPU and the process group uses nccl, on CPU gloo.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields
from pathlib import Path

import torch
from torch.distributed.elastic.multiprocessing.errors import record

from . import distributed
from .adapters import AdapterConfig, prepare_model
from .device import prepare, resolve_device
from .hooks import NO_HOOKS, TrainerHooks, TrainingCancelled

CANCELLED_EXIT_CODE = 3


def _config(cls, text: str | None):
    values = json.loads(text) if text else {}
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise SystemExit(f"unknown {cls.__name__} fields: {', '.join(sorted(unknown))}")
    return cls(**values)


def _read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _messages(row: dict) -> list[dict]:
    return row["messages"] if "messages" in row else [{"role": "user", "content": row["prompt"]}]


def file_hooks(progress_file: str | None, stop_file: str | None) -> TrainerHooks:
    """Hooks for a worker watching from outside: rank 0 appends each step's metrics to
    `progress_file` (one JSON line); a `stop_file` seen by rank 0 stops every rank at the
    same step (the ranks agree through an all-reduce)."""
    if not progress_file and not stop_file:
        return NO_HOOKS

    def on_progress(metrics: dict) -> None:
        if progress_file and distributed.is_main_process():
            with open(progress_file, "a", encoding="utf-8") as f:
                f.write(json.dumps(metrics, default=float) + "\n")

    def should_stop() -> bool:
        seen = float(bool(stop_file) and distributed.is_main_process() and Path(stop_file).exists())
        return distributed.all_reduce_sum(torch.tensor([seen])).item() > 0

    return TrainerHooks(on_progress=on_progress, should_stop=should_stop)


def _write_metrics(path: str | None, metrics: dict) -> None:
    text = json.dumps(metrics, indent=2, default=str)
    if path:
        Path(path).write_text(text)
    else:
        print(text)


def cmd_reward(args) -> dict:
    from .data import build_examples, judgements_from_raw_export, split_by_prompt
    from .reward import RewardTrainingConfig, train_reward_model
    from .reward_model import RewardModel

    config = _config(RewardTrainingConfig, args.config)
    with open(args.data, encoding="utf-8") as f:
        judgements = judgements_from_raw_export(f)
    examples = build_examples(judgements, use_margin=args.use_margin, include_ties=config.tie_weight > 0)
    train, val = split_by_prompt(examples, args.val_fraction, seed=config.seed)
    torch.manual_seed(config.seed)
    model, tokenizer = RewardModel.from_backbone(args.backbone, adapters=args.adapters)
    model.to(args.torch_device)
    metrics = train_reward_model(model, tokenizer, train, val, config, hooks=args.hooks)
    if distributed.is_main_process() and args.out:
        model.save_pretrained(args.out, tokenizer, extra={"metrics": {k: v for k, v in metrics.items() if k != "config"}}, mode=args.adapters.save)
    return metrics


def cmd_sft(args) -> dict:
    from .checkpoint import load_policy, save_policy
    from .sft import SFTConfig, train_sft

    config = _config(SFTConfig, args.config)
    rows = _read_jsonl(args.data)
    demos = [(_messages(r), r["reply"]) for r in rows]
    n_val = int(len(demos) * args.val_fraction)
    model, tokenizer = load_policy(args.policy)
    model = prepare_model(model, args.adapters, task="causal").to(args.torch_device)
    metrics = train_sft(model, tokenizer, demos[n_val:], config, val_demonstrations=demos[:n_val], hooks=args.hooks)
    if distributed.is_main_process() and args.out:
        save_policy(model, tokenizer, args.out, mode=args.adapters.save)
    return metrics


def _policy_and_reference(args):
    """(policy with the run's adapters, its frozen reference, tokenizer), on the device; the
    reference is None with LoRA (the policy with its adapters off)."""
    from .checkpoint import load_policy

    policy, tokenizer = load_policy(args.policy)
    policy = prepare_model(policy, args.adapters, task="causal").to(args.torch_device)
    reference = None if args.adapters.lora else load_policy(args.policy)[0].to(args.torch_device)
    return policy, reference, tokenizer


def _scorer_and_prompts(args):
    """The reward model as a scorer on the device, and the training prompts."""
    from .reward_model import RewardModel, RewardScorer

    reward_model, reward_tokenizer = RewardModel.from_pretrained(args.reward_model)
    return RewardScorer(reward_model.to(args.torch_device), reward_tokenizer), [_messages(r) for r in _read_jsonl(args.prompts)]


def _train_policy(trainer, policy, tokenizer, args) -> dict:
    """Resume when asked, train (writing the resumable state as asked), save the policy (rank
    0): the tail of the ppo, dpo, rloo and grpo commands."""
    from .checkpoint import save_policy

    if args.resume:
        trainer.load_state_dict(torch.load(args.resume, weights_only=False, map_location=args.torch_device))
    metrics = trainer.train(checkpoint_path=args.state, checkpoint_every=args.checkpoint_every)
    if args.out and distributed.is_main_process():
        save_policy(policy, tokenizer, args.out, mode=args.adapters.save)
    return {**metrics, "history": trainer.history}


def cmd_ppo(args) -> dict:
    from .ppo import PPOConfig, PPOTrainer, ValueModel

    config = _config(PPOConfig, args.config)
    policy, ref_policy, tokenizer = _policy_and_reference(args)
    value_model = ValueModel.from_policy_folder(args.policy)
    value_model.backbone = prepare_model(value_model.backbone, args.adapters, task="feature")
    value_model.to(args.torch_device)
    scorer, prompts = _scorer_and_prompts(args)
    trainer = PPOTrainer(policy, ref_policy, value_model, tokenizer, scorer, prompts, config, hooks=args.hooks)
    return _train_policy(trainer, policy, tokenizer, args)


def cmd_dpo(args) -> dict:
    from .checkpoint import load_policy
    from .data import build_examples, judgements_from_raw_export, split_by_prompt
    from .dpo import DPOConfig, DPOTrainer

    config = _config(DPOConfig, args.config)
    with open(args.data, encoding="utf-8") as f:
        judgements = judgements_from_raw_export(f)
    examples = [e for e in build_examples(judgements, use_margin=config.use_margin, include_ties=False) if e.pairs]
    train, val = split_by_prompt(examples, args.val_fraction, seed=config.seed)
    torch.manual_seed(config.seed)
    policy, tokenizer = load_policy(args.policy)
    policy = prepare_model(policy, args.adapters, task="causal").to(args.torch_device)
    trainer = DPOTrainer(policy, tokenizer, train, config, eval_examples=val, hooks=args.hooks)
    return _train_policy(trainer, policy, tokenizer, args)


def cmd_online_rl(args) -> dict:
    """rloo or grpo: the same trainer (rloo.py), the algorithm from the command."""
    from .rloo import OnlineRLConfig, OnlineRLTrainer

    values = json.loads(args.config) if args.config else {}
    config = _config(OnlineRLConfig, json.dumps({**values, "algorithm": args.command}))
    policy, ref_policy, tokenizer = _policy_and_reference(args)
    scorer, prompts = _scorer_and_prompts(args)
    trainer = OnlineRLTrainer(policy, ref_policy, tokenizer, scorer, prompts, config, hooks=args.hooks)
    return _train_policy(trainer, policy, tokenizer, args)


def cmd_generate(args) -> dict:
    from .checkpoint import load_policy
    from .generation import SamplingConfig, best_of_n, generate

    config = _config(SamplingConfig, args.config)
    config.n = args.n
    policy, tokenizer = load_policy(args.policy)
    policy.to(args.torch_device)
    prompts = [_messages(r) for r in _read_jsonl(args.prompts)]
    torch.manual_seed(args.seed)
    samples = generate(policy, tokenizer, prompts, config)
    best = None
    if args.reward_model:
        from .reward_model import RewardModel, RewardScorer

        reward_model, reward_tokenizer = RewardModel.from_pretrained(args.reward_model)
        scorer = RewardScorer(reward_model.to(args.torch_device), reward_tokenizer)
        best = best_of_n(prompts, samples, scorer)
    with open(args.out, "w", encoding="utf-8") as f:
        for i, (messages, options) in enumerate(zip(prompts, samples)):
            row = {"messages": messages, "samples": [s.__dict__ for s in options]}
            if best:
                row["best"] = {"text": best[i][0].text, "reward": best[i][1]}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {"prompts": len(prompts), "samples": sum(len(s) for s in samples)}


@record
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.ml.cli", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    sub = parser.add_subparsers(dest="command", required=True)

    reward = sub.add_parser("reward", help="train a reward model on a raw judgement export")
    reward.add_argument("--data", required=True)
    reward.add_argument("--backbone", required=True, help="checkpoint folder of the backbone")
    reward.add_argument("--out")
    reward.add_argument("--val-fraction", type=float, default=0.1)
    reward.add_argument("--use-margin", action="store_true")

    sft = sub.add_parser("sft", help="supervised fine-tuning on demonstrations")
    sft.add_argument("--data", required=True)
    sft.add_argument("--policy", required=True)
    sft.add_argument("--out")
    sft.add_argument("--val-fraction", type=float, default=0.1)

    ppo = sub.add_parser("ppo", help="PPO against a trained reward model")
    ppo.add_argument("--policy", required=True)
    ppo.add_argument("--reward-model", required=True)
    ppo.add_argument("--prompts", required=True)
    ppo.add_argument("--out")
    ppo.add_argument("--state", help="where to write the resumable state")
    ppo.add_argument("--checkpoint-every", type=int, default=0)
    ppo.add_argument("--resume", help="a state written by --state")

    dpo = sub.add_parser("dpo", help="DPO on a raw judgement export (no reward model)")
    dpo.add_argument("--data", required=True)
    dpo.add_argument("--policy", required=True)
    dpo.add_argument("--out")
    dpo.add_argument("--val-fraction", type=float, default=0.2)

    online = {}
    for name in ("rloo", "grpo"):
        online[name] = sub.add_parser(name, help=f"{name.upper()} against a trained reward model (no value model)")
        online[name].add_argument("--policy", required=True)
        online[name].add_argument("--reward-model", required=True)
        online[name].add_argument("--prompts", required=True)
        online[name].add_argument("--out")
    for p in (ppo, dpo, *online.values()):
        if p is not ppo:
            p.add_argument("--state", help="where to write the resumable state")
            p.add_argument("--checkpoint-every", type=int, default=0)
            p.add_argument("--resume", help="a state written by --state")

    gen = sub.add_parser("generate", help="sample replies (best-of-n with --reward-model)")
    gen.add_argument("--policy", required=True)
    gen.add_argument("--prompts", required=True)
    gen.add_argument("--n", type=int, default=1)
    gen.add_argument("--out", required=True)
    gen.add_argument("--reward-model")
    gen.add_argument("--seed", type=int, default=0)

    for p in (reward, sft, ppo, dpo, *online.values(), gen):
        p.add_argument("--config", help="JSON object of config fields")
        p.add_argument("--metrics-out")
        p.add_argument("--progress-file", help="rank 0 appends each step's metrics here (JSON Lines)")
        p.add_argument("--stop-file", help="when this file appears, every rank stops at its next step (exit code 3)")
        if p is not gen:
            p.add_argument("--adapters", help="JSON object of AdapterConfig fields: LoRA (lora_r, ...), gradient_checkpointing, save")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        args.torch_device = prepare(resolve_device(args.device))
    except (ValueError, RuntimeError) as exc:
        parser.error(str(exc))
    distributed.init_from_env(device=args.torch_device)
    args.hooks = file_hooks(args.progress_file, args.stop_file)
    try:
        args.adapters = AdapterConfig.from_dict(json.loads(args.adapters) if getattr(args, "adapters", None) else None)
    except (ValueError, TypeError) as exc:
        parser.error(f"--adapters: {exc}")
    try:
        commands = {"reward": cmd_reward, "sft": cmd_sft, "ppo": cmd_ppo, "dpo": cmd_dpo, "rloo": cmd_online_rl, "grpo": cmd_online_rl, "generate": cmd_generate}
        metrics = commands[args.command](args)
        if distributed.is_main_process():
            _write_metrics(args.metrics_out, metrics)
    except TrainingCancelled:  # every rank stopped at the same step: they can still meet
        distributed.shutdown()
        return CANCELLED_EXIT_CODE
    # Any other error propagates without a barrier: this rank exits, torchrun sees it and
    # stops the others (a barrier here would wait forever for ranks stuck in a collective).
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    code = main()
    if distributed.launched_by_torchrun():
        # A rank that finished (metrics, state and model written, process group destroyed)
        # leaves without interpreter finalization: tearing down torch's and gloo's native threads
        # there now and then aborted a rank ("terminate called without an active exception",
        # then SIGSEGV) after its work was done, and torchrun then failed the whole run. Errors
        # raised by main() never get here: they exit through Python as usual, with their traceback.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
