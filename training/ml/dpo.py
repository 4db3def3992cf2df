"""Direct Preference Optimisation (Rafailov et al., 2023): the policy learns from preference
pairs directly, with no reward model and no sampling.

The loss. With h = (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x)), the
difference of the two replies' log-ratios (log-probs summed over the reply's tokens):

  sigmoid  -log sigmoid(beta * h - m)                                          (DPO)
           with label smoothing eps: (1 - eps) * -log sigmoid(beta*h - m) + eps * -log sigmoid(-(beta*h - m))
           (conservative DPO, Mitchell 2023: the label is taken to be wrong with probability eps)
  ipo      (h' - (1/2 + m) / beta)^2                                            (IPO, Azar et al., 2023)
           where h' is h with each reply's log-ratio divided by its token count (the average
           per-token log-ratio), as TRL 1.16's DPOTrainer computes it and as the IPO authors
           confirmed their results were obtained; `length_normalized=False` uses the sums.

m is the pair's margin (0 unless `use_margin`): an offset that the chosen reply's implicit
reward has to beat the rejected one's by, like the reward model's Bradley-Terry margin and
"DPO with an offset" (Amini et al., 2024). For IPO it moves the regression target by m / beta
(the target of beta * h' is 1/2 + m). Margins come from data.build_examples(use_margin=True)
(strength * margin_scale); with use_margin=False they are ignored.

The implicit reward of a reply is beta * (log pi(y|x) - log ref(y|x)), the sum over tokens for
every loss type (as TRL reports it); `rewards/accuracy` is the share of pairs whose chosen reply
has the higher implicit reward, and `evaluate` measures it on held-out pairs.

The data. One PreferenceExample (one judgement) is one batch element with all of its replies
and pairs: a K-way ranking gives K(K-1)/2 pairs (every better/worse pair of its ranking) whose
losses are AVERAGED, so a ranking weighs as much as one A/B judgement and does not dominate
the step (InstructGPT, and the reward model's choice in reward.py / data.py). Ties carry no
preference and are left out; an example with no pair is dropped. The step loss is the mean
over the step's examples; `batch_size` counts examples (= pairs for A/B data).

Log-probs. A reply's log-prob is the sum of log p(token | prompt, earlier reply tokens) over
its tokens, which end with EOS (text.tokenize_reply, the generation / PPO convention); the
prompt is text.tokenize_prompt's. The prompt's keys and values do not depend on the replies
that follow it, so every prompt of a batch runs ONCE for all its replies (chosen, rejected,
the rest of a ranking; identical prompts of several judgements are merged too), and a step
costs prompt + chosen + rejected tokens, not 2 x prompt + chosen + rejected. Three layouts
(reply_logprobs, default_layout):

  packed        one row per prompt: [padding | prompt | reply 1 | reply 2 | ...], with a block
                attention mask (a token sees its prompt and the earlier tokens of its own
                reply, never another reply) and positions that restart after the prompt for
                each reply. One forward, no padding inside a row, rows left-padded to the
                longest, and no copy of any cache. GPT-2, Llama, Mistral, Qwen and the like
                with sdpa (boolean mask) or eager (additive mask) attention; the default.
  shared        the prompts run once with a KV cache, copied to each reply (as
                RewardModel.score does): other decoder-only models, not while a model with
                gradient checkpointing trains (a checkpointed forward cannot fill a cache).
  concatenated  prompt + reply per reply: anything else.

The LM head and the softmax run only at the positions that predict a reply token, gathered
without padding: for the plain architectures (GPT-2, Llama, Qwen, ...) through the model's
backbone and its output embedding on those positions only, for others through the model's
own logits (`logits_to_keep`). The last transformer block runs only on the columns that are
read (tail.last_layer_tail, GPT-2). All layouts give the log-probs and gradients of one plain
forward over prompt + reply, up to float rounding (tests/ml/test_dpo.py).

The reference. Its log-probs are computed ONCE, before the first update, for every training
reply (and for `eval_examples`), with the same layout in eval mode, and kept (a float per
reply): no reference forward runs during training and no second copy of the weights is held.
The reference is, in this order: `ref_policy` when given; the policy with its LoRA adapters
off (adapters.adapters_disabled) when it has adapters; otherwise the policy itself before
its first update (the starting policy). Under torchrun each rank computes an interleaved
share and the shares are gathered.

The trainer. AdamW (fused where torch has it), linear warmup then cosine decay, gradient
clipping, dropout off, optional gradient accumulation, fixed data order from the seed (each
epoch shuffled, then grouped by length within windows to cut padding). Under torchrun every
rank takes an interleaved share of each step's examples, divides its loss by the global
example count and the gradients are summed across ranks, so N processes make the update one
process makes; every metric is a sum over ranks.

Early stopping (optional, `early_stopping_fraction` > 0, off by default): as reward.py does it, a
share of the training prompts is set aside (when there are at least `early_stopping_min_examples`
training examples), its DPO loss is measured `early_stopping_evals_per_epoch` times an epoch
(reference log-probs computed with the others), a checkpoint counts as over-fitted only when its
per-example losses are worse than the lowest-loss checkpoint's by more than
`worse_by_standard_errors` paired standard errors, training stops after `patience` such checks in
a row, and the run ends with the trainable weights of the latest checkpoint that was not clearly
worse. Off by default because on 798 HH-RLHF judgements with the default policy its 80 pairs
could not tell over-fitting from noise: the loss went 0.69 -> 0.76 while the training accuracy
reached 1.0, never 2 standard errors above its lowest, and the run lost a tenth of its data.

Metrics per step (trainer.history, hooks.report): loss, rewards/chosen, rewards/rejected
(implicit rewards), rewards/accuracy, rewards/margin (chosen minus rejected), all weighted
like the loss; logps/chosen, logps/rejected; kl, the mean over the step's replies (chosen and
rejected, each reply of an example once) of log pi(y|x) - log ref(y|x) summed over the reply:
the log-ratio on the preference data's replies, an off-policy stand-in for the sequence KL
(the policy's own samples are never drawn); lr, grad_norm, epoch, pairs_per_second,
tokens_per_second, step_seconds.

Devices: the trainer runs where the policy's parameters are (device.model_device); bf16=None
turns bfloat16 autocast on for CUDA GPUs that support it; weights, optimiser state and the
loss arithmetic stay float32 and the CPU path stays float32.

Speed (bench/dpo_bench.py, against TRL 1.16's DPOTrainer on the same model, tokenizer, pairs
and settings): about 3x TRL's pairs per second at the same held-out implicit-reward accuracy on
a 4-layer GPT-2 on CPU, from the one reference pass, each prompt run once for all its replies,
and the packed rows (about 1/3 of the tokens TRL computes).

Learning rate: the default is TRL's (1e-6), made for pretrained policies; a small policy
trained from scratch (the built-in default) needs about 1e-4 to 1e-3 to move in a few hundred steps.

Resume: state_dict() holds the policy, optimiser, scheduler, step (which fixes the position
in the data order), history, reference log-probs and RNG states; a fresh trainer that loads
it continues exactly as the original would have (tested bit for bit on CPU).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F

from . import distributed
from .adapters import adapters_disabled, gradient_checkpointing_on, has_adapters, unwrap
from .checkpoint import prepare_for_training, save_state_atomically
from .data import PreferenceExample, step_batches
from .device import autocast, model_device, use_bf16
from .generation import accepts_logits_to_keep, position_ids
from .hooks import NO_HOOKS, TrainerHooks
from .losses import warmup_cosine
from .reward import clearly_worse, early_stopping_split
from .reward_model import DECODER_ONLY_TYPES
from .tail import last_layer_tail
from .text import fit_example, position_limit, tokenize_prompt, tokenize_reply

LOSS_TYPES = ("sigmoid", "ipo")


@dataclass
class DPOConfig:
    beta: float = 0.1  # strength of the implicit KL constraint (IPO's tau)
    loss_type: str = "sigmoid"  # "sigmoid" (DPO) or "ipo"
    label_smoothing: float = 0.0  # conservative DPO: probability that a label is flipped, in [0, 0.5); sigmoid only
    length_normalized: bool | None = None  # h from per-token average log-ratios; None: on for ipo (TRL), off for sigmoid
    use_margin: bool = False  # subtract each pair's margin (data.build_examples(use_margin=True)) inside the loss
    lr: float = 1e-6  # TRL's DPOConfig default (and the DPO paper's), for pretrained policies; small from-scratch models need ~1e-4
    weight_decay: float = 0.0
    adam_eps: float = 1e-8
    warmup_ratio: float = 0.1
    epochs: int = 1
    steps: int | None = None  # optimisation steps in all (cycling over epochs); None: epochs x steps per epoch
    batch_size: int = 8  # examples (judgements) per optimisation step, over all ranks
    grad_accum: int = 1  # micro-batches per step on each rank
    max_grad_norm: float = 1.0
    max_prompt_tokens: int = 384  # the most recent tokens are kept
    max_reply_tokens: int = 128  # including the EOS token
    group_by_length: bool = True  # sort within windows of 50 steps to cut padding
    ref_batch_size: int = 32  # examples per reference / evaluation forward
    bf16: bool | None = None  # bfloat16 autocast; None: on for CUDA GPUs that support it
    seed: int = 0
    # early stopping on a split of the TRAINING examples, judged with its noise, as reward.py does
    # (the caller's eval_examples stay untouched; train() only, see the module docstring). Off by
    # default: on 800 HH-RLHF pairs its ~80 pairs could not tell over-fitting from noise (see there)
    early_stopping_fraction: float = 0.0  # share of the training prompts held out; 0 = off (0.1: as the reward model)
    early_stopping_min_examples: int = 200  # fewer training examples than this: no split (too noisy to steer by)
    early_stopping_evals_per_epoch: int = 4
    patience: int = 4  # early-stopping evaluations in a row clearly worse than the lowest loss before training stops
    worse_by_standard_errors: float = 2.0  # "clearly worse": the paired mean loss difference in standard errors
    restore_best: bool = True  # end with the kept checkpoint: the latest one not clearly worse than the lowest loss

    def __post_init__(self) -> None:
        def number(name: str, low: float | None = None, high: float | None = None, *, low_open=False, high_open=False):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, not {value!r}")
            if low is not None and (value <= low if low_open else value < low):
                raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, not {value!r}")
            if high is not None and (value >= high if high_open else value > high):
                raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, not {value!r}")

        def integer(name: str, low: int, *, optional: bool = False):
            value = getattr(self, name)
            if optional and value is None:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}{' or None' if optional else ''}, not {value!r}")

        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, not {self.loss_type!r}")
        number("beta", 0.0, low_open=True)
        number("label_smoothing", 0.0, 0.5, high_open=True)
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ValueError("label_smoothing applies to the sigmoid loss only (IPO has no label noise term)")
        number("lr", 0.0, low_open=True)
        number("weight_decay", 0.0)
        number("adam_eps", 0.0, low_open=True)
        number("warmup_ratio", 0.0, 1.0, high_open=True)
        number("max_grad_norm", 0.0, low_open=True)
        number("early_stopping_fraction", 0.0, 1.0, high_open=True)
        number("worse_by_standard_errors", 0.0)
        for name in ("epochs", "batch_size", "grad_accum", "max_prompt_tokens", "max_reply_tokens", "ref_batch_size", "early_stopping_evals_per_epoch", "patience"):
            integer(name, 1)
        integer("early_stopping_min_examples", 0)
        integer("steps", 1, optional=True)
        integer("seed", 0)
        for name in ("length_normalized", "bf16"):
            if getattr(self, name) not in (None, True, False):
                raise ValueError(f"{name} must be true, false or null, not {getattr(self, name)!r}")
        for name in ("use_margin", "group_by_length", "restore_best"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, not {getattr(self, name)!r}")

    @property
    def normalize_lengths(self) -> bool:
        return self.loss_type == "ipo" if self.length_normalized is None else self.length_normalized

    @classmethod
    def from_dict(cls, values: dict | None) -> "DPOConfig":
        """From run settings; unknown keys are an error (a typo must not pass silently)."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown DPO settings: {', '.join(unknown)}")
        return cls(**values)


# --------------------------------------------------------------------------- the loss


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    margin: torch.Tensor | float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and the implicit rewards (chosen, rejected) of the pairs.

    Inputs are per-pair sequence log-probs (summed over the reply's tokens). With lengths
    given, h uses each reply's log-ratio divided by its length (the per-token average);
    the implicit rewards beta * (log pi - log ref) are sums either way. See the module
    docstring for the formulas."""
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    if chosen_lengths is not None and rejected_lengths is not None:
        h = chosen_ratio / chosen_lengths.clamp(min=1) - rejected_ratio / rejected_lengths.clamp(min=1)
    else:
        h = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        logits = beta * h - margin
        losses = F.softplus(-logits)  # -log sigmoid(logits), stable
        if label_smoothing:
            losses = (1 - label_smoothing) * losses + label_smoothing * F.softplus(logits)
    elif loss_type == "ipo":
        losses = (h - (0.5 + margin) / beta) ** 2
    else:
        raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, not {loss_type!r}")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


# --------------------------------------------------------------------------- log-probs of replies


# Architectures whose logits are exactly lm_head(base_model(...).last_hidden_state): the LM
# head can then run on the gathered reply positions only. Others go through model(...).logits.
PLAIN_HEAD_TYPES = {"gpt2", "gpt_neo", "gptj", "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "phi3", "smollm3", "olmo", "olmo2"}
_SCALING_KEYS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier", "lm_head_multiplier")


def _backbone_and_head(model):
    """(backbone, lm_head) where the logits are lm_head(backbone's last hidden state), else None."""
    inner = unwrap(model)
    config = getattr(inner, "config", None)
    if config is None or config.model_type not in PLAIN_HEAD_TYPES or any(getattr(config, k, None) not in (None, 1, 1.0) for k in _SCALING_KEYS):
        return None
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    backbone = getattr(inner, "base_model", None)
    if head is None or backbone is None or backbone is inner or getattr(head, "bias", None) is not None:
        return None
    return backbone, head


# Architectures whose attention takes a custom 4D mask (transformers' masking_utils returns it
# as-is) with sdpa or eager attention: prompt and replies can be packed into one row.
PACKED_TYPES = {"gpt2", "llama", "mistral", "qwen2", "qwen3", "phi3", "smollm3", "olmo2"}
LAYOUTS = ("packed", "shared", "concatenated")


def default_layout(model) -> str:
    """How reply_logprobs lays a batch out for this model (see the module docstring):
    "packed" (one row per prompt with all its replies, a block mask), "shared" (the prompt's
    KV cache copied to its replies; not while a checkpointing model trains), or
    "concatenated" (prompt + reply per reply)."""
    inner = unwrap(model)
    config = getattr(inner, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type in PACKED_TYPES and getattr(config, "_attn_implementation", None) in ("sdpa", "eager"):
        return "packed"
    if model_type in DECODER_ONLY_TYPES and not (model.training and gradient_checkpointing_on(model)):
        return "shared"
    return "concatenated"


@dataclass
class ReplyBatch:
    """The replies of a batch with their prompts, in two layouts (built on the CPU, then moved).

    Padded: unique prompts left-padded (P, Lp), replies right-padded (R, Lr); reply r answers
    prompt reply_prompt[r]. Packed: one left-padded row per unique prompt holding the prompt
    and then each of its replies, `segments` telling them apart (-1 padding, 0 prompt, k the
    k-th reply of the row) and `positions` restarting after the prompt for every reply; the
    (row, column) of the state that predicts each reply token, the token, and its reply."""

    prompt_ids: torch.Tensor  # (P, Lp)
    prompt_mask: torch.Tensor
    reply_ids: torch.Tensor  # (R, Lr)
    reply_mask: torch.Tensor
    reply_prompt: torch.Tensor  # (R,)
    packed_ids: torch.Tensor  # (P, W)
    positions: torch.Tensor  # (P, W)
    segments: torch.Tensor  # (P, W)
    predict_row: torch.Tensor  # (N,) over all reply tokens
    predict_col: torch.Tensor  # (N,)
    targets: torch.Tensor  # (N,)
    target_reply: torch.Tensor  # (N,)
    keep: int  # the last `keep` columns hold every predicting state

    @classmethod
    def build(cls, prompts: list[list[int]], replies: list[list[int]], reply_prompt: list[int], pad_id: int, device) -> "ReplyBatch":
        """Identical prompts (several judgements of one task) are run once."""
        unique: dict[tuple, int] = {}
        remap = [unique.setdefault(tuple(prompt), len(unique)) for prompt in prompts]
        prompts = [list(p) for p in unique]
        owner = [remap[p] for p in reply_prompt]
        lp, lr = max(len(p) for p in prompts), max(len(r) for r in replies)
        prompt_ids = torch.full((len(prompts), lp), pad_id, dtype=torch.long)
        prompt_mask = torch.zeros((len(prompts), lp), dtype=torch.long)
        for i, p in enumerate(prompts):
            prompt_ids[i, lp - len(p) :] = torch.tensor(p, dtype=torch.long)
            prompt_mask[i, lp - len(p) :] = 1
        reply_ids = torch.full((len(replies), lr), pad_id, dtype=torch.long)
        reply_mask = torch.zeros((len(replies), lr), dtype=torch.long)
        for i, r in enumerate(replies):
            reply_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            reply_mask[i, : len(r)] = 1

        members: list[list[int]] = [[] for _ in prompts]
        for r, p in enumerate(owner):
            members[p].append(r)
        reply_tokens = [sum(len(replies[r]) for r in rows) for rows in members]
        width = max(len(p) + n for p, n in zip(prompts, reply_tokens))
        ids, positions, segments = [], [], []
        predict_row, predict_col, targets, target_reply = [], [], [], []
        for row, (prompt, rows) in enumerate(zip(prompts, members)):
            pad = width - len(prompt) - reply_tokens[row]
            ids.append([pad_id] * pad + prompt)
            positions.append([0] * pad + list(range(len(prompt))))
            segments.append([-1] * pad + [0] * len(prompt))
            last = width - reply_tokens[row] - 1  # the prompt's last token predicts every reply's first
            for k, r in enumerate(rows, 1):
                tokens, column = replies[r], len(ids[row])
                ids[row].extend(tokens)
                positions[row].extend(range(len(prompt), len(prompt) + len(tokens)))
                segments[row].extend([k] * len(tokens))
                predict_col.extend([last] + list(range(column, column + len(tokens) - 1)))
                predict_row.extend([row] * len(tokens))
                targets.extend(tokens)
                target_reply.extend([r] * len(tokens))
        move = lambda values: torch.tensor(values, dtype=torch.long).to(device, non_blocking=True)  # noqa: E731
        return cls(
            *(t.to(device, non_blocking=True) for t in (prompt_ids, prompt_mask, reply_ids, reply_mask)), move(owner),
            move(ids), move(positions), move(segments), move(predict_row), move(predict_col), move(targets), move(target_reply),
            max(reply_tokens) + 1,
        )


def packed_attention_mask(segments: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(P, 1, W, W) mask of the packed layout: a token sees the earlier tokens of its own prompt
    and of its own reply, never another reply of the row; padding sees only itself (so no row
    of the softmax is empty). Boolean (True = attend) for sdpa, or additive in `dtype` (eager)."""
    width = segments.shape[1]
    query, key = segments.unsqueeze(2), segments.unsqueeze(1)
    causal = torch.ones(width, width, dtype=torch.bool, device=segments.device).tril()
    allowed = causal & (query >= 0) & (key >= 0) & ((key == 0) | (key == query))
    allowed |= torch.eye(width, dtype=torch.bool, device=segments.device)
    allowed = allowed.unsqueeze(1)
    if dtype is None:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=segments.device).masked_fill(~allowed, torch.finfo(dtype).min)


def _run(model, parts, keep: int | None, **inputs):
    """(states, cache): the backbone's hidden states (fast path) or the model's logits (keep:
    the last positions needed, for `logits_to_keep`)."""
    if parts is not None:
        out = parts[0](**inputs)
        return out.last_hidden_state, getattr(out, "past_key_values", None)
    if keep is not None and accepts_logits_to_keep(model):
        inputs["logits_to_keep"] = keep
    out = model(**inputs)
    return out.logits, getattr(out, "past_key_values", None)


def _token_logprobs(parts, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) from the predicting states (N, d) through the LM head, or from logits (N, V)."""
    logits = parts[1](states) if parts is not None else states
    if logits.dtype != torch.float64:  # float32 arithmetic for bf16 / float32 models; a float64 model keeps float64
        logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)


def reply_logprobs(model, batch: ReplyBatch, *, layout: str | None = None) -> torch.Tensor:
    """Summed log-probs (R,) of every reply given its prompt (float32; float64 for a float64
    model), with gradients when enabled. layout None: default_layout(model)."""
    layout = layout or default_layout(model)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    parts = _backbone_and_head(model)
    n_replies = batch.reply_ids.shape[0]
    if layout == "packed":
        implementation = getattr(unwrap(model).config, "_attn_implementation", "sdpa")
        mask = packed_attention_mask(batch.segments, None if implementation == "sdpa" else torch.float32)
        with last_layer_tail(model, batch.keep):  # the last block at the predicting columns only (tail.py)
            states, _ = _run(model, parts, batch.keep, input_ids=batch.packed_ids, attention_mask=mask, position_ids=batch.positions, use_cache=False)
        offset = batch.packed_ids.shape[1] - states.shape[1]  # logits_to_keep leaves the last `keep` columns
        token_logprobs = _token_logprobs(parts, states[batch.predict_row, batch.predict_col - offset], batch.targets)
        return torch.zeros(n_replies, dtype=token_logprobs.dtype, device=token_logprobs.device).index_add(0, batch.target_reply, token_logprobs)

    reply_ids, reply_mask, rp = batch.reply_ids, batch.reply_mask, batch.reply_prompt
    n_reply = reply_ids.shape[1]
    if layout == "shared":
        prompt_states, cache = _run(
            model, parts, 1, input_ids=batch.prompt_ids, attention_mask=batch.prompt_mask,
            position_ids=position_ids(batch.prompt_mask), use_cache=True,
        )
        cache.batch_select_indices(rp)  # one copy of its prompt's cache per reply
        prompt_lengths = batch.prompt_mask.sum(1)[rp]
        positions = prompt_lengths.unsqueeze(1) + torch.arange(n_reply, device=reply_ids.device).unsqueeze(0)
        mask = torch.cat([batch.prompt_mask[rp], reply_mask], 1)
        reply_states, _ = _run(
            model, parts, None, input_ids=reply_ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True,
        )
        # the state that predicts reply token 0 is the prompt's last (left padding: the last column)
        states = torch.cat([prompt_states[:, -1:][rp], reply_states[:, :-1]], 1)
    else:
        ids = torch.cat([batch.prompt_ids[rp], reply_ids], 1)
        mask = torch.cat([batch.prompt_mask[rp], reply_mask], 1)
        keep = n_reply + 1
        with last_layer_tail(model, keep):  # the last block at the read positions only (tail.py)
            out, _ = _run(model, parts, keep, input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False)
        states = out[:, -keep:-1]
    valid = reply_mask.bool()
    token_logprobs = _token_logprobs(parts, states[valid], reply_ids[valid])  # only the positions that predict a reply token
    rows = torch.arange(n_replies, device=reply_ids.device).unsqueeze(1).expand_as(reply_ids)[valid]
    return torch.zeros(n_replies, dtype=token_logprobs.dtype, device=token_logprobs.device).index_add(0, rows, token_logprobs)


# --------------------------------------------------------------------------- data


@dataclass
class DPOExample:
    """One judgement, tokenized: its prompt, replies, pairs (better, worse, margin) and the
    reference log-prob of every reply (filled in before training)."""

    prompt: list[int]
    replies: list[list[int]]
    pairs: list[tuple[int, int, float]]
    ref: list[float] | None = None

    @property
    def length(self) -> int:
        return len(self.prompt) + sum(len(r) for r in self.replies)


def tokenize_examples(examples: list[PreferenceExample], tokenizer, config: DPOConfig, limit: int | None = None) -> list[DPOExample]:
    """Examples with at least one pair (ties are left out); margins kept only with use_margin.
    `limit`: the policy's positions (text.position_limit), which the prompt and its longest
    reply are cut to fit (text.fit_example)."""
    out = []
    for e in examples:
        if not e.pairs:
            continue
        prompt, replies = fit_example(
            tokenize_prompt(tokenizer, e.messages, config.max_prompt_tokens),
            [tokenize_reply(tokenizer, reply, config.max_reply_tokens) for reply in e.replies],
            limit,
        )
        out.append(DPOExample(prompt=prompt, replies=replies, pairs=[(a, b, float(m) if config.use_margin else 0.0) for a, b, m in e.pairs]))
    return out


def collate(examples: list[DPOExample], pad_id: int, device) -> tuple[ReplyBatch, dict]:
    """The batch of all replies, and per pair (flat reply indices, margin, weight 1 / pairs of its example)."""
    prompts, replies, reply_prompt = [], [], []
    better, worse, margins, weights, pair_example = [], [], [], [], []
    for i, example in enumerate(examples):
        offset = len(replies)
        prompts.append(example.prompt)
        replies.extend(example.replies)
        reply_prompt.extend([i] * len(example.replies))
        for a, b, m in example.pairs:
            better.append(offset + a)
            worse.append(offset + b)
            margins.append(m)
            weights.append(1.0 / len(example.pairs))
            pair_example.append(i)
    batch = ReplyBatch.build(prompts, replies, reply_prompt, pad_id, device)
    ref = [x for e in examples for x in (e.ref or [math.nan] * len(e.replies))]
    pairs = {
        "better": torch.tensor(better, dtype=torch.long, device=device),
        "worse": torch.tensor(worse, dtype=torch.long, device=device),
        "margin": torch.tensor(margins, dtype=torch.float32, device=device),
        "weight": torch.tensor(weights, dtype=torch.float32, device=device),
        "example": torch.tensor(pair_example, dtype=torch.long, device=device),
        "ref": torch.tensor(ref, dtype=torch.float32, device=device),
        "lengths": torch.tensor([len(r) for r in replies], dtype=torch.float32, device=device),
        "n_pairs": len(better),
        "n_replies": len(replies),
        "tokens": sum(len(p) for p in {tuple(p): None for p in prompts}) + sum(len(r) for r in replies),
    }
    return batch, pairs


def pair_losses(logps: torch.Tensor, pairs: dict, config: DPOConfig):
    """dpo_loss on the pairs of a collated batch (reply log-probs `logps`, reference in pairs)."""
    ref = pairs["ref"]
    b, w = pairs["better"], pairs["worse"]
    lengths = pairs["lengths"]
    normalize = config.normalize_lengths
    return dpo_loss(
        logps[b], logps[w], ref[b], ref[w], config.beta, config.loss_type, config.label_smoothing, pairs["margin"],
        lengths[b] if normalize else None, lengths[w] if normalize else None,
    )


# --------------------------------------------------------------------------- the trainer


class DPOTrainer:
    """DPO on `train_examples` (data.PreferenceExample). `ref_policy`: a separate frozen
    reference; None = the policy with its adapters off, or the starting policy (see the module
    docstring). `eval_examples`: held-out examples whose reference log-probs are computed with
    the training ones (needed when the reference is the starting policy), for `evaluate()`."""

    def __init__(
        self,
        policy,
        tokenizer,
        train_examples: list[PreferenceExample],
        config: DPOConfig,
        *,
        ref_policy=None,
        eval_examples: list[PreferenceExample] | None = None,
        hooks: TrainerHooks = NO_HOOKS,
    ):
        self.rank, self.world = distributed.rank_and_world()
        self.policy, self.ref_policy, self.tokenizer, self.config, self.hooks = policy, ref_policy, tokenizer, config, hooks
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        fit_examples, es_examples = early_stopping_split(train_examples, config)
        self.limit = position_limit(policy)
        self.train_data = tokenize_examples(fit_examples, tokenizer, config, self.limit)
        self.es_data = tokenize_examples(es_examples, tokenizer, config, self.limit)
        self.eval_data = tokenize_examples(eval_examples or [], tokenizer, config, self.limit)
        if not self.train_data:
            raise ValueError("DPO needs at least one training example with a preference pair (ties and both-bad judgements carry none)")
        if config.batch_size < self.world:
            raise ValueError(f"batch_size {config.batch_size} is smaller than the {self.world} processes")
        self.device = model_device(policy)
        self.bf16 = use_bf16(self.device, config.bf16)
        prepare_for_training([policy], ref_policy)
        torch.manual_seed(config.seed)
        self.lengths = [e.length for e in self.train_data]
        per_step = config.batch_size * config.grad_accum
        self.steps_per_epoch = math.ceil(len(self.train_data) / per_step)
        self.total_steps = config.steps if config.steps is not None else config.epochs * self.steps_per_epoch
        warmup = max(1, int(self.total_steps * config.warmup_ratio))
        params = [p for p in policy.parameters() if p.requires_grad]
        fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, eps=config.adam_eps, fused=fused or None)
        total = self.total_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: warmup_cosine(s, total, warmup))
        self.step_count = 0
        self.history: list[dict] = []
        self.reference_ready = False
        self._epoch_cache: tuple[int, list[list[int]]] | None = None
        self.es_every = max(1, self.steps_per_epoch // config.early_stopping_evals_per_epoch)
        self.early_stopping = {
            "best": {"loss": math.inf, "step": 0, "accuracy": None},  # the checkpoint kept
            "lowest": {"loss": math.inf, "losses": []},  # the lowest early-stopping loss so far, per example
            "evals_since_best": 0,
            "stopped": False,
        }
        self.best_parameters: dict[str, torch.Tensor] | None = None  # the kept checkpoint's trainable weights (CPU)

    # ----------------------------------------------------------------------- reference

    def _reference_context(self):
        """(model, context manager) that computes reference log-probs."""
        if self.ref_policy is not None:
            return self.ref_policy, contextlib.nullcontext()
        if has_adapters(self.policy):
            return self.policy, adapters_disabled(self.policy)
        if self.step_count > 0:
            raise ValueError(
                "the reference is the starting policy, which has been updated: pass held-out examples as "
                "eval_examples when building the trainer (or give a ref_policy)"
            )
        return self.policy, contextlib.nullcontext()

    @torch.no_grad()
    def _fill_reference(self, examples: list[DPOExample]) -> None:
        """Reference log-probs of every reply of `examples` (this rank's share, then gathered)."""
        missing = [i for i, e in enumerate(examples) if e.ref is None]
        if not missing:
            return
        model, context = self._reference_context()
        was_training = model.training
        model.eval()
        mine = missing[self.rank :: self.world]
        mine.sort(key=lambda i: examples[i].length)
        found: dict[int, list[float]] = {}
        with context:
            for start in range(0, len(mine), self.config.ref_batch_size):
                chunk = mine[start : start + self.config.ref_batch_size]
                batch, _ = collate([examples[i] for i in chunk], self.pad_id, self.device)
                with autocast(self.device, self.bf16):
                    logps = reply_logprobs(model, batch).tolist()
                offset = 0
                for i in chunk:
                    n = len(examples[i].replies)
                    found[i] = logps[offset : offset + n]
                    offset += n
        for part in distributed.all_gather_objects(found):
            for i, values in part.items():
                examples[i].ref = values
        model.train(was_training)

    def compute_reference(self) -> None:
        """The reference log-probs of the training, early-stopping and eval examples (once, before the first update)."""
        if not self.reference_ready:
            self._fill_reference(self.train_data + self.es_data + self.eval_data)
            self.reference_ready = True

    # ----------------------------------------------------------------------- training

    def _step_indices(self, step: int) -> tuple[int, list[int]]:
        epoch, position = divmod(step, self.steps_per_epoch)
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            self._epoch_cache = (epoch, step_batches(len(self.train_data), self.config, epoch, self.lengths))
        return epoch, self._epoch_cache[1][position]

    def step(self) -> dict:
        """One optimisation step over the next batch of examples."""
        config = self.config
        self.hooks.check_cancelled()
        self.compute_reference()
        started = time.perf_counter()
        epoch, indices = self._step_indices(self.step_count)
        n_step = len(indices)
        mine = indices[self.rank :: self.world]
        micro = max(1, math.ceil(len(mine) / config.grad_accum))
        self.policy.train()
        self.optimizer.zero_grad(set_to_none=True)
        # loss, chosen reward, rejected reward, accuracy, margin, chosen logp, rejected logp (weighted like the loss),
        # kl sum, replies, pairs, tokens
        totals = torch.zeros(11, dtype=torch.float64, device=self.device)
        for start in range(0, len(mine), micro):
            chunk = [self.train_data[i] for i in mine[start : start + micro]]
            batch, pairs = collate(chunk, self.pad_id, self.device)
            with autocast(self.device, self.bf16):
                logps = reply_logprobs(self.policy, batch)
            losses, chosen, rejected = pair_losses(logps, pairs, config)
            weight = pairs["weight"] / n_step  # each example's pairs averaged, examples averaged over the global step
            loss = (losses * weight).sum()
            loss.backward()
            with torch.no_grad():
                lp = logps.detach()
                totals += torch.stack([
                    loss.detach(),
                    (chosen * weight).sum(),
                    (rejected * weight).sum(),
                    ((chosen > rejected).float() * weight).sum(),
                    ((chosen - rejected) * weight).sum(),
                    (lp[pairs["better"]] * weight).sum(),
                    (lp[pairs["worse"]] * weight).sum(),
                    (lp - pairs["ref"]).sum(),
                    torch.tensor(float(pairs["n_replies"]), device=self.device),
                    torch.tensor(float(pairs["n_pairs"]), device=self.device),
                    torch.tensor(float(pairs["tokens"]), device=self.device),
                ]).double()
        distributed.all_reduce_gradients(self.policy)
        grad_norm = torch.nn.utils.clip_grad_norm_([p for p in self.policy.parameters() if p.requires_grad], config.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.step_count += 1
        sums = distributed.all_reduce_sum(totals.cpu()).tolist()
        seconds = distributed.all_reduce_sum(torch.tensor([time.perf_counter() - started], dtype=torch.float64)).item() / self.world
        metrics = {
            "loss": sums[0],
            "rewards/chosen": sums[1],
            "rewards/rejected": sums[2],
            "rewards/accuracy": sums[3],
            "rewards/margin": sums[4],
            "logps/chosen": sums[5],
            "logps/rejected": sums[6],
            "kl": sums[7] / max(sums[8], 1),
            "lr": lr,
            "grad_norm": float(grad_norm),
            "epoch": epoch,
            "pairs": int(sums[9]),
            "pairs_per_second": sums[9] / max(seconds, 1e-9),
            "tokens_per_second": sums[10] / max(seconds, 1e-9),
            "step_seconds": seconds,
        }
        self.history.append({"step": self.step_count, **metrics})
        self.hooks.report(self.step_count, self.total_steps, metrics)
        return metrics

    def train(self, *, checkpoint_path=None, checkpoint_every: int = 0) -> dict:
        """Run the remaining steps, with early stopping when there is an early-stopping split;
        optionally write a resumable state every N steps (rank 0). Returns the last step's
        metrics, the early-stopping outcome, and evaluate() on the eval examples when there are any."""
        metrics: dict = {}
        self.compute_reference()
        while self.step_count < self.total_steps and not self.early_stopping["stopped"]:
            metrics = self.step()
            if self.es_data and (self.step_count % self.es_every == 0 or self.step_count == self.total_steps):
                metrics = {**metrics, **self._early_stopping_check()}
            if checkpoint_path and checkpoint_every and self.step_count % checkpoint_every == 0 and distributed.is_main_process():
                save_state_atomically(self.state_dict(), checkpoint_path)
        state, best = self.early_stopping, self.early_stopping["best"]
        restored = self.best_parameters is not None and best["step"] != self.step_count
        if restored:
            with torch.no_grad():
                for name, parameter in self.policy.named_parameters():
                    if name in self.best_parameters:
                        parameter.copy_(self.best_parameters[name])
        metrics = {
            **metrics,
            "steps_run": self.step_count,
            "early_stopping_examples": len(self.es_data),
            "es_loss": best["loss"] if self.es_data else None,
            "es_accuracy": best["accuracy"],
            "best_step": best["step"] if self.es_data else self.step_count,
            "stopped_early": state["stopped"],
            "restored_best": restored,
        }
        if self.eval_data:
            metrics = {**metrics, **{f"val_{k}": v for k, v in self.evaluate().items()}}
        return metrics

    def _early_stopping_check(self) -> dict:
        """Measure the early-stopping examples; keep this checkpoint unless it is clearly worse
        than the lowest loss so far (reward.clearly_worse); stop after `patience` clearly worse
        evaluations in a row. Every number is all-reduced, so every rank decides the same."""
        config, state = self.config, self.early_stopping
        es = self._measure(self.es_data, per_example=True)
        if es["loss"] < state["lowest"]["loss"]:
            state["lowest"] = {"loss": es["loss"], "losses": es["losses"]}
        if clearly_worse(es["losses"], state["lowest"]["losses"], config.worse_by_standard_errors):
            state["evals_since_best"] += 1
            state["stopped"] = state["evals_since_best"] >= config.patience
        else:  # the latest checkpoint that is not clearly worse than the lowest loss seen
            state["best"] = {"loss": es["loss"], "step": self.step_count, "accuracy": es["accuracy"]}
            state["evals_since_best"] = 0
            if config.restore_best:
                self.best_parameters = {
                    name: p.detach().to("cpu", copy=True) for name, p in self.policy.named_parameters() if p.requires_grad
                }
        found = {"es_loss": es["loss"], "es_accuracy": es["accuracy"], "es_best_step": state["best"]["step"]}
        self.history[-1].update(found)
        return found

    # ----------------------------------------------------------------------- evaluation

    @torch.no_grad()
    def evaluate(self, examples: list[PreferenceExample] | None = None) -> dict:
        """Held-out pairs: implicit-reward accuracy (chosen reward above rejected), loss, mean
        reward margin, pairs. None: the eval_examples given to the trainer. Other examples need
        a reference that still exists (ref_policy, adapters, or no update made yet)."""
        self.compute_reference()
        data = self.eval_data if examples is None else tokenize_examples(examples, self.tokenizer, self.config, self.limit)
        self._fill_reference(data)
        return self._measure(data)

    @torch.no_grad()
    def _measure(self, data: list[DPOExample], *, per_example: bool = False) -> dict:
        """evaluate() on tokenized examples with their reference log-probs; per_example: also
        "losses", every example's loss (the same order at every call and on every rank)."""
        was_training = self.policy.training
        self.policy.eval()
        sums = torch.zeros(5, dtype=torch.float64)  # loss (example mean), examples, correct pairs, margin sum, pairs
        own_losses: list[float] = []
        mine = data[self.rank :: self.world]
        for start in range(0, len(mine), self.config.ref_batch_size):
            chunk = mine[start : start + self.config.ref_batch_size]
            batch, pairs = collate(chunk, self.pad_id, self.device)
            with autocast(self.device, self.bf16):
                logps = reply_logprobs(self.policy, batch)
            losses, chosen, rejected = pair_losses(logps, pairs, self.config)
            weighted = losses * pairs["weight"]
            if per_example:  # an example's loss: its pairs' losses averaged (the weights sum to 1 per example)
                own_losses.extend(torch.zeros(len(chunk), dtype=weighted.dtype, device=weighted.device).index_add_(0, pairs["example"], weighted).tolist())
            sums += torch.tensor([
                float(weighted.sum()), len(chunk), float((chosen > rejected).sum()),
                float((chosen - rejected).sum()), pairs["n_pairs"],
            ], dtype=torch.float64)
        self.policy.train(was_training)
        sums = distributed.all_reduce_sum(sums).tolist()
        return {
            "loss": sums[0] / max(sums[1], 1),
            "accuracy": sums[2] / max(sums[4], 1),
            "margin": sums[3] / max(sums[4], 1),
            "pairs": int(sums[4]),
            **({"losses": [x for part in distributed.all_gather_objects(own_losses) for x in part]} if per_example else {}),
        }

    # ----------------------------------------------------------------------- resume

    def state_dict(self) -> dict:
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step_count,
            "history": self.history,
            "reference": {
                "train": [e.ref for e in self.train_data], "early_stopping": [e.ref for e in self.es_data],
                "eval": [e.ref for e in self.eval_data], "ready": self.reference_ready,
            },
            "early_stopping": {**self.early_stopping, "best_parameters": self.best_parameters},
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "python_rng": random.getstate(),
            "config": asdict(self.config),
        }

    def load_state_dict(self, state: dict) -> None:
        reference = state["reference"]
        if (len(reference["train"]), len(reference["early_stopping"]), len(reference["eval"])) != (len(self.train_data), len(self.es_data), len(self.eval_data)):
            raise ValueError("this state was saved by a trainer with other training or eval examples")
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step_count = state["step"]
        self.history = list(state["history"])
        for example, ref in zip(self.train_data, reference["train"]):
            example.ref = ref
        for example, ref in zip(self.eval_data, reference["eval"]):
            example.ref = ref
        for example, ref in zip(self.es_data, reference["early_stopping"]):
            example.ref = ref
        early_stopping = dict(state["early_stopping"])
        self.best_parameters = early_stopping.pop("best_parameters")
        self.early_stopping = early_stopping
        self.reference_ready = reference["ready"]
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        random.setstate(state["python_rng"])

