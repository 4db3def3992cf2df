"""Reward-model training on preference examples (Bradley-Terry, InstructGPT batching).

loss(example) = mean over its pairs of -log sigmoid(r_better - r_worse - margin)
              + tie_weight * mean over its tie pairs of tie_loss
loss(step)    = mean over the examples of the step (all ranks, all accumulation micro-batches)

Warmup + cosine learning rate, gradient accumulation and clipping, fixed seeds, dropout
off. Under torchrun every rank takes an interleaved share of each step's examples and the
gradients are summed across ranks (each rank's loss is already divided by the global
example count), which is the same update one process would make.

After training the model is calibrated: offset and scale such that the rewards of the
reference replies (by default every reply of the validation set) have mean 0 and std 1.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass

import torch

from . import distributed
from .checkpoint import disable_dropout
from .data import PreferenceExample
from .hooks import NO_HOOKS, TrainerHooks
from .losses import bradley_terry_loss, tie_loss, warmup_cosine
from .reward_model import RewardBatch, RewardModel
from .text import tokenize_prompt, tokenize_reply


@dataclass
class RewardTrainingConfig:
    lr: float = 5e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    epochs: int = 1
    batch_size: int = 8  # examples (judgements) per optimisation step, over all ranks
    grad_accum: int = 1  # micro-batches per step on each rank
    max_grad_norm: float = 1.0
    max_prompt_tokens: int = 384
    max_reply_tokens: int = 128
    tie_weight: float = 0.0
    eval_every: int = 0  # steps; 0 = only at the end
    eval_batch_size: int = 16
    group_by_length: bool = True  # sort within windows of 50 batches to cut padding
    bf16: bool = False  # bfloat16 autocast (weights and optimiser stay float32)
    seed: int = 0


@dataclass
class TokenizedExample:
    prompt: list[int]
    replies: list[list[int]]
    pairs: list[tuple[int, int, float]]
    ties: list[tuple[int, int]]

    @property
    def length(self) -> int:
        return len(self.prompt) + max(len(r) for r in self.replies)


def tokenize_examples(examples: list[PreferenceExample], tokenizer, config: RewardTrainingConfig) -> list[TokenizedExample]:
    return [
        TokenizedExample(
            prompt=tokenize_prompt(tokenizer, e.messages, config.max_prompt_tokens),
            replies=[tokenize_reply(tokenizer, reply, config.max_reply_tokens) for reply in e.replies],
            pairs=e.pairs,
            ties=e.ties,
        )
        for e in examples
    ]


def collate(examples: list[TokenizedExample], pad_id: int) -> tuple[RewardBatch, list[tuple[list, list]]]:
    """One RewardBatch plus, per example, its pairs and ties as indices into the flat replies."""
    replies, reply_prompt, index_maps = [], [], []
    for p, example in enumerate(examples):
        offset = len(replies)
        replies.extend(example.replies)
        reply_prompt.extend([p] * len(example.replies))
        pairs = [(offset + a, offset + b, m) for a, b, m in example.pairs]
        ties = [(offset + a, offset + b) for a, b in example.ties]
        index_maps.append((pairs, ties))
    return RewardBatch.build([e.prompt for e in examples], replies, reply_prompt, pad_id), index_maps


def autocast(model: torch.nn.Module, enabled: bool):
    device_type = next(model.parameters()).device.type
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=enabled)


def example_losses(rewards: torch.Tensor, index_maps, tie_weight: float) -> torch.Tensor:
    losses = []
    for pairs, ties in index_maps:
        loss = rewards.new_zeros(())
        if pairs:
            better = rewards[[a for a, _, _ in pairs]]
            worse = rewards[[b for _, b, _ in pairs]]
            margin = rewards.new_tensor([m for _, _, m in pairs])
            loss = loss + bradley_terry_loss(better, worse, margin).mean()
        if ties and tie_weight > 0:
            loss = loss + tie_weight * tie_loss(rewards[[a for a, _ in ties]], rewards[[b for _, b in ties]]).mean()
        losses.append(loss)
    return torch.stack(losses)


def _step_batches(n_examples: int, config: RewardTrainingConfig, epoch: int, lengths: list[int]) -> list[list[int]]:
    """Example indices per optimisation step for one epoch (same on every rank)."""
    order = list(range(n_examples))
    random.Random(config.seed * 1000 + epoch).shuffle(order)
    per_step = config.batch_size * config.grad_accum
    if config.group_by_length:
        window = per_step * 50
        order = [i for s in range(0, n_examples, window) for i in sorted(order[s : s + window], key=lambda i: lengths[i])]
    steps = [order[s : s + per_step] for s in range(0, n_examples, per_step)]
    random.Random(config.seed * 1000 + epoch + 1).shuffle(steps)
    return steps


@torch.no_grad()
def evaluate(model: RewardModel, examples: list[TokenizedExample], pad_id: int, config: RewardTrainingConfig) -> dict:
    """Validation loss, pair accuracy, mean margin, reward mean and std (sharded over ranks)."""
    model.eval()
    rank, world = distributed.rank_and_world()
    sums = torch.zeros(6, dtype=torch.float64)  # loss, correct, pairs, margin, reward sum, reward sq sum
    count_rewards = torch.zeros(1, dtype=torch.float64)
    mine = examples[rank::world]
    for start in range(0, len(mine), config.eval_batch_size):
        chunk = mine[start : start + config.eval_batch_size]
        batch, index_maps = collate(chunk, pad_id)
        with autocast(model, config.bf16):
            rewards = model(batch, pad_id).float()
        sums[0] += example_losses(rewards, index_maps, config.tie_weight).sum().item()
        better = [a for pairs, _ in index_maps for a, _, _ in pairs]
        worse = [b for pairs, _ in index_maps for _, b, _ in pairs]
        if better:
            difference = rewards[better] - rewards[worse]
            sums[1] += (difference > 0).sum().item()
            sums[2] += len(better)
            sums[3] += difference.sum().item()
        normalized = model.normalize(rewards)
        sums[4] += normalized.sum().item()
        sums[5] += (normalized**2).sum().item()
        count_rewards += rewards.numel()
    sums = distributed.all_reduce_sum(sums)
    count_rewards = distributed.all_reduce_sum(count_rewards)
    model.train()
    n, pairs, k = max(len(examples), 1), max(sums[2].item(), 1), max(count_rewards.item(), 1)
    mean = sums[4].item() / k
    return {
        "val_loss": sums[0].item() / n,
        "val_accuracy": sums[1].item() / pairs,
        "val_mean_margin": sums[3].item() / pairs,
        "val_pairs": int(sums[2].item()),
        "reward_mean": mean,
        "reward_std": math.sqrt(max(sums[5].item() / k - mean**2, 0.0)),
    }


@torch.no_grad()
def raw_rewards(model: RewardModel, examples: list[TokenizedExample], pad_id: int, batch_size: int = 16) -> torch.Tensor:
    model.eval()
    out = []
    for start in range(0, len(examples), batch_size):
        batch, _ = collate(examples[start : start + batch_size], pad_id)
        out.append(model(batch, pad_id).float())
    model.train()
    return torch.cat(out) if out else torch.zeros(0)


def train_reward_model(
    model: RewardModel,
    tokenizer,
    train_examples: list[PreferenceExample],
    val_examples: list[PreferenceExample],
    config: RewardTrainingConfig,
    *,
    reference_examples: list[PreferenceExample] | None = None,
    hooks: TrainerHooks = NO_HOOKS,
) -> dict:
    """Train in place; return the final metrics. Raises TrainingCancelled if asked to stop."""
    torch.manual_seed(config.seed)
    rank, world = distributed.rank_and_world()
    pad_id = tokenizer.pad_token_id
    train = tokenize_examples(train_examples, tokenizer, config)
    val = tokenize_examples(val_examples, tokenizer, config)
    lengths = [e.length for e in train]
    steps_per_epoch = math.ceil(len(train) / (config.batch_size * config.grad_accum))
    total_steps = steps_per_epoch * config.epochs
    warmup = max(1, int(total_steps * config.warmup_ratio))

    disable_dropout(model)
    model.train()
    distributed.broadcast_parameters(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total_steps, warmup))
    metrics: dict = {}
    step, pairs_seen, tokens_seen, tokens_saved = 0, 0, 0, 0
    started = time.perf_counter()
    for epoch in range(config.epochs):
        for step_indices in _step_batches(len(train), config, epoch, lengths):
            hooks.check_cancelled()
            n_step = len(step_indices)
            mine = step_indices[rank::world]
            micro = max(1, math.ceil(len(mine) / config.grad_accum))
            optimizer.zero_grad(set_to_none=True)
            step_loss = torch.zeros(1, dtype=torch.float64)
            for start in range(0, len(mine), micro):
                chunk = [train[i] for i in mine[start : start + micro]]
                batch, index_maps = collate(chunk, pad_id)
                with autocast(model, config.bf16):
                    rewards = model(batch, pad_id).float()
                loss = example_losses(rewards, index_maps, config.tie_weight).sum() / n_step
                loss.backward()
                step_loss += loss.item()
                pairs_seen += sum(len(p) for p, _ in index_maps)
                tokens_seen += batch.tokens_shared if model.shared_prefix else batch.tokens_concatenated
                tokens_saved += batch.tokens_concatenated - batch.tokens_shared if model.shared_prefix else 0
            distributed.all_reduce_gradients(model)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            metrics = {
                "loss": distributed.all_reduce_sum(step_loss).item(),
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": grad_norm.item(),
                "epoch": epoch,
            }
            if config.eval_every and step % config.eval_every == 0 and step < total_steps and val:
                metrics.update(evaluate(model, val, pad_id, config))
            hooks.report(step, total_steps, metrics)
    elapsed = time.perf_counter() - started

    reference = tokenize_examples(reference_examples, tokenizer, config) if reference_examples else (val or train)
    with autocast(model, config.bf16):
        model.calibrate(raw_rewards(model, reference, pad_id))
    final = {
        "steps": step,
        "train_loss": metrics.get("loss"),
        "train_seconds": elapsed,
        "pairs_per_second": distributed.all_reduce_sum(torch.tensor([float(pairs_seen)])).item() / max(elapsed, 1e-9),
        "tokens_per_second": distributed.all_reduce_sum(torch.tensor([float(tokens_seen)])).item() / max(elapsed, 1e-9),
        "shared_prefix": model.shared_prefix,
        "tokens_saved_by_shared_prefix": int(distributed.all_reduce_sum(torch.tensor([float(tokens_saved)])).item()),
        "offset": float(model.offset),
        "scale": float(model.scale),
        "train_examples": len(train),
        "val_examples": len(val),
        "config": asdict(config),
    }
    if val:
        final.update(evaluate(model, val, pad_id, config))
    hooks.report(step, total_steps, final)
    return final
