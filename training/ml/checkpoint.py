"""Loading models and tokenizers from a local folder, and writing checkpoints atomically.

Every model comes from a directory written by `save_pretrained` (a user's own checkpoint
or the built-in default): nothing is fetched from a hub. A folder is written under a
temporary name next to its final place and renamed into place, so a crash never leaves
a half-written model where a reader could find it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

PAD_TOKEN = "<|pad|>"
hf_logging.disable_progress_bar()


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer of a checkpoint folder, with a pad token distinct from EOS."""
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    ensure_distinct_pad_token(tokenizer)
    return tokenizer


def ensure_distinct_pad_token(tokenizer) -> bool:
    """Padding with EOS would hide the real EOS from the loss masks; add a pad token."""
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        return True
    return False


def match_embeddings(model, tokenizer) -> None:
    """Grow the embedding matrix when the tokenizer gained tokens (the pad token)."""
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.config.pad_token_id = tokenizer.pad_token_id


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout makes the log-probs of PPO's old and new policy disagree; RM and PPO train without it."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def load_policy(path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """(AutoModelForCausalLM, tokenizer) from a local folder."""
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    match_embeddings(model, tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def save_policy(model, tokenizer, path: str | os.PathLike) -> Path:
    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return write_atomically(path, write)


def write_atomically(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call write(tmp_dir), then rename tmp_dir to `path` (which must not exist yet)."""
    final = Path(path)
    if final.exists():
        raise FileExistsError(f"{final} exists; checkpoints are never overwritten")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        write(tmp)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def save_state_atomically(state: dict, path: str | os.PathLike) -> Path:
    """torch.save to a temporary file, then rename (resumable training state)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    torch.save(state, tmp)
    os.replace(tmp, final)
    return final
