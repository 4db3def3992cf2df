"""Supervised fine-tuning on demonstrations (prompt, ideal reply): loss on reply tokens only.

Prompt tokens and padding get label -100, so the model learns to write replies, not to
predict the user's turn. Same batching, schedule and torchrun behaviour as reward.py.
Batches go to the model's device; bf16 autocast is on by default on GPUs that support it.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from . import distributed
from .device import autocast, model_device, to_device, use_bf16
from .generation import no_cache
from .hooks import NO_HOOKS, TrainerHooks
from .losses import warmup_cosine
from .text import fit_to_positions, position_limit, tokenize_prompt, tokenize_reply

IGNORE = -100


@dataclass
class SFTConfig:
    lr: float = 5e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    epochs: int = 1
    batch_size: int = 8  # demonstrations per step, over all ranks
    max_grad_norm: float = 1.0
    max_prompt_tokens: int = 384
    max_reply_tokens: int = 256
    val_fraction: float = 0.0
    bf16: bool | None = None  # bf16 autocast; None: on for GPUs that support it
    seed: int = 0


def build_sequences(tokenizer, demonstrations, config: SFTConfig, limit: int | None = None) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per demonstration; labels are -100 on the prompt. `limit`: the
    model's position_limit, which prompt + reply are cut to fit (fit_to_positions)."""
    sequences = []
    for messages, reply in demonstrations:
        prompt = tokenize_prompt(tokenizer, messages, config.max_prompt_tokens)
        answer = tokenize_reply(tokenizer, reply, config.max_reply_tokens)
        prompt, answer = fit_to_positions(prompt, answer, limit)
        sequences.append((prompt + answer, [IGNORE] * len(prompt) + answer))
    return sequences


def collate(sequences, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids, _ in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, (seq, lab) in enumerate(sequences):
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(seq)] = 1
    return ids, labels, mask


def reply_token_loss_sum(model, ids, labels, mask, bf16: bool = False) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over reply tokens, and how many there were."""
    device = model_device(model)
    ids, labels, mask = to_device((ids, labels, mask), device)
    with autocast(device, bf16):
        logits = model(input_ids=ids, attention_mask=mask, **no_cache(model)).logits[:, :-1]
    targets = labels[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE, reduction="sum")
    return loss, int((targets != IGNORE).sum())


@torch.no_grad()
def evaluate(model, sequences, pad_id: int, batch_size: int = 16, bf16: bool = False) -> dict:
    model.eval()
    rank, world = distributed.rank_and_world()
    totals = torch.zeros(2, dtype=torch.float64)
    mine = sequences[rank::world]
    for start in range(0, len(mine), batch_size):
        loss, n = reply_token_loss_sum(model, *collate(mine[start : start + batch_size], pad_id), bf16=bf16)
        totals += torch.tensor([loss.item(), n], dtype=torch.float64)
    totals = distributed.all_reduce_sum(totals)
    model.train()
    val_loss = totals[0].item() / max(totals[1].item(), 1)
    return {"val_loss": val_loss, "val_perplexity": math.exp(min(val_loss, 50))}


def train_sft(model, tokenizer, demonstrations, config: SFTConfig, *, val_demonstrations=None, hooks: TrainerHooks = NO_HOOKS) -> dict:
    """Fine-tune `model` in place on (messages, reply) demonstrations; return final metrics.

    Each step's loss is the mean over all reply tokens of the step (across ranks).
    """
    torch.manual_seed(config.seed)
    rank, world = distributed.rank_and_world()
    bf16 = use_bf16(model_device(model), config.bf16)
    pad_id = tokenizer.pad_token_id
    limit = position_limit(model)
    train = build_sequences(tokenizer, demonstrations, config, limit)
    val = build_sequences(tokenizer, val_demonstrations or [], config, limit)
    reply_tokens = [sum(1 for label in labels[1:] if label != IGNORE) for _, labels in train]
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total = steps_per_epoch * config.epochs
    warmup = max(1, int(total * config.warmup_ratio))
    model.train()
    distributed.broadcast_parameters(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, warmup))
    step, tokens, metrics = 0, 0, {}
    started = time.perf_counter()
    for epoch in range(config.epochs):
        order = list(range(len(train)))
        random.Random(config.seed * 1000 + epoch).shuffle(order)
        for start in range(0, len(order), config.batch_size):
            hooks.check_cancelled()
            step_indices = order[start : start + config.batch_size]
            # the global token count of the step, so every rank divides by the same number
            n_tokens = sum(reply_tokens[i] for i in step_indices)
            mine = [train[i] for i in step_indices[rank::world]]
            optimizer.zero_grad(set_to_none=True)
            loss_value = torch.zeros(1, dtype=torch.float64)
            if mine:
                loss_sum, _ = reply_token_loss_sum(model, *collate(mine, pad_id), bf16=bf16)
                loss = loss_sum / max(n_tokens, 1)
                loss.backward()
                loss_value += loss.item()
            distributed.all_reduce_gradients(model)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            tokens += n_tokens
            metrics = {"loss": distributed.all_reduce_sum(loss_value).item(), "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm.item(), "epoch": epoch}
            hooks.report(step, total, metrics)
    elapsed = time.perf_counter() - started
    final = {"steps": step, "train_loss": metrics.get("loss"), "train_seconds": elapsed, "reply_tokens_per_second": tokens / max(elapsed, 1e-9), "config": asdict(config)}
    if val:
        final.update(evaluate(model, val, pad_id, bf16=bf16))
    hooks.report(step, total, final)
    return final
