"""PPO on a tiny policy against a fixed reward: the reward rises, KL stays bounded, resume is exact."""


import pytest
import torch

from training.ml.checkpoint import load_policy, save_state_atomically
from training.ml.ppo import PPOConfig, PPOTrainer, ValueModel
from training.ml.synthetic import corpus

PROMPTS = [[{"role": "user", "content": text}] for text in corpus(1, 50)]
KL_BOUND = 10.0  # nats per 16-token reply, summed over tokens (kl_coef 0.1)


def letter_e_reward(prompts, texts):
    """A fixed reward the policy can climb: the share of 'e' characters in the reply."""
    return torch.tensor([10 * text.count("e") / (len(text) + 1) for text in texts])


def trainer(folder, steps, **overrides):
    torch.manual_seed(0)
    policy, tokenizer = load_policy(folder)
    ref_policy, _ = load_policy(folder)
    value_model = ValueModel.from_policy_folder(folder)
    settings = dict(
        steps=steps, rollout_batch_size=32, minibatch_size=16, ppo_epochs=4, lr=1e-3, value_lr=1e-3,
        max_new_tokens=16, temperature=1.0, kl_coef=0.1, missing_eos_penalty=None,
    )
    config = PPOConfig(**{**settings, **overrides})
    return PPOTrainer(policy, ref_policy, value_model, tokenizer, letter_e_reward, PROMPTS, config)


def test_value_head_starts_at_zero(tiny_policy_dir):
    value_model = ValueModel.from_policy_folder(tiny_policy_dir)
    assert value_model.head.weight.abs().sum() == 0 and value_model.head.bias.abs().sum() == 0


@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bf16-autocast"])
def test_ppo_raises_the_reward_within_a_kl_bound(tiny_policy_dir, bf16):
    """Also with bf16 autocast on the CPU (run config `"bf16": true`; fast on CPUs with AVX512-BF16 or AMX)."""
    run = trainer(tiny_policy_dir, steps=40, bf16=bf16)
    run.train()
    rewards = [h["reward_mean"] for h in run.history]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.5, rewards
    assert max(h["kl"] for h in run.history) < KL_BOUND
    for key in ("kl_k3", "entropy", "clipfrac", "approx_kl", "value_loss", "explained_variance", "response_length", "reward_std"):
        assert key in run.history[-1]
    assert run.history[-1]["entropy"] < run.history[0]["entropy"]


def test_adaptive_kl_controller_moves_the_coefficient(tiny_policy_dir):
    run = trainer(tiny_policy_dir, steps=3, kl_target=0.01, kl_horizon=100)
    run.train()
    assert run.kl_controller.value > 0.1  # KL above target: penalty grows


def test_resume_from_a_mid_run_checkpoint_continues_exactly(tiny_policy_dir, tmp_path):
    straight = trainer(tiny_policy_dir, steps=6)
    straight.train()

    first_half = trainer(tiny_policy_dir, steps=6)
    for _ in range(3):
        first_half.step()
    state_path = save_state_atomically(first_half.state_dict(), tmp_path / "ppo-state.pt")
    del first_half

    resumed = trainer(tiny_policy_dir, steps=6)
    torch.manual_seed(12345)  # whatever happens in between, the state restores the RNG
    resumed.load_state_dict(torch.load(state_path, weights_only=False))
    assert resumed.step_count == 3
    resumed.train()
    for a, b in zip(straight.history, resumed.history):
        assert a["step"] == b["step"]
        assert a["reward_mean"] == pytest.approx(b["reward_mean"], abs=1e-6)
        assert a["kl"] == pytest.approx(b["kl"], abs=1e-5)
    for name, tensor in straight.policy.state_dict().items():
        assert torch.allclose(tensor, resumed.policy.state_dict()[name], atol=1e-6), name


def test_missing_eos_gets_the_penalty(tiny_policy_dir):
    run = trainer(tiny_policy_dir, steps=1, missing_eos_penalty=-3.0, max_new_tokens=2)
    rollout = run.rollout()
    assert torch.all(rollout.scores[~rollout.has_eos] == -3.0)
    rewards, _ = run.token_rewards(rollout)
    assert torch.all(rewards[rollout.mask == 0] == 0)  # no reward on padding
