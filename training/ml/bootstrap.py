"""The small built-in default: a byte-level BPE tokenizer trained on the project's own text
and a GPT-2-style policy fine-tuned on the demo demonstrations.

It exists so that a bare machine can run the whole loop in minutes on CPU. Expect a model
that has seen ~100 demonstrations: it picks up the format and some vocabulary of the
replies, not knowledge or reasoning. For real work point the settings at a real
checkpoint folder (any `AutoModelForCausalLM` saved with `save_pretrained`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from .checkpoint import make_servable, write_atomically
from .hooks import NO_HOOKS, TrainerHooks
from .sft import SFTConfig, train_sft

EOS, PAD = "<|endoftext|>", "<|pad|>"


@dataclass
class DefaultModelConfig:
    vocab_size: int = 4096
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 4
    n_positions: int = 512
    seed: int = 0


def train_bpe_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style) on our own text, with distinct EOS and pad tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=EOS, bos_token=EOS, unk_token=EOS, pad_token=PAD
    )


def new_policy(tokenizer, config: DefaultModelConfig) -> GPT2LMHeadModel:
    torch.manual_seed(config.seed)
    gpt2 = GPT2Config(
        vocab_size=len(tokenizer),
        n_layer=config.n_layer,
        n_embd=config.n_embd,
        n_head=config.n_head,
        n_positions=config.n_positions,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # no dropout: deterministic training, and PPO's old / new log-probs must agree
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(gpt2)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def save_new_model(model, tokenizer, path: str | os.PathLike) -> Path:
    make_servable(model, tokenizer)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return write_atomically(path, write)


def build_default_policy(
    *,
    corpus: list[str],
    demonstrations: list[tuple[list[dict], str]],
    out_dir: str | os.PathLike,
    config: DefaultModelConfig | None = None,
    sft_epochs: int = 6,
    hooks: TrainerHooks = NO_HOOKS,
) -> dict:
    """Tokenizer + random-init GPT-2 + SFT on the demonstrations, saved to out_dir."""
    config = config or DefaultModelConfig()
    tokenizer = train_bpe_tokenizer(corpus, config.vocab_size)
    model = new_policy(tokenizer, config)
    result = train_sft(
        model,
        tokenizer,
        demonstrations,
        SFTConfig(epochs=sft_epochs, lr=1e-3, batch_size=8, max_prompt_tokens=192, max_reply_tokens=192, seed=config.seed),
        hooks=hooks,
    )
    save_new_model(model, tokenizer, out_dir)
    return result
