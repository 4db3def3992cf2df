"""Reward model: any transformers backbone (encoder or decoder) plus a scalar head.

The reward is read from the hidden state of the last real token of prompt + reply (the
end token), the head is initialised N(0, 1/sqrt(d+1)) (Stiennon et al.), and a stored
offset and scale turn raw scores into calibrated rewards (mean 0, std 1 on reference
replies). Saved with `save_pretrained` into one folder: the backbone's config and weights,
its tokenizer, `reward_head.safetensors` and `reward_model.json`.

Shared prefix. The replies compared for one prompt all start with the same prompt tokens.
For a decoder-only (causal) backbone the prompt's keys and values do not depend on what
follows, so `score` runs each prompt once, keeps its KV cache, and runs only the reply
tokens of every reply on top of a copy of that cache. Encoders attend both ways, so they
get prompt + reply concatenated. Both paths give the same rewards (tested).

Large backbones (adapters.py): `from_backbone(path, adapters=AdapterConfig(...))` puts LoRA
adapters and / or gradient checkpointing on the backbone; the head always trains fully.
A KV cache cannot be filled inside a checkpointed forward (the backward pass replays it),
so while the backbone checkpoints (train mode with gradient checkpointing on) the
concatenated path is used; scoring in eval mode keeps the shared prefix. `save_pretrained`
writes the backbone merged (a plain checkpoint) or adapter-only (plus its base folder's
path); `from_pretrained` reads both. Batches are moved to the model's device in `forward`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from .adapters import AdapterConfig, default_save_mode, gradient_checkpointing_on, prepare_model, save_model
from .checkpoint import fuse_gelu, load_backbone, write_atomically
from .device import model_device, to_device
from .generation import no_cache
from .text import position_limit, prompt_room, tokenize_prompt, tokenize_reply

# Backbones whose attention is causal, so a prompt's KV cache can be shared by its replies.
DECODER_ONLY_TYPES = {
    "gpt2", "gpt_neo", "gpt_neox", "gptj", "llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen2_moe",
    "phi", "phi3", "gemma", "gemma2", "gemma3_text", "opt", "bloom", "falcon", "olmo", "olmo2", "smollm3", "granite",
}
HEAD_FILE = "reward_head.safetensors"
META_FILE = "reward_model.json"


@dataclass
class RewardBatch:
    """Prompts once, replies flattened; reply r answers prompt `reply_prompt[r]`."""

    prompt_ids: torch.Tensor  # (P, Lp) right-padded
    prompt_mask: torch.Tensor
    reply_ids: torch.Tensor  # (R, Lr) right-padded
    reply_mask: torch.Tensor
    reply_prompt: torch.Tensor  # (R,)

    @classmethod
    def build(cls, prompts: list[list[int]], replies: list[list[int]], reply_prompt: list[int], pad_id: int) -> "RewardBatch":
        prompt_ids, prompt_mask = pad_right(prompts, pad_id)
        reply_ids, reply_mask = pad_right(replies, pad_id)
        return cls(prompt_ids, prompt_mask, reply_ids, reply_mask, torch.tensor(reply_prompt, dtype=torch.long))

    def concatenated(self, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(R, L) prompt + reply sequences, right-padded, on the batch's device: the encoder path."""
        prompts, replies = self.prompt_ids.tolist(), self.reply_ids.tolist()
        prompt_lengths, reply_lengths = self.prompt_mask.sum(1).tolist(), self.reply_mask.sum(1).tolist()
        sequences = [
            prompts[p][: prompt_lengths[p]] + replies[r][: reply_lengths[r]] for r, p in enumerate(self.reply_prompt.tolist())
        ]
        ids, mask = pad_right(sequences, pad_id)
        device = self.reply_ids.device
        return ids.to(device), mask.to(device)

    @property
    def tokens_concatenated(self) -> int:
        lengths = self.prompt_mask.sum(1)[self.reply_prompt] + self.reply_mask.sum(1)
        return int(lengths.sum())

    @property
    def tokens_shared(self) -> int:
        return int(self.prompt_mask.sum() + self.reply_mask.sum())


def pad_right(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


class RewardModel(nn.Module):
    def __init__(self, backbone, offset: float = 0.0, scale: float = 1.0, shared_prefix: bool | None = None):
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        self.head = nn.Linear(hidden, 1)
        nn.init.normal_(self.head.weight, std=1 / math.sqrt(hidden + 1))
        nn.init.zeros_(self.head.bias)
        self.register_buffer("offset", torch.tensor(float(offset)))
        self.register_buffer("scale", torch.tensor(float(scale)))
        causal = backbone.config.model_type in DECODER_ONLY_TYPES
        self.shared_prefix = causal if shared_prefix is None else (shared_prefix and causal)

    @property
    def shared_prefix(self) -> bool:
        """Whether forward shares each prompt's KV cache: as set, except while a checkpointing
        backbone trains (then prompt + reply are concatenated; same rewards)."""
        if self._shared_prefix and self.training and gradient_checkpointing_on(self.backbone):
            return False
        return self._shared_prefix

    @shared_prefix.setter
    def shared_prefix(self, value: bool) -> None:
        self._shared_prefix = bool(value)

    # ----------------------------------------------------------------------- loading

    @classmethod
    def from_backbone(cls, path: str | os.PathLike, *, adapters: AdapterConfig | None = None, **kwargs):
        """A new reward model on the backbone in `path` (a user's checkpoint folder or ours,
        full or adapter-only). `adapters`: LoRA and / or gradient checkpointing on the
        backbone (the head always trains fully); its `save` is the default save mode."""
        backbone, tokenizer = load_backbone(path)
        backbone = prepare_model(backbone, adapters, task="feature")
        return cls(backbone, **kwargs), tokenizer

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike):
        """A trained reward model saved by save_pretrained, merged or adapter-only (the
        adapters are merged into the backbone on loading)."""
        path = Path(path)
        meta = json.loads((path / META_FILE).read_text())
        backbone, tokenizer = load_backbone(path)
        model = cls(backbone, offset=meta["offset"], scale=meta["scale"])
        model.head.load_state_dict(load_file(path / HEAD_FILE))
        return model, tokenizer

    def save_pretrained(self, path: str | os.PathLike, tokenizer, extra: dict | None = None, *, mode: str | None = None) -> Path:
        """Backbone (mode "merged": a plain checkpoint; "adapter": adapter weights + base
        folder path; None: as chosen when the adapters were added, else merged), tokenizer,
        head, and offset / scale, written atomically."""
        mode = mode or default_save_mode(self.backbone)

        def write(tmp: Path) -> None:
            save_model(self.backbone, tmp, mode)
            tokenizer.save_pretrained(tmp)
            save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}, tmp / HEAD_FILE)
            meta = {
                "offset": float(self.offset), "scale": float(self.scale), "read_at": "last real token", "backbone": mode, **(extra or {})
            }
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2))

        return write_atomically(path, write)

    # ----------------------------------------------------------------------- scoring

    def forward(self, batch: RewardBatch, pad_id: int) -> torch.Tensor:
        """Raw rewards (R,) for every reply in the batch (moved to the model's device)."""
        batch = to_device(batch, self.head.weight.device)
        if self.shared_prefix:
            return self._score_shared_prefix(batch)
        ids, mask = batch.concatenated(pad_id)
        return self._score_sequences(ids, mask)

    def _score_sequences(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=ids, attention_mask=mask, **no_cache(self.backbone)).last_hidden_state
        last = mask.sum(1) - 1
        return self.head(hidden[torch.arange(ids.shape[0], device=ids.device), last]).squeeze(-1)

    def _score_shared_prefix(self, batch: RewardBatch) -> torch.Tensor:
        prompt_out = self.backbone(input_ids=batch.prompt_ids, attention_mask=batch.prompt_mask, use_cache=True)
        cache = prompt_out.past_key_values
        cache.batch_select_indices(batch.reply_prompt)  # one copy of its prompt's cache per reply
        prompt_lengths = batch.prompt_mask.sum(1)[batch.reply_prompt]
        positions = prompt_lengths.unsqueeze(1) + torch.arange(batch.reply_ids.shape[1], device=prompt_lengths.device).unsqueeze(0)
        mask = torch.cat([batch.prompt_mask[batch.reply_prompt], batch.reply_mask], dim=1)
        hidden = self.backbone(
            input_ids=batch.reply_ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True
        ).last_hidden_state
        last = batch.reply_mask.sum(1) - 1
        return self.head(hidden[torch.arange(hidden.shape[0], device=hidden.device), last]).squeeze(-1)

    def calibrate(self, raw_rewards: torch.Tensor) -> None:
        """Store offset and scale so that these (reference) rewards get mean 0, std 1."""
        self.offset.fill_(raw_rewards.mean().item())
        self.scale.fill_(max(raw_rewards.std().item(), 1e-6) if raw_rewards.numel() > 1 else 1.0)

    def normalize(self, raw_rewards: torch.Tensor) -> torch.Tensor:
        return (raw_rewards - self.offset) / self.scale


class RewardScorer:
    """Calibrated rewards for (conversation, reply text) pairs: the frozen reward model as
    PPO and best-of-n see it. It re-tokenizes decoded text, so the policy may use another
    tokenizer. Replies to the same conversation share one prompt pass."""

    def __init__(self, model: RewardModel, tokenizer, *, max_prompt_tokens: int = 384, max_reply_tokens: int = 128, batch_size: int = 32):
        self.model, self.tokenizer = model.eval(), tokenizer
        limit = position_limit(model)  # every prompt + reply fits the backbone's positions
        max_reply_tokens = max_reply_tokens if limit is None else max(1, min(max_reply_tokens, limit - 1))
        max_prompt_tokens = prompt_room(limit, max_prompt_tokens, max_reply_tokens)
        self._prompt = lambda messages: tokenize_prompt(tokenizer, messages, max_prompt_tokens)
        self._reply = lambda text: tokenize_reply(tokenizer, text, max_reply_tokens)
        self.batch_size = batch_size
        fuse_gelu(model)  # the same function in one kernel (checkpoint.fuse_gelu)
        for p in model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, prompts: list[list[dict]], replies: list[str]) -> torch.Tensor:
        device = model_device(self.model)
        rewards = []
        for start in range(0, len(replies), self.batch_size):
            chunk_prompts, chunk_replies = prompts[start : start + self.batch_size], replies[start : start + self.batch_size]
            keys, unique, reply_prompt = {}, [], []
            for messages in chunk_prompts:
                key = json.dumps(messages, sort_keys=True)
                if key not in keys:
                    keys[key] = len(unique)
                    unique.append(self._prompt(messages))
                reply_prompt.append(keys[key])
            batch = RewardBatch.build(unique, [self._reply(r) for r in chunk_replies], reply_prompt, self.tokenizer.pad_token_id)
            batch = to_device(batch, device)
            rewards.append(self.model.normalize(self.model(batch, self.tokenizer.pad_token_id).float()))
        return torch.cat(rewards) if rewards else torch.zeros(0, device=device)
