"""A starting policy for the closed-loop tests, and the hidden rule the simulated
annotators judge by: a reply is good when it starts with "sure". The policy is fine-tuned
on demonstrations of which about a third start with "sure", so the rule holds in roughly
20-50% of its samples before any RLHF."""

import random

import torch

from training.ml.bootstrap import DefaultModelConfig, new_policy, save_new_model, train_bpe_tokenizer
from training.ml.sft import SFTConfig, train_sft
from training.ml.synthetic import FILLER

POLICY_CONFIG = DefaultModelConfig(vocab_size=400, n_layer=2, n_embd=64, n_head=2, n_positions=128, seed=0)
SURE_SHARE = 0.35


def follows_rule(text: str) -> bool:
    return text.strip().lower().startswith("sure")


def prompt_text(rng: random.Random) -> str:
    return "please " + " ".join(rng.choice(FILLER) for _ in range(rng.randint(3, 6)))


def reply_text(rng: random.Random, sure: bool) -> str:
    opener = "sure" if sure else rng.choice(["no", "maybe", "well"])
    return opener + " " + " ".join(rng.choice(FILLER) for _ in range(rng.randint(2, 4)))


def build_starting_policy(path, seed: int = 0) -> None:
    rng = random.Random(seed)
    demos = [([{"role": "user", "content": prompt_text(rng)}], reply_text(rng, rng.random() < SURE_SHARE)) for _ in range(160)]
    corpus = [m[0]["content"] + " " + r for m, r in demos] + ["sure no maybe well please"] * 20
    tokenizer = train_bpe_tokenizer(corpus, POLICY_CONFIG.vocab_size)
    torch.manual_seed(seed)
    model = new_policy(tokenizer, POLICY_CONFIG)
    train_sft(model, tokenizer, demos, SFTConfig(lr=3e-3, epochs=8, batch_size=16, max_prompt_tokens=32, max_reply_tokens=16, seed=seed))
    save_new_model(model, tokenizer, path)
