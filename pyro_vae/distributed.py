"""Data-parallel training on torch.distributed, as `torchrun` launches it (beside svi.py, which
uses it; imports nothing of the package).

    torchrun --standalone --nproc_per_node=2 -m pyro_vae train --dataset digits

Every process holds the whole model and draws the same global batches (all seed their random
number generators alike); each computes the ELBO on its own slice of every batch, and
DistributedDataParallel, wrapped around the module that computes the Pyro ELBO, averages the
gradients so every process takes the same optimizer step. gloo on the CPU, NCCL on CUDA.
Process 0 writes the run directory. With WORLD_SIZE unset (or 1) nothing here does anything.
"""

import os

import torch
import torch.distributed as dist
from torch import nn


def requested():
    """Whether this process was launched as one of several (torchrun sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device):
    """Join the process group torchrun describes; returns the device this process trains on."""
    if not requested() or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def cleanup():
    """Leave the process group, all processes together: one that tore its group down while another
    was still drawing figures was sometimes killed on exit (gloo, "terminate called without an
    active exception"). Where a process failed instead, torchrun stops the ones left waiting."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def shard(n):
    """This process's slice of a global batch of n examples (contiguous; sizes differ by at most 1)."""
    w, r = world_size(), rank()
    return slice(r * n // w, (r + 1) * n // w)


class ElboLoss(nn.Module):
    """The Pyro ELBO of a model/guide pair as a module, so DistributedDataParallel can wrap it:
    forward(x, y) = elbo.differentiable_loss(model_fn, guide_fn, x, y), where model_fn and
    guide_fn are the model's own, or the same wrapped in a handler (the KL weight)."""

    def __init__(self, model, elbo, model_fn=None, guide_fn=None):
        super().__init__()
        self.vae = model
        self.elbo = elbo
        self.model_fn = model_fn or model.model
        self.guide_fn = guide_fn or model.guide

    def forward(self, *args):
        return self.elbo.differentiable_loss(self.model_fn, self.guide_fn, *args)


def loss_module(model, elbo, model_fn=None, guide_fn=None):
    module = ElboLoss(model, elbo, model_fn, guide_fn)
    if world_size() == 1:
        return module
    device_ids = [model_device(model)] if model_device(model).type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def backward(loss):
    """loss.backward(); under DDP, which averages the processes' gradients, the loss is first
    multiplied by their number, making the average their sum: the gradient of the whole batch's
    loss, as one process computes it (the ELBO is a sum over examples, not a mean)."""
    (loss * world_size() if world_size() > 1 else loss).backward()


def model_device(model):
    return next(model.parameters()).device


def all_sum(tensor):
    """Sum a tensor over the processes in place (a no-op in one process)."""
    if world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def all_min(tensor):
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor


def any_process(flag):
    """Whether `flag` is true in any process (each must call this at the same point)."""
    if world_size() == 1:
        return bool(flag)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    return bool(all_sum(torch.tensor([int(flag)], device=device)).item())


def broadcast(obj):
    """Process 0's value of a picklable object, on every process."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier():
    if world_size() > 1:
        dist.barrier()
