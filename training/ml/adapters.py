"""Large checkpoints: LoRA adapters (via `peft`) and gradient checkpointing, as run options.

This module owns the adapter options (`AdapterConfig`), turning them on for a model
(`prepare_model`), the reference policy as "the same model with its adapters off"
(`adapters_disabled`), and writing a model with adapters either merged (a plain checkpoint
any transformers user can load) or adapter-only (peft's adapter_config.json + adapter
weights, plus the path of the base folder they belong to). Reading folders back lives in
checkpoint.py (`load_policy`, `load_backbone`) and reward_model.py.

With LoRA only the adapter matrices train; every other weight of the model is frozen (a
reward or value head on top stays trainable: it is not part of the model given here).
Gradient checkpointing is the non-reentrant kind (it needs no input that requires grad,
so it works with frozen embeddings) and only acts in train mode; `config.use_cache` is
switched off while it is on, since a KV cache cannot be filled during a checkpointed
forward. Generation and the reward model's scoring ask for the cache explicitly and run
in eval mode, so they keep it.

`peft` is imported only when adapters are used, so the plain path pays nothing for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from safetensors.torch import save_file

TASKS = {"causal": "CAUSAL_LM", "feature": "FEATURE_EXTRACTION"}
SAVE_MODES = ("merged", "adapter")
ADAPTER_CONFIG = "adapter_config.json"
EMBEDDING_ROWS_FILE = "added_embedding_rows.safetensors"  # rows the tokenizer added (pad) beyond the base vocab
BASE_FILE = "adapter_base.json"  # the base folder, absolute and relative to the adapter folder


@dataclass
class AdapterConfig:
    """Run options for large models. The defaults change nothing (full fine-tuning)."""

    lora_r: int = 0  # rank of the LoRA matrices; 0 = no adapters, every weight trains
    lora_alpha: float | None = None  # scale = alpha / r; None = 2 * r
    lora_dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"  # or module names, e.g. ["q_proj", "v_proj"]
    gradient_checkpointing: bool = False
    save: str = "merged"  # "merged": a plain checkpoint; "adapter": adapter weights + base path
    extra: dict = field(default_factory=dict)  # further LoraConfig fields, passed through

    def __post_init__(self) -> None:
        if isinstance(self.lora_r, bool) or not isinstance(self.lora_r, int) or self.lora_r < 0:
            raise ValueError(f"lora_r must be an integer >= 0 (0 = no adapters), not {self.lora_r!r}")
        if self.lora_alpha is not None and not (isinstance(self.lora_alpha, (int, float)) and self.lora_alpha > 0):
            raise ValueError(f"lora_alpha must be a number > 0 (or None for 2 * lora_r), not {self.lora_alpha!r}")
        if not (isinstance(self.lora_dropout, (int, float)) and 0.0 <= self.lora_dropout < 1.0):
            raise ValueError(f"lora_dropout must be in [0, 1), not {self.lora_dropout!r}")
        targets = self.target_modules
        if isinstance(targets, str):
            if not targets.strip():
                raise ValueError("target_modules must be 'all-linear' or a non-empty list of module names")
        elif not (isinstance(targets, (list, tuple)) and targets and all(isinstance(t, str) and t for t in targets)):
            raise ValueError(f"target_modules must be 'all-linear' or a non-empty list of module names, not {targets!r}")
        else:
            self.target_modules = list(targets)
        if not isinstance(self.gradient_checkpointing, bool):
            raise ValueError(f"gradient_checkpointing must be true or false, not {self.gradient_checkpointing!r}")
        if self.save not in SAVE_MODES:
            raise ValueError(f"save must be 'merged' or 'adapter', not {self.save!r}")
        if self.save == "adapter" and self.lora_r == 0:
            raise ValueError("save='adapter' needs adapters (lora_r > 0); without them the whole model is saved")
        if not isinstance(self.extra, dict):
            raise ValueError("extra must be a dict of LoraConfig fields")

    @property
    def lora(self) -> bool:
        return self.lora_r > 0

    @property
    def alpha(self) -> float:
        return float(self.lora_alpha) if self.lora_alpha is not None else 2.0 * self.lora_r

    @classmethod
    def from_dict(cls, values: dict | None) -> "AdapterConfig":
        """From a JSON object of run options; unknown keys are an error."""
        values = dict(values or {})
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown adapter options: {', '.join(sorted(unknown))}")
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- preparing


def prepare_model(model, config: AdapterConfig | None, *, task: str):
    """Gradient checkpointing and / or LoRA on `model`, as `config` asks; returns the model to train.

    task: "causal" for an AutoModelForCausalLM (the policy), "feature" for an AutoModel
    backbone (reward and value models). Without LoRA the same object comes back; with
    LoRA a peft model wraps it, with only the adapter weights trainable. Call it before
    moving the model to its device or building the optimiser.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, not {task!r}")
    if config is None:
        return model
    if has_adapters(model):
        raise ValueError("this model already has adapters; load it merged before adding new ones")
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if not config.lora:
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
        bias="none",
        task_type=TASKS[task],
        **config.extra,
    )
    base_path = getattr(model, "name_or_path", None)
    with _quiet_peft():
        peft_model = get_peft_model(model, lora)
    peft_model.peft_config["default"].base_model_name_or_path = base_path or None
    peft_model.adapter_save_mode = config.save
    return peft_model


@contextlib.contextmanager
def _quiet_peft():
    """peft reads transformers' deprecated `is_gradient_checkpointing` (a FutureWarning per model)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def enable_gradient_checkpointing(model) -> None:
    """Non-reentrant activation checkpointing on a transformers model; the KV cache off by default."""
    base = unwrap(model)
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(base).__name__} does not support gradient checkpointing")
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.x
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    base.config.use_cache = False


def gradient_checkpointing_on(model) -> bool:
    """Whether any layer of `model` checkpoints its activations (they do so only in train mode)."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


# --------------------------------------------------------------------------- adapters on / off


def _peft_loaded() -> bool:
    return "peft" in sys.modules


def _tuner_layers(model) -> list:
    if not _peft_loaded():
        return []
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def has_adapters(model) -> bool:
    """True when `model` (or a submodule: a reward model's backbone) carries peft adapters."""
    return bool(_tuner_layers(model))


@contextlib.contextmanager
def adapters_disabled(model):
    """Run `model` as its base, adapters off (the reference policy); a no-op without adapters.

    requires_grad of every parameter is restored afterwards (peft would switch the
    adapters' back on, even on a model frozen for scoring).
    """
    layers = _tuner_layers(model)
    if not layers:
        yield model
        return
    flags = [(p, p.requires_grad) for p in model.parameters()]
    previous = [layer.disable_adapters for layer in layers]
    try:
        for layer in layers:
            layer.enable_adapters(False)
        yield model
    finally:
        for layer, was_disabled in zip(layers, previous):
            layer.enable_adapters(not was_disabled)
        for p, flag in flags:
            p.requires_grad_(flag)


def unwrap(model):
    """The transformers model inside a peft wrapper (with the LoRA layers in it), or `model`."""
    if _peft_loaded():
        from peft import PeftModel

        if isinstance(model, PeftModel):
            return model.get_base_model()
    return model


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


# --------------------------------------------------------------------------- saving


def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """The plain state dict of `model` with its LoRA deltas added in; the model is not changed.

    Keys are those of the model without peft (`...q_proj.weight`), so the result loads
    into the plain architecture. Only the targeted weights are copied (merged on their
    device, then kept on the CPU); the rest are the model's own tensors.
    """
    base = unwrap(model)
    if not has_adapters(base):
        return base.state_dict()
    from peft.tuners.lora import LoraLayer

    deltas: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            if module.merged:
                raise ValueError(f"{name}: adapters are merged into the weights already; unmerge them before saving")
            if module.disable_adapters:
                continue
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    delta = module.get_delta_weight(adapter).detach()
                    key = f"{name}.weight"
                    deltas[key] = deltas[key] + delta if key in deltas else delta
    state = {}
    for key, tensor in base.state_dict().items():
        if ".lora_" in key:
            continue
        plain = key.replace(".base_layer.", ".")
        if plain in deltas:
            tensor = (tensor.detach() + deltas.pop(plain).to(tensor.dtype)).cpu()
        state[plain] = tensor
    if deltas:
        raise ValueError(f"LoRA weights without a base weight: {sorted(deltas)[:3]}")
    return state


@contextlib.contextmanager
def _config_as_loaded(base):
    """Write the config without the run-time use_cache=False of gradient checkpointing."""
    if gradient_checkpointing_on(base) and base.config.use_cache is False:
        base.config.use_cache = True
        try:
            yield
        finally:
            base.config.use_cache = False
    else:
        yield


def save_merged(model, folder: str | os.PathLike) -> None:
    """A plain checkpoint (config + weights) into an existing folder; loadable without peft."""
    base = unwrap(model)
    with _config_as_loaded(base):
        if has_adapters(base):
            # the config of the plain architecture: peft leaves base.config untouched
            base.save_pretrained(str(folder), state_dict=merged_state_dict(base))
        else:
            base.save_pretrained(str(folder))


def base_folder_of(model) -> Path:
    """The folder the adapters of `model` were trained on (recorded when they were added)."""
    config = model.peft_config["default"]
    recorded = config.base_model_name_or_path
    if not recorded or not Path(recorded).is_dir():
        raise ValueError(
            f"adapter-only saving needs the folder of the base model, and {recorded!r} is not one; "
            "load the base with load_policy / RewardModel.from_backbone from its folder, or save merged"
        )
    return Path(recorded).resolve()


def save_adapter(model, folder: str | os.PathLike) -> None:
    """Adapter-only: peft's adapter_config.json + adapter weights, the base folder's path
    (absolute in adapter_config.json, and also relative in adapter_base.json, for a moved
    tree), and the embedding rows the tokenizer added beyond the base vocabulary (a pad
    token), which are not in the base folder."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise ValueError("adapter-only saving needs a model with adapters (lora_r > 0); save merged instead")
    folder = Path(folder)
    base_path = base_folder_of(model)
    model.peft_config["default"].base_model_name_or_path = str(base_path)
    base = unwrap(model)
    with _config_as_loaded(base):
        model.save_pretrained(str(folder), save_embedding_layers=False)
    (folder / BASE_FILE).write_text(
        json.dumps({"base": str(base_path), "base_relative": os.path.relpath(base_path, folder.resolve())}, indent=2)
    )
    rows = added_embedding_rows(base, base_path)
    if rows:
        save_file(rows, folder / EMBEDDING_ROWS_FILE)


def added_embedding_rows(base, base_path: Path) -> dict[str, torch.Tensor]:
    """The rows of the input (and untied output) embeddings beyond the vocabulary of the
    full checkpoint at the bottom of the base chain (an adapter folder's base may itself be
    an adapter folder)."""
    from transformers import AutoConfig

    while is_adapter_folder(base_path):
        base_path = adapter_base(base_path)
    base_config = AutoConfig.from_pretrained(str(base_path), local_files_only=True)
    base_vocab = getattr(base_config.get_text_config(), "vocab_size", None)
    inputs = base.get_input_embeddings()
    if base_vocab is None or inputs.num_embeddings <= base_vocab:
        return {}
    rows = {"input": inputs.weight[base_vocab:].detach().cpu().contiguous()}
    outputs = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if outputs is not None and outputs.weight is not inputs.weight and outputs.weight.shape[0] > base_vocab:
        rows["output"] = outputs.weight[base_vocab:].detach().cpu().contiguous()
    return rows


def save_model(model, folder: str | os.PathLike, mode: str = "merged") -> None:
    """save_merged or save_adapter, into an existing (temporary) folder."""
    if mode not in SAVE_MODES:
        raise ValueError(f"mode must be 'merged' or 'adapter', not {mode!r}")
    if mode == "adapter":
        save_adapter(model, folder)
    else:
        save_merged(model, folder)


def default_save_mode(model) -> str:
    """The save mode chosen at prepare_model time (AdapterConfig.save), else merged."""
    return getattr(model, "adapter_save_mode", "merged")


# --------------------------------------------------------------------------- reading folders


def is_adapter_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_task(path: str | os.PathLike) -> str:
    """"causal" or "feature": what the adapters in this folder were trained on."""
    task_type = json.loads((Path(path) / ADAPTER_CONFIG).read_text()).get("task_type")
    for task, name in TASKS.items():
        if task_type == name:
            return task
    raise ValueError(f"{path}: adapters of task type {task_type!r} are not supported (causal LM or feature extraction)")


def adapter_base(path: str | os.PathLike) -> Path:
    """The base model folder of an adapter-only folder: the recorded absolute path, else the
    recorded relative one (a moved tree). FileNotFoundError, saying what is missing, if neither."""
    folder = Path(path).resolve()
    recorded = json.loads((folder / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    candidates = [Path(recorded)] if recorded else []
    if (folder / BASE_FILE).is_file():
        relative = json.loads((folder / BASE_FILE).read_text()).get("base_relative")
        if relative:
            candidates.append((folder / relative).resolve())
    for candidate in candidates:
        if candidate.is_dir() and ((candidate / "config.json").is_file() or (candidate / ADAPTER_CONFIG).is_file()):
            return candidate.resolve()
    raise FileNotFoundError(
        f"{folder} holds LoRA adapters only, and the base model they belong to is gone: "
        f"{recorded or 'no base folder was recorded'} is not a model folder. Put the base model back at that "
        "path (or next to the adapter folder where it was), or use a checkpoint saved merged."
    )


def restore_added_rows(model, folder: str | os.PathLike) -> None:
    """Copy the saved embedding rows (beyond the base vocabulary) into a model resized to the tokenizer."""
    path = Path(folder) / EMBEDDING_ROWS_FILE
    if not path.is_file():
        return
    from safetensors.torch import load_file

    rows = load_file(path)
    with torch.no_grad():
        inputs = model.get_input_embeddings()
        inputs.weight[inputs.num_embeddings - rows["input"].shape[0] :].copy_(rows["input"])
        outputs = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if "output" in rows and outputs is not None and outputs.weight is not inputs.weight:
            outputs.weight[outputs.weight.shape[0] - rows["output"].shape[0] :].copy_(rows["output"])


def load_adapters(model, folder: str | os.PathLike, *, merge: bool = True):
    """The adapters of `folder` on `model` (its base, already resized to the folder's tokenizer).

    merge=True: merged into the weights, a plain model comes back (fast to run; new
    adapters may go on top, and the reference is then this merged model). merge=False: a
    peft model whose adapters keep training.
    """
    from peft import PeftModel

    folder = Path(folder).resolve()
    restore_added_rows(model, folder)
    with _quiet_peft():
        peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=not merge)
    if not merge:
        peft_model.peft_config["default"].base_model_name_or_path = str(adapter_base(folder))
        peft_model.adapter_save_mode = "adapter"
        return peft_model
    merged = peft_model.merge_and_unload()
    merged.name_or_path = str(folder)  # new adapters on top record this folder as their base
    return merged
