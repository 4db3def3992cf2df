"""Run a decoder's last layer on the positions that are read, not on the whole sequence.

PPO's forward passes (the policy's log-probs, the value model's values, the reference's
log-probs) read the last layer's output only at the reply's positions: the last T + 1 of
a prompt + reply sequence. Every earlier layer is needed at every position (its output
feeds the next layer's keys and values), but the last layer's attention output and MLP at
the prompt's positions are never read. With 4 layers, a 256-token prompt and a 32-token
reply that dead work is about a fifth of each forward and backward pass.

`last_layer_tail(model, keep)` makes the model's last block compute, while the context is
open:
  - its layer norm and key / value projection at every position (the keys and values
    of the prompt are read by the reply's queries);
  - attention, output projection and MLP at the last `keep` positions only.
The other positions of the block's output are its input, passed through: while the
context is open, the model's last hidden state (and logits) are valid at the last `keep`
positions only, which is all that `generation.response_logits` and `ppo.ValueModel` read.
The kept positions equal the full computation up to float rounding, values and gradients
(tests/ml/test_tail.py).

It covers GPT-2 blocks (the default backbone) with the sdpa or eager attention; for any
other architecture, a cache, cross-attention or GPT-2's reorder-and-upcast attention the
context changes nothing and the model runs as usual. LoRA adapters and gradient
checkpointing keep working: the block's own submodules are called.
"""

from __future__ import annotations

import contextlib
import types

import torch
import torch.nn.functional as F

from .device import float32_attention_on_cpu


def _last_gpt2_block(model):
    """The last GPT2Block of `model` (under any wrappers), or None when the tail does not apply."""
    for module in model.modules():
        if type(module).__name__ == "GPT2Model" and hasattr(module, "h") and len(module.h):
            block = module.h[-1]
            attention = getattr(block, "attn", None)
            config = getattr(module, "config", None)
            if type(block).__name__ != "GPT2Block" or attention is None or config is None:
                return None
            if getattr(config, "add_cross_attention", False) or getattr(attention, "is_cross_attention", False):
                return None
            implementation = getattr(config, "_attn_implementation", None)
            if implementation not in ("sdpa", "eager"):
                return None
            if implementation == "eager" and getattr(attention, "reorder_and_upcast_attn", False):
                return None
            return block
    return None


def _tail_mask(attention_mask, batch: int, length: int, keep: int, device) -> torch.Tensor:
    """The attention mask of the last `keep` queries over all `length` keys, for sdpa."""
    if attention_mask is None:  # no padding: plain causal attention
        return torch.ones(keep, length, dtype=torch.bool, device=device).tril(diagonal=length - keep)
    if attention_mask.dim() == 4:  # the model's (B, 1, L, L) mask, boolean or additive
        return attention_mask[:, :, -keep:, :]
    raise ValueError(f"unexpected attention mask of shape {tuple(attention_mask.shape)}")


def _tail_forward(self, hidden_states, past_key_values=None, attention_mask=None, encoder_hidden_states=None, *args, **kwargs):
    keep = self._tail_keep
    batch, length, _ = hidden_states.shape
    if past_key_values is not None or encoder_hidden_states is not None or kwargs.get("use_cache") or keep >= length:
        return self._tail_original_forward(hidden_states, past_key_values, attention_mask, encoder_hidden_states, *args, **kwargs)
    attention = self.attn
    query, key, value = attention.c_attn(self.ln_1(hidden_states)).split(attention.split_size, dim=2)
    heads = (-1, attention.head_dim)
    query = query[:, -keep:].reshape(batch, keep, *heads).transpose(1, 2)
    key = key.reshape(batch, length, *heads).transpose(1, 2)
    value = value.reshape(batch, length, *heads).transpose(1, 2)
    mask = _tail_mask(attention_mask, batch, length, keep, hidden_states.device)
    dropout = attention.attn_dropout.p if self.training else 0.0
    if float32_attention_on_cpu(query):  # as transformers' sdpa under our CPU autocast (device.autocast)
        with torch.autocast("cpu", enabled=False):
            mask = mask if mask.dtype == torch.bool else mask.float()
            out = F.scaled_dot_product_attention(query.float(), key.float(), value.float(), attn_mask=mask, dropout_p=dropout, scale=attention.scaling)
        out = out.to(query.dtype)
    else:
        if mask.dtype != torch.bool:
            mask = mask.to(query.dtype)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=attention.scaling)
    out = attention.resid_dropout(attention.c_proj(out.transpose(1, 2).reshape(batch, keep, -1)))
    tail = hidden_states[:, -keep:] + out
    tail = tail + self.mlp(self.ln_2(tail))
    return torch.cat([hidden_states[:, :-keep], tail.to(hidden_states.dtype)], 1)


@contextlib.contextmanager
def last_layer_tail(model, keep: int):
    """While open, `model`'s last block computes its output at the last `keep` positions only
    (see the module docstring). Yields whether it applies to this model."""
    block = _last_gpt2_block(model)
    if block is None or keep < 1 or "forward" in vars(block):
        yield False
        return
    block._tail_keep = keep
    block._tail_original_forward = block.forward
    block.forward = types.MethodType(_tail_forward, block)
    try:
        yield True
    finally:
        del block.forward, block._tail_original_forward, block._tail_keep
