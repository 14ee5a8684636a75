"""The query, key and value projection (the paper's Eq. 1), written straight into an attention's layout.

The ATen forms of both attentions work joint-major with time innermost: the
sparse attention's `rows` on one (d, M) plane per joint, the linear
attention's `split` on one (d, N) matrix per joint and head. nn.Linear gives
(N, V, 3, H, d), time outermost, and turning that around is a strided copy
of three times the activations, which cost more than either attention's own
arithmetic on a CPU. `PlaneProjection` holds the weights of
nn.Linear(width, 3 width, bias=False), under the same name, and applies them
as one batched product per joint, W' x_j^T, reading the (N, V, C) input in
place as a transposed operand and writing (V, 3C, N). W' is W with its 3C
output rows reordered (`ordered_weight`, a 3C x C copy, not an activation
copy), so each attention finds its q, k and v as views. The fused kernels
read rows instead: one plain product by W (or W') feeds them.
"""

from __future__ import annotations

import torch
from torch import nn

AXES = ("qkv", "head", "depth")  # the order of nn.Linear's output rows: (3, H, d)


class PlaneProjection(nn.Linear):
    """x (N, V, C) -> (V, 3C, N), the 3C rows in `order`, a permutation of AXES."""

    def __init__(self, width: int, heads: int, order: tuple[str, str, str]):
        super().__init__(width, 3 * width, bias=False)
        if sorted(order) != sorted(AXES):
            raise ValueError(f"order must be a permutation of {AXES}, got {order}")
        self.heads = heads
        self.permutation = tuple(AXES.index(axis) for axis in order)

    def ordered_weight(self) -> torch.Tensor:
        """W with its 3C output rows in `order` (3C, C)."""
        c, h = self.in_features, self.heads
        return self.weight.view(3, h, c // h, c).permute(*self.permutation, 3).reshape(3 * c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, v, c = x.shape
        return torch.bmm(self.ordered_weight().expand(v, 3 * c, c), x.permute(1, 2, 0))  # (V, 3C, N), x^T in place


def planes_to_rows(out: torch.Tensor, n: int, joints: int, heads: int) -> torch.Tensor:
    """An attention's output planes back to rows: (V, d, H*N) or (V*H, d, N) -> (N, V, H*d), contiguous.

    Both planes layouts are (V, H, N) x d once depth and time swap places,
    so this is two copies: a batched 2-D transpose, then a permutation that
    moves whole d-long runs. One strided copy straight to (N, V, H*d) reads
    each output row's V*H*d values from as many places a plane apart.
    """
    d = out.shape[1]
    by_head = out.transpose(1, 2).contiguous().view(joints, heads, n, d)  # (V, H, N, d)
    return by_head.permute(2, 0, 1, 3).reshape(n, joints, heads * d)  # (N, V, H*d)
