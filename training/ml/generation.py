"""Sampling replies from a policy: batched, with a KV cache (transformers' generate),
log-probs under the sampling temperature, and best-of-n by reward-model score.

Log-probs are recomputed with one forward pass over prompt + reply rather than read from
generate's scores, so that rollouts and PPO updates use the very same computation.
Prompts are left-padded, replies right-padded; a reply ends at its first EOS (kept, and
counted as the reply's last real token); anything after it is padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .losses import logprobs_from_logits
from .text import tokenize_prompt


@dataclass
class SamplingConfig:
    n: int = 1
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 128
    max_prompt_tokens: int = 384
    batch_size: int = 16


@dataclass
class Sample:
    text: str
    logprob: float  # sum over the reply's tokens, under softmax(logits / temperature)
    n_tokens: int
    finished: bool  # ended with EOS rather than hitting max_new_tokens


def pad_left(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids, mask


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def truncate_after_eos(response: torch.Tensor, eos_id: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(response with padding after the first EOS, its mask, whether an EOS was produced)."""
    is_eos = response == eos_id
    has_eos = is_eos.any(1)
    T = response.shape[1]
    first_eos = torch.where(has_eos, is_eos.int().argmax(1), torch.full_like(has_eos, T - 1, dtype=torch.long))
    mask = (torch.arange(T).unsqueeze(0) <= first_eos.unsqueeze(1)).long()
    return torch.where(mask.bool(), response, torch.full_like(response, pad_id)), mask, has_eos


def forward_response(model, query, query_mask, response, response_mask, temperature: float):
    """(per-token log-probs of the response, the logits that predicted them)."""
    ids = torch.cat([query, response], 1)
    mask = torch.cat([query_mask, response_mask], 1)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
    logits = logits[:, query.shape[1] - 1 : -1]
    return logprobs_from_logits(logits, response, temperature), logits


@torch.no_grad()
def sample_responses(model, tokenizer, query, query_mask, config: SamplingConfig):
    """Generate one reply per query row: (response ids, response mask, has_eos)."""
    out = model.generate(
        input_ids=query,
        attention_mask=query_mask,
        do_sample=config.temperature > 0,
        temperature=config.temperature if config.temperature > 0 else None,
        top_p=config.top_p,
        top_k=0,
        max_new_tokens=config.max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    response = out[:, query.shape[1] :]
    if response.shape[1] == 0:
        response = torch.full((query.shape[0], 1), tokenizer.eos_token_id, dtype=torch.long)
    return truncate_after_eos(response, tokenizer.eos_token_id, tokenizer.pad_token_id)


def decode_responses(tokenizer, response: torch.Tensor, mask: torch.Tensor) -> list[str]:
    return [
        tokenizer.decode(row[: int(m.sum())].tolist(), skip_special_tokens=True).strip() for row, m in zip(response, mask)
    ]


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[dict]], config: SamplingConfig) -> list[list[Sample]]:
    """n samples per prompt (list of messages), in batches of config.batch_size sequences."""
    model.eval()
    queries = [tokenize_prompt(tokenizer, messages, config.max_prompt_tokens) for messages in prompts for _ in range(config.n)]
    samples: list[Sample] = []
    for start in range(0, len(queries), config.batch_size):
        query, query_mask = pad_left(queries[start : start + config.batch_size], tokenizer.pad_token_id)
        response, response_mask, has_eos = sample_responses(model, tokenizer, query, query_mask, config)
        logprobs, _ = forward_response(model, query, query_mask, response, response_mask, max(config.temperature, 1e-6))
        texts = decode_responses(tokenizer, response, response_mask)
        for i, text in enumerate(texts):
            samples.append(
                Sample(text, float((logprobs[i] * response_mask[i]).sum()), int(response_mask[i].sum()), bool(has_eos[i]))
            )
    return [samples[i * config.n : (i + 1) * config.n] for i in range(len(prompts))]


def best_of_n(prompts: list[list[dict]], samples: list[list[Sample]], score) -> list[tuple[Sample, float]]:
    """The highest-scoring sample per prompt; score(messages_list, texts) -> tensor of rewards."""
    chosen = []
    for messages, options in zip(prompts, samples):
        rewards = score([messages] * len(options), [s.text for s in options])
        best = int(torch.argmax(rewards))
        chosen.append((options[best], float(rewards[best])))
    return chosen
