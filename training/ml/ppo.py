"""PPO for language models against a frozen reward model and a frozen reference policy.

One `step()` = one rollout batch + `ppo_epochs` passes of minibatch updates. Every detail
of "The N Implementation Details of RLHF with PPO" that decides whether it works is
written out here, in the order it happens:

 1. prompts sampled from a seeded generator; replies sampled with a KV cache
    (generation.sample_responses) at `temperature`, top-k off;
 2. log-probs of policy and reference from one forward pass with logits / temperature
    (the LM head on the reply's positions only); the policy's and value model's forwards
    of the first update minibatch run here with gradients and are reused by that
    minibatch, so they run once, not twice, at the same parameters;
 3. a reply ends at its first EOS; tokens after it are padding and get no reward;
    a reply with no EOS gets score `missing_eos_penalty` instead of the reward model's (EOS trick);
 4. the reward model scores the decoded text (its own tokenizer), calibrated to mean 0 / std 1;
 5. per-token reward = -kl_coef * KL_t (k1: log p - log q, or k3), plus the score on the
    last real token; optional reward whitening (shift_mean=False);
 6. values from a separate value model whose scalar head starts at zero;
 7. GAE(gamma, lambda) on response tokens; returns = advantages + values;
    advantages whitened over the batch;
 8. clipped surrogate policy loss; clipped value loss; separate AdamW optimisers, eps 1e-5;
    gradient clipping; dropout off in every model;
 9. KL coefficient fixed, or adapted toward kl_target (Ziegler et al.);
10. metrics per step: score mean / std, KL (k1 and k3, summed over tokens), entropy,
    clip fraction, approx KL, value loss, explained variance, reply length, EOS rate.

Several processes (torchrun). `rollout_batch_size` and `minibatch_size` are global: the
prompts of a step are drawn on every rank from the same seeded generator and rank r keeps
rows r, r + W, r + 2W, ... Each row samples from its own generator, seeded by (seed,
step, row), so a reply does not depend on how many processes share the batch. Reward
whitening, advantage whitening, the KL controller's input and every metric use sums
over all ranks; each minibatch is the same set of global rows as in one process, every
rank divides its loss by the minibatch's global token count and the gradients are summed
across ranks before clipping. One process and N processes therefore make the same update
(tests/ml/test_torchrun.py compares the histories).

Large models. With LoRA adapters on the policy (adapters.prepare_model) pass
ref_policy=None: the reference log-probs then come from the same model with its adapters
off (adapters.adapters_disabled), so no second copy of the weights is held. Only the
parameters that require grad (the adapters, a value head) are given to the optimisers.

Devices. The trainer works on the device of the policy's parameters (the caller moves the
models); with `bf16` (None: on for GPUs that support it) forward passes run under bf16
autocast while weights, optimiser state and the loss arithmetic stay float32.

Speed (bench/ppo_bench.py, bench/results/ppo_speed.md): fused AdamW (one kernel per
parameter; the same update), GPT-2's tanh-GELU as one kernel (activations.GELUTanh, the
same function as NewGELUActivation up to rounding), and the reuse of the first
minibatch's forwards described in 2.

`state_dict()` holds everything to resume: policy, value model, both optimisers, the KL
controller, the step, and the torch / python RNG states.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from . import distributed
from .adapters import adapters_disabled, has_adapters
from .checkpoint import load_backbone, prepare_for_training, run_steps
from .device import autocast, model_device, use_bf16
from .generation import decode_responses, forward_response, no_cache, pad_left, position_ids, truncate_after_eos
from .hooks import NO_HOOKS, TrainerHooks
from .losses import (
    AdaptiveKLController,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    generalized_advantage_estimation,
    kl_k1,
    kl_k3,
    masked_mean,
)
from .sampling import sample_with_generators
from .tail import last_layer_tail
from .text import position_limit, prompt_room, tokenize_prompt

RewardFn = Callable[[list[list[dict]], list[str]], torch.Tensor]


@dataclass
class PPOConfig:
    steps: int = 100
    rollout_batch_size: int = 16  # prompts per step, over all ranks
    minibatch_size: int = 8  # over all ranks
    ppo_epochs: int = 4
    lr: float = 1e-5
    value_lr: float = 1e-5
    adam_eps: float = 1e-5
    max_grad_norm: float = 1.0
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 48
    max_prompt_tokens: int = 256
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    kl_coef: float = 0.05
    kl_target: float | None = None  # set to adapt kl_coef toward this KL per reply
    kl_horizon: int = 10_000
    kl_estimator: str = "k1"  # k1 or k3 in the reward penalty; both are logged
    whiten_rewards: bool = False
    missing_eos_penalty: float | None = -1.0
    bf16: bool | None = None  # bf16 autocast; None: on for GPUs that support it
    seed: int = 0


def ppo_defaults_for(device: torch.device) -> dict:
    """PPOConfig sizes that suit the device; project and run settings override them.

    A CPU worker (the demo, small models) gets a short run: 16 prompts a step, 32-token
    replies, 2 epochs, 20 steps, which keeps a demo cycle within minutes on 2 cores. A GPU
    worker gets the batch sizes of the usual RLHF recipes (64 prompts a step in minibatches
    of 16, 128-token replies, 4 epochs, 200 steps).

    The CPU run scores replies that did not end (no EOS) like any other, as TRL does by
    default (missing_eos_penalty None): cut at 32 tokens, almost no reply of a policy
    trained on paragraphs ends, so the EOS trick gave nearly every reply the same -1 and
    PPO had no signal left (bench/demo_cycle_bench.py: reward gain +0.007, 16 wins of 28).
    """
    if device.type == "cuda":
        return {"steps": 200, "rollout_batch_size": 64, "minibatch_size": 16, "ppo_epochs": 4, "max_new_tokens": 128, "max_prompt_tokens": 512}
    return {"steps": 20, "rollout_batch_size": 16, "minibatch_size": 16, "ppo_epochs": 2, "max_new_tokens": 32, "max_prompt_tokens": 256,
            "missing_eos_penalty": None}


class ValueModel(nn.Module):
    """A backbone (AutoModel) with a scalar head initialised to zero: V = 0 before training."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.hidden_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_policy_folder(cls, path) -> "ValueModel":
        """The policy's backbone (a full or an adapter-only folder) under a new value head."""
        backbone, _ = load_backbone(path)
        return cls(backbone)

    def forward(self, query, query_mask, response, response_mask) -> torch.Tensor:
        """V(s_t) for each response token t: the state before token t was sampled."""
        ids = torch.cat([query, response], 1)
        mask = torch.cat([query_mask, response_mask], 1)
        with last_layer_tail(self.backbone, response.shape[1] + 1):  # only these positions are read (tail.py)
            hidden = self.backbone(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), **no_cache(self.backbone)).last_hidden_state
        return self.head(hidden[:, query.shape[1] - 1 : -1]).squeeze(-1).float()


@dataclass
class Rollout:
    """This rank's rows of one step's rollout batch (`rows`: their global indices)."""

    prompts: list[list[dict]]
    rows: list[int]
    query: torch.Tensor
    query_mask: torch.Tensor
    response: torch.Tensor
    mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor
    has_eos: torch.Tensor
    generation_seconds: float = 0.0


def adamw(parameters, lr: float, eps: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; the fused kernel where torch has one (CPU, CUDA)."""
    params = [p for p in parameters if p.requires_grad]
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(params, lr=lr, eps=eps, fused=fused or None)


def row_generator(seed: int, step: int, row: int, device: torch.device) -> torch.Generator:
    """The sampling generator of one rollout row: the same for any number of processes."""
    generator = torch.Generator(device=device)
    generator.manual_seed(random.Random(f"ppo-sample-{seed}-{step}-{row}").getrandbits(63))
    return generator


def global_masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """losses.masked_whiten with the mean and (unbiased) variance taken over all ranks' rows."""
    sums = distributed.all_reduce_sum(torch.stack([(x * mask).sum(), mask.sum()]).double())
    n = sums[1].clamp(min=1)
    mean = (sums[0] / n).to(x.dtype)
    squares = distributed.all_reduce_sum(((x - mean) ** 2 * mask).sum().double())
    var = (squares / n * n / (n - 1).clamp(min=1)).to(x.dtype)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


class PPOTrainer:
    def __init__(
        self,
        policy,
        ref_policy,
        value_model: ValueModel,
        tokenizer,
        reward_fn: RewardFn,
        prompts: list[list[dict]],
        config: PPOConfig,
        hooks: TrainerHooks = NO_HOOKS,
    ):
        if config.rollout_batch_size % config.minibatch_size:
            raise ValueError("rollout_batch_size must be a multiple of minibatch_size")
        if config.kl_estimator not in ("k1", "k3"):
            raise ValueError("kl_estimator must be k1 or k3")
        if not prompts:
            raise ValueError("PPO needs at least one prompt")
        if ref_policy is None and not has_adapters(policy):
            raise ValueError("without LoRA adapters on the policy, PPO needs a separate reference policy")
        self.rank, self.world = distributed.rank_and_world()
        if config.rollout_batch_size < self.world:
            raise ValueError(f"rollout_batch_size {config.rollout_batch_size} is smaller than the {self.world} processes")
        self.policy, self.ref_policy, self.value_model = policy, ref_policy, value_model
        self.tokenizer, self.reward_fn, self.prompts, self.config, self.hooks = tokenizer, reward_fn, prompts, config, hooks
        self.device = model_device(policy)
        self.bf16 = use_bf16(self.device, config.bf16)
        prepare_for_training([policy, value_model], ref_policy)
        torch.manual_seed(config.seed)
        self.prompt_rng = random.Random(config.seed)
        self.update_rng = torch.Generator().manual_seed(config.seed)
        self.policy_optimizer = adamw(policy.parameters(), config.lr, config.adam_eps)
        self.value_optimizer = adamw(value_model.parameters(), config.value_lr, config.adam_eps)
        self._first_pass = None  # (local rows, new log-probs, logits, new values) of the first update minibatch
        self.kl_controller = AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
        self.step_count = 0
        self.history: list[dict] = []

    # ----------------------------------------------------------------------- rollout

    def _prompt_batch(self) -> tuple[list[int], list[list[dict]]]:
        """This rank's share of the step's global prompt batch: (global rows, prompts)."""
        batch = [self.prompts[self.prompt_rng.randrange(len(self.prompts))] for _ in range(self.config.rollout_batch_size)]
        rows = list(range(self.rank, len(batch), self.world))
        return rows, [batch[i] for i in rows]

    @torch.no_grad()
    def rollout(self, first_minibatch: list[int] | None = None) -> Rollout:
        """One rollout batch. `first_minibatch` (global rows, in the order of the first update
        minibatch): this rank's rows of it get their policy and value forwards with
        gradients, kept in self._first_pass for that minibatch to reuse."""
        config, tokenizer, device = self.config, self.tokenizer, self.device
        rows, prompts = self._prompt_batch()
        room = prompt_room(position_limit(self.policy), config.max_prompt_tokens, config.max_new_tokens)  # prompt + reply fit the positions
        queries = [tokenize_prompt(tokenizer, messages, room) for messages in prompts]
        query, query_mask = (t.to(device) for t in pad_left(queries, tokenizer.pad_token_id))
        self.policy.eval()
        generators = [row_generator(config.seed, self.step_count, row, device) for row in rows]
        started = time.perf_counter()
        with autocast(device, self.bf16):
            sampled = sample_with_generators(
                self.policy, query, query_mask, temperature=config.temperature, top_p=config.top_p, max_new_tokens=config.max_new_tokens,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, generators=generators,
            )
        response, mask, has_eos = truncate_after_eos(sampled, tokenizer.eos_token_id, tokenizer.pad_token_id)
        generation_seconds = time.perf_counter() - started
        local_index = {row: i for i, row in enumerate(rows)}
        keep = [local_index[row] for row in (first_minibatch or []) if row in local_index]
        with autocast(device, self.bf16):
            logprobs, values = self._policy_and_values(query, query_mask, response, mask, keep)
            ref_logprobs = self._reference_logprobs(query, query_mask, response, mask)
        scores = self.reward_fn(prompts, decode_responses(tokenizer, response, mask)).float().to(device)
        if config.missing_eos_penalty is not None:
            scores = torch.where(has_eos, scores, torch.full_like(scores, config.missing_eos_penalty))
        maskf = mask.float()
        return Rollout(
            prompts, rows, query, query_mask, response, maskf, logprobs.float() * maskf, ref_logprobs.float() * maskf, values * maskf,
            scores, has_eos, generation_seconds,
        )

    def _reference_logprobs(self, query, query_mask, response, mask) -> torch.Tensor:
        """Log-probs under the reference: its own model, or the policy with its adapters off."""
        if self.ref_policy is not None:
            return forward_response(self.ref_policy, query, query_mask, response, mask, self.config.temperature)[0]
        with adapters_disabled(self.policy):
            return forward_response(self.policy, query, query_mask, response, mask, self.config.temperature)[0]

    def _policy_and_values(self, query, query_mask, response, mask, keep: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Old log-probs and values of every row; rows `keep` with gradients (see rollout)."""
        temperature = self.config.temperature
        self._first_pass = None
        if not keep:
            logprobs, _ = forward_response(self.policy, query, query_mask, response, mask, temperature)
            return logprobs, self.value_model(query, query_mask, response, mask)
        kept = torch.tensor(keep, device=query.device)
        with torch.enable_grad():
            new_logprobs, logits = forward_response(self.policy, query[kept], query_mask[kept], response[kept], mask[kept], temperature)
            new_values = self.value_model(query[kept], query_mask[kept], response[kept], mask[kept])
        self._first_pass = (keep, new_logprobs, logits, new_values)
        if len(keep) == query.shape[0]:
            order = torch.argsort(kept)  # back to row order
            return new_logprobs.detach()[order], new_values.detach()[order]
        logprobs = torch.empty(response.shape, dtype=new_logprobs.dtype, device=query.device)
        values = torch.empty(response.shape, dtype=new_values.dtype, device=query.device)
        logprobs[kept], values[kept] = new_logprobs.detach(), new_values.detach()
        rest = torch.tensor([i for i in range(query.shape[0]) if i not in set(keep)], device=query.device)
        logprobs[rest], _ = forward_response(self.policy, query[rest], query_mask[rest], response[rest], mask[rest], temperature)
        values[rest] = self.value_model(query[rest], query_mask[rest], response[rest], mask[rest]).to(values.dtype)
        return logprobs, values

    def token_rewards(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-token rewards, per-token KL used in the penalty)."""
        estimator = kl_k1 if self.config.kl_estimator == "k1" else kl_k3
        kl = estimator(rollout.logprobs, rollout.ref_logprobs) * rollout.mask
        rewards = -self.kl_controller.value * kl
        last = rollout.mask.sum(1).long() - 1
        rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += rollout.scores
        if self.config.whiten_rewards:
            rewards = global_masked_whiten(rewards, rollout.mask, shift_mean=False)
        return rewards, kl

    # ----------------------------------------------------------------------- update

    def _global_row_tokens(self, rollout: Rollout) -> torch.Tensor:
        """Response tokens of every global row (each rank fills its own rows, then a sum)."""
        tokens = torch.zeros(self.config.rollout_batch_size, dtype=torch.float64)
        tokens[rollout.rows] = rollout.mask.sum(1).double().cpu()
        return distributed.all_reduce_sum(tokens)

    def _sum(self, *values: torch.Tensor) -> list[float]:
        """Sums over ranks of scalar tensors, in one collective, as floats."""
        return distributed.all_reduce_sum(torch.stack([v.detach().double().reshape(()) for v in values]).cpu()).tolist()

    def step(self) -> dict:
        config = self.config
        self.hooks.check_cancelled()
        started = time.perf_counter()
        batch = config.rollout_batch_size
        # update_rng serves only these permutations, so drawing them first changes nothing
        orders = [torch.randperm(batch, generator=self.update_rng).tolist() for _ in range(config.ppo_epochs)]
        rollout = self.rollout(orders[0][: config.minibatch_size] if orders else None)
        rollout_seconds = time.perf_counter() - started
        rewards, kl = self.token_rewards(rollout)
        advantages, returns = generalized_advantage_estimation(rewards, rollout.values, rollout.mask, config.gamma, config.lam)
        advantages = global_masked_whiten(advantages, rollout.mask)
        row_tokens = self._global_row_tokens(rollout)
        local_index = {row: i for i, row in enumerate(rollout.rows)}

        self.policy.train()
        self.value_model.train()
        # per minibatch, global means as tensors (summed over ranks once, after the loop)
        keys = ("policy_loss", "value_loss", "clipfrac", "approx_kl", "value_clipfrac", "entropy")
        totals = torch.zeros(len(keys), dtype=torch.float64, device=self.device)
        n_minibatches = 0
        for epoch, order in enumerate(orders):
            for start in range(0, batch, config.minibatch_size):
                minibatch = order[start : start + config.minibatch_size]
                global_tokens = float(row_tokens[minibatch].sum().clamp(min=1))
                mine = [local_index[row] for row in minibatch if row in local_index]
                self.policy_optimizer.zero_grad(set_to_none=True)
                self.value_optimizer.zero_grad(set_to_none=True)
                if mine:
                    idx = torch.tensor(mine, device=self.device)
                    mask = rollout.mask[idx]
                    share = float(mask.sum()) / global_tokens  # this rank's part of the minibatch mean
                    query, query_mask, response = rollout.query[idx], rollout.query_mask[idx], rollout.response[idx]
                    first_pass = self._first_pass if epoch == 0 and start == 0 else None
                    if first_pass is not None and first_pass[0] == mine:  # computed in the rollout at these parameters
                        new_logprobs, logits, reused_values = first_pass[1:]
                        self._first_pass = None
                    else:
                        reused_values = None
                        with autocast(self.device, self.bf16):
                            new_logprobs, logits = forward_response(self.policy, query, query_mask, response, mask.long(), config.temperature)
                    policy_loss, policy_stats = clipped_policy_loss(new_logprobs.float(), rollout.logprobs[idx], advantages[idx], mask, config.clip_range)
                    (policy_loss * share).backward()
                    if reused_values is not None:
                        new_values = reused_values
                    else:
                        with autocast(self.device, self.bf16):
                            new_values = self.value_model(query, query_mask, response, mask.long())
                    value_loss, value_stats = clipped_value_loss(new_values, rollout.values[idx], returns[idx], mask, config.clip_range_value)
                    (value_loss * share).backward()
                    with torch.no_grad():
                        entropy = masked_mean(entropy_from_logits(logits, config.temperature), mask)
                        totals += share * torch.stack([
                            policy_loss.detach(), value_loss.detach(), policy_stats["clipfrac"],
                            policy_stats["approx_kl"], value_stats["value_clipfrac"], entropy,
                        ]).double().to(self.device)
                distributed.all_reduce_gradients(self.policy)
                distributed.all_reduce_gradients(self.value_model)
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), config.max_grad_norm)
                torch.nn.utils.clip_grad_norm_(self.value_model.parameters(), config.max_grad_norm)
                self.policy_optimizer.step()
                self.value_optimizer.step()
                n_minibatches += 1
        self._first_pass = None
        update = dict(zip(keys, (v / max(n_minibatches, 1) for v in distributed.all_reduce_sum(totals.cpu()).tolist())))

        self.step_count += 1
        metrics = {**self._rollout_metrics(rollout, kl, returns), **update}
        self.kl_controller.update(metrics["kl_penalty_per_reply"], batch)
        metrics.pop("kl_penalty_per_reply")
        step_seconds = time.perf_counter() - started
        metrics.update({
            "kl_coef": self.kl_controller.value,
            "step_seconds": step_seconds,
            "rollout_seconds": rollout_seconds,
        })
        metrics = {k: (v if not (isinstance(v, float) and math.isnan(v)) else None) for k, v in metrics.items()}
        self.history.append({"step": self.step_count, **metrics})
        self.hooks.report(self.step_count, config.steps, metrics)
        return metrics

    def _rollout_metrics(self, rollout: Rollout, kl: torch.Tensor, returns: torch.Tensor) -> dict:
        """Per-step statistics of the whole (global) rollout batch, from sums over ranks."""
        mask = rollout.mask
        k1 = (rollout.logprobs - rollout.ref_logprobs).sum(1)
        k3 = (kl_k3(rollout.logprobs, rollout.ref_logprobs) * mask).sum(1)
        penalty = kl.sum(1)
        residual = returns - rollout.values
        (
            n, score_sum, score_sq, k1_sum, k3_sum, penalty_sum, tokens, eos, gen_seconds,
            ret_sum, ret_sq, res_sum, res_sq,
        ) = self._sum(
            torch.tensor(float(len(rollout.rows))), rollout.scores.sum(), (rollout.scores**2).sum(), k1.sum(), k3.sum(), penalty.sum(),
            mask.sum(), rollout.has_eos.float().sum(), torch.tensor(rollout.generation_seconds),
            (returns * mask).sum(), (returns**2 * mask).sum(), (residual * mask).sum(), (residual**2 * mask).sum(),
        )
        reward_mean = score_sum / n
        reward_var = (score_sq - n * reward_mean**2) / (n - 1) if n > 1 else 0.0

        def unbiased_var(total: float, squares: float) -> float:
            return (squares - total**2 / tokens) / max(tokens - 1, 1)

        var_returns = unbiased_var(ret_sum, ret_sq)
        return {
            "reward_mean": reward_mean,
            "reward_std": math.sqrt(max(reward_var, 0.0)),
            "kl": k1_sum / n,
            "kl_k3": k3_sum / n,
            "kl_penalty_per_reply": penalty_sum / n,
            "non_score_reward": -self.kl_controller.value * penalty_sum / n,
            "explained_variance": 1 - unbiased_var(res_sum, res_sq) / var_returns if var_returns > 0 else float("nan"),
            "response_length": tokens / n,
            "eos_rate": eos / n,
            # ranks sample at the same time: tokens of all ranks over the mean rank's sampling time
            "generated_tokens_per_second": tokens / max(gen_seconds / self.world, 1e-9),
        }

    def train(self, *, checkpoint_path=None, checkpoint_every: int = 0) -> dict:
        """Run the remaining steps; optionally write a resumable state every N steps (rank 0)."""
        return run_steps(self, self.config.steps, checkpoint_path=checkpoint_path, checkpoint_every=checkpoint_every)

    # ----------------------------------------------------------------------- resume

    def state_dict(self) -> dict:
        return {
            "policy": self.policy.state_dict(),
            "value_model": self.value_model.state_dict(),
            "policy_optimizer": self.policy_optimizer.state_dict(),
            "value_optimizer": self.value_optimizer.state_dict(),
            "kl_controller": self.kl_controller.state_dict(),
            "step": self.step_count,
            "history": self.history,
            "torch_rng": torch.get_rng_state(),
            "update_rng": self.update_rng.get_state(),
            "prompt_rng": self.prompt_rng.getstate(),
            "config": asdict(self.config),
        }

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.value_model.load_state_dict(state["value_model"])
        self.policy_optimizer.load_state_dict(state["policy_optimizer"])
        self.value_optimizer.load_state_dict(state["value_optimizer"])
        self.kl_controller.load_state_dict(state["kl_controller"])
        self.step_count = state["step"]
        self.history = list(state["history"])
        torch.set_rng_state(state["torch_rng"])
        self.update_rng.set_state(state["update_rng"])
        self.prompt_rng.setstate(state["prompt_rng"])
