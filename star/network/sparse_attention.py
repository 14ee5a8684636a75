"""Sparse multi-head self-attention over the joints of each frame (the paper's Eq. 1-3).

Joint i attends to the joints N(i) of its neighbourhood in A + A^2 + A^3 of the
25-joint skeleton (`star.skeleton.neighbourhood_mask`), which holds joint i
itself (hop 0): A^2 walks out and back. With q_i, k_j, v_j one head's query,
key and value (Eq. 1),

    alpha_ij = exp(q_i.k_j / sqrt(d)) / sum_{n in N(i)} exp(q_i.k_n / sqrt(d))     (Eq. 2)
    v'_i     = sum_{j in N(i)} alpha_ij v_j                                          (Eq. 3)

where d is the head depth. The exponent is taken after subtracting the row's
maximum score, so no score overflows. With the anatomical hands 191 of the 625
joint pairs are edges. An edge may also be listed more than once (the authors'
code lists each one-hop pair twice, `star.skeleton.power_edge_counts`): every
kernel then treats each listing as an edge of its own, so the pair weighs
double in the softmax and, in training, each listing draws its own dropout.

Five forms compute the same numbers; `auto` (the default) takes `fused` on the
CPU (`rows` where it cannot be built, for half-precision tensors and under
autocast) and
`gather` on any other device (CUDA, and the meta device) and under
`torch.compile`:

- `fused` (`auto` on the CPU): the `rows` form below as one C++ operator
  (`star.network.fused`), forward and backward, on the projections as one
  nn.Linear product writes them, rows (N, V, 3, d, H). The forward pass
  works on each row's tokens where they lie, the H heads of a line side by
  side as vector lanes, the next row prefetched. The backward pass splits
  the rows into blocks of 64 columns (row, head), gathers each block into
  joint planes in the cache, and within a block runs every query joint's
  gradients there, so each key and value plane is read once per block
  instead of once per edge. Output and gradient go back as rows. In
  inference (STBlock's inference path) a second operator takes x itself and
  the projection's weight: four rows at a time are projected into the cache
  and attended there, so the projections are never written.
- `rows`: the neighbourhood as CSR rows, one query joint at a
  time, in a joint-major layout (V, d, M) where M = frames x heads is the
  innermost, contiguous axis, so each joint's key and value is one contiguous
  (d, M) plane. Each edge is a dot product over d of two planes (its scores)
  and a multiply-add of a plane into the query's output: nothing is gathered
  or copied, and the only temporaries are one plane and the (deg, M) weights.
  The gradient is written by hand (`_RowAttention`) the same way, edge by
  edge, adding into the key and value gradient planes in place, so no step
  moves more bytes than the activations hold (gathering each row's deg(i) <= 13
  key and value planes into a copy would move 8x that). Traced without
  gradients (the MAC counters trace it), it runs slot by slot instead
  (`NeighbourhoodGraph`): each slot's key and value planes gathered into one
  block, the same products in a few calls per slot rather than per edge,
  because a trace records every call and costs per call.
- `gather` (`auto` elsewhere): the neighbourhood as a table of each query's keys, padded to the
  largest degree D (13 with the anatomical hands; a padded slot has score
  -inf). One gather of the keys and values of every slot, one product and sum
  for the scores, one softmax and one weighted sum: about fifteen operators a
  call whatever the batch, because on a GPU every operator is a kernel launch.
  Its gathered (N, V, D, 2, H, d) keys and values are 2D times the
  activations (the authors' code gathers queries and keys per edge too:
  `index_select` by the edge list in `SparseAttention`, models/attentions.py).
- `edges`: the literal edge-list form, gathering (E, M, d) tensors and
  normalising with segment maximum and sum over each query's edges
  (`star.network.scatter`). It is a test reference and the measured example of
  why the literal form is slow on a CPU: its (E, M, d) temporaries are 8x the
  size of the activations and are allocated fresh on every call.
- `dense_attention` with the neighbourhood as a mask: the full 25 x 25 softmax
  with non-edges at -inf. It computes the 434 non-edges too, so it is not
  the sparse attention; it serves as the reference and, without a mask, as
  the dense attention of the `full` ablation (Tables 4 and 5).

Choices the paper leaves open, settled as in the authors' code: 8 heads of
depth width/8; the query, key and value projections have no bias; the heads'
outputs are concatenated with no output projection; dropout (rate
`attention_dropout`) acts on the attention weights alpha.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from star.network import fused
from star.network.dropout import dropout as drop
from star.network.dropout import keep_mask
from star.network.projection import PlaneProjection, planes_to_rows
from star.network.scatter import SegmentOps

KERNELS = ("auto", "fused", "rows", "gather", "edges")
GRAPH_TENSORS = ("query", "key", "rowptr", "table", "bias", "order", "edge_by_slot", "row_by_slot")  # its tensors


def device_form(x: torch.Tensor) -> bool:
    """True where the `auto` kernels take their launch-light forms: off the CPU, or while compiling."""
    return x.device.type != "cpu" or torch.compiler.is_compiling()


@dataclass
class NeighbourhoodGraph:
    """Index lists of a joint neighbourhood, as tensors (edge list, CSR pointer, slots) and as Python lists.

    Slot s holds the s-th edge of every query joint with more than s edges.
    With the query joints ordered by degree, largest first (`order`), those
    are the first `slot_sizes[s]` of them, so each slot is a prefix of
    `order` and a run of the slot-major edge list (`edge_by_slot`).
    """

    query: torch.Tensor  # (E,) attending joint of each edge, sorted
    key: torch.Tensor  # (E,) attended joint of each edge
    rowptr: torch.Tensor  # (V + 1,) edges of query i are rowptr[i]:rowptr[i+1]
    table: torch.Tensor  # (V, D) keys of each query joint in edge order, padded with the joint itself
    bias: torch.Tensor  # (V, D, 1) float32: 0 on an edge, -inf on a padded slot
    order: torch.Tensor  # (V,) query joints by degree, largest first (ties in joint order)
    edge_by_slot: torch.Tensor  # (E,) slot-major: slot 0's edges in `order`, then slot 1's, ...
    row_by_slot: torch.Tensor  # (E,) each slot-major entry's place in `order`
    neighbours: list[list[int]]  # per query joint: its keys, in edge order
    starts: list[int]  # per query joint: its first edge
    slot_sizes: list[int]  # per slot: how many query joints have an edge there

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> NeighbourhoodGraph:
        """`mask` (V, V): bool, or the number of times each pair is an edge (`star.skeleton.power_edge_counts`)."""
        counts = np.asarray(mask).astype(np.int64)
        degrees = counts.sum(axis=1)
        if not degrees.all():
            raise ValueError(f"joints {np.flatnonzero(degrees == 0).tolist()} have no edge: every query joint "
                             "needs a neighbourhood to attend to")
        query, key = np.nonzero(counts)  # row-major order: sorted by query
        query, key = np.repeat(query, counts[query, key]), np.repeat(key, counts[query, key])  # repeated edges
        rowptr = np.concatenate([[0], np.cumsum(degrees)])
        as_long = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.long)  # noqa: E731
        slot = np.arange(degrees.max())  # (D,)
        filled = slot[None, :] < degrees[:, None]  # (V, D)
        slot_edges = np.where(filled, rowptr[:-1, None] + slot[None, :], 0)  # (V, D): each slot's edge
        order = np.argsort(-degrees, kind="stable")  # (V,)
        sizes = filled.sum(axis=0)  # (D,): slot s is filled for the first sizes[s] joints of `order`
        return cls(
            query=as_long(query),
            key=as_long(key),
            rowptr=as_long(rowptr),
            table=as_long(np.where(filled, key[slot_edges], np.arange(len(mask))[:, None])),
            bias=torch.as_tensor(np.where(filled, 0.0, -np.inf)[:, :, None], dtype=torch.float32),
            order=as_long(order),
            edge_by_slot=as_long(np.concatenate([slot_edges[order[:size], s] for s, size in enumerate(sizes)])),
            row_by_slot=as_long(np.concatenate([np.arange(size) for size in sizes])),
            neighbours=[key[rowptr[i]:rowptr[i + 1]].tolist() for i in range(len(mask))],
            starts=rowptr[:-1].tolist(),
            slot_sizes=sizes.tolist(),
        )

    @property
    def num_edges(self) -> int:
        return sum(self.slot_sizes)  # a host number, also while tracing

    def to(self, device: torch.device) -> NeighbourhoodGraph:
        return replace(self, **{name: getattr(self, name).to(device) for name in GRAPH_TENSORS})

    def slot_edges(self) -> torch.Tensor:
        """(V, D) the edge of each slot of `table` (padded slots: edge 0), to lay an (E, ...) tensor out by slot."""
        slot = torch.arange(self.table.shape[1], device=self.rowptr.device)
        filled = slot[None, :] < self.rowptr.diff()[:, None]
        return torch.where(filled, self.rowptr[:-1, None] + slot[None, :], 0)

    def slots(self) -> list[slice]:
        """Each slot's run of the slot-major edge list; slot s covers the first slot_sizes[s] joints of `order`."""
        ends = np.cumsum(self.slot_sizes).tolist()
        return [slice(end - size, end) for size, end in zip(self.slot_sizes, ends, strict=True)]


def _row_attention_forward(q, k, v, keep, graph: NeighbourhoodGraph, scale: float):
    """Eq. 2-3 row by row on (V, d, M) planes: the output and the attention weights alpha (E, M).

    Every key and value plane is used where it lies (a view, never a gathered
    copy): one dot product over d per edge for the scores, one multiply-add
    per edge into the query's output plane.
    """
    alpha = q.new_empty(graph.num_edges, q.shape[-1])  # (E, M)
    out = torch.empty_like(v)
    for i, (keys, start) in enumerate(zip(graph.neighbours, graph.starts, strict=True)):
        scores = alpha[start:start + len(keys)]  # (deg, M), filled in place
        query = q[i] * scale  # (d, M)
        for n, j in enumerate(keys):
            torch.linalg.vecdot(query, k[j], dim=0, out=scores[n])
        scores.copy_(torch.softmax(scores, dim=0))
        weights = scores if keep is None else scores * keep[start:start + len(keys)]
        row = out[i]  # (d, M)
        torch.mul(v[keys[0]], weights[0], out=row)
        for n, j in enumerate(keys[1:], 1):
            row.addcmul_(v[j], weights[n])
    return out, alpha


class _RowAttention(torch.autograd.Function):
    """The rows kernel with its hand-written gradient; `keep` is the scaled dropout mask (E, M) or None."""

    @staticmethod
    def forward(ctx, q, k, v, keep, graph: NeighbourhoodGraph, scale: float):
        out, alpha = _row_attention_forward(q, k, v, keep, graph, scale)
        ctx.save_for_backward(q, k, v, keep, alpha)
        ctx.graph, ctx.scale = graph, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, keep, alpha = ctx.saved_tensors
        graph, scale = ctx.graph, ctx.scale
        grad_out = grad_out.contiguous()
        grad_q = torch.empty_like(q)
        grad_k, grad_v = torch.zeros_like(k), torch.zeros_like(v)
        for i, (keys, start) in enumerate(zip(graph.neighbours, graph.starts, strict=True)):
            weights = alpha[start:start + len(keys)]  # (deg, M)
            kept = weights if keep is None else weights * keep[start:start + len(keys)]
            grad_weights = torch.empty_like(weights)
            for n, j in enumerate(keys):
                torch.linalg.vecdot(grad_out[i], v[j], dim=0, out=grad_weights[n])
                grad_v[j].addcmul_(grad_out[i], kept[n])
            if keep is not None:
                grad_weights *= keep[start:start + len(keys)]
            # softmax backward, with the score scale: dS = scale * A * (dA - sum_j dA_j A_j)
            grad_scores = weights * (grad_weights - (grad_weights * weights).sum(0, keepdim=True)) * scale
            row = grad_q[i]
            torch.mul(k[keys[0]], grad_scores[0], out=row)
            for n, j in enumerate(keys[1:], 1):
                row.addcmul_(k[j], grad_scores[n])
            for n, j in enumerate(keys):
                grad_k[j].addcmul_(q[i], grad_scores[n])
        return grad_q, grad_k, grad_v, None, None, None


def _combine_slots(values: torch.Tensor, graph: NeighbourhoodGraph, combine) -> torch.Tensor:
    """(E, M) slot-major -> (V, M) in `order`: each query joint's entries combined by `combine` (torch.add, ...)."""
    slots = graph.slots()
    total = values[slots[0]].clone()  # slot 0: every joint
    for part in slots[1:]:
        size = part.stop - part.start
        combine(total[:size], values[part], out=total[:size])
    return total


def _slot_attention_forward(q, k, v, keep, graph: NeighbourhoodGraph, scale: float) -> torch.Tensor:
    """Eq. 2-3 slot by slot on (V, d, M) planes: the rows kernel's products in a few calls per slot.

    Slot s gathers the s-th key and value plane of every query joint that has
    one: one batched dot product over d gives its scores, one batched
    multiply-add adds its values into the outputs. The gathered blocks are
    as large as the keys, and on large batches this runs slower than the
    per-edge form; it exists for tracing, which records every call.
    """
    slots, joints = graph.slots(), graph.key[graph.edge_by_slot]  # (E,) each slot-major entry's key joint
    queries = q[graph.order] * scale  # (V, d, M), in `order`
    scores = q.new_empty(graph.num_edges, q.shape[-1])  # (E, M), slot-major
    for part in slots:
        size = part.stop - part.start
        torch.linalg.vecdot(queries[:size], k[joints[part]], dim=1, out=scores[part])
    alpha = scores.sub_(_combine_slots(scores, graph, torch.maximum)[graph.row_by_slot]).exp_()
    alpha.div_(_combine_slots(alpha, graph, torch.add)[graph.row_by_slot])
    weights = alpha if keep is None else alpha * keep[graph.edge_by_slot]
    out = torch.mul(v[joints[slots[0]]], weights[slots[0], None])  # (V, d, M), in `order`
    for part in slots[1:]:
        size = part.stop - part.start
        out[:size].addcmul_(v[joints[part]], weights[part, None])
    return torch.empty_like(out).index_copy_(0, graph.order, out)


def _contiguous_planes(t: torch.Tensor) -> torch.Tensor:
    """(V, d, M) with each joint's (d, M) plane contiguous; the joints may lie apart (views of one projection)."""
    return t if t[0].is_contiguous() else t.contiguous()


def row_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, graph: NeighbourhoodGraph,
                  keep: torch.Tensor | None = None) -> torch.Tensor:
    """The `rows` kernel: q, k, v (V, d, M) -> (V, d, M); d is the head depth.

    Without gradients (inference, and the tracing FLOP counters) the plain
    forward runs, so its operations are visible to tracers and nothing is
    kept for a backward pass: edge by edge, or slot by slot while traced
    (the same products in a few calls per slot instead of per edge).
    """
    q, k, v, scale = _contiguous_planes(q), _contiguous_planes(k), _contiguous_planes(v), q.shape[1] ** -0.5
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return _RowAttention.apply(q, k, v, keep, graph, scale)
    if torch.jit.is_tracing():
        return _slot_attention_forward(q, k, v, keep, graph, scale)
    return _row_attention_forward(q, k, v, keep, graph, scale)[0]


def edge_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, graph: NeighbourhoodGraph,
                   ops: SegmentOps, keep: torch.Tensor | None = None) -> torch.Tensor:
    """The `edges` kernel: q, k, v (V, M, d) -> (V, M, d), gather and segment reductions over all edges."""
    scores = (q[graph.query] * k[graph.key]).sum(-1) * q.shape[-1] ** -0.5  # (E, M)
    edges = graph.num_edges
    shifted = scores - ops.expand(ops.max(scores, graph.rowptr), graph.rowptr, edges)
    weights = shifted.exp()
    alpha = weights / ops.expand(ops.sum(weights, graph.rowptr), graph.rowptr, edges)
    if keep is not None:
        alpha = alpha * keep
    return ops.sum(alpha.unsqueeze(-1) * v[graph.key], graph.rowptr)  # (V, M, d)


def gathered_attention(q: torch.Tensor, kv: torch.Tensor, graph: NeighbourhoodGraph,
                       keep: torch.Tensor | None = None, dropout: float = 0.0) -> torch.Tensor:
    """The `gather` kernel: q (N, V, H, d) and kv (N, V, 2, H, d) -> (N, V, H, d).

    The weights are dropped by `keep`, a scaled dropout mask per slot (N, V, D,
    H), where given, else at rate `dropout` by star.network.dropout.dropout
    (off the CPU torch's fused operator, the model's form); padded slots have
    weight 0 whatever is drawn for them.
    """
    neighbours = kv[:, graph.table]  # (N, V, D, 2, H, d): every slot's key and value
    scores = (q.unsqueeze(2) * neighbours[:, :, :, 0]).sum(-1)  # (N, V, D, H)
    alpha = torch.softmax(torch.add(graph.bias.to(q.dtype), scores, alpha=q.shape[-1] ** -0.5), dim=2)
    if keep is not None and dropout:
        raise ValueError("give the gathered attention a dropout mask or a dropout rate, not both")
    if keep is not None:
        alpha = alpha * keep
    elif dropout:
        alpha = drop(alpha, dropout, True)
    return (alpha.unsqueeze(-1) * neighbours[:, :, :, 1]).sum(2)  # (N, V, H, d)


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                    dropout: float = 0.0, training: bool = False) -> torch.Tensor:
    """Softmax attention over the joint axis: q, k, v (..., V, d) -> (..., V, d).

    `mask` (V, V) keeps the pairs it marks; given as edge counts, a pair that is
    an edge c times weighs c times, as it does in a softmax over a list of edges
    that holds it c times (log c added to its score).
    """
    scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5  # (..., V, V)
    if mask is not None:
        scores = scores + mask.to(scores.dtype).log()  # -inf off the mask, log(count) on it
    alpha = drop(torch.softmax(scores, dim=-1), dropout, training)
    return alpha @ v


class SpatialAttention(nn.Module):
    """Multi-head self-attention over the 25 joints of every row, sparse (Eq. 1-3) or full.

    x (N, V, C) -> (N, V, C). `mask` None gives the dense attention of the full
    ablation; otherwise the attention is sparse on `mask` with `kernel` (one of
    KERNELS, see the module docstring), `ops` serving the edges kernel.
    """

    def __init__(self, width: int, heads: int, mask: np.ndarray | None, kernel: str = "auto",
                 ops: SegmentOps | None = None, attention_dropout: float = 0.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        if kernel not in KERNELS:
            raise ValueError(f"unknown sparse kernel {kernel!r}; choose one of {KERNELS}")
        if kernel == "edges" and mask is not None and ops is None:
            raise ValueError("the edges kernel needs segment ops (star.network.scatter.get_backend)")
        self.heads, self.kernel, self.ops, self.attention_dropout = heads, kernel, ops, attention_dropout
        # the rows kernel's planes are (d, M) with M = (H, N) and the fused kernel's tokens (3, d, H): output
        # rows in (3, d, H) order; the other forms apply the same weight as nn.Linear, (N, V, 3, H, d)
        self.qkv = PlaneProjection(width, heads, ("qkv", "depth", "head")) if kernel in ("fused", "rows", "auto") \
            and mask is not None else nn.Linear(width, 3 * width, bias=False)
        self.graph = None if mask is None else NeighbourhoodGraph.from_mask(mask)
        if self.graph is not None:  # buffers, so that model.to(device) moves them: no copy inside a forward
            for name in GRAPH_TENSORS:
                self.register_buffer(f"graph_{name}", getattr(self.graph, name), persistent=False)

    def graph_here(self) -> NeighbourhoodGraph:
        """The neighbourhood with its tensors on the module's device."""
        return replace(self.graph, **{name: getattr(self, f"graph_{name}") for name in GRAPH_TENSORS})

    def kernel_for(self, x: torch.Tensor) -> str:
        """The kernel that runs on `x`: the configured one, or for `auto` the form for x's device."""
        if self.kernel != "auto":
            return self.kernel
        return "gather" if device_form(x) else "fused" if fused.usable(x) else "rows"

    def rows_weight(self) -> torch.Tensor:
        """The projection's weight as `rows_attention` reads its product: output rows (3, d, H) for the fused
        sparse kernel, nn.Linear's (3, H, d) for the full attention."""
        return self.qkv.weight if self.graph is None else self.qkv.ordered_weight()

    def rows_attention(self, qkv: torch.Tensor, n: int, v: int) -> torch.Tensor:
        """The full attention, or the sparse one by the fused kernel, on the projection's rows qkv (N*V, 3C) as
        x rows_weight()^T gives them -> (N, V, C)."""
        c = qkv.shape[1] // 3
        h, d = self.heads, c // self.heads
        if self.graph is None:
            q, k, val = qkv.view(n, v, 3, h, d).permute(2, 0, 3, 1, 4)  # (N, H, V, d) each
            out = dense_attention(q, k, val, None, self.attention_dropout, self.training)
            return out.transpose(1, 2).reshape(n, v, c)  # (N, V, H*d)
        graph = self.graph_here()
        keep = keep_mask((graph.num_edges, n * h), self.attention_dropout, qkv) \
            if self.training and self.attention_dropout > 0 else None  # (E, M), columns (N, H)
        out = fused.sparse_attention(qkv.view(n, v, 3, d, h), graph.rowptr, graph.key, keep)  # (N, V, H, d)
        return out.view(n, v, c)  # (N, V, H*d)

    def projected_attention(self, x: torch.Tensor) -> torch.Tensor:
        """The sparse attention by the fused kernel with the projection inside, q, k and v never written, for
        inference: no dropout and no gradient (STBlock's inference path). x (N, V, C) -> (N, V, C)."""
        n, v, c = x.shape
        graph = self.graph_here()
        out = fused.projected_sparse_attention(x, self.rows_weight(), graph.rowptr, graph.key, self.heads)
        return out.view(n, v, c)  # (N, V, H*d)

    def forward(self, x: torch.Tensor, projected: torch.Tensor | None = None) -> torch.Tensor:
        """`projected`: x rows_weight()^T as rows (N*V, 3C), where the caller made it (`rows_attention` runs)."""
        n, v, c = x.shape
        h, d = self.heads, c // self.heads
        kernel = self.kernel_for(x)
        if projected is not None or self.graph is None or kernel == "fused":
            if projected is None:  # the full attention's nn.Linear called as a module: the MAC counters see it
                rows = x.reshape(n * v, c)
                # (N*V, 3C); the sparse attention's product by the fused kernels' tile products
                projected = self.qkv(rows) if self.graph is None else fused.linear(rows, self.rows_weight())
            return self.rows_attention(projected, n, v)
        graph = self.graph_here()
        dropping = self.training and self.attention_dropout > 0
        if kernel == "gather":
            qkv = F.linear(x.view(n * v, c), self.qkv.weight).view(n, v, 3, h, d)  # (N, V, 3, H, d)
            dropout = self.attention_dropout if dropping else 0.0
            return gathered_attention(qkv[:, :, 0], qkv[:, :, 1:], graph, dropout=dropout).view(n, v, c)  # (N, V, H*d)
        keep = keep_mask((graph.num_edges, n * h), self.attention_dropout, x) if dropping else None  # (E, M), (H, N)
        if kernel == "rows":  # M = (H, N)
            planes = self.qkv(x).view(v, 3, d, h * n)  # (V, 3, d, M): q, k, v planes
            return planes_to_rows(row_attention(*planes.unbind(1), graph, keep), n, v, h)  # (N, V, H*d)
        qkv = F.linear(x, self.qkv.weight).view(n, v, 3, h, d)  # (N, V, 3, H, d)
        q, k, val = qkv.permute(2, 1, 0, 3, 4).reshape(3, v, n * h, d)  # (3, V, M, d)
        out = edge_attention(q, k, val, graph, self.ops, keep)  # (V, M, d)
        return out.view(v, n, c).transpose(0, 1).reshape(n, v, c)  # (N, V, H*d)
