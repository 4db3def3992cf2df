"""Which device the trainers run on, and the numeric settings that go with it.

One setting decides: `auto` (CUDA when present, else CPU), `cpu`, `cuda` or `cuda:N`
(TRAINING_DEVICE in the Django settings, --device on the command line). Under torchrun
each rank takes the GPU of its LOCAL_RANK (a worker owns its GPUs through
CUDA_VISIBLE_DEVICES). Every trainer takes the device from its model's parameters, so a
caller moves the models once (`model.to(device)`) and batches follow with `to_device`.

On a GPU with bfloat16 support the forward passes run under bf16 autocast while the
weights and optimiser state stay float32 (`use_bf16`), and float32 matmuls may use TF32
(`prepare`). The CPU path stays float32 unless a run asks for bf16 explicitly. Under bf16
autocast on a CPU, attention runs in float32 (`float32_attention_on_cpu`): on this AVX512-BF16
CPU sdpa's bf16 flash attention is no faster forward and slower backward (fwd + bwd of a
(8, 4, 288, 64) causal attention: 23.1 ms in bf16, 18.8 ms in float32), and the softmax is
more precise.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os

import torch

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def parse_device(spec: str | None) -> str:
    """Check a device setting without touching CUDA; return it normalised (ValueError if bad)."""
    text = (spec or "auto").strip().lower()
    if text in ("auto", "cpu", "cuda"):
        return text
    if text.startswith("cuda:") and text[5:].isdigit():
        return text
    raise ValueError(f"device must be {DEVICE_CHOICES}, not {spec!r}")


def resolve_device(spec: str | None = "auto") -> torch.device:
    """The torch.device for a setting; `cuda` under torchrun means this rank's GPU."""
    text = parse_device(spec)
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"device {text!r} was asked for, but this machine has no usable CUDA GPU")
    if text == "cuda":
        index = int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))
    else:
        index = int(text[5:])
    if index >= torch.cuda.device_count():
        raise RuntimeError(f"device cuda:{index} was asked for, but only {torch.cuda.device_count()} GPU(s) are visible")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def prepare(device: torch.device) -> torch.device:
    """Per-process settings for a device: TF32 matmuls on GPUs (Ampere and later)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def use_bf16(device: torch.device, requested: bool | None = None) -> bool:
    """bf16 autocast: as requested, or (None) on by default where the GPU supports it."""
    if requested is not None:
        return bool(requested)
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on `device` when enabled (weights stay float32); a no-op otherwise.
    On a CPU, attention then runs in float32 (`float32_attention_on_cpu`)."""
    if not enabled:
        return contextlib.nullcontext()
    if device.type == "cpu":
        _register_cpu_attention()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def float32_attention_on_cpu(query: torch.Tensor) -> bool:
    """Whether attention on these bf16 inputs should run in float32: under bf16 autocast on a
    CPU, where sdpa's float32 flash attention is at least as fast (see the module docstring)
    and its softmax more precise."""
    return query.device.type == "cpu" and query.dtype == torch.bfloat16 and torch.is_autocast_enabled("cpu")


def _float32_on_cpu(attention):
    """transformers' sdpa attention function, running in float32 when float32_attention_on_cpu."""

    @functools.wraps(attention)
    def wrapped(module, query, key, value, attention_mask, *args, **kwargs):
        if not float32_attention_on_cpu(query):
            return attention(module, query, key, value, attention_mask, *args, **kwargs)
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.float()
        with torch.autocast("cpu", enabled=False):
            output, weights = attention(module, query.float(), key.float(), value.float(), attention_mask, *args, **kwargs)
        return output.to(query.dtype), weights

    wrapped.float32_on_cpu = True
    return wrapped


def _register_cpu_attention() -> None:
    """Once per process: transformers' `sdpa` attention (the default of GPT-2, Llama, Qwen2, ...)
    goes through _float32_on_cpu; outside CPU autocast it is the original function."""
    from transformers import AttentionInterface

    current = AttentionInterface._global_mapping.get("sdpa")
    if current is not None and not getattr(current, "float32_on_cpu", False):
        AttentionInterface.register("sdpa", _float32_on_cpu(current))


def to_device(value, device: torch.device):
    """Move a tensor, or the tensors of a dataclass / dict / list, to `device` (no copy when already there)."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True) if value.device != device else value
    if hasattr(value, "__dataclass_fields__"):
        return type(value)(**{name: to_device(getattr(value, name), device) for name in value.__dataclass_fields__})
    if isinstance(value, dict):
        return {key: to_device(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(item, device) for item in value)
    return value


def free_memory() -> None:
    """Between stages: drop unreachable tensors and hand cached GPU blocks back."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
