"""Value-free online RL for language models: RLOO and GRPO against a fixed reward function.

Both methods replace PPO's value model by a baseline built from several replies to the same
prompt. One `step()` draws `prompts_per_step` prompts, samples k = `num_samples` replies to
each (a *group*), scores them, turns the scores into one advantage per reply, and makes
`epochs` passes of clipped-surrogate updates over the step's P * k replies in minibatches of
`minibatch_size` replies. In order:

 1. prompts drawn from a seeded generator, identically on every rank; each prompt is
    tokenized once and its prefill runs once, its KV cache repeated for its k replies
    (`sample_groups`, the decoding loop of sampling.sample_with_generators: temperature,
    top-p, top-k off). Reply j of prompt row g draws from its own generator, seeded by
    (seed, step, g, j), one uniform number per token (inverse-CDF sampling, `sampling.draw_tokens`);
 2. log-probs of the policy and of the frozen reference, logits / temperature, from one
    pass each in which every prompt runs once and its KV cache is indexed out to its
    replies (`group_forward`; differentiable, so the update passes share prompts too): with
    k replies per prompt the prompt's share of every forward and backward drops k-fold.
    The policy's pass of the first update minibatch runs here with gradients and that
    minibatch reuses it (the parameters have not moved yet), so with one update per step
    (the fully on-policy case) the policy runs forward once per step, not twice. The other
    rows run without gradients, in chunks of `minibatch_size` replies;
 3. a reply ends at its first EOS (kept as its last token); a reply without one gets the
    score `missing_eos_penalty` instead of the reward function's (the EOS trick, as PPO);
 4. the sequence reward R and the advantages, per group of k replies (see below);
 5. clipped surrogate with the ratio r = pi / pi_old to the policy that sampled the replies
    (clip range `clip_range`), per reply or per token (`loss_type`, below); GRPO adds
    beta * k3 (the KL to the reference, at the current policy, with gradients);
 6. AdamW (eps `adam_eps`, constant lr), gradient clipping at `max_grad_norm`, dropout off.

Advantages (`group_advantages`), with R_1..R_k the rewards of one group:

  RLOO (Ahmadian et al. 2024, "Back to Basics"; Kool et al. 2019): leave-one-out baseline,
      A_i = R_i - 1/(k-1) sum_{j != i} R_j  =  k/(k-1) * (R_i - mean(R)).
      The KL enters the reward, as a sequence-level penalty computed at sampling time and
      not differentiated: R_i = score_i - beta * sum_t (log pi_old(y_t) - log pi_ref(y_t))
      (k1 summed over the reply's tokens).
  GRPO (Shao et al. 2024, DeepSeekMath): A_i = (R_i - mean(R)) / (std(R) + std_eps), R_i =
      score_i, std the *unbiased* sample standard deviation of the group (divisor k - 1,
      torch.std's default, as TRL's GRPOTrainer), std_eps 1e-4 (TRL's). With
      `scale_rewards=False` the division is skipped (Dr. GRPO, Liu et al. 2025). The KL is a
      loss term: beta * k3_t, k3 = pi_ref/pi - log(pi_ref/pi) - 1 at the current policy,
      per token, differentiated, reduced like the surrogate.

A group whose rewards are all equal has advantage 0 for every reply (GRPO's 0 / (0 + eps)
= 0): it contributes only its KL term. The fraction of such groups is logged
(`zero_std_groups`); many of them mean k or the reward's resolution is too small.

The surrogate (`loss_type`, `policy_loss`), A_i the reply's advantage, e = clip_range:
  "sequence"      (RLOO's default) the reply is one action (Ahmadian et al.): one ratio per
                  reply, r_i = pi(y_i | x) / pi_old(y_i | x) = exp(sum_t log r_it), loss
                  max(-A_i r_i, -A_i clip(r_i, 1-e, 1+e)) averaged over the minibatch's
                  replies. At r = 1 (the first update) its gradient is the RLOO paper's
                  REINFORCE estimator, -1/B sum_i A_i grad log pi(y_i | x). This is TRL
                  1.16's RLOOTrainer loss (ours clamps the log ratio at +-20).
  "token"         (GRPO's default) PPO's per-token ratio r_it and clipping; the sum over
                  all the minibatch's tokens divided by their count, so every token weighs
                  the same (DAPO, Yu et al. 2025; TRL GRPOTrainer's default "dapo"; our PPO).
  "sequence_mean" per-token ratios as "token", averaged within each reply, then over the
                  replies: the GRPO paper's 1/G sum_i 1/|o_i| sum_t (TRL's loss_type="grpo").
                  A long reply's tokens weigh less, which favours short good replies and long
                  bad ones (Liu et al. 2025), hence not the default.
GRPO's KL term is added per token (beta * k3_it) in the token losses and per reply
(beta * sum_t k3_it, the reply's KL) in "sequence", so that both terms keep the same scale.

Where we follow TRL 1.16 (trl/trainer/rloo_trainer.py, grpo_trainer.py) and where not:
  - RLOO: the same reward (score - beta * sum_t k1_t at sampling time, TRL's default beta
    0.05 too), the same leave-one-out advantage, the same sequence-level clipped loss.
    TRL can whiten the advantages over the batch (normalize_advantages, off by default);
    ours never does.
  - GRPO: the same advantage (group std with Bessel's correction, + 1e-4; TRL
    scale_rewards="group", or "none" for our scale_rewards=False; TRL's "batch" std is not
    offered), the same k3 term per token, the same default reduction ("dapo" = our
    "token"). TRL's default beta is 0 (no reference model loaded); ours is 0.05 for both
    algorithms, so a reference is always in the loop (beta=0 is allowed).
  - Old log-probs come from a forward pass after sampling (not from the sampler's scores),
    as TRL's, so the ratio of the first update is exactly 1. TRL's GRPO skips that pass
    when there is one update per generation and RLOO never does; we reuse the first
    minibatch's forward in every configuration (step 2).
  - Minibatches are whole groups (TRL shuffles single replies), and every prompt runs once
    per pass (TRL runs it once per reply: k times).
  - No learning-rate schedule (TRL: linear decay), AdamW eps 1e-5 (TRL: 1e-8) and weight
    decay 0.01 (TRL: 0), lr 1e-5 (TRL: 1e-6): the settings of our PPO where they differ;
    temperature 1.0 as TRL. No missing-EOS penalty in TRL (mask_truncated_completions drops
    such replies from the loss instead).

Several processes (torchrun). `prompts_per_step` and `minibatch_size` are global. Whole
groups go to one rank: prompt row g (and its k replies, global rows g*k .. g*k + k - 1) to
rank g mod W, so the advantages of a group are computed where its replies are, with no
collective. Replies do not depend on W (per-reply generators). Each minibatch is the same
set of global rows as in one process; every rank divides its loss by the minibatch's
*global* token (or reply) count and the gradients are summed across ranks before
clipping, so one process and N processes make the same update. Every metric is a sum over
ranks (tests/ml/test_rloo.py runs 2 gloo processes against 1).

Reference. A separate frozen copy of the policy (`ref_policy`), or `ref_policy=None` with
LoRA adapters on the policy (adapters.prepare_model): the reference log-probs then come
from the same model with its adapters off (adapters.adapters_disabled). Only parameters
that require grad are given to the optimiser.

Minibatches. Each epoch shuffles whole groups (update_rng, drawn identically on every
rank) and cuts the step's replies into minibatches of `minibatch_size`; when that is a
multiple of k a minibatch is whole groups, so each prompt runs once in it and the
leave-one-out advantages of a minibatch sum to zero.

Devices and speed. The trainer works on the device of the policy's parameters (the caller
moves the models); with `bf16` (None: on for GPUs that support it) forward passes run under
bf16 autocast while weights, optimiser state and the loss arithmetic stay float32. Besides
the shared prompts of 1 and 2: fused AdamW (ppo.adamw), GPT-2's tanh-GELU as one kernel
(checkpoint.fuse_gelu), the LM head on the reply's positions only. Against TRL 1.16's
RLOOTrainer on the same models, prompts and batch (bench/rloo_bench.py: 8 hh-harmless
prompts x 4 replies of 32 tokens, a 4-layer GPT-2, CPU) a step takes about 0.4x the time
at half the peak memory.

`state_dict()` holds everything to resume exactly: policy, optimiser, step, history, and
the torch / python RNG states.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass

import torch

from . import distributed
from .adapters import adapters_disabled, gradient_checkpointing_on, has_adapters
from .checkpoint import prepare_for_training, run_steps
from .device import autocast, model_device, use_bf16
from .generation import decode_responses, forward_response, pad_left, position_ids, truncate_after_eos
from .hooks import NO_HOOKS, TrainerHooks
from .losses import entropy_from_logits, kl_k1, kl_k3, logprobs_from_logits
from .ppo import RewardFn, adamw
from .sampling import decode
from .text import position_limit, prompt_room, tokenize_prompt

ALGORITHMS = ("rloo", "grpo")
LOSS_TYPES = ("sequence", "token", "sequence_mean")
DEFAULT_LOSS_TYPE = {"rloo": "sequence", "grpo": "token"}


@dataclass
class OnlineRLConfig:
    algorithm: str = "rloo"  # "rloo" (leave-one-out, KL in the reward) or "grpo" (group-normalised, KL in the loss)
    steps: int = 100
    prompts_per_step: int = 16  # prompts per step, over all ranks
    num_samples: int = 4  # k replies per prompt (>= 2)
    minibatch_size: int = 16  # replies per update, over all ranks; divides prompts_per_step * num_samples
    epochs: int = 1  # passes over a step's replies
    lr: float = 1e-5
    adam_eps: float = 1e-5
    max_grad_norm: float = 1.0
    clip_range: float = 0.2
    beta: float = 0.05  # KL coefficient: in the reward (RLOO, k1) or in the loss (GRPO, k3)
    loss_type: str | None = None  # "sequence", "token" or "sequence_mean" (module docstring); None: sequence for RLOO, token for GRPO
    scale_rewards: bool = True  # GRPO: divide by the group's std (False: Dr. GRPO)
    std_eps: float = 1e-4  # GRPO: A = (R - mean) / (std + std_eps)
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 48
    max_prompt_tokens: int = 256
    missing_eos_penalty: float | None = -1.0
    bf16: bool | None = None  # bf16 autocast; None: on for GPUs that support it
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.algorithm not in ALGORITHMS:
            problems.append(f"algorithm must be one of {', '.join(ALGORITHMS)}, not {self.algorithm!r}")
        if self.loss_type is None and self.algorithm in ALGORITHMS:
            self.loss_type = DEFAULT_LOSS_TYPE[self.algorithm]
        if self.loss_type not in LOSS_TYPES:
            problems.append(f"loss_type must be one of {', '.join(LOSS_TYPES)}, not {self.loss_type!r}")
        for name in ("steps", "prompts_per_step", "minibatch_size", "epochs", "max_new_tokens", "max_prompt_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name} must be a whole number >= 1, not {value!r}")
        if not isinstance(self.num_samples, int) or isinstance(self.num_samples, bool) or self.num_samples < 2:
            problems.append(f"num_samples (k, replies per prompt) must be a whole number >= 2 for a group baseline, not {self.num_samples!r}")
        for name in ("lr", "adam_eps", "max_grad_norm", "clip_range", "temperature", "std_eps"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                problems.append(f"{name} must be a number > 0, not {value!r}")
        if not isinstance(self.beta, (int, float)) or not math.isfinite(self.beta) or self.beta < 0:
            problems.append(f"beta (KL coefficient) must be a number >= 0, not {self.beta!r}")
        if not isinstance(self.scale_rewards, bool):
            problems.append(f"scale_rewards must be true or false, not {self.scale_rewards!r}")
        if self.bf16 is not None and not isinstance(self.bf16, bool):
            problems.append(f"bf16 must be true, false or null, not {self.bf16!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], not {self.top_p!r}")
        penalty = self.missing_eos_penalty
        if penalty is not None and not (isinstance(penalty, (int, float)) and math.isfinite(penalty)):
            problems.append(f"missing_eos_penalty must be a number or null, not {self.missing_eos_penalty!r}")
        if not problems:
            replies = self.prompts_per_step * self.num_samples
            if replies % self.minibatch_size:
                problems.append(
                    f"minibatch_size {self.minibatch_size} must divide the {replies} replies of a step "
                    f"(prompts_per_step {self.prompts_per_step} x num_samples {self.num_samples})"
                )
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def replies_per_step(self) -> int:
        return self.prompts_per_step * self.num_samples


def online_rl_defaults_for(device: torch.device) -> dict:
    """OnlineRLConfig sizes that suit the device; project and run settings override them.

    A CPU worker (the demo, small models) gets a short run: 8 prompts x 4 replies a step,
    32-token replies, one epoch in 2 minibatches of 16, 20 steps, which keeps a demo cycle
    within minutes on 2 cores (twice the replies of PPO's CPU step, with no value model to
    train). A GPU
    worker gets a usual GRPO / RLOO recipe: 32 prompts x 8 replies, 128-token replies, one
    epoch in 4 minibatches of 64, 200 steps.
    """
    if device.type == "cuda":
        return {
            "steps": 200, "prompts_per_step": 32, "num_samples": 8, "minibatch_size": 64, "epochs": 1, "max_new_tokens": 128,
            "max_prompt_tokens": 512,
        }
    return {"steps": 20, "prompts_per_step": 8, "num_samples": 4, "minibatch_size": 16, "epochs": 1, "max_new_tokens": 32, "max_prompt_tokens": 256}


# --------------------------------------------------------------------------- the equations


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Leave-one-out advantages of groups, rewards (G, k): A_i = R_i - mean_{j != i} R_j."""
    k = rewards.shape[-1]
    if k < 2:
        raise ValueError("RLOO needs at least 2 replies per prompt")
    others = (rewards.sum(-1, keepdim=True) - rewards) / (k - 1)
    return rewards - others


def grpo_advantages(rewards: torch.Tensor, eps: float = 1e-4, scale: bool = True) -> torch.Tensor:
    """Group-normalised advantages, rewards (G, k): (R_i - mean(R)) / (std(R) + eps), std the
    unbiased sample std of the group (divisor k - 1); without `scale`, R_i - mean(R)."""
    if rewards.shape[-1] < 2:
        raise ValueError("GRPO needs at least 2 replies per prompt")
    centred = rewards - rewards.mean(-1, keepdim=True)
    if not scale:
        return centred
    return centred / (rewards.std(-1, keepdim=True) + eps)


def group_advantages(rewards: torch.Tensor, config: OnlineRLConfig) -> torch.Tensor:
    """The configured algorithm's advantages of groups, rewards (G, k) -> (G, k)."""
    if config.algorithm == "rloo":
        return rloo_advantages(rewards)
    return grpo_advantages(rewards, config.std_eps, config.scale_rewards)


def sequence_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, config: OnlineRLConfig
) -> torch.Tensor:
    """The reward the advantages are built from, per reply. RLOO: score - beta * sum_t k1_t
    (at sampling time, no gradient); GRPO: the score (its KL is a loss term)."""
    if config.algorithm == "rloo":
        return scores - config.beta * (kl_k1(logprobs, ref_logprobs) * mask).sum(1)
    return scores.clone()


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_range: float,
    loss_type: str = "token", denominator: float | None = None, ref_logprobs: torch.Tensor | None = None, beta: float = 0.0,
) -> tuple[torch.Tensor, dict]:
    """The clipped surrogate of a minibatch (see the module docstring), plus GRPO's KL term
    when `ref_logprobs` and beta > 0 are given. Shapes: log-probs and mask (B, T), advantages (B,).

    sequence:      r_i = exp(sum_t log pi(y_it) - log pi_old(y_it)) (log ratio clamped to
                   +-20 against overflow); l_i = max(-A_i r_i, -A_i clip(r_i, 1-e, 1+e))
                   [+ beta sum_t k3_it]; loss = sum_i l_i / denominator (default B);
    token:         r_it = exp(log pi(y_it) - log pi_old(y_it)); l_it = max(-A_i r_it,
                   -A_i clip(r_it)) [+ beta k3_it]; loss = sum_it l_it / denominator (default:
                   the tokens);
    sequence_mean: l_it as token; loss = sum_i (sum_t l_it / |o_i|) / denominator (default B).

    Under torchrun a rank passes the minibatch's global count as `denominator`, so the sum
    of the ranks' losses is the one-process loss. Returns (loss, stats): sums without
    gradients over this rank's rows - "clipped" (clipped tokens, or replies for sequence),
    "clip_units" (tokens, or replies), "approx_kl" (sum_t 0.5 (log r_t)^2), "k3" (sum_t k3_t).
    """
    mask = mask.to(logprobs.dtype)
    token_log_ratio = (logprobs - old_logprobs) * mask
    kl = torch.zeros_like(logprobs) if ref_logprobs is None else kl_k3(logprobs, ref_logprobs) * mask
    with_kl = ref_logprobs is not None and beta != 0
    if loss_type == "sequence":
        ratio = token_log_ratio.sum(1).clamp(-20.0, 20.0).exp()
        unclipped = -advantages * ratio
        clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
        per_reply = torch.maximum(unclipped, clipped)
        if with_kl:
            per_reply = per_reply + beta * kl.sum(1)
        loss = per_reply.sum() / (logprobs.shape[0] if denominator is None else denominator)
        clipped_count, units = (clipped > unclipped).float().sum(), float(logprobs.shape[0])
    elif loss_type in ("token", "sequence_mean"):
        ratio = token_log_ratio.exp()
        advantage = advantages.unsqueeze(-1)
        unclipped = -advantage * ratio
        clipped = -advantage * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
        per_token = torch.maximum(unclipped, clipped)
        if with_kl:
            per_token = per_token + beta * kl
        if loss_type == "token":
            total = (per_token * mask).sum()
            loss = total / (mask.sum().clamp(min=1) if denominator is None else denominator)
        else:
            total = ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).sum()
            loss = total / (logprobs.shape[0] if denominator is None else denominator)
        clipped_count, units = ((clipped > unclipped).float() * mask).sum(), mask.sum()
    else:
        raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, not {loss_type!r}")
    with torch.no_grad():
        stats = {
            "clipped": clipped_count.detach(),
            "clip_units": torch.as_tensor(units, dtype=torch.float32, device=logprobs.device),
            "approx_kl": (0.5 * token_log_ratio.detach() ** 2).sum(),
            "k3": kl.detach().sum(),
        }
    return loss, stats


def sample_generator(seed: int, step: int, prompt_row: int, sample: int, device: torch.device) -> torch.Generator:
    """The sampling generator of reply `sample` to the step's prompt row: the same for any number of processes."""
    generator = torch.Generator(device=device)
    generator.manual_seed(random.Random(f"online-rl-sample-{seed}-{step}-{prompt_row}-{sample}").getrandbits(63))
    return generator


# --------------------------------------------------------------------------- shared prompts


def _prompt_pass(model, query: torch.Tensor, query_mask: torch.Tensor):
    """One pass over left-padded prompts without their all-padding columns: (the logits of
    the last position (G, V), the KV cache, the trimmed mask)."""
    width = int(query_mask.sum(1).max())
    query, query_mask = query[:, -width:], query_mask[:, -width:]
    out = model(input_ids=query, attention_mask=query_mask, position_ids=position_ids(query_mask), use_cache=True, logits_to_keep=1)
    return out.logits[:, -1], out.past_key_values, query_mask


def group_forward(model, query, query_mask, prompt_index, response, response_mask, temperature: float):
    """(per-token log-probs (R, T), logits (R, T, V)) of R replies, reply r answering prompt
    query[prompt_index[r]], with each distinct prompt run once: the prompts' pass fills a KV
    cache, which is indexed out to the replies (differentiably, so gradients reach the
    prompt positions once per prompt), and the replies run on it. With k replies per prompt
    the prompt's share of the work drops k-fold. Equal to generation.forward_response on
    the expanded rows up to float rounding; that is what runs instead under gradient
    checkpointing (no cache in training) or for a model whose cache cannot be indexed."""
    if gradient_checkpointing_on(model):
        return forward_response(model, query[prompt_index], query_mask[prompt_index], response, response_mask, temperature)
    unique, inverse = torch.unique(prompt_index, return_inverse=True)
    first, cache, prompt_mask = _prompt_pass(model, query[unique], query_mask[unique])
    if not hasattr(cache, "batch_select_indices"):
        return forward_response(model, query[prompt_index], query_mask[prompt_index], response, response_mask, temperature)
    logits = first[inverse].unsqueeze(1)  # the prompt's last position predicts the first reply token
    if response.shape[1] > 1:
        cache.batch_select_indices(inverse)
        mask = torch.cat([prompt_mask[inverse], response_mask[:, :-1]], 1)
        rest = model(
            input_ids=response[:, :-1], attention_mask=mask, position_ids=position_ids(mask)[:, prompt_mask.shape[1] :],
            past_key_values=cache, use_cache=True,
        ).logits
        logits = torch.cat([logits, rest], 1)
    return logprobs_from_logits(logits, response, temperature), logits


@torch.no_grad()
def sample_groups(
    model, query: torch.Tensor, query_mask: torch.Tensor, k: int, *, temperature: float, top_p: float, max_new_tokens: int,
    eos_token_id: int, pad_token_id: int, generators: list[torch.Generator],
) -> torch.Tensor:
    """(G * k, T) sampled replies, k to each of the G prompts (rows g*k .. g*k + k - 1), reply
    i drawing from generators[i]: sampling.decode (the loop of
    sampling.sample_with_generators), with each prompt's prefill run once and its cache
    repeated k times. A reply depends only on its prompt and its generator, not on
    the batch around it (up to float rounding)."""
    logits, cache, mask = _prompt_pass(model, query, query_mask)
    if hasattr(cache, "batch_repeat_interleave"):
        cache.batch_repeat_interleave(k)
    else:  # a cache that cannot be repeated: prefill every reply's prompt
        query, query_mask = query.repeat_interleave(k, 0), query_mask.repeat_interleave(k, 0)
        logits, cache, mask = _prompt_pass(model, query, query_mask)
        k = 1
    return decode(
        model, logits.repeat_interleave(k, 0), cache, mask.repeat_interleave(k, 0), temperature=temperature, top_p=top_p,
        max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, pad_token_id=pad_token_id, generators=generators,
    )


# --------------------------------------------------------------------------- the trainer


@dataclass
class GroupRollout:
    """This rank's groups of one step: `groups` their global prompt rows, `rows` the global
    reply rows (g * k + j), in the order of the tensors (group by group)."""

    prompts: list[list[dict]]  # per reply
    groups: list[int]
    rows: list[int]
    query: torch.Tensor  # this rank's prompts, one row per group, left-padded
    query_mask: torch.Tensor
    prompt_index: torch.Tensor  # per reply: its row of `query`
    response: torch.Tensor
    mask: torch.Tensor  # float
    logprobs: torch.Tensor  # sampling-time policy, zero on padding
    ref_logprobs: torch.Tensor
    scores: torch.Tensor
    has_eos: torch.Tensor
    rewards: torch.Tensor  # R, the advantages' input
    advantages: torch.Tensor
    generation_seconds: float = 0.0


class OnlineRLTrainer:
    """RLOO or GRPO (config.algorithm) on `policy` against `reward_fn` (see the module docstring)."""

    def __init__(
        self,
        policy,
        ref_policy,
        tokenizer,
        reward_fn: RewardFn,
        prompts: list[list[dict]],
        config: OnlineRLConfig,
        hooks: TrainerHooks = NO_HOOKS,
    ):
        if not prompts:
            raise ValueError(f"{config.algorithm.upper()} needs at least one prompt")
        if ref_policy is None and not has_adapters(policy):
            raise ValueError(f"without LoRA adapters on the policy, {config.algorithm.upper()} needs a separate reference policy")
        self.rank, self.world = distributed.rank_and_world()
        if config.prompts_per_step < self.world:
            raise ValueError(
                f"prompts_per_step {config.prompts_per_step} is smaller than the {self.world} processes (whole groups go to one process)"
            )
        self.policy, self.ref_policy = policy, ref_policy
        self.tokenizer, self.reward_fn, self.prompts, self.config, self.hooks = tokenizer, reward_fn, prompts, config, hooks
        self.device = model_device(policy)
        self.bf16 = use_bf16(self.device, config.bf16)
        prepare_for_training([policy], ref_policy)
        torch.manual_seed(config.seed)
        self.prompt_rng = random.Random(config.seed)
        self.update_rng = torch.Generator().manual_seed(config.seed)
        self.optimizer = adamw(policy.parameters(), config.lr, config.adam_eps)
        self._first_pass = None  # (local indices, new log-probs, logits) of the first update minibatch
        self.step_count = 0
        self.history: list[dict] = []

    # ----------------------------------------------------------------------- rollout

    def _prompt_batch(self) -> tuple[list[int], list[list[dict]]]:
        """This rank's groups of the step's global prompt batch: (global prompt rows, prompts)."""
        batch = [self.prompts[self.prompt_rng.randrange(len(self.prompts))] for _ in range(self.config.prompts_per_step)]
        groups = list(range(self.rank, len(batch), self.world))
        return groups, [batch[g] for g in groups]

    @torch.no_grad()
    def rollout(self, first_minibatch: list[int] | None = None) -> GroupRollout:
        """Sample, score and compute advantages for this rank's groups. `first_minibatch`
        (global reply rows, in the order of the first update minibatch): this rank's rows of
        it get their policy forward with gradients, kept for that minibatch to reuse."""
        config, tokenizer, device, k = self.config, self.tokenizer, self.device, self.config.num_samples
        groups, group_prompts = self._prompt_batch()
        rows = [g * k + j for g in groups for j in range(k)]
        prompts = [messages for messages in group_prompts for _ in range(k)]
        room = prompt_room(position_limit(self.policy), config.max_prompt_tokens, config.max_new_tokens)  # prompt + reply fit the positions
        queries = [tokenize_prompt(tokenizer, messages, room) for messages in group_prompts]
        query, query_mask = pad_left(queries, tokenizer.pad_token_id, device)
        prompt_index = torch.arange(len(groups), device=device).repeat_interleave(k)
        generators = [sample_generator(config.seed, self.step_count, g, j, device) for g in groups for j in range(k)]
        self.policy.eval()
        started = time.perf_counter()
        with autocast(device, self.bf16):
            sampled = sample_groups(
                self.policy, query, query_mask, k, temperature=config.temperature, top_p=config.top_p, max_new_tokens=config.max_new_tokens,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, generators=generators,
            )
        response, mask, has_eos = truncate_after_eos(sampled, tokenizer.eos_token_id, tokenizer.pad_token_id)
        generation_seconds = time.perf_counter() - started
        local_index = {row: i for i, row in enumerate(rows)}
        keep = [local_index[row] for row in (first_minibatch or []) if row in local_index]
        replies = (query, query_mask, prompt_index, response, mask)
        with autocast(device, self.bf16):
            logprobs = self._policy_logprobs(replies, keep)
            ref_logprobs = self._chunked(self._reference_logprobs, replies, list(range(len(rows))))
        scores = self.reward_fn(prompts, decode_responses(tokenizer, response, mask))
        scores = torch.as_tensor(scores).float().to(device).reshape(-1)
        if scores.shape[0] != len(rows):
            raise ValueError(f"the reward function returned {scores.shape[0]} scores for {len(rows)} replies")
        if config.missing_eos_penalty is not None:
            scores = torch.where(has_eos, scores, torch.full_like(scores, config.missing_eos_penalty))
        maskf = mask.float()
        logprobs, ref_logprobs = logprobs.float() * maskf, ref_logprobs.float() * maskf
        rewards = sequence_rewards(scores, logprobs, ref_logprobs, maskf, config)
        advantages = group_advantages(rewards.view(-1, k), config).reshape(-1)
        return GroupRollout(
            prompts, groups, rows, query, query_mask, prompt_index, response, maskf, logprobs, ref_logprobs, scores, has_eos, rewards,
            advantages, generation_seconds,
        )

    def _forward(self, model, replies: tuple, rows: list[int]):
        """(log-probs, logits) of this rank's replies `rows` (local indices) under `model`, each prompt run once (group_forward)."""
        query, query_mask, prompt_index, response, mask = replies
        idx = torch.tensor(rows, device=response.device)
        return group_forward(model, query, query_mask, prompt_index[idx], response[idx], mask[idx].long(), self.config.temperature)

    def _chunked(self, forward, replies: tuple, rows: list[int]) -> torch.Tensor:
        """forward(replies, rows) -> (len(rows), T), in chunks of minibatch_size rows."""
        size = self.config.minibatch_size
        response = replies[3]
        parts = [forward(replies, rows[start : start + size]) for start in range(0, len(rows), size)]
        return torch.cat(parts) if parts else torch.empty(0, response.shape[1], device=response.device)

    def _reference_logprobs(self, replies: tuple, rows: list[int]) -> torch.Tensor:
        """Log-probs under the reference: its own model, or the policy with its adapters off."""
        if self.ref_policy is not None:
            return self._forward(self.ref_policy, replies, rows)[0]
        with adapters_disabled(self.policy):
            return self._forward(self.policy, replies, rows)[0]

    def _old_logprobs(self, replies: tuple, rows: list[int]) -> torch.Tensor:
        return self._forward(self.policy, replies, rows)[0]

    def _policy_logprobs(self, replies: tuple, keep: list[int]) -> torch.Tensor:
        """Sampling-time log-probs of every row; rows `keep` with gradients (see rollout)."""
        self._first_pass = None
        response = replies[3]
        if not keep:
            return self._chunked(self._old_logprobs, replies, list(range(response.shape[0])))
        with torch.enable_grad():
            new_logprobs, logits = self._forward(self.policy, replies, keep)
        self._first_pass = (keep, new_logprobs, logits)
        logprobs = torch.empty(response.shape, dtype=new_logprobs.dtype, device=response.device)
        logprobs[torch.tensor(keep, device=response.device)] = new_logprobs.detach()
        kept = set(keep)
        rest = [i for i in range(response.shape[0]) if i not in kept]
        if rest:
            logprobs[torch.tensor(rest, device=response.device)] = self._chunked(self._old_logprobs, replies, rest).to(logprobs.dtype)
        return logprobs

    # ----------------------------------------------------------------------- update

    def _global_row_tokens(self, rollout: GroupRollout) -> torch.Tensor:
        """Reply tokens of every global row (each rank fills its own rows, then a sum)."""
        tokens = torch.zeros(self.config.replies_per_step, dtype=torch.float64)
        tokens[rollout.rows] = rollout.mask.sum(1).double().cpu()
        return distributed.all_reduce_sum(tokens)

    def _sum(self, *values) -> list[float]:
        """Sums over ranks of scalars, in one collective, as floats."""
        stacked = torch.stack([torch.as_tensor(v).detach().double().reshape(()).cpu() for v in values])
        return distributed.all_reduce_sum(stacked).tolist()

    def step(self) -> dict:
        config = self.config
        self.hooks.check_cancelled()
        started = time.perf_counter()
        n_replies = config.replies_per_step
        # update_rng serves only these permutations, so drawing them first changes nothing. Whole
        # groups are shuffled, so that a minibatch of a multiple of k replies is whole groups
        # (each prompt then runs once per minibatch, and its advantages sum to zero)
        k = config.num_samples
        orders = [
            [g * k + j for g in torch.randperm(config.prompts_per_step, generator=self.update_rng).tolist() for j in range(k)]
            for _ in range(config.epochs)
        ]
        rollout = self.rollout(orders[0][: config.minibatch_size])
        replies = (rollout.query, rollout.query_mask, rollout.prompt_index, rollout.response, rollout.mask)
        rollout_seconds = time.perf_counter() - started
        row_tokens = self._global_row_tokens(rollout)
        local_index = {row: i for i, row in enumerate(rollout.rows)}
        grpo_kl = config.algorithm == "grpo" and config.beta > 0

        self.policy.train()
        keys = ("policy_loss", "clipped", "clip_units", "approx_kl", "k3", "entropy", "tokens")
        totals = torch.zeros(len(keys), dtype=torch.float64, device=self.device)
        n_minibatches = 0
        for epoch, order in enumerate(orders):
            for start in range(0, n_replies, config.minibatch_size):
                minibatch = order[start : start + config.minibatch_size]
                denominator = float(row_tokens[minibatch].sum().clamp(min=1)) if config.loss_type == "token" else float(len(minibatch))
                mine = [local_index[row] for row in minibatch if row in local_index]
                self.optimizer.zero_grad(set_to_none=True)
                if mine:
                    idx = torch.tensor(mine, device=self.device)
                    mask = rollout.mask[idx]
                    first_pass = self._first_pass if epoch == 0 and start == 0 else None
                    if first_pass is not None and first_pass[0] == mine:  # computed in the rollout at these parameters
                        new_logprobs, logits = first_pass[1:]
                        self._first_pass = None
                    else:
                        with autocast(self.device, self.bf16):
                            new_logprobs, logits = self._forward(self.policy, replies, mine)
                    loss, stats = policy_loss(
                        new_logprobs.float(), rollout.logprobs[idx], rollout.advantages[idx], mask, config.clip_range, config.loss_type,
                        denominator, rollout.ref_logprobs[idx], config.beta if grpo_kl else 0.0,
                    )
                    loss.backward()
                    with torch.no_grad():
                        entropy = (entropy_from_logits(logits, config.temperature) * mask).sum()
                        totals += torch.stack([
                            loss.detach(), stats["clipped"], stats["clip_units"], stats["approx_kl"], stats["k3"], entropy, mask.sum(),
                        ]).double().to(self.device)
                    del loss, logits, new_logprobs
                distributed.all_reduce_gradients(self.policy)
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), config.max_grad_norm)
                self.optimizer.step()
                n_minibatches += 1
        self._first_pass = None
        sums = dict(zip(keys, distributed.all_reduce_sum(totals.cpu()).tolist()))
        tokens = max(sums["tokens"], 1.0)
        update = {
            "policy_loss": sums["policy_loss"] / max(n_minibatches, 1),  # mean over the step's minibatches
            "clipfrac": sums["clipped"] / max(sums["clip_units"], 1.0),  # of tokens (replies for loss_type sequence)
            "approx_kl": sums["approx_kl"] / tokens,  # per token, current policy vs sampling policy
            "kl_k3_per_token": sums["k3"] / tokens,  # current policy vs reference, during the updates
            "entropy": sums["entropy"] / tokens,
        }

        self.step_count += 1
        metrics = {**self._rollout_metrics(rollout), **update}
        step_seconds = time.perf_counter() - started
        metrics.update({
            "lr": self.optimizer.param_groups[0]["lr"],
            "step_seconds": step_seconds,
            "rollout_seconds": rollout_seconds,
        })
        metrics = {k: (v if not (isinstance(v, float) and math.isnan(v)) else None) for k, v in metrics.items()}
        self.history.append({"step": self.step_count, **metrics})
        self.hooks.report(self.step_count, config.steps, metrics)
        return metrics

    def _rollout_metrics(self, rollout: GroupRollout) -> dict:
        """Per-step statistics of the whole (global) batch of replies, from sums over ranks."""
        mask, k = rollout.mask, self.config.num_samples
        k1 = (rollout.logprobs - rollout.ref_logprobs).sum(1)
        k3 = (kl_k3(rollout.logprobs, rollout.ref_logprobs) * mask).sum(1)
        grouped = rollout.scores.view(-1, k)
        group_std = grouped.std(-1)
        flat_groups = (grouped.max(-1).values == grouped.min(-1).values).float().sum()
        (
            n, groups, score_sum, score_sq, reward_sum, adv_sum, adv_sq, adv_abs, k1_sum, k3_sum, tokens, eos, gen_seconds,
            group_std_sum, zero_std,
        ) = self._sum(
            float(len(rollout.rows)), float(len(rollout.groups)), rollout.scores.sum(), (rollout.scores**2).sum(), rollout.rewards.sum(),
            rollout.advantages.sum(), (rollout.advantages**2).sum(), rollout.advantages.abs().sum(), k1.sum(), k3.sum(), mask.sum(),
            rollout.has_eos.float().sum(), rollout.generation_seconds, group_std.sum(), flat_groups,
        )

        def std(total: float, squares: float) -> float:
            return math.sqrt(max((squares - total**2 / n) / (n - 1), 0.0)) if n > 1 else 0.0

        return {
            "reward_mean": score_sum / n,
            "reward_std": std(score_sum, score_sq),
            "group_reward_std": group_std_sum / groups,  # mean over groups of the scores' std within a group
            "zero_std_groups": zero_std / groups,  # groups whose replies all scored the same: no signal
            "rlhf_reward_mean": reward_sum / n,  # R: RLOO score - beta * KL; GRPO the score
            "advantage_mean": adv_sum / n,
            "advantage_std": std(adv_sum, adv_sq),
            "advantage_abs_mean": adv_abs / n,
            "kl": k1_sum / n,  # k1 summed over a reply's tokens, mean over replies, at sampling time
            "kl_k3": k3_sum / n,
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
            "optimizer": self.optimizer.state_dict(),
            "step": self.step_count,
            "history": self.history,
            "torch_rng": torch.get_rng_state(),
            "update_rng": self.update_rng.get_state(),
            "prompt_rng": self.prompt_rng.getstate(),
            "config": asdict(self.config),
        }

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_count = state["step"]
        self.history = list(state["history"])
        torch.set_rng_state(state["torch_rng"])
        self.update_rng.set_state(state["update_rng"])
        self.prompt_rng.setstate(state["prompt_rng"])
