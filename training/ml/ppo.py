"""PPO for language models against a frozen reward model and a frozen reference policy.

One `step()` = one rollout batch + `ppo_epochs` passes of minibatch updates. Every detail
of "The N Implementation Details of RLHF with PPO" that decides whether it works is
written out here, in the order it happens:

 1. prompts sampled from a seeded generator; replies sampled with a KV cache
    (generation.sample_responses) at `temperature`, top-k off;
 2. log-probs of policy and reference from one forward pass with logits / temperature;
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
from transformers import AutoModel

from .checkpoint import disable_dropout, load_tokenizer, match_embeddings, save_state_atomically
from .generation import SamplingConfig, decode_responses, forward_response, pad_left, position_ids, sample_responses
from .hooks import NO_HOOKS, TrainerHooks
from .losses import (
    AdaptiveKLController,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    explained_variance,
    generalized_advantage_estimation,
    kl_k1,
    kl_k3,
    masked_mean,
    masked_whiten,
)
from .text import tokenize_prompt

RewardFn = Callable[[list[list[dict]], list[str]], torch.Tensor]


@dataclass
class PPOConfig:
    steps: int = 100
    rollout_batch_size: int = 16
    minibatch_size: int = 8
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
    seed: int = 0


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
        tokenizer = load_tokenizer(path)
        backbone = AutoModel.from_pretrained(str(path), local_files_only=True)
        match_embeddings(backbone, tokenizer)
        return cls(backbone)

    def forward(self, query, query_mask, response, response_mask) -> torch.Tensor:
        """V(s_t) for each response token t: the state before token t was sampled."""
        ids = torch.cat([query, response], 1)
        mask = torch.cat([query_mask, response_mask], 1)
        hidden = self.backbone(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).last_hidden_state
        return self.head(hidden[:, query.shape[1] - 1 : -1]).squeeze(-1)


@dataclass
class Rollout:
    prompts: list[list[dict]]
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
        self.policy, self.ref_policy, self.value_model = policy, ref_policy, value_model
        self.tokenizer, self.reward_fn, self.prompts, self.config, self.hooks = tokenizer, reward_fn, prompts, config, hooks
        for model in (policy, ref_policy, value_model):
            disable_dropout(model)
        ref_policy.eval()
        for p in ref_policy.parameters():
            p.requires_grad_(False)
        torch.manual_seed(config.seed)
        self.prompt_rng = random.Random(config.seed)
        self.policy_optimizer = torch.optim.AdamW(policy.parameters(), lr=config.lr, eps=config.adam_eps)
        self.value_optimizer = torch.optim.AdamW(value_model.parameters(), lr=config.value_lr, eps=config.adam_eps)
        self.kl_controller = AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
        self.step_count = 0
        self.history: list[dict] = []
        self.sampling = SamplingConfig(
            temperature=config.temperature, top_p=config.top_p, max_new_tokens=config.max_new_tokens, max_prompt_tokens=config.max_prompt_tokens
        )

    # ----------------------------------------------------------------------- rollout

    def _prompt_batch(self) -> list[list[dict]]:
        return [self.prompts[self.prompt_rng.randrange(len(self.prompts))] for _ in range(self.config.rollout_batch_size)]

    @torch.no_grad()
    def rollout(self) -> Rollout:
        config, tokenizer = self.config, self.tokenizer
        prompts = self._prompt_batch()
        queries = [tokenize_prompt(tokenizer, messages, config.max_prompt_tokens) for messages in prompts]
        query, query_mask = pad_left(queries, tokenizer.pad_token_id)
        self.policy.eval()
        started = time.perf_counter()
        response, mask, has_eos = sample_responses(self.policy, tokenizer, query, query_mask, self.sampling)
        generation_seconds = time.perf_counter() - started
        logprobs, _ = forward_response(self.policy, query, query_mask, response, mask, config.temperature)
        ref_logprobs, _ = forward_response(self.ref_policy, query, query_mask, response, mask, config.temperature)
        values = self.value_model(query, query_mask, response, mask)
        scores = self.reward_fn(prompts, decode_responses(tokenizer, response, mask)).float()
        if config.missing_eos_penalty is not None:
            scores = torch.where(has_eos, scores, torch.full_like(scores, config.missing_eos_penalty))
        maskf = mask.float()
        return Rollout(
            prompts, query, query_mask, response, maskf, logprobs * maskf, ref_logprobs * maskf, values * maskf, scores, has_eos, generation_seconds
        )

    def token_rewards(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-token rewards, per-token KL used in the penalty)."""
        estimator = kl_k1 if self.config.kl_estimator == "k1" else kl_k3
        kl = estimator(rollout.logprobs, rollout.ref_logprobs) * rollout.mask
        rewards = -self.kl_controller.value * kl
        last = rollout.mask.sum(1).long() - 1
        rewards[torch.arange(rewards.shape[0]), last] += rollout.scores
        if self.config.whiten_rewards:
            rewards = masked_whiten(rewards, rollout.mask, shift_mean=False)
        return rewards, kl

    # ----------------------------------------------------------------------- update

    def step(self) -> dict:
        config = self.config
        self.hooks.check_cancelled()
        started = time.perf_counter()
        rollout = self.rollout()
        rollout_seconds = time.perf_counter() - started
        rewards, kl = self.token_rewards(rollout)
        advantages, returns = generalized_advantage_estimation(rewards, rollout.values, rollout.mask, config.gamma, config.lam)
        advantages = masked_whiten(advantages, rollout.mask)

        self.policy.train()
        self.value_model.train()
        stats: dict[str, list[float]] = {k: [] for k in ("policy_loss", "value_loss", "clipfrac", "approx_kl", "value_clipfrac", "entropy")}
        batch = config.rollout_batch_size
        for _ in range(config.ppo_epochs):
            order = torch.randperm(batch)
            for start in range(0, batch, config.minibatch_size):
                idx = order[start : start + config.minibatch_size]
                mask = rollout.mask[idx]
                new_logprobs, logits = forward_response(
                    self.policy, rollout.query[idx], rollout.query_mask[idx], rollout.response[idx], rollout.mask[idx].long(), config.temperature
                )
                policy_loss, policy_stats = clipped_policy_loss(new_logprobs, rollout.logprobs[idx], advantages[idx], mask, config.clip_range)
                self.policy_optimizer.zero_grad(set_to_none=True)
                policy_loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), config.max_grad_norm)
                self.policy_optimizer.step()

                new_values = self.value_model(rollout.query[idx], rollout.query_mask[idx], rollout.response[idx], rollout.mask[idx].long())
                value_loss, value_stats = clipped_value_loss(new_values, rollout.values[idx], returns[idx], mask, config.clip_range_value)
                self.value_optimizer.zero_grad(set_to_none=True)
                value_loss.backward()
                torch.nn.utils.clip_grad_norm_(self.value_model.parameters(), config.max_grad_norm)
                self.value_optimizer.step()

                with torch.no_grad():
                    stats["entropy"].append(masked_mean(entropy_from_logits(logits, config.temperature), mask).item())
                stats["policy_loss"].append(policy_loss.item())
                stats["value_loss"].append(value_loss.item())
                for key, value in {**policy_stats, **value_stats}.items():
                    if key in stats:
                        stats[key].append(value)

        kl_per_reply = kl.sum(1)
        k3 = (kl_k3(rollout.logprobs, rollout.ref_logprobs) * rollout.mask).sum(1)
        generated_tokens = int(rollout.mask.sum())
        self.kl_controller.update(kl_per_reply.mean().item(), batch)
        self.step_count += 1
        step_seconds = time.perf_counter() - started
        metrics = {
            "reward_mean": rollout.scores.mean().item(),
            "reward_std": rollout.scores.std().item() if batch > 1 else 0.0,
            "kl": (rollout.logprobs - rollout.ref_logprobs).sum(1).mean().item(),
            "kl_k3": k3.mean().item(),
            "kl_coef": self.kl_controller.value,
            "non_score_reward": (-self.kl_controller.value * kl_per_reply).mean().item(),
            "entropy": sum(stats["entropy"]) / len(stats["entropy"]),
            "clipfrac": sum(stats["clipfrac"]) / len(stats["clipfrac"]),
            "approx_kl": sum(stats["approx_kl"]) / len(stats["approx_kl"]),
            "policy_loss": sum(stats["policy_loss"]) / len(stats["policy_loss"]),
            "value_loss": sum(stats["value_loss"]) / len(stats["value_loss"]),
            "value_clipfrac": sum(stats["value_clipfrac"]) / len(stats["value_clipfrac"]),
            "explained_variance": explained_variance(rollout.values, returns, rollout.mask),
            "response_length": rollout.mask.sum(1).mean().item(),
            "eos_rate": rollout.has_eos.float().mean().item(),
            "step_seconds": step_seconds,
            "rollout_seconds": rollout_seconds,
            "generated_tokens_per_second": generated_tokens / max(rollout.generation_seconds, 1e-9),
        }
        metrics = {k: (v if not (isinstance(v, float) and math.isnan(v)) else None) for k, v in metrics.items()}
        self.history.append({"step": self.step_count, **metrics})
        self.hooks.report(self.step_count, config.steps, metrics)
        return metrics

    def train(self, *, checkpoint_path=None, checkpoint_every: int = 0) -> dict:
        """Run the remaining steps; optionally write a resumable state every N steps."""
        metrics: dict = {}
        while self.step_count < self.config.steps:
            metrics = self.step()
            if checkpoint_path and checkpoint_every and self.step_count % checkpoint_every == 0:
                save_state_atomically(self.state_dict(), checkpoint_path)
        return metrics

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
        self.prompt_rng.setstate(state["prompt_rng"])
