"""Hugging Face TRL 1.12's experimental PPOTrainer on the models and prompts of bench/ppo_bench.py, side by side.

bench/ppo_bench.py --shape issue7 --dump DIR writes DIR/policy (a random-init GPT-2, 4 layers, width 256,
with its byte-level BPE tokenizer), DIR/reward (our reward model: backbone + reward_head.safetensors,
head bias 0, offset 0, scale 1), DIR/prompts.json (64 prompts of exactly 256 tokens, as token ids) and
DIR/reward_check.json (raw scores of our reward model on four prompt + reply sequences). This script runs
TRL's PPOTrainer (trl.experimental.ppo) on them and prints one JSON line: seconds per PPO step (the
first step is a warm-up and is left out) and a per-phase breakdown with the phase names of ppo_bench.py.

It needs its own environment with TRL (kept out of the project's requirements):

    python3 -m venv /tmp/trl112-venv
    /tmp/trl112-venv/bin/pip install torch==2.13.0        # first: the CPU build on this machine
    /tmp/trl112-venv/bin/pip install 'trl==1.12.*' transformers==5.23.0 datasets accelerate
    .venv/bin/python bench/ppo_bench.py --shape issue7 --dump /tmp/ppo7 --steps 8
    /tmp/trl112-venv/bin/python bench/trl_ppo_bench.py --data /tmp/ppo7 --steps 8

Models, all float32 on CPU, dropout off (TRL's disable_dropout_in_model):
  policy     AutoModelForCausalLM from DIR/policy;
  reference  a second AutoModelForCausalLM from DIR/policy (ref_model);
  value      AutoModelForSequenceClassification(num_labels=1) from DIR/policy: the policy's backbone
             with a new random `score` head, as TRL's examples initialise it (ours: the same backbone,
             head at zero; the same work);
  reward     AutoModelForSequenceClassification(num_labels=1) from DIR/reward, its `score` weight copied
             from reward_head.safetensors (GPT-2's score has no bias; ours is 0). Checked at start: it
             must reproduce reward_check.json within 1e-4.

TRL config (trl.experimental.ppo.PPOConfig), matched to ppo_bench.py --shape issue7:
  per_device_train_batch_size=8, gradient_accumulation_steps=1  (batch 8 prompts per step)
  num_mini_batches=1, num_ppo_epochs=4   (4 PPO epochs over one minibatch of 8)
  local_rollout_forward_batch_size=8     (the rollout forwards in one batch, as ours)
  response_length=32, temperature=1.0 (TRL adds 1e-7), top_k off, top_p 1.0 (TRL's fixed values)
  stop_token="eos"                       (generation stops when every row has sampled EOS, and a reply
                                          is cut after its first EOS: as ours)
  missing_eos_penalty=1.0, kl_coef=0.05, kl_estimator="k1", cliprange=0.2, cliprange_value=0.2,
  gamma=1.0, lam=0.95, whiten_rewards=False
  learning_rate=1e-5, lr_scheduler_type="constant", optim="adamw_torch", adam_epsilon=1e-5,
  weight_decay=0.01 (torch.optim.AdamW's default, which ours uses)
  gradient_checkpointing=False, bf16=False, fp16=False (TRL's defaults are True, True, False; ours
  trains without checkpointing, in float32), use_cpu=True, torch threads 2
  num_sample_generations=0 (no extra generation on an eval set), report_to="none", save_strategy="no",
  logging_steps=1, disable_tqdm=True, dataloader_num_workers=0, seed=0

Same work per step. Both sides take 8 of the same 64 prompts, every one exactly 256 tokens (no padding),
and sample with the same stopping rule (stop when all rows have sampled EOS, at most 32 tokens). With the
random-init policy EOS has probability about 1/532 per token, so a step nearly always decodes all 32
tokens on both sides; both scripts print the number of decoding steps they ran (`decoded_tokens_per_row`)
so that a step cut short would show.

How TRL's step differs from ours by design (not by the shape): TRL reads the policy's old log-probs from
generate's scores instead of a separate forward; it runs policy and value model together under one loss
(pg_loss + vf_coef * vf_loss) with one AdamW over both and does not clip gradients (ours: two losses,
two AdamW, clipping at 1.0); it computes full-vocabulary entropy of every minibatch; and it calls
gc.collect() and empty_cache() twice per step.

--ours ROOT (repeatable) also runs our PPOTrainer from the checkout at ROOT (its `training` package,
imported under its own name; it needs only torch, transformers, tokenizers and safetensors, all in this
venv) on the same dump and in the same configuration as `ppo_bench.py --shape issue7`, one of our steps
after each TRL step, in this process: TRL and every tree then run under the same threads and the same
background load, alternating step by step, which on a shared machine is the fairest comparison there
is. Our steps run inside a TRL callback; their time is subtracted from TRL's step intervals.

    /tmp/trl112-venv/bin/python bench/trl_ppo_bench.py --data /tmp/ppo7 --steps 6 --ours /tmp/tree_before --ours .

Phases (seconds per step, by wrapping TRL's module-level functions in this process):
  sampling        batch_generation (model.generate with output_scores)
  rollout_policy  selective_log_softmax of the generation scores (TRL's old log-probs)
  rollout_ref     forward(ref_policy, ...) under no_grad
  rollout_value   get_reward(value_model, ...)
  rollout_reward  get_reward(reward_model, ...)
  update_forward  forward(PolicyAndValueWrapper, ...): policy + value forward together
  update_backward accelerator.backward(pg_loss + vf_coef * vf_loss)
  update_optimizer the AdamW step (one optimiser over policy + value)
  other           the rest (GAE, whitening, losses, entropy, statistics, gc.collect, logging)
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never reach for the hub

import argparse
import importlib
import importlib.util
import json
import sys
import resource
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
import transformers
import trl
from datasets import Dataset
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
from transformers.trainer_callback import PrinterCallback

import trl.experimental.ppo.ppo_trainer as ppo_trainer_module
from trl.experimental.ppo import PPOConfig, PPOTrainer


class StepClock(TrainerCallback):
    """Wall and process time at the end of every PPO step (TRL calls on_step_end once per batch)."""

    def __init__(self):
        self.marks: list[tuple[float, float]] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.marks = [(time.perf_counter(), time.process_time())]

    def on_step_end(self, args, state, control, **kwargs):
        self.marks.append((time.perf_counter(), time.process_time()))


class Phases:
    def __init__(self):
        self.per_step: list[dict[str, float]] = [defaultdict(float)]
        self.decoded: list[int] = []

    def add(self, phase: str, started: float) -> None:
        self.per_step[-1][phase] += time.perf_counter() - started

    def next_step(self) -> None:
        self.per_step.append(defaultdict(float))


def instrument(trainer: PPOTrainer, phases: Phases, clock: StepClock) -> None:
    module = ppo_trainer_module
    reward_model, ref_model = trainer.reward_model, trainer.ref_model

    def timed(function, phase_of):
        def wrapper(*args, **kwargs):
            phase = phase_of(*args)
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                phases.add(phase, started)

        return wrapper

    generation = module.batch_generation

    def timed_generation(model, queries, *args, **kwargs):
        started = time.perf_counter()
        query_responses, logits = generation(model, queries, *args, **kwargs)
        phases.add("sampling", started)
        phases.decoded.append(query_responses.shape[1] - queries.shape[1])
        return query_responses, logits

    module.batch_generation = timed_generation
    module.selective_log_softmax = timed(module.selective_log_softmax, lambda *a: "rollout_policy" if not torch.is_grad_enabled() else "update_logprobs")
    module.forward = timed(module.forward, lambda model, *a: "rollout_ref" if model is ref_model else "update_forward")
    module.get_reward = timed(module.get_reward, lambda model, *a: "rollout_reward" if model is reward_model else "rollout_value")
    trainer.accelerator.backward = timed(trainer.accelerator.backward, lambda *a: "update_backward")
    optimizer = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    opened: list[float] = []
    optimizer.register_step_pre_hook(lambda *a: opened.append(time.perf_counter()))
    optimizer.register_step_post_hook(lambda *a: phases.add("update_optimizer", opened.pop()))

    class NextStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            phases.next_step()

    trainer.add_callback(NextStep())


def load_reward_model(folder: Path):
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=1, local_files_only=True, dtype=torch.float32)
    head = load_file(folder / "reward_head.safetensors")
    if float(head["bias"].abs().max()) != 0.0:
        raise SystemExit("the reward head has a bias; GPT-2's score layer has none")
    meta = json.loads((folder / "reward_model.json").read_text())
    if meta["offset"] != 0.0 or meta["scale"] != 1.0:
        raise SystemExit("the reward model is calibrated; TRL reads raw scores")
    with torch.no_grad():
        model.score.weight.copy_(head["weight"])
    return model


@torch.no_grad()
def check_reward_model(model, checks: list[dict]) -> float:
    """Largest |TRL score - our score| over the check sequences (read at the last token, as get_reward does)."""
    worst = 0.0
    for check in checks:
        ids = torch.tensor([check["input_ids"]])
        hidden = model.transformer(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        score = float(model.score(hidden)[0, -1, 0])
        worst = max(worst, abs(score - check["raw_score"]))
    return worst


def load_ours(root: Path, index: int, data: Path, bf16: bool = False):
    """Our PPOTrainer from the checkout at `root`, configured as ppo_bench.py --shape issue7."""
    name = f"ours{index}_training"
    spec = importlib.util.spec_from_file_location(name, root / "training" / "__init__.py", submodule_search_locations=[str(root / "training")])
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    spec.loader.exec_module(package)
    ppo = importlib.import_module(f"{name}.ml.ppo")
    checkpoint = importlib.import_module(f"{name}.ml.checkpoint")
    reward = importlib.import_module(f"{name}.ml.reward_model")
    prompts = json.loads((data / "prompts.json").read_text())
    policy, tokenizer = checkpoint.load_policy(data / "policy")
    ref_policy, _ = checkpoint.load_policy(data / "policy")
    value_model = ppo.ValueModel.from_policy_folder(data / "policy")
    reward_model, reward_tokenizer = reward.RewardModel.from_pretrained(data / "reward")
    config = ppo.PPOConfig(
        steps=10**6, rollout_batch_size=8, minibatch_size=8, ppo_epochs=4, max_new_tokens=32,
        max_prompt_tokens=prompts["max_prompt_tokens"], temperature=1.0, missing_eos_penalty=-1.0, bf16=bf16,
    )
    return ppo.PPOTrainer(policy, ref_policy, value_model, tokenizer, reward.RewardScorer(reward_model, reward_tokenizer), prompts["messages"], config)


class OursInBetween(TrainerCallback):
    """After each TRL step, one step of each of our trainers; TRL's clock restarts afterwards."""

    def __init__(self, trainers: list, clock: StepClock):
        self.trainers, self.clock = trainers, clock
        self.wall: list[list[float]] = [[] for _ in trainers]
        self.cpu: list[list[float]] = [[] for _ in trainers]
        self.spans: list[tuple[float, float, float, float]] = []  # (wall start, wall end, cpu start, cpu end) per round

    def on_step_end(self, args, state, control, **kwargs):
        started = (time.perf_counter(), time.process_time())
        for i, trainer in enumerate(self.trainers):
            wall, cpu = time.perf_counter(), time.process_time()
            trainer.step()
            self.wall[i].append(time.perf_counter() - wall)
            self.cpu[i].append(time.process_time() - cpu)
        self.spans.append((started[0], time.perf_counter(), started[1], time.process_time()))

    def excluded(self, start: tuple[float, float], end: tuple[float, float]) -> tuple[float, float]:
        """Wall and CPU seconds of our rounds inside TRL's interval (start, end], to subtract."""
        wall = sum(max(0.0, min(b, end[0]) - max(a, start[0])) for a, b, _, _ in self.spans)
        cpu = sum(max(0.0, min(d, end[1]) - max(c, start[1])) for a, b, c, d in self.spans if b > start[0] and a < end[0])
        return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder written by bench/ppo_bench.py --shape issue7 --dump")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="timed steps, after one warm-up step")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--ppo-epochs", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides (TRL's own default is bf16=True; float32 weights)")
    parser.add_argument("--ours", action="append", default=[], help="also step our trainer from this checkout (repeatable)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    data = Path(args.data)
    policy_dir = str(data / "policy")
    prompts = json.loads((data / "prompts.json").read_text())["input_ids"]

    tokenizer = AutoTokenizer.from_pretrained(policy_dir, local_files_only=True)
    tokenizer.padding_side = "left"  # TRL's PPO expects left-padded queries (none are padded here)
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    policy = AutoModelForCausalLM.from_pretrained(policy_dir, local_files_only=True, dtype=torch.float32)
    ref_policy = AutoModelForCausalLM.from_pretrained(policy_dir, local_files_only=True, dtype=torch.float32)
    transformers.set_seed(0)
    value_model = AutoModelForSequenceClassification.from_pretrained(policy_dir, num_labels=1, local_files_only=True, dtype=torch.float32)
    reward_model = load_reward_model(data / "reward")
    reward_error = check_reward_model(reward_model, json.loads((data / "reward_check.json").read_text()))
    if reward_error > 1e-4:
        raise SystemExit(f"TRL's reward model differs from ours by {reward_error:.2e}")
    dataset = Dataset.from_dict({"input_ids": prompts})

    with tempfile.TemporaryDirectory() as output_dir:
        config = PPOConfig(
            output_dir=output_dir,
            per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=1,
            num_mini_batches=1,
            num_ppo_epochs=args.ppo_epochs,
            local_rollout_forward_batch_size=args.batch,
            total_episodes=args.batch * (args.steps + 1),
            response_length=args.max_new_tokens,
            temperature=args.temperature,
            stop_token="eos",
            missing_eos_penalty=1.0,
            kl_coef=0.05,
            kl_estimator="k1",
            cliprange=0.2,
            cliprange_value=0.2,
            gamma=1.0,
            lam=0.95,
            whiten_rewards=False,
            learning_rate=1e-5,
            lr_scheduler_type="constant",
            optim="adamw_torch",
            adam_epsilon=1e-5,
            weight_decay=0.01,
            gradient_checkpointing=False,
            bf16=args.bf16,
            fp16=False,
            use_cpu=True,
            num_sample_generations=0,
            report_to="none",
            save_strategy="no",
            logging_steps=1,
            disable_tqdm=True,
            dataloader_num_workers=0,
            dataloader_pin_memory=False,
            seed=0,
        )
        trainer = PPOTrainer(
            args=config, processing_class=tokenizer, model=policy, ref_model=ref_policy, reward_model=reward_model,
            value_model=value_model, train_dataset=dataset, eval_dataset=dataset,
        )
        trainer.remove_callback(PrinterCallback)  # keep stdout to the one JSON line
        clock = StepClock()
        trainer.add_callback(clock)
        phases = Phases()
        instrument(trainer, phases, clock)
        ours = OursInBetween([load_ours(Path(root).resolve(), i, data, args.bf16) for i, root in enumerate(args.ours)], clock)
        if args.ours:
            trainer.add_callback(ours)
        trainer.train()

    marks = clock.marks
    # TRL's step intervals, less any of our steps that ran inside them; the warm-up step dropped
    excluded = [ours.excluded(a, b) for a, b in zip(marks, marks[1:])]
    wall = [b[0] - a[0] - x[0] for (a, b), x in zip(zip(marks, marks[1:]), excluded)][1:]
    cpu = [b[1] - a[1] - x[1] for (a, b), x in zip(zip(marks, marks[1:]), excluded)][1:]
    timed_phases = phases.per_step[1 : 1 + len(wall)]
    n = len(wall)
    breakdown = defaultdict(float)
    for step, seconds in zip(timed_phases, wall):
        for key, value in step.items():
            breakdown[key] += value
        breakdown["other"] += seconds - sum(step.values())
    decoded = phases.decoded[1 : 1 + n]
    tokens = sum(decoded) * args.batch
    print(json.dumps({
        "trainer": "trl PPOTrainer (trl.experimental.ppo)",
        "trl_version": trl.__version__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "threads": args.threads,
        "bf16": args.bf16,
        "batch": args.batch,
        "minibatch": args.batch,
        "ppo_epochs": args.ppo_epochs,
        "max_new_tokens": args.max_new_tokens,
        "prompt_tokens": sorted({len(p) for p in prompts}),
        "steps": n,
        "decoded_tokens_per_row": decoded,
        "seconds_per_step": round(sum(wall) / n, 3),
        "step_seconds": [round(s, 3) for s in wall],
        "cpu_seconds_per_step": round(sum(cpu) / n, 3),
        "generated_tokens_per_second": round(tokens / max(breakdown["sampling"], 1e-9), 1),
        "phases": {key: round(value / n, 3) for key, value in breakdown.items()},
        "reward_check_max_error": reward_error,
        "ours_in_between": {
            root: {
                "seconds_per_step": round(sum(w[1:]) / max(len(w) - 1, 1), 3),
                "step_seconds": [round(x, 3) for x in w[1:]],
                "cpu_seconds_per_step": round(sum(c[1:]) / max(len(c) - 1, 1), 3),
            }
            for root, w, c in zip(args.ours, ours.wall, ours.cpu)
        },
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }))


if __name__ == "__main__":
    main()
