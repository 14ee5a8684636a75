"""Dropout whose mask is drawn without torch's bernoulli_ on the CPU.

On the CPU, torch's dropout draws its mask with bernoulli_, which measured
slower than uniform_ and a comparison when this module was written, and STAR
applies dropout 36 times per training step. Where the fused kernels are built
(`star.network.fused`), a counter-based hash of one seed and each element's
index draws the mask instead, faster again; `dropout` multiplies by it as it
draws and draws it again for the backward pass, so no mask is written or
kept (the dropout of each Add & Norm is drawn the same way inside
`fused.add_norm`). Otherwise u >= p for u uniform in [0, 1). Either keeps each element
with probability 1 - p. Off the CPU (CUDA, and the meta device that counts a
GPU's operators) torch's own dropout runs: one fused operator forward and one
backward.
"""

from __future__ import annotations

import torch
from torch import nn

from star.network import fused


def keep_mask(shape: tuple[int, ...], p: float, like: torch.Tensor) -> torch.Tensor:
    """Inverted-dropout multipliers: 0 with probability p, 1 / (1 - p) otherwise, in `like`'s dtype and device.

    On the CPU, where the fused kernels are built, a counter-based hash draws
    the mask from one seed taken from torch's generator, so torch.manual_seed
    and a restored generator state give the same masks; no mask is kept for the
    backward pass (the memory this saves: the README's "Benchmarks").
    """
    if fused.usable(like):
        return fused.keep_mask(shape, p, like.dtype)
    uniform = torch.rand(shape, dtype=like.dtype, device=like.device)
    return (uniform >= p).to(like.dtype) / (1 - p)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout of `x` at rate `p` in training, else `x` itself.

    Off the CPU torch's fused operator, called by name so that the meta device
    dispatches what CUDA does; on the CPU the hashed mask, multiplied in as it
    is drawn where the fused kernels are built, else a uniform draw.
    """
    if not training or p == 0:
        return x
    if x.device.type != "cpu":
        return torch.native_dropout(x, p, True)[0]
    if fused.usable(x):
        return fused.dropout(x, p)
    return x * keep_mask(x.shape, p, x)


class Dropout(nn.Dropout):
    """nn.Dropout by `dropout` above; `inplace` is honoured off the CPU only (torch's own in-place form)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace and x.device.type != "cpu":
            return super().forward(x)
        return dropout(x, self.p, self.training)
