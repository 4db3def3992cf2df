"""torch.distributed for the trainers: set-up from torchrun's environment, gradient
averaging, and sums of metrics across ranks. Every helper is a no-op in one process.

Under `torchrun --nproc_per_node=N` the environment holds RANK, WORLD_SIZE, MASTER_ADDR
and MASTER_PORT; `init_from_env` joins the process group (gloo on CPU, nccl on GPUs).
nccl only reduces CUDA tensors: the helpers move a CPU tensor to this rank's GPU for the
collective and hand back a tensor on the caller's device, so trainers need not care.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


def init_from_env(backend: str | None = None, device: torch.device | None = None) -> bool:
    """Join the process group when launched by torchrun; return whether we are distributed.

    The backend follows the device the trainers use: nccl for CUDA, gloo for CPU.
    """
    if not launched_by_torchrun() or dist.is_initialized():
        return dist.is_initialized()
    if backend is None:
        on_gpu = device.type == "cuda" if device is not None else torch.cuda.is_available()
        backend = "nccl" if on_gpu else "gloo"
    dist.init_process_group(backend=backend)
    return True


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def shutdown() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank_and_world() -> tuple[int, int]:
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return rank_and_world()[0] == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over ranks (a new tensor on the caller's device); the tensor itself in one process."""
    if not dist.is_initialized():
        return tensor
    work = tensor.to(_collective_device(), copy=True)
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(tensor.device)


def all_gather_floats(values: torch.Tensor) -> torch.Tensor:
    """Concatenate a 1-D float tensor of equal length from every rank, in rank order."""
    if not dist.is_initialized():
        return values
    work = values.to(_collective_device(), dtype=torch.float64)
    parts = [torch.empty_like(work) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, work)
    return torch.cat(parts).to(values.device, dtype=values.dtype)


def all_gather_objects(obj) -> list:
    """Every rank's picklable object, in rank order ([obj] in one process)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_gradients(model: torch.nn.Module) -> None:
    """Sum gradients over ranks in one flat buffer (losses are pre-divided by the global count)."""
    if not dist.is_initialized():
        return
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:  # a rank with no example this step still joins the sum
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    for grad, reduced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        grad.copy_(reduced)


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Start every rank from rank 0's weights."""
    if not dist.is_initialized():
        return
    for tensor in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(tensor.data, src=0)
