"""Context-aware attention pooling of each clip's rows (the paper's Eq. 7).

For clip S_m with rows v_i (25 x D each, one per person and frame):

    c = tanh(mean_{i in S_m}(v_i) W)       global context, W (D x D) learnt
    a_i = sigmoid(<v_i, c>)                 how much row i agrees with it
    v' = reduce_{i in S_m}(a_i v_i)         the clip's embedding (25 x D)

Two choices the paper leaves open are options. `weights`: "joint" (the
authors' code) takes the inner product per joint, giving each joint of each
row its own weight; "frame" (the paper's text, "one attention weight for each
frame") sums it over all joints. `reduce`: "mean" (the code) averages the
weighted rows, so the embedding's scale does not grow with the clip's
length; "sum" is Eq. 7 as printed.

In inference on the fused kernels the model runs this module's forward as
one C++ operator instead (`star.network.fused.context_pooling`, chosen by
`STAR.inference_pooling`): each clip's two passes over its rows, without the
three (N, V, D) temporaries the module writes.
"""

from __future__ import annotations

import torch
from torch import nn

from star.network.scatter import SegmentOps
from star.network.segments import ClipSegments

WEIGHTS = ("joint", "frame")
REDUCES = ("mean", "sum")


class ContextPooling(nn.Module):
    """Rows (N, V, D) and their clips -> one embedding per clip (B, V, D)."""

    def __init__(self, width: int, ops: SegmentOps, weights: str = "joint", reduce: str = "mean"):
        super().__init__()
        if weights not in WEIGHTS:
            raise ValueError(f"unknown pooling weights {weights!r}; choose one of {WEIGHTS}")
        if reduce not in REDUCES:
            raise ValueError(f"unknown pooling reduce {reduce!r}; choose one of {REDUCES}")
        self.ops, self.weights, self.reduce = ops, weights, reduce
        self.weight = nn.Parameter(torch.empty(width, width))
        nn.init.xavier_normal_(self.weight)

    def forward(self, x: torch.Tensor, segments: ClipSegments) -> torch.Tensor:
        ptr, ids = segments.offsets, segments.clip_ids
        rows = segments.offsets.diff().to(x.dtype)[:, None, None]  # (B, 1, 1)
        context = torch.tanh(self.ops.sum(x, ptr, ids) / rows @ self.weight)  # (B, V, D)
        agreement = x * self.ops.expand(context, ptr, x.shape[0])  # (N, V, D)
        dims = (-1,) if self.weights == "joint" else (-2, -1)
        attention = torch.sigmoid(agreement.sum(dims, keepdim=True))  # (N, V, 1) or (N, 1, 1)
        pooled = self.ops.sum(attention * x, ptr, ids)  # (B, V, D)
        return pooled / rows if self.reduce == "mean" else pooled
