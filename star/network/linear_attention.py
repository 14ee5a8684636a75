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
(`star.network.encoding`).

Three forms, picked by `kernel` ("auto": `fused` on the CPU, or `split` where
it cannot be built, for half-precision tensors and under autocast; `padded` on
any other device and under `torch.compile`):

- `fused`: one C++ operator (`star.network.fused`) per call, forward and
  backward, on the projections as one nn.Linear product writes them, rows
  (N, V, 3, H, d), applying phi itself: one task per clip and joint (threads
  take runs of tasks of about equal rows) walks the clip's rows in memory
  order, sums U and Z of each head as rank-one updates, then writes every
  output row. The backward pass
  recomputes phi, U and Z instead of keeping them, so training keeps no
  phi(Q), phi(K) tensors, and gives the gradient back as rows, so neither the
  projection nor its gradient is ever turned around. In inference (STBlock's
  inference path) a second operator takes x itself and the projection's
  weight: each task projects its clip's rows of its joint into the cache and
  attends there, so the projections are never written.

- `split`: one (d x L) @ (L x d) product per clip and head and joint, a batched
  matrix product over a (G, d, L) slice of the joint-and-head-major layout with
  time innermost (G = joints x heads, as `star.network.projection` writes it),
  then one (d x d) @ (d x L) product for the outputs: a Python loop over the
  clips, each slice cut by the host bounds.
- `padded`: the rows of every clip laid into one padded (B, L_max) timeline
  by one indexed write, the same two products batched over all clips at once,
  and the rows read back by one indexed read: about twenty operators a call
  whatever the number of clips, at the price of computing on the padding
  (phi of a padded key is 0, so it adds nothing to U or Z) and of memory
  that grows with the longest clip of the batch (batches of similar lengths,
  `--group-by-length`, keep the padding small).

Either is what Eq. 6 asks for, done by the BLAS. Forming phi(K_j) V_j^T per row and
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

from star.network import fused
from star.network.projection import PlaneProjection, planes_to_rows
from star.network.segments import ClipSegments
from star.network.sparse_attention import device_form

KERNELS = ("auto", "fused", "split", "padded")


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


# what a padded slot holds before phi: phi(PAD * d^-1/4) = exp(PAD * d^-1/4) is exactly 0 in float32, float16 and
# bfloat16 for any head depth up to 10^4, and PAD is finite in all three, so a padded value times it is 0 too
PAD = -1e4


def padded_linear_attention(qkv: torch.Tensor, segments: ClipSegments, scale: float,
                            eps: float = 1e-6) -> torch.Tensor:
    """Eq. 6 on a padded timeline: projections qkv (N, V, 3, H, d) -> (N, V, H, d); phi(scale x) on q and k.

    The rows go into a (B, L_max) timeline filled with PAD, so a padded key and
    query have phi = 0 exactly and add nothing to U or Z; the quotient is taken
    after reading the rows back, so the padding's 0 / 0 is never formed.
    """
    n, joints, _, h, d = qkv.shape
    if PAD * scale > -100:  # exp(-100) is below float32's smallest number; closer to 0 padding would leak in
        raise ValueError(f"padded_linear_attention needs PAD * scale <= -100 for exact padding, got scale {scale}")
    b, length = segments.num_clips, segments.max_rows
    ids, steps = segments.clip_ids, segments.steps
    padded = qkv.new_full((3, joints, h, b, d, length), PAD)  # (3, V, H, B, d, L): q, k, v, time innermost
    padded[:, :, :, ids, :, steps] = qkv.transpose(1, 2)  # indexed view (N, 3, V, H, d)
    q, k = elu_feature_map(padded[:2] * scale).view(2, joints * h * b, d, length)  # (G, d, L) each, G = (V, H, B)
    val = padded[2].view(joints * h * b, d, length)  # (G, d, L)
    u = torch.bmm(k, val.transpose(1, 2))  # (G, d, d): U = sum_j phi(K_j) V_j^T
    z = k.sum(2, keepdim=True)  # (G, d, 1): Z = sum_j phi(K_j)
    # the normaliser as a sum, as the split form takes it: under autocast a sum runs in float32, a product not
    normaliser = (q * z).sum(1, keepdim=True)  # (G, 1, L): phi(Q)^T Z
    numerator = torch.bmm(u.transpose(1, 2), q)  # (G, d, L): phi(Q)^T U
    numerator = numerator.view(joints, h, b, d, length)[:, :, ids, :, steps]  # (N, V, H, d)
    normaliser = normaliser.view(joints, h, b, 1, length)[:, :, ids, :, steps]  # (N, V, H, 1)
    return numerator / (normaliser + eps)


def quadratic_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segment_ids: torch.Tensor,
                               eps: float = 1e-6) -> torch.Tensor:
    """Reference: (phi(Q) phi(K)^T masked to same-segment pairs) V, row-normalised; q, k, v (G, N, d)."""
    same = segment_ids[:, None] == segment_ids[None, :]  # (N, N)
    weights = (q @ k.transpose(1, 2)) * same  # (G, N, N)
    return (weights @ v) / (weights.sum(-1, keepdim=True) + eps)


class TemporalAttention(nn.Module):
    """Segmented linear multi-head attention of every joint over the rows of its clip: x (N, V, C) -> (N, V, C)."""

    def __init__(self, width: int, heads: int, eps: float = 1e-6, kernel: str = "auto"):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        if kernel not in KERNELS:
            raise ValueError(f"unknown temporal kernel {kernel!r}; choose one of {KERNELS}")
        self.heads, self.eps, self.kernel = heads, eps, kernel
        # one (d, N) matrix per joint and head: output rows in (H, 3, d) order (the fused and padded forms
        # apply the same weight as nn.Linear, (N, V, 3, H, d))
        self.qkv = PlaneProjection(width, heads, ("head", "qkv", "depth"))

    def kernel_for(self, x: torch.Tensor) -> str:
        if self.kernel != "auto":
            return self.kernel
        return "padded" if device_form(x) else "fused" if fused.usable(x) else "split"

    def rows_weight(self) -> torch.Tensor:
        """The projection's weight as `rows_attention` reads its product: nn.Linear's, output rows (3, H, d)."""
        return self.qkv.weight

    def rows_attention(self, qkv: torch.Tensor, n: int, v: int, segments: ClipSegments) -> torch.Tensor:
        """The fused kernel on the projection's rows qkv (N*V, 3C) -> (N, V, C)."""
        c = qkv.shape[1] // 3
        h, d = self.heads, c // self.heads
        qkv = qkv.view(n, v, 3, h, d)  # (N, V, 3, H, d)
        return fused.linear_attention(qkv, segments.bounds, d ** -0.25, self.eps).view(n, v, c)  # (N, V, H*d)

    def projected_attention(self, x: torch.Tensor, segments: ClipSegments) -> torch.Tensor:
        """The fused kernel with the projection inside, q, k and v never written, for inference: no gradient
        (STBlock's inference path). x (N, V, C) -> (N, V, C)."""
        n, v, c = x.shape
        d = c // self.heads
        out = fused.projected_linear_attention(x, self.rows_weight(), segments.bounds, self.heads, d ** -0.25,
                                               self.eps)
        return out.view(n, v, c)  # (N, V, H*d)

    def forward(self, x: torch.Tensor, segments: ClipSegments) -> torch.Tensor:
        n, v, c = x.shape
        h, d = self.heads, c // self.heads
        scale, kernel = d ** -0.25, self.kernel_for(x)
        if kernel == "fused":
            projected = fused.linear(x.reshape(n * v, c), self.rows_weight())  # (N*V, 3C)
            return self.rows_attention(projected, n, v, segments)
        if kernel == "padded":
            qkv = F.linear(x.reshape(n * v, c), self.qkv.weight).view(n, v, 3, h, d)  # (N, V, 3, H, d)
            return padded_linear_attention(qkv, segments, scale, self.eps).view(n, v, c)  # (N, V, H*d)
        q, k, val = self.qkv(x).view(v * h, 3, d, n).unbind(1)  # (G, d, N) each, G = (V, H)
        q, k = elu_feature_map(q * scale), elu_feature_map(k * scale)
        out = segmented_linear_attention(q, k, val, list(segments.bounds), self.eps)  # (G, d, N)
        return planes_to_rows(out, n, v, h)  # (N, V, H*d)
