"""Reward-model training on preference examples (Bradley-Terry, InstructGPT batching).

loss(example) = mean over its pairs of -log sigmoid(r_better - r_worse - margin)
              + tie_weight * mean over its tie pairs of tie_loss
loss(step)    = mean over the examples of the step (all ranks, all accumulation micro-batches)

Warmup + cosine learning rate, gradient accumulation and clipping, fixed seeds, dropout
off. Under torchrun every rank takes an interleaved share of each step's examples and the
gradients are summed across ranks (each rank's loss is already divided by the global
example count), which is the same update one process would make.

The default recipe (`RewardTrainingConfig()`), made for real human judgements, which are
noisy (annotators agree on ~60-70% of HH-RLHF pairs), few (hundreds to thousands) and easy
to over-fit, not for synthetic rules that any setting learns:

- Early stopping on held-out TRAINING data. `early_stopping_fraction` (10%) of the training
  prompts are set aside (split by prompt, so no conversation is on both sides) when there
  are at least `early_stopping_min_examples` training examples. Their loss is measured
  `early_stopping_evals_per_epoch` times an epoch, and judged with its noise: a set of ~80
  pairs measures the loss to about +-0.03, more than the gain of an epoch, so "the lowest
  loss" alone picks noise (on HH-RLHF it once kept step 22 of 110, an untrained model).
  A checkpoint counts as over-fitted only when its per-pair losses are higher than those
  of the lowest-loss checkpoint by more than `worse_by_standard_errors` (2) standard
  errors of the paired difference. Training stops after `patience` such evaluations in a
  row (one epoch), and the run ends with the latest checkpoint that was not clearly worse:
  the full plan when nothing over-fits, the last good point when something does. Its
  head is then divided by the temperature that minimises the early-stopping pairs' loss
  (temperature scaling): the ranking, so the accuracy, is unchanged, and sigmoid(margin)
  becomes a calibrated probability instead of an over-confident one. The caller's validation set is never looked at while training: it
  stays an untouched held-out set for the reported accuracy and the promotion gate. The
  loss, not the accuracy, is the criterion: it is smooth and it measures calibration,
  where the accuracy of a few dozen pairs moves in steps of several points.
- Epochs from the data size. A fixed epoch count is wrong at both ends (one epoch of 800
  pairs is ~100 steps, far from converged; ten epochs of 100k pairs is a waste), so
  `epochs=None` plans about `target_steps` (300) optimisation steps, between 1 and
  `max_epochs` (4) epochs: ~3 passes over 800 pairs, one over 10k. The cosine schedule
  decays over the planned steps, so a run that is not stopped ends annealed (reward models
  over-fit after an epoch or two of real data; more passes at a high rate only memorise).
- Learning rate from the backbone (`lr=None`, default_lr), 10% warmup. A pretrained
  network gets TRL's RewardConfig rate, 1e-4; a small network trained from scratch (our
  default policy) 3e-4, as it has to learn features, not adapt them. Which of the two a
  backbone is, is read from its weights, not from metadata a checkpoint may lack:
  pretraining grows weight matrices well beyond their initial scale (MiniLM: 3.1 times the
  config's initializer_range on average; our default policy: 0.75), see weight_scale.
- Weight decay 0.01 on weight matrices (not on biases and norm gains), as BERT / HF do.

Every number an early-stopping decision depends on is all-reduced (evaluate), so under
torchrun all ranks stop at the same step with the same weights.

Device: the trainer runs where the model's parameters are (device.model_device) and moves
each batch there; bf16=None turns bfloat16 autocast on for CUDA GPUs that support it and
leaves the CPU path in float32 with no copies.

After training the model is calibrated: offset and scale such that the rewards of the
reference replies (by default every reply of the validation set) have mean 0 and std 1.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from . import device as devices
from . import distributed
from .checkpoint import disable_dropout
from .data import PreferenceExample, split_by_prompt, step_batches
from .hooks import NO_HOOKS, TrainerHooks
from .losses import bradley_terry_loss, tie_loss, warmup_cosine
from .reward_model import RewardBatch, RewardModel
from .text import fit_example, position_limit, tokenize_prompt, tokenize_reply


@dataclass
class RewardTrainingConfig:
    lr: float | None = None  # None: chosen from the backbone (default_lr)
    weight_decay: float = 0.01  # decoupled (AdamW), on weight matrices only (not biases or norm gains)
    warmup_ratio: float = 0.1
    epochs: int | None = None  # None: from the data size (auto_epochs); early stopping may end sooner
    target_steps: int = 300  # auto epochs: about this many optimisation steps in all ...
    max_epochs: int = 4  # ... in at most this many epochs, at least one
    batch_size: int = 8  # examples (judgements) per optimisation step, over all ranks
    grad_accum: int = 1  # micro-batches per step on each rank
    max_grad_norm: float = 1.0
    max_prompt_tokens: int = 384
    max_reply_tokens: int = 128
    tie_weight: float = 0.0
    eval_every: int = 0  # steps between evaluations on the validation set (reporting only); 0 = only at the end
    eval_batch_size: int = 16
    group_by_length: bool = True  # sort within windows of 50 batches to cut padding
    # early stopping on a split of the TRAINING examples (the validation set stays untouched)
    early_stopping_fraction: float = 0.1  # share of the training prompts held out; 0 = off
    early_stopping_min_examples: int = 200  # fewer training examples than this: no split (too noisy to steer by)
    early_stopping_evals_per_epoch: int = 4
    patience: int = 4  # early-stopping evaluations in a row clearly worse than the lowest loss before training stops
    worse_by_standard_errors: float = 2.0  # "clearly worse": the paired mean loss difference in standard errors
    restore_best: bool = True  # end with the kept checkpoint: the latest one not clearly worse than the lowest loss
    temperature_scaling: bool = True  # then divide the head by the temperature that calibrates the early-stopping pairs
    bf16: bool | None = None  # bfloat16 autocast (weights and optimiser stay float32); None = auto (CUDA with bf16)
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


def tokenize_examples(examples: list[PreferenceExample], tokenizer, config: RewardTrainingConfig, limit: int | None = None) -> list[TokenizedExample]:
    """`limit`: the backbone's positions (text.position_limit), which the prompt and its
    longest reply are cut to fit (text.fit_example)."""
    out = []
    for e in examples:
        prompt, replies = fit_example(
            tokenize_prompt(tokenizer, e.messages, config.max_prompt_tokens),
            [tokenize_reply(tokenizer, reply, config.max_reply_tokens) for reply in e.replies],
            limit,
        )
        out.append(TokenizedExample(prompt=prompt, replies=replies, pairs=e.pairs, ties=e.ties))
    return out


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


@torch.no_grad()
def evaluate(
    model: RewardModel, examples: list[TokenizedExample], pad_id: int, config: RewardTrainingConfig, *, bf16: bool | None = None,
    per_example: bool = False,
) -> dict:
    """Validation loss, pair accuracy, mean margin, reward mean and std (sharded over ranks, summed over all).

    per_example: also "losses", every example's loss (the same order at every call and on every rank)."""
    model.eval()
    dev = devices.model_device(model)
    bf16 = devices.use_bf16(dev, config.bf16) if bf16 is None else bf16
    rank, world = distributed.rank_and_world()
    sums = torch.zeros(6, dtype=torch.float64)  # loss, correct, pairs, margin, reward sum, reward sq sum
    count_rewards = torch.zeros(1, dtype=torch.float64)
    mine = examples[rank::world]
    own_losses: list[float] = []
    own_margins: list[float] = []
    for start in range(0, len(mine), config.eval_batch_size):
        chunk = mine[start : start + config.eval_batch_size]
        batch, index_maps = collate(chunk, pad_id)
        if dev.type != "cpu":
            batch = devices.to_device(batch, dev)
        with devices.autocast(dev, bf16):
            rewards = model(batch, pad_id).float()
        chunk_losses = example_losses(rewards, index_maps, config.tie_weight)
        sums[0] += chunk_losses.sum().item()
        if per_example:
            own_losses.extend(chunk_losses.tolist())
        better = [a for pairs, _ in index_maps for a, _, _ in pairs]
        worse = [b for pairs, _ in index_maps for _, b, _ in pairs]
        if better:
            difference = rewards[better] - rewards[worse]
            if per_example:
                own_margins.extend(difference.tolist())
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
        **({
            "losses": [x for part in distributed.all_gather_objects(own_losses) for x in part],
            "margins": [x for part in distributed.all_gather_objects(own_margins) for x in part],
        } if per_example else {}),
    }


def fit_temperature(margins: list[float], low: float = 0.25, high: float = 20.0) -> float:
    """The T > 0 that minimises the mean Bradley-Terry loss -log sigmoid(margin / T) of these
    pairs (golden-section search on log T; the loss is unimodal in it)."""
    if not margins:
        return 1.0
    values = torch.tensor(margins, dtype=torch.float64)

    def loss(log_t: float) -> float:
        return torch.nn.functional.softplus(-values / math.exp(log_t)).mean().item()

    a, b = math.log(low), math.log(high)
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if loss(c) < loss(d):
            b = d
        else:
            a = c
    return math.exp((a + b) / 2)


def clearly_worse(losses: list[float], reference: list[float], z: float) -> bool:
    """Whether `losses` are higher than `reference` (the same examples) by more than z standard
    errors of the paired mean difference: over-fitting shown, not the noise of a small set."""
    n = len(losses)
    if n < 2:
        return sum(losses) > sum(reference)
    differences = [a - b for a, b in zip(losses, reference)]
    mean = sum(differences) / n
    variance = sum((d - mean) ** 2 for d in differences) / (n - 1)
    return mean > z * math.sqrt(variance / n)


@torch.no_grad()
def raw_rewards(model: RewardModel, examples: list[TokenizedExample], pad_id: int, batch_size: int = 16, *, bf16: bool = False) -> torch.Tensor:
    model.eval()
    dev = devices.model_device(model)
    out = []
    for start in range(0, len(examples), batch_size):
        batch, _ = collate(examples[start : start + batch_size], pad_id)
        if dev.type != "cpu":
            batch = devices.to_device(batch, dev)
        with devices.autocast(dev, bf16):
            out.append(model(batch, pad_id).float())
    model.train()
    return torch.cat(out) if out else torch.zeros(0)


# --------------------------------------------------------------------------- the default recipe


@torch.no_grad()
def weight_scale(model: RewardModel) -> float:
    """Mean std of the backbone's weight matrices (embeddings aside) over its initializer_range.

    About 1 for weights at their initial scale (a model trained from scratch on little data,
    like our default policy: 0.75); well above for a pretrained network, whose weights grow
    during pretraining (the MiniLM encoder: 3.1). Read from the weights, so it holds for any
    checkpoint folder whatever its config says about where it came from."""
    return backbone_weight_scale(model.backbone)


def backbone_weight_scale(backbone) -> float:
    """weight_scale of any transformers model (a policy too)."""
    init = float(getattr(backbone.config, "initializer_range", 0.02) or 0.02)
    stds = [p.float().std().item() for name, p in backbone.named_parameters() if p.ndim == 2 and not any(key in name for key in ("emb", "wte", "wpe", "lora_"))]
    return sum(stds) / len(stds) / init if stds else 1.0


PRETRAINED_WEIGHT_SCALE = 2.0


def default_lr(model: RewardModel) -> float:
    """AdamW learning rate for a backbone: the usual fine-tuning rate for pretrained weights;
    a small network still at its initial weight scale tolerates, and needs, a larger one."""
    return 1e-4 if weight_scale(model) >= PRETRAINED_WEIGHT_SCALE else 3e-4


def auto_epochs(n_train: int, config: RewardTrainingConfig) -> int:
    """Epochs for about `target_steps` optimisation steps, between 1 and `max_epochs`."""
    steps_per_epoch = max(1, math.ceil(n_train / (config.batch_size * config.grad_accum)))
    return max(1, min(config.max_epochs, round(config.target_steps / steps_per_epoch)))


def early_stopping_split(
    examples: list[PreferenceExample], config: RewardTrainingConfig
) -> tuple[list[PreferenceExample], list[PreferenceExample]]:
    """(examples to train on, examples to steer by): a split by prompt of the training examples."""
    if config.early_stopping_fraction <= 0 or len(examples) < config.early_stopping_min_examples:
        return examples, []
    fit, held = split_by_prompt(examples, config.early_stopping_fraction, seed=config.seed + 1)
    return (fit, held) if held and fit else (examples, [])


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices (and embeddings), none on biases and norm gains."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


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
    dev = devices.model_device(model)
    bf16 = devices.use_bf16(dev, config.bf16)
    pad_id = tokenizer.pad_token_id
    fit_examples, es_examples = early_stopping_split(train_examples, config)
    limit = position_limit(model)
    train = tokenize_examples(fit_examples, tokenizer, config, limit)
    held = tokenize_examples(es_examples, tokenizer, config, limit)
    val = tokenize_examples(val_examples, tokenizer, config, limit)
    lengths = [e.length for e in train]
    epochs = config.epochs if config.epochs is not None else auto_epochs(len(train), config)
    steps_per_epoch = math.ceil(len(train) / (config.batch_size * config.grad_accum))
    total_steps = steps_per_epoch * epochs
    warmup = max(1, int(total_steps * config.warmup_ratio))
    es_every = max(1, steps_per_epoch // max(1, config.early_stopping_evals_per_epoch))

    disable_dropout(model)
    model.train()
    distributed.broadcast_parameters(model)
    lr = config.lr if config.lr is not None else default_lr(model)
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total_steps, warmup))
    metrics: dict = {}
    step, pairs_seen, tokens_seen, tokens_saved = 0, 0, 0, 0
    best = {"loss": math.inf, "step": 0, "accuracy": None}  # the checkpoint kept (see the module docstring)
    lowest = {"loss": math.inf, "losses": []}  # the lowest early-stopping loss so far, per example
    best_state: dict | None = None
    evals_since_best, stopped_early = 0, False
    epoch_losses: list[float] = []
    started = time.perf_counter()
    for epoch in range(epochs):
        epoch_loss, epoch_steps = 0.0, 0
        for step_indices in step_batches(len(train), config, epoch, lengths):
            hooks.check_cancelled()
            n_step = len(step_indices)
            mine = step_indices[rank::world]
            micro = max(1, math.ceil(len(mine) / config.grad_accum))
            optimizer.zero_grad(set_to_none=True)
            step_loss = torch.zeros(1, dtype=torch.float64)
            for start in range(0, len(mine), micro):
                chunk = [train[i] for i in mine[start : start + micro]]
                batch, index_maps = collate(chunk, pad_id)
                if dev.type != "cpu":
                    batch = devices.to_device(batch, dev)
                with devices.autocast(dev, bf16):
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
            epoch_loss, epoch_steps = epoch_loss + metrics["loss"], epoch_steps + 1
            if held and (step % es_every == 0 or step == total_steps):
                # all-reduced numbers: every rank takes the same decision
                es = evaluate(model, held, pad_id, config, bf16=bf16, per_example=True)
                metrics.update({"es_loss": es["val_loss"], "es_accuracy": es["val_accuracy"]})
                if es["val_loss"] < lowest["loss"]:
                    lowest = {"loss": es["val_loss"], "losses": es["losses"]}
                if clearly_worse(es["losses"], lowest["losses"], config.worse_by_standard_errors):
                    evals_since_best += 1
                    stopped_early = evals_since_best >= config.patience
                else:  # the latest checkpoint that is not clearly worse than the lowest loss seen
                    best = {"loss": es["val_loss"], "step": step, "accuracy": es["val_accuracy"]}
                    evals_since_best = 0
                    if config.restore_best:
                        best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            if config.eval_every and step % config.eval_every == 0 and step < total_steps and val:
                metrics.update(evaluate(model, val, pad_id, config, bf16=bf16))
            hooks.report(step, total_steps, metrics)
            if stopped_early:
                break
        epoch_losses.append(epoch_loss / max(epoch_steps, 1))
        if stopped_early:
            break
    elapsed = time.perf_counter() - started
    restored = best_state is not None and best["step"] != step
    if restored:
        model.load_state_dict(best_state)
    del best_state

    temperature = 1.0
    if held and config.temperature_scaling:
        # Temperature scaling (Guo et al., 2017) on the early-stopping pairs: one scalar, so the
        # ranking (accuracy) is unchanged while P(better) = sigmoid(margin) becomes calibrated;
        # a reward model trained to low training loss is over-confident on new pairs otherwise.
        temperature = fit_temperature(evaluate(model, held, pad_id, config, bf16=bf16, per_example=True)["margins"])
        with torch.no_grad():
            model.head.weight.div_(temperature)
            model.head.bias.div_(temperature)
    reference = tokenize_examples(reference_examples, tokenizer, config, limit) if reference_examples else (val or train)
    model.calibrate(raw_rewards(model, reference, pad_id, bf16=bf16))
    final = {
        "steps": step,
        "train_loss": metrics.get("loss"),
        "epoch_train_losses": epoch_losses,  # mean step loss of each epoch run
        "epochs_run": round(step / max(steps_per_epoch, 1), 3),
        "epochs_planned": epochs,
        "lr": lr,
        "bf16": bf16,
        "early_stopping_examples": len(held),
        "es_loss": best["loss"] if held else None,
        "es_accuracy": best["accuracy"],
        "best_step": best["step"] if held else step,
        "stopped_early": stopped_early,
        "restored_best": restored,
        "temperature": temperature,
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
        final.update(evaluate(model, val, pad_id, config, bf16=bf16))
    hooks.report(step, step, final)
    return final
