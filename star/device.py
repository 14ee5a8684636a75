"""The one place that decides where a command computes, and how it casts and compiles there.

Training, evaluation, profiling and the GPU acceptance check all take their
device from `resolve_device`, their mixed precision from `autocast` and their
compiled model from `compiled`, so no two commands can disagree about them.
"""

from __future__ import annotations

import torch
from torch import nn

from star.errors import StarError
from star.names import DEVICES


class DeviceError(StarError, ValueError):
    """A device that was asked for and is not there."""


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` is CUDA when torch sees a GPU, else the CPU; each process on a machine takes its own GPU."""
    if name not in DEVICES:
        raise DeviceError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for, but torch sees no CUDA device (is the CUDA build installed?)")
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    return device


def autocast(device: torch.device, enabled: bool, dtype: torch.dtype | None = None):
    """Mixed precision: float16 on CUDA and bfloat16 on the CPU unless `dtype` says otherwise."""
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.bfloat16)
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


def compiled(model: nn.Module, enabled: bool) -> nn.Module:
    """`model` compiled by torch.compile (inductor), or `model` itself.

    STAR's `auto` kernels take their loop-free forms while compiling (see
    star.network.sparse_attention), so the graph does not unroll the CPU forms'
    per-edge and per-clip loops. A batch of another shape is a new graph to
    dynamo, so expect recompilations while batch shapes vary.
    """
    return torch.compile(model) if enabled else model
