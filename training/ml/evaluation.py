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
from .device import model_device
from .generation import SamplingConfig, forward_response, generate, pad_left, sample_responses
from .significance import binomial_p_value
from .text import position_limit, prompt_room, tokenize_prompt


SAMPLE_CHARS = 1200  # of each text kept for the side-by-side samples


def _sample_rows(prompts, old_texts, new_texts, old_rewards, new_rewards, n: int) -> list[dict]:
    """The first `n` held-out prompts with both policies' replies and rewards, for people to read."""
    rows = []
    for messages, old, new, r_old, r_new in list(zip(prompts, old_texts, new_texts, old_rewards.tolist(), new_rewards.tolist()))[:n]:
        last_user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
        rows.append({
            "prompt": last_user[:SAMPLE_CHARS], "turns": len(messages),
            "reference": old[:SAMPLE_CHARS], "candidate": new[:SAMPLE_CHARS],
            "reward_reference": float(r_old), "reward_candidate": float(r_new),
        })
    return rows


@torch.no_grad()
def compare_policies(candidate, reference, tokenizer, score, prompts: list[list[dict]], sampling: SamplingConfig, *, seed: int = 0,
                     samples: int = 4) -> dict:
    """Head-to-head of two policies sharing a tokenizer on `prompts`, judged by `score`.

    score(conversations, texts) -> calibrated rewards (a RewardScorer). Both policies
    sample with the same seed. reference=None: the candidate with its LoRA adapters off
    (the base it was trained from), so no second copy of the weights is loaded. Returns wins / losses / ties of the candidate, the sign
    test's one-sided p-value, the mean rewards, and `samples` of the prompts with both replies
    side by side (what an admin reads to see what changed).
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
        "samples": _sample_rows(prompts, old_texts, new_texts, old_rewards, new_rewards, samples),
    }


@torch.no_grad()
def sampled_kl(candidate, reference, tokenizer, prompts: list[list[dict]], sampling: SamplingConfig, *, seed: int = 0) -> dict:
    """KL(candidate || reference) per reply, estimated on the candidate's own samples: the
    mean over `prompts` of sum_t log p_candidate(y_t) - log p_reference(y_t) (the k1
    estimator, unbiased), both under softmax(logits / temperature). What PPO's, RLOO's
    and GRPO's `kl` measure during training; DPO never samples while it trains, so its run
    measures this on held-out prompts for the promotion gate. reference=None: the
    candidate with its LoRA adapters off."""
    if not prompts:
        return {"kl": None, "kl_prompts": 0}
    device = model_device(candidate)
    temperature = max(sampling.temperature, 1e-6)
    torch.manual_seed(seed)
    room = prompt_room(position_limit(candidate), sampling.max_prompt_tokens, sampling.max_new_tokens)
    queries = [tokenize_prompt(tokenizer, messages, room) for messages in prompts]
    total = 0.0
    was_training = candidate.training
    candidate.eval()
    for start in range(0, len(queries), sampling.batch_size):
        query, query_mask = pad_left(queries[start : start + sampling.batch_size], tokenizer.pad_token_id, device)
        response, response_mask, _ = sample_responses(candidate, tokenizer, query, query_mask, sampling)
        new, _ = forward_response(candidate, query, query_mask, response, response_mask, temperature)
        with adapters_disabled(candidate if reference is None else reference) as model:
            old, _ = forward_response(model, query, query_mask, response, response_mask, temperature)
        total += float(((new.float() - old.float()) * response_mask).sum())
    candidate.train(was_training)
    return {"kl": total / len(queries), "kl_prompts": len(queries)}
