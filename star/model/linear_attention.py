"""Segmented linear multi-head self-attention over time (the paper's Eq. 5-6).

Each joint's trajectory is a sequence; the rows of one clip form one segment
S_m, and a query attends to every row of its own segment only:

    V'_i = phi(Q_i)^T U_m / phi(Q_i)^T Z_m,   U_m = sum_{j in S_m} phi(K_j) V_j^T,
                                              Z_m = sum_{j in S_m} phi(K_j)       (Eq. 6)

with the kernel feature map phi(x) = elu(x) + 1 (Katharopoulos et al. 2020).
A segment is a whole clip: the rows of both persons of a two-person clip are
one set of keys and values, so each person's frames attend to the other's as
well as to its own; the attention is order-free and the two persons' rows are
related in time only through the positional encoding of their shared clock
(`star.model.encoding`).

Fast form: one (d x L) @ (L x d) product per clip and head and joint, a batched
matrix product over a (G, d, L) slice of the joint-and-head-major layout with
time innermost (G = joints x heads, as `star.model.projection` writes it),
then one (d x d) @ (d x L) product for the outputs. This
is what Eq. 6 asks for, done by the BLAS. Forming phi(K_j) V_j^T per row and
summing per segment with a scatter, the literal reading of Eq. 6, would write
d x d numbers per row and joint and head to memory before reducing them; the
product reduces them inside the BLAS kernel. The explicit quadratic form
phi(Q) phi(K)^T V per segment (`quadratic_linear_attention`) is the test
reference.

Choices the paper leaves open, settled as in the authors' code
(`LinearAttention` in models/attentions.py of imj2185/STAR): queries and keys
are scaled by d^(-1/4) before phi (so that phi(Q)^T phi(K) sees the 1/sqrt(d)
of softmax attention); the projections have no bias and there is no output
projection; no dropout acts inside the attention (the weights are never
formed). `eps` is added to the denominator: 1e-6 as in Katharopoulos et al.'s
code for "as described", 0 for "as run" (the STAR code adds none).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from star.model.projection import PlaneProjection


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = elu(x) + 1, positive everywhere."""
    return F.elu(x) + 1


def segmented_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds: list[int],
                               eps: float = 1e-6) -> torch.Tensor:
    """Eq. 6 with phi already applied: q, k, v (G, d, N) -> (G, d, N), time innermost; segment m is rows
    bounds[m]:bounds[m+1]."""
    lengths = [stop - start for start, stop in zip(bounds[:-1], bounds[1:], strict=False)]
    outs = []
    # split, not slicing: the gradient of a split is one concatenation, a slice's is a full-size zero tensor
    for q_m, k_m, v_m in zip(q.split(lengths, 2), k.split(lengths, 2), v.split(lengths, 2), strict=True):  # (G, d, L)
        u = k_m @ v_m.transpose(1, 2)  # (G, d, d): U = sum_j phi(K_j) V_j^T
        z = k_m.sum(2, keepdim=True)  # (G, d, 1)
        outs.append((u.transpose(1, 2) @ q_m) / ((q_m * z).sum(1, keepdim=True) + eps))  # (G, d, L)
    return torch.cat(outs, dim=2)


def quadratic_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segment_ids: torch.Tensor,
                               eps: float = 1e-6) -> torch.Tensor:
    """Reference: (phi(Q) phi(K)^T masked to same-segment pairs) V, row-normalised; q, k, v (G, N, d)."""
    same = segment_ids[:, None] == segment_ids[None, :]  # (N, N)
    weights = (q @ k.transpose(1, 2)) * same  # (G, N, N)
    return (weights @ v) / (weights.sum(-1, keepdim=True) + eps)


class TemporalAttention(nn.Module):
    """Segmented linear multi-head attention of every joint over the rows of its clip: x (N, V, C) -> (N, V, C)."""

    def __init__(self, width: int, heads: int, eps: float = 1e-6):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads, self.eps = heads, eps
        # one (d, N) matrix per joint and head: output rows in (H, 3, d) order
        self.qkv = PlaneProjection(width, heads, ("head", "qkv", "depth"))

    def forward(self, x: torch.Tensor, bounds: list[int]) -> torch.Tensor:
        n, v, c = x.shape
        h, d = self.heads, c // self.heads
        q, k, val = self.qkv(x).view(v * h, 3, d, n).unbind(1)  # (G, d, N) each, G = (V, H)
        scale = d ** -0.25
        q, k = elu_feature_map(q * scale), elu_feature_map(k * scale)
        out = segmented_linear_attention(q, k, val, bounds, self.eps)  # (G, d, N)
        return out.view(v, h, d, n).permute(3, 0, 1, 2).reshape(n, v, c)  # (N, V, H*d)
