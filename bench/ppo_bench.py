"""PPO step benchmark on a fixed small configuration.

Policy, reference, value model and reward model: GPT-2 style, 4 layers, width 256
(random init: this measures speed, not learning); batch 8 prompts of ~250-380 tokens,
up to 128 new tokens each (sequences up to 512), 4 PPO epochs of 2 minibatches, 2 CPU
threads. Prints seconds per PPO step, the rollout's share (sampling + policy, reference,
value and reward passes), and generated tokens per second while sampling (KV cache).

    python bench/ppo_bench.py [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from training.ml.bootstrap import DefaultModelConfig, new_policy, save_new_model, train_bpe_tokenizer  # noqa: E402
from training.ml.checkpoint import load_policy  # noqa: E402
from training.ml.ppo import PPOConfig, PPOTrainer, ValueModel  # noqa: E402
from training.ml.reward_model import RewardModel, RewardScorer  # noqa: E402
from training.ml.synthetic import corpus, sentence  # noqa: E402

CONFIG = DefaultModelConfig(vocab_size=4096, n_layer=4, n_embd=256, n_head=4, n_positions=512)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = train_bpe_tokenizer(corpus(0, 2000), CONFIG.vocab_size)
    folder = Path(tempfile.mkdtemp()) / "policy"
    save_new_model(new_policy(tokenizer, CONFIG), tokenizer, folder)
    import random

    rng = random.Random(0)
    prompts = [[{"role": "user", "content": sentence(rng, rng.randint(170, 250))}] for _ in range(64)]
    policy, tokenizer = load_policy(folder)
    ref_policy, _ = load_policy(folder)
    value_model = ValueModel.from_policy_folder(folder)
    reward_model, reward_tokenizer = RewardModel.from_backbone(folder)
    config = PPOConfig(
        steps=args.steps + 1, rollout_batch_size=8, minibatch_size=4, ppo_epochs=4, max_new_tokens=args.max_new_tokens,
        max_prompt_tokens=384, temperature=1.0, missing_eos_penalty=-1.0,
    )
    trainer = PPOTrainer(policy, ref_policy, value_model, tokenizer, RewardScorer(reward_model, reward_tokenizer), prompts, config)
    trainer.step()  # warm-up
    rollout_seconds, generation_seconds, step_seconds, tokens = [], [], [], 0
    for _ in range(args.steps):
        metrics = trainer.step()
        step_seconds.append(metrics["step_seconds"])
        rollout_seconds.append(metrics["rollout_seconds"])
        tokens_this = metrics["response_length"] * config.rollout_batch_size
        generation_seconds.append(tokens_this / metrics["generated_tokens_per_second"])
        tokens += tokens_this
    print(json.dumps({
        "threads": args.threads,
        "batch": config.rollout_batch_size,
        "max_new_tokens": args.max_new_tokens,
        "mean_response_tokens": round(tokens / args.steps / config.rollout_batch_size, 1),
        "seconds_per_step": round(sum(step_seconds) / len(step_seconds), 2),
        "rollout_seconds_per_step": round(sum(rollout_seconds) / len(rollout_seconds), 2),
        "generation_seconds_per_step": round(sum(generation_seconds) / len(generation_seconds), 2),
        "generated_tokens_per_second": round(tokens / sum(generation_seconds), 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }))


if __name__ == "__main__":
    main()
