"""Loading models and tokenizers from a local folder, and writing checkpoints atomically.

Every model comes from a directory written by `save_pretrained` (a user's own checkpoint
or the built-in default): nothing is fetched from a hub. A folder is either a full
checkpoint or adapter-only (LoRA weights + the path of its base folder, see adapters.py);
`load_policy` and `load_backbone` read both. A folder is written under a
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
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
from transformers.activations import GELUTanh, NewGELUActivation
from transformers.utils import logging as hf_logging

from . import adapters, distributed
from .text import ensure_chat_template

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
    """Grow the embedding matrix when the tokenizer gained tokens (the pad token).

    The new rows (input, and output when untied) are the mean of the old ones, not random:
    every load of a folder gives the same model, so a policy and its reference (or a base
    under adapters) loaded separately agree exactly.
    """
    old = model.get_input_embeddings().num_embeddings
    if old < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        outputs = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        with torch.no_grad():
            for layer in (model.get_input_embeddings(), outputs):
                if layer is not None and layer.weight.shape[0] > old:
                    layer.weight[old:] = layer.weight[:old].mean(0, keepdim=True)
                    bias = getattr(layer, "bias", None)
                    if bias is not None and bias.shape[0] > old:
                        bias[old:] = bias[:old].mean()
    model.config.pad_token_id = tokenizer.pad_token_id


def fuse_gelu(model: torch.nn.Module) -> int:
    """Swap transformers' NewGELUActivation (GPT-2's gelu_new: tanh-GELU written as ~8 elementwise
    ops) for GELUTanh (torch's gelu(approximate="tanh"), one kernel forward and one backward):
    the same function, equal up to float rounding. Returns how many modules were swapped."""
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, NewGELUActivation):
                setattr(module, name, GELUTanh())
                swapped += 1
    return swapped


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout makes the log-probs of PPO's old and new policy disagree; RM and PPO train without it."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def prepare_for_training(trained: list, reference=None) -> None:
    """What every RL trainer (PPO, DPO, RLOO / GRPO) does to its models first: dropout off and
    GPT-2's GELU as one kernel in each; the reference (when given) frozen in eval mode; the
    trained models' weights broadcast from rank 0 under torchrun, so every rank starts equal."""
    for model in [*trained, reference]:
        if model is not None:
            disable_dropout(model)
            fuse_gelu(model)
    if reference is not None:
        reference.eval()
        for p in reference.parameters():
            p.requires_grad_(False)
    for model in trained:
        distributed.broadcast_parameters(model)


def load_policy(path: str | os.PathLike, dtype: torch.dtype = torch.float32, *, merge_adapters: bool = True):
    """(AutoModelForCausalLM, tokenizer) from a local folder: a full checkpoint, or an
    adapter-only one (adapters.py) whose base folder is loaded first (recursively, so the
    base may itself be adapter-only) and the adapters merged in (or, with
    merge_adapters=False, kept as a trainable peft model)."""
    folder = Path(path).resolve()
    tokenizer = load_tokenizer(folder)
    if adapters.is_adapter_folder(folder):
        if adapters.adapter_task(folder) != "causal":
            raise ValueError(f"{folder} holds the adapters of a reward or value model, not of a policy")
        base, _ = load_policy(adapters.adapter_base(folder), dtype)
        match_embeddings(base, tokenizer)
        model = adapters.load_adapters(base, folder, merge=merge_adapters)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
        match_embeddings(model, tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_backbone(path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """(AutoModel backbone, tokenizer) from a folder: full, or adapter-only (merged in).

    A policy's adapter folder gives the backbone of the merged causal LM; a reward model's
    adapter folder gives its backbone with its adapters merged (the head is not read here).
    """
    folder = Path(path).resolve()
    tokenizer = load_tokenizer(folder)
    if adapters.is_adapter_folder(folder):
        if adapters.adapter_task(folder) == "causal":
            policy, _ = load_policy(folder, dtype)
            backbone = policy.base_model
            backbone.name_or_path = str(folder)
        else:
            base, _ = load_backbone(adapters.adapter_base(folder), dtype)
            match_embeddings(base, tokenizer)
            backbone = adapters.load_adapters(base, folder, merge=True)
    else:
        backbone = AutoModel.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
    match_embeddings(backbone, tokenizer)
    return backbone, tokenizer


def save_policy(model, tokenizer, path: str | os.PathLike, *, mode: str | None = None) -> Path:
    """Write the policy atomically. mode "merged": a plain checkpoint (adapters, if any,
    added into the weights; loadable by AutoModelForCausalLM without peft); "adapter": the
    adapter weights and the base folder's path only. None: as chosen in AdapterConfig.save
    when the adapters were added, else merged."""
    mode = mode or adapters.default_save_mode(model)
    make_servable(model, tokenizer)

    def write(tmp: Path) -> None:
        adapters.save_model(model, tmp, mode)
        tokenizer.save_pretrained(tmp)

    return write_atomically(path, write)


def make_servable(model, tokenizer) -> None:
    """What an OpenAI-compatible server (`transformers serve`, vLLM) needs to serve the saved
    policy as the trainers use it: a chat template (text.ensure_chat_template) and a
    generation config that samples (a request's temperature and top_p apply only when
    do_sample is on; temperature 0 still decodes greedily) and stops at EOS."""
    ensure_chat_template(tokenizer)
    config = getattr(model, "generation_config", None)
    if config is not None:
        config.do_sample = True
        config.eos_token_id = tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id


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


def run_steps(trainer, total_steps: int, *, checkpoint_path=None, checkpoint_every: int = 0) -> dict:
    """trainer.step() until trainer.step_count reaches total_steps; every `checkpoint_every`
    steps rank 0 writes trainer.state_dict() (save_state_atomically). The last step's metrics."""
    metrics: dict = {}
    while trainer.step_count < total_steps:
        metrics = trainer.step()
        if checkpoint_path and checkpoint_every and trainer.step_count % checkpoint_every == 0 and distributed.is_main_process():
            save_state_atomically(trainer.state_dict(), checkpoint_path)
    return metrics


def save_state_atomically(state: dict, path: str | os.PathLike) -> Path:
    """torch.save to a temporary file, then rename (resumable training state)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    torch.save(state, tmp)
    os.replace(tmp, final)
    return final
