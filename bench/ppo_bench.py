"""PPO step benchmark on a fixed small configuration, with a per-phase time breakdown.

Policy, reference, value model and reward model: GPT-2 style, 4 layers, width 256
(random init: this measures speed, not learning), 2 CPU threads, 4 PPO epochs, fp32.

Two shapes:

  default   batch 8 prompts of ~190-270 tokens, up to 128 new tokens each, 4 PPO epochs of
            2 minibatches of 4 (the shape this bench has always measured);
  issue7    batch 8 prompts of exactly 256 tokens, 32 new tokens, 4 PPO epochs over one
            minibatch of 8: the side-by-side shape with TRL (bench/trl_ppo_bench.py).

Single flags (--batch, --minibatch, --max-new-tokens, --prompt-tokens, --ppo-epochs)
override a shape's values.

Prints one JSON line: seconds per PPO step (mean over --steps steps after one warm-up
step), the rollout's share, generated tokens per second while sampling, and `phases`:
seconds per step spent in

  sampling                the sampler ppo.py calls (KV-cache decoding of the replies)
  rollout_policy          the policy's no-grad forward for the old log-probs
  rollout_ref             the reference policy's forward
  rollout_value           the value model's no-grad forward
  rollout_reward          the reward model (decoding, re-tokenizing and scoring the text)
  update_policy_forward   grad-enabled policy forwards (all epochs and minibatches)
  update_policy_backward  their backward passes
  update_value_forward    grad-enabled value-model forwards
  update_value_backward   their backward passes
  update_optimizer        gradient clipping and both AdamW steps
  other                   the rest (prompt batching, GAE, whitening, losses, statistics)

The phases are measured by wrapping, in this process only, the functions the trainer
calls (time.perf_counter around each call; on CPU no device sync is needed): the
sampler, generation.forward_response, ValueModel.forward, the reward function,
Tensor.backward, clip_grad_norm_ and the optimisers' step (pre / post hooks). A forward
counts as update work when gradients are enabled, wherever it runs, so a trainer that
reuses its first update pass for the rollout's old log-probs is charged for it once. A
backward is charged to the model whose grad-enabled forward ran last.

    python bench/ppo_bench.py [--steps 4]                    # default shape
    python bench/ppo_bench.py --shape issue7 --steps 8       # the TRL side-by-side shape
    python bench/ppo_bench.py --shape issue7 --dump DIR      # also write DIR for bench/trl_ppo_bench.py

--dump DIR writes (once; an existing DIR is reused as it is, so repeated runs and TRL's
run load identical weights):
  DIR/policy        random-init GPT-2 4x256 + its byte-level BPE tokenizer (save_pretrained);
  DIR/reward        our RewardModel on that backbone family (separately seeded backbone
                    weights, head N(0, 1/sqrt(d+1)), head bias 0, offset 0, scale 1);
  DIR/prompts.json  the prompts as messages and as token ids (what both sides feed);
  DIR/reward_check.json  raw scores of our reward model on a few prompt + reply token
                    sequences, which the TRL side must reproduce from the same weights.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from training.ml import ppo as ppo_module  # noqa: E402
from training.ml.bootstrap import DefaultModelConfig, new_policy, save_new_model, train_bpe_tokenizer  # noqa: E402
from training.ml.checkpoint import load_policy  # noqa: E402
from training.ml.ppo import PPOConfig, PPOTrainer, ValueModel  # noqa: E402
from training.ml.reward_model import RewardBatch, RewardModel, RewardScorer  # noqa: E402
from training.ml.synthetic import corpus, sentence  # noqa: E402
from training.ml.text import tokenize_prompt  # noqa: E402

CONFIG = DefaultModelConfig(vocab_size=4096, n_layer=4, n_embd=256, n_head=4, n_positions=512)
SHAPES = {
    "default": dict(batch=8, minibatch=4, max_new_tokens=128, prompt_tokens=None, prompt_words=(170, 250), ppo_epochs=4),
    "issue7": dict(batch=8, minibatch=8, max_new_tokens=32, prompt_tokens=256, prompt_words=(240, 250), ppo_epochs=4),
}
PHASES = (
    "sampling", "rollout_policy", "rollout_ref", "rollout_value", "rollout_reward",
    "update_policy_forward", "update_policy_backward", "update_value_forward", "update_value_backward", "update_optimizer",
)


# --------------------------------------------------------------------------- models and prompts


def write_dump(folder: Path, prompt_words: tuple[int, int], prompt_tokens: int | None) -> None:
    """Policy, reward model, prompts and reward check values (see the module docstring)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = train_bpe_tokenizer(corpus(0, 2000), CONFIG.vocab_size)
    save_new_model(new_policy(tokenizer, CONFIG), tokenizer, folder / "policy")
    backbone_config = DefaultModelConfig(**{**CONFIG.__dict__, "seed": 1})
    save_new_model(new_policy(tokenizer, backbone_config), tokenizer, folder / "reward-backbone")
    torch.manual_seed(2)
    reward_model, reward_tokenizer = RewardModel.from_backbone(folder / "reward-backbone")
    reward_model.save_pretrained(folder / "reward", reward_tokenizer, extra={"bench": "ppo_bench.py --dump"})

    rng = random.Random(0)
    prompts = [[{"role": "user", "content": sentence(rng, rng.randint(*prompt_words))}] for _ in range(64)]
    limit = prompt_tokens or 384
    ids = [tokenize_prompt(tokenizer, messages, limit) for messages in prompts]
    if prompt_tokens is not None and any(len(i) != prompt_tokens for i in ids):
        raise SystemExit(f"some prompts are shorter than {prompt_tokens} tokens; raise the word counts")
    (folder / "prompts.json").write_text(json.dumps({"max_prompt_tokens": limit, "messages": prompts, "input_ids": ids}))

    # A few prompt + reply sequences scored by our reward model (full sequence, last token).
    reply_rng = torch.Generator().manual_seed(3)
    checks = []
    with torch.no_grad():
        for prompt in ids[:4]:
            reply = torch.randint(2, len(tokenizer), (12,), generator=reply_rng).tolist() + [tokenizer.eos_token_id]
            batch = RewardBatch.build([prompt], [reply], [0], tokenizer.pad_token_id)
            score = float(reward_model(batch, tokenizer.pad_token_id))
            checks.append({"input_ids": prompt + reply, "raw_score": score})
    (folder / "reward_check.json").write_text(json.dumps(checks))


def load_prompts(folder: Path) -> tuple[list[list[dict]], int]:
    data = json.loads((folder / "prompts.json").read_text())
    return data["messages"], data["max_prompt_tokens"]


# --------------------------------------------------------------------------- timing


class PhaseTimer:
    """Seconds per phase, accumulated by wrappers around what the trainer calls."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.decoded: list[int] = []  # decoding steps per rollout (reply width before EOS padding)

    def add(self, phase: str, started: float) -> None:
        self.seconds[phase] += time.perf_counter() - started

    def reset(self) -> dict[str, float]:
        seconds, self.seconds = dict(self.seconds), defaultdict(float)
        return seconds


def instrument(trainer: PPOTrainer, timer: PhaseTimer) -> None:
    """Wrap what ppo.py calls with phase timers (see the module docstring).

    Forwards are told apart by model and by whether gradients are enabled; a backward is
    charged to the model whose grad-enabled forward ran last (ppo.py runs each model's
    backward right after its forward); clipping and both AdamW steps are `update_optimizer`.
    """
    ref_policy, value_model = trainer.ref_policy, trainer.value_model
    last_forward = ["policy"]

    def timed(function, phase_of):
        def wrapper(*args, **kwargs):
            phase = phase_of(*args)
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                timer.add(phase, started)

        return wrapper

    def counted(sampler):
        def wrapper(*args, **kwargs):
            out = sampler(*args, **kwargs)
            timer.decoded.append((out[0] if isinstance(out, tuple) else out).shape[1])
            return out

        return wrapper

    for name in ("sample_with_generators", "sample_responses"):  # whichever sampler ppo.py uses
        if hasattr(ppo_module, name):
            setattr(ppo_module, name, timed(counted(getattr(ppo_module, name)), lambda *a: "sampling"))

    def forward_phase(model, *args):
        if model is ref_policy:
            return "rollout_ref"
        if torch.is_grad_enabled():
            last_forward[0] = "policy"
            return "update_policy_forward"
        return "rollout_policy"

    def value_phase(*args):
        if torch.is_grad_enabled():
            last_forward[0] = "value"
            return "update_value_forward"
        return "rollout_value"

    ppo_module.forward_response = timed(ppo_module.forward_response, forward_phase)
    value_model.forward = timed(value_model.forward, value_phase)
    trainer.reward_fn = timed(trainer.reward_fn, lambda *a: "rollout_reward")
    torch.Tensor.backward = timed(torch.Tensor.backward, lambda *a: f"update_{last_forward[0]}_backward")
    torch.nn.utils.clip_grad_norm_ = timed(torch.nn.utils.clip_grad_norm_, lambda *a: "update_optimizer")
    opened: list[float] = []
    for optimizer in (trainer.policy_optimizer, trainer.value_optimizer):
        optimizer.register_step_pre_hook(lambda *a: opened.append(time.perf_counter()))
        optimizer.register_step_post_hook(lambda *a: timer.add("update_optimizer", opened.pop()))


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="default")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--minibatch", type=int)
    parser.add_argument("--ppo-epochs", type=int)
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--prompt-tokens", type=int, help="cut every prompt to exactly this many tokens (issue7: 256)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--dump", help="write (or reuse) the policy, reward model and prompts here")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (float32 weights), as on a GPU; CPUs with AVX512-BF16 or AMX run it fast")
    parser.add_argument("--profile", help="write a torch.profiler table of one step to this file")
    args = parser.parse_args()
    shape = dict(SHAPES[args.shape])
    for key in ("batch", "minibatch", "ppo_epochs", "max_new_tokens", "prompt_tokens"):
        if getattr(args, key) is not None:
            shape[key] = getattr(args, key)
    torch.set_num_threads(args.threads)

    folder = Path(args.dump) if args.dump else Path(tempfile.mkdtemp()) / "ppo-bench"
    if not (folder / "prompts.json").exists():
        write_dump(folder, shape["prompt_words"], shape["prompt_tokens"])
    prompts, max_prompt_tokens = load_prompts(folder)

    policy, tokenizer = load_policy(folder / "policy")
    ref_policy, _ = load_policy(folder / "policy")
    value_model = ValueModel.from_policy_folder(folder / "policy")
    reward_model, reward_tokenizer = RewardModel.from_pretrained(folder / "reward")
    config = PPOConfig(
        steps=args.steps + 1, rollout_batch_size=shape["batch"], minibatch_size=shape["minibatch"], ppo_epochs=shape["ppo_epochs"],
        max_new_tokens=shape["max_new_tokens"], max_prompt_tokens=max_prompt_tokens, temperature=args.temperature,
        missing_eos_penalty=-1.0, bf16=args.bf16,
    )
    trainer = PPOTrainer(policy, ref_policy, value_model, tokenizer, RewardScorer(reward_model, reward_tokenizer), prompts, config)
    timer = PhaseTimer()
    instrument(trainer, timer)
    trainer.step()  # warm-up
    timer.reset()

    steps, phases = [], defaultdict(float)
    cpu_seconds = []
    for _ in range(args.steps):
        cpu_started = time.process_time()
        metrics = trainer.step()
        cpu_seconds.append(time.process_time() - cpu_started)
        seconds = timer.reset()
        for key in PHASES:
            phases[key] += seconds.get(key, 0.0)
        phases["other"] += metrics["step_seconds"] - sum(seconds.get(key, 0.0) for key in PHASES)
        steps.append(metrics)
    n = len(steps)
    tokens = sum(m["response_length"] for m in steps) * config.rollout_batch_size
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
            trainer.step()
        Path(args.profile).write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
    print(json.dumps({
        "trainer": "ours",
        "shape": args.shape,
        "threads": args.threads,
        "bf16": args.bf16,
        "batch": config.rollout_batch_size,
        "minibatch": config.minibatch_size,
        "ppo_epochs": config.ppo_epochs,
        "max_new_tokens": config.max_new_tokens,
        "prompt_tokens": shape["prompt_tokens"] or f"up to {max_prompt_tokens}",
        "steps": n,
        "decoded_tokens_per_row": timer.decoded[1 : 1 + n],
        "mean_response_tokens": round(tokens / n / config.rollout_batch_size, 1),
        "eos_rate": round(sum(m["eos_rate"] for m in steps) / n, 3),
        "seconds_per_step": round(sum(m["step_seconds"] for m in steps) / n, 3),
        "step_seconds": [round(m["step_seconds"], 3) for m in steps],
        "cpu_seconds_per_step": round(sum(cpu_seconds) / n, 3),
        "rollout_seconds_per_step": round(sum(m["rollout_seconds"] for m in steps) / n, 3),
        "generated_tokens_per_second": round(tokens / max(phases["sampling"], 1e-9), 1),
        "phases": {key: round(value / n, 3) for key, value in phases.items()},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }))


if __name__ == "__main__":
    main()
