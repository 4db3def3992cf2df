"""Sampling replies from a policy: batched, with a KV cache, log-probs under the sampling
temperature, and best-of-n by reward-model score.

Sampling runs a lean token-by-token loop over the model's KV cache
(sampling.sample_with_generators: softmax(logits / temperature) after top-p, top-k off,
greedy at temperature 0), which for small models costs a fraction of `model.generate`'s
per-token overhead. Log-probs are recomputed with one forward pass over prompt + reply
rather than read from the sampling loop, so that rollouts and PPO updates use the very
same computation; that pass applies the LM head (and the log-softmax) to the reply's
positions only (transformers' `logits_to_keep`), not to the whole prompt.
Prompts are left-padded, replies right-padded; a reply ends at its first EOS (kept, and
counted as the reply's last real token); anything after it is padding. Every tensor made
here is made on the device of the model or of the tensors it is given.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from .device import model_device
from .losses import logprobs_from_logits
from .sampling import sample_with_generators
from .tail import last_layer_tail
from .text import position_limit, prompt_room, tokenize_prompt


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


def pad_left(sequences: list[list[int]], pad_id: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), left-padded to the longest sequence; built on the CPU, then moved to `device` in one copy each."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    if device is not None and torch.device(device) != ids.device:
        ids, mask = ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)
    return ids, mask


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def truncate_after_eos(response: torch.Tensor, eos_id: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(response with padding after the first EOS, its mask, whether an EOS was produced)."""
    is_eos = response == eos_id
    has_eos = is_eos.any(1)
    T = response.shape[1]
    first_eos = torch.where(has_eos, is_eos.int().argmax(1), torch.full_like(has_eos, T - 1, dtype=torch.long))
    mask = (torch.arange(T, device=response.device).unsqueeze(0) <= first_eos.unsqueeze(1)).long()
    return torch.where(mask.bool(), response, torch.full_like(response, pad_id)), mask, has_eos


_ACCEPTS: dict[tuple[type, str], bool] = {}


def accepts(model, name: str, *, through_kwargs: bool = False) -> bool:
    """Whether model.forward takes the keyword `name` (or, with through_kwargs, any **kwargs)."""
    key = (type(model), f"{name}/{through_kwargs}")
    if key not in _ACCEPTS:
        try:
            parameters = inspect.signature(model.forward).parameters.values()
        except (TypeError, ValueError):
            parameters = []
        _ACCEPTS[key] = any(p.name == name or (through_kwargs and p.kind is inspect.Parameter.VAR_KEYWORD) for p in parameters)
    if not _ACCEPTS[key] and hasattr(model, "get_base_model"):  # a peft wrapper passes its **kwargs on to the model it wraps
        return accepts(model.get_base_model(), name, through_kwargs=through_kwargs)
    return _ACCEPTS[key]


def accepts_logits_to_keep(model) -> bool:
    """Whether model.forward takes transformers' `logits_to_keep` (explicitly or through **kwargs)."""
    return accepts(model, "logits_to_keep", through_kwargs=True)


def no_cache(model) -> dict:
    """{"use_cache": False} where the model takes it: a training forward needs no KV cache (building one costs a copy of every key and value)."""
    return {"use_cache": False} if accepts(model, "use_cache") else {}


def response_logits(model, query, query_mask, response, response_mask) -> torch.Tensor:
    """The logits that predicted each response token: (B, T, V), positions Q-1 .. Q+T-2.

    The LM head runs on the last T + 1 positions only (`logits_to_keep`) when the model
    supports it; a model that ignores it returns all positions, and the same slice of
    those is taken. The last block, too, runs at those positions only where
    tail.last_layer_tail applies (GPT-2). Either way the result equals the full forward's
    logits[:, Q-1:-1] up to float rounding.
    """
    ids = torch.cat([query, response], 1)
    mask = torch.cat([query_mask, response_mask], 1)
    keep = response.shape[1] + 1
    kwargs = {"logits_to_keep": keep} if accepts_logits_to_keep(model) else {}
    with last_layer_tail(model, keep):  # the last block at these positions only (tail.py)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), **no_cache(model), **kwargs).logits
    return logits[:, -keep:-1]


def forward_response(model, query, query_mask, response, response_mask, temperature: float):
    """(per-token log-probs of the response, the logits that predicted them)."""
    logits = response_logits(model, query, query_mask, response, response_mask)
    return logprobs_from_logits(logits, response, temperature), logits


@torch.no_grad()
def sample_responses(model, tokenizer, query, query_mask, config: SamplingConfig, generators: list[torch.Generator] | None = None):
    """Generate one reply per query row: (response ids, response mask, has_eos).

    Rows draw from the global torch RNG, or row i from generators[i] when given.
    """
    response = sample_with_generators(
        model, query, query_mask, temperature=config.temperature, top_p=config.top_p, max_new_tokens=config.max_new_tokens,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, generators=generators,
    )
    return truncate_after_eos(response, tokenizer.eos_token_id, tokenizer.pad_token_id)


def decode_responses(tokenizer, response: torch.Tensor, mask: torch.Tensor) -> list[str]:
    lengths = mask.sum(1).tolist()  # one device-to-host copy for the whole batch
    rows = response.tolist()
    return [tokenizer.decode(row[: int(n)], skip_special_tokens=True).strip() for row, n in zip(rows, lengths)]


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[dict]], config: SamplingConfig) -> list[list[Sample]]:
    """n samples per prompt (list of messages), in batches of config.batch_size sequences."""
    model.eval()
    device = model_device(model)
    room = prompt_room(position_limit(model), config.max_prompt_tokens, config.max_new_tokens)  # prompt + reply fit the positions
    queries = [tokenize_prompt(tokenizer, messages, room) for messages in prompts for _ in range(config.n)]
    samples: list[Sample] = []
    for start in range(0, len(queries), config.batch_size):
        query, query_mask = pad_left(queries[start : start + config.batch_size], tokenizer.pad_token_id, device)
        response, response_mask, has_eos = sample_responses(model, tokenizer, query, query_mask, config)
        logprobs, _ = forward_response(model, query, query_mask, response, response_mask, max(config.temperature, 1e-6))
        texts = decode_responses(tokenizer, response, response_mask)
        totals = (logprobs.float() * response_mask).sum(1).tolist()
        lengths, finished = response_mask.sum(1).tolist(), has_eos.tolist()
        for i, text in enumerate(texts):
            samples.append(Sample(text, float(totals[i]), int(lengths[i]), bool(finished[i])))
    return [samples[i * config.n : (i + 1) * config.n] for i in range(len(prompts))]


def best_of_n(prompts: list[list[dict]], samples: list[list[Sample]], score) -> list[tuple[Sample, float]]:
    """The highest-scoring sample per prompt; score(messages_list, texts) -> tensor of rewards."""
    chosen = []
    for messages, options in zip(prompts, samples):
        rewards = score([messages] * len(options), [s.text for s in options])
        best = int(torch.argmax(rewards))
        chosen.append((options[best], float(rewards[best])))
    return chosen
