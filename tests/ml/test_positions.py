"""Conversations longer than a model's positions: every trainer and sampler cuts the prompt
(its oldest tokens) and, when it must, the reply, so that prompt + reply fit. Without that,
a config whose max_prompt_tokens + reply tokens exceed the model's positions (here 384 + 128
on a 256-position GPT-2) ends in an IndexError of the position embedding."""

import random

import torch

from training.ml.checkpoint import load_policy
from training.ml.data import build_examples
from training.ml.dpo import DPOConfig, DPOTrainer
from training.ml.generation import SamplingConfig, generate
from training.ml.ppo import PPOConfig, PPOTrainer, ValueModel
from training.ml.reward import RewardTrainingConfig, train_reward_model
from training.ml.reward_model import RewardModel, RewardScorer
from training.ml.synthetic import preference_judgements, sentence
from training.ml.text import position_limit

rng = random.Random(7)
LONG_PROMPTS = [[{"role": "user", "content": sentence(rng, 300)}] for _ in range(4)]


def long_examples(n=8):
    return build_examples(preference_judgements(n, seed=3, prompt_words=(300, 320), reply_words=(150, 170)))


def test_the_limit_is_read_through_wrappers(tiny_policy_dir):
    policy, _ = load_policy(tiny_policy_dir)
    assert position_limit(policy) == policy.config.n_positions == 256
    assert position_limit(RewardModel.from_backbone(tiny_policy_dir)[0]) == 256
    assert position_limit(ValueModel.from_policy_folder(tiny_policy_dir)) == 256
    assert position_limit(torch.nn.Linear(2, 2)) is None


def test_dpo_cuts_long_conversations(tiny_policy_dir):
    policy, tokenizer = load_policy(tiny_policy_dir)
    examples = long_examples()
    run = DPOTrainer(policy, tokenizer, examples[:6], DPOConfig(lr=1e-4, batch_size=2, steps=2, max_prompt_tokens=384, max_reply_tokens=128), eval_examples=examples[6:])
    assert all(len(e.prompt) + max(map(len, e.replies)) <= 256 for e in run.train_data + run.eval_data)
    assert any(len(e.prompt) + max(map(len, e.replies)) == 256 for e in run.train_data)  # cut, not dropped
    metrics = run.train()
    assert torch.isfinite(torch.tensor(metrics["loss"])) and metrics["val_pairs"] == 2


def test_reward_training_and_scoring_cut_long_conversations(tiny_policy_dir):
    model, tokenizer = RewardModel.from_backbone(tiny_policy_dir)
    examples = long_examples()
    metrics = train_reward_model(model, tokenizer, examples[:6], examples[6:], RewardTrainingConfig(lr=1e-4, epochs=1, batch_size=2, max_prompt_tokens=384, max_reply_tokens=128))
    assert metrics["steps"] == 3
    scores = RewardScorer(model, tokenizer, max_prompt_tokens=384, max_reply_tokens=300)(LONG_PROMPTS, [sentence(rng, 200) for _ in LONG_PROMPTS])
    assert scores.shape == (4,) and torch.isfinite(scores).all()


def test_generation_and_ppo_leave_room_for_the_reply(tiny_policy_dir):
    policy, tokenizer = load_policy(tiny_policy_dir)
    samples = generate(policy, tokenizer, LONG_PROMPTS[:2], SamplingConfig(max_prompt_tokens=384, max_new_tokens=128, temperature=1.0, n=1))
    assert len(samples) == 2 and all(len(s) == 1 for s in samples)
    torch.manual_seed(0)
    reference, _ = load_policy(tiny_policy_dir)
    config = PPOConfig(steps=1, rollout_batch_size=4, minibatch_size=4, ppo_epochs=1, max_new_tokens=64, max_prompt_tokens=384, missing_eos_penalty=None)
    trainer = PPOTrainer(policy, reference, ValueModel.from_policy_folder(tiny_policy_dir), tokenizer, lambda prompts, replies: torch.zeros(len(replies)), LONG_PROMPTS, config)
    metrics = trainer.train()
    assert trainer.step_count == 1 and torch.isfinite(torch.tensor(metrics["kl"]))
