"""Did a model measurably learn? The evidence the promotion gates read.

- A reward model: on held-out pairs, k of n ranked the preferred reply higher. Under "it
  learned nothing" each pair is a fair coin, so the one-sided binomial test gives
  p = P(X >= k | n, 1/2) (`significance.binomial_p_value`).
- A policy: on held-out prompts it never trained on, the candidate and its reference each
  write a reply, the reward model scores both, and a sign test asks whether the candidate
  wins more often than a coin would (`compare_policies`); ties are dropped, as the sign
  test does. The mean reward of both sides is reported next to it.
"""

from __future__ import annotations

import torch

from .adapters import adapters_disabled
from .generation import SamplingConfig, generate
from .significance import binomial_p_value


@torch.no_grad()
def compare_policies(candidate, reference, tokenizer, score, prompts: list[list[dict]], sampling: SamplingConfig, *, seed: int = 0) -> dict:
    """Head-to-head of two policies sharing a tokenizer on `prompts`, judged by `score`.

    score(conversations, texts) -> calibrated rewards (a RewardScorer). Both policies
    sample with the same seed. reference=None: the candidate with its LoRA adapters off
    (the base it was trained from), so no second copy of the weights is loaded. Returns wins / losses / ties of the candidate, the sign
    test's one-sided p-value, and the mean rewards.
    """
    sampling = SamplingConfig(**{**sampling.__dict__, "n": 1})
    torch.manual_seed(seed)
    new_texts = [options[0].text for options in generate(candidate, tokenizer, prompts, sampling)]
    torch.manual_seed(seed)
    with adapters_disabled(candidate if reference is None else reference) as model:
        old_texts = [options[0].text for options in generate(model, tokenizer, prompts, sampling)]
    new_rewards = score(prompts, new_texts).float().cpu()
    old_rewards = score(prompts, old_texts).float().cpu()
    difference = new_rewards - old_rewards
    wins, losses = int((difference > 0).sum()), int((difference < 0).sum())
    return {
        "eval_prompts": len(prompts),
        "wins": wins,
        "losses": losses,
        "ties": len(prompts) - wins - losses,
        "p_value": binomial_p_value(wins, wins + losses),
        "reward_candidate": float(new_rewards.mean()) if len(prompts) else None,
        "reward_reference": float(old_rewards.mean()) if len(prompts) else None,
        "reward_gain": float(difference.mean()) if len(prompts) else None,
    }
