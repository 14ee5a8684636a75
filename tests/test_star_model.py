"""STAR's parts against reference formulas, and the whole model's size, isolation and robustness."""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from star import registry
from star.data.batching import collate_compact
from star.data.synthetic import random_samples
from star.network import STAR, STARConfig, fused
from star.network.dropout import dropout, keep_mask
from star.network.encoding import sinusoidal_encoding
from star.network.features import bone_vectors, parent_index, segment_motion, segment_starts
from star.network.linear_attention import (
    TemporalAttention,
    elu_feature_map,
    padded_linear_attention,
    quadratic_linear_attention,
    segmented_linear_attention,
)
from star.network.pooling import ContextPooling
from star.network.projection import PlaneProjection
from star.network.scatter import BACKENDS, get_backend
from star.network.segments import ClipSegments
from star.network.sparse_attention import (
    NeighbourhoodGraph,
    SpatialAttention,
    dense_attention,
    edge_attention,
    gathered_attention,
    row_attention,
)
from star.network.star import KERNEL_FORMS, FeedForward, kernel_forms
from star.profiling.counting import fvcore_count
from star.skeleton import neighbourhood_mask, power_edge_counts

MASK = neighbourhood_mask(3)
# the fused kernels need a C++ compiler (built on first use); CI and setup.sh machines have one
needs_fused = pytest.mark.skipif(not fused.available(), reason=f"fused kernels not built: {fused.build_error()}")
FUSED = pytest.param("fused", marks=needs_fused)


def inputs(batch):
    return registry.model_inputs(registry.spec("star-64"), batch)


def segments_of(bounds):
    return ClipSegments.from_offsets(torch.tensor(bounds), bounds[-1])


@pytest.mark.parametrize(("name", "classes", "expected"), [
    ("star-64", 60, 426_494), ("star-128", 60, 1_262_462),
    ("star-64-full", 60, 426_494), ("star-128-full", 60, 1_262_462),
    ("star-64-code", 60, 426_494), ("star-128-code", 60, 1_262_462),
    ("star-64", 120, 426_494 + 60 * 129), ("star-128", 120, 1_262_462 + 60 * 129),
])
def test_parameter_counts_match_the_authors_code(name, classes, expected):
    assert sum(p.numel() for p in registry.build(name, classes).parameters()) == expected


def test_the_paper_text_options_change_the_model_as_described():
    paper = STAR(STARConfig(features=("coords",), activation="silu"))
    assert paper.embedding.in_features == 3 and paper.input_norm.num_features == 75
    assert isinstance(paper.blocks[0].spatial.feed_forward[1], torch.nn.SiLU)
    with pytest.raises(ValueError, match="unknown input features"):
        STARConfig(features=("coords", "angles"))
    with pytest.raises(ValueError, match="unknown activation"):
        STARConfig(activation="tanh")
    with pytest.raises(ValueError, match="unknown spatial"):
        STARConfig(spatial="local")


# --- sparse attention (Eq. 1-3) -------------------------------------------------------------

def test_graph_lists_the_neighbourhood_by_row():
    graph = NeighbourhoodGraph.from_mask(MASK)
    assert graph.num_edges == 191 and graph.rowptr[-1] == 191
    for i in range(25):
        assert graph.neighbours[i] == np.flatnonzero(MASK[i]).tolist()
        assert i in graph.neighbours[i]  # hop 0 is in the neighbourhood
        start = graph.starts[i]
        assert graph.key[start:start + len(graph.neighbours[i])].tolist() == graph.neighbours[i]
        assert (graph.query[start:start + len(graph.neighbours[i])] == i).all()
    # slot-major, the rows kernel's order: slot s is the s-th edge of every joint that has one, each edge once
    degrees = graph.rowptr.diff()
    assert sorted(graph.edge_by_slot.tolist()) == list(range(191)) and sum(graph.slot_sizes) == 191
    for s, part in enumerate(graph.slots()):
        joints = graph.order[:part.stop - part.start]
        assert set(joints.tolist()) == set(torch.nonzero(degrees > s).flatten().tolist())
        assert graph.edge_by_slot[part].tolist() == (graph.rowptr[joints] + s).tolist()
        assert graph.row_by_slot[part].tolist() == list(range(len(joints)))
    lonely = np.eye(3, dtype=bool)
    lonely[1, 1] = False
    with pytest.raises(ValueError, match=r"joints \[1\] have no edge"):
        NeighbourhoodGraph.from_mask(lonely)


def _planes(v=25, d=4, m=6, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(v, d, m, dtype=dtype, generator=generator) * 2 for _ in range(3)]


def test_sparse_kernels_equal_dense_softmax_with_the_neighbourhood_mask():
    graph = NeighbourhoodGraph.from_mask(MASK)
    q, k, v = _planes()  # (V, d, M)
    as_rows = [t.permute(2, 0, 1) for t in (q, k, v)]  # (M, V, d)
    reference = dense_attention(*as_rows, mask=torch.as_tensor(MASK)).permute(1, 2, 0)  # (V, d, M)
    torch.testing.assert_close(row_attention(q, k, v, graph), reference)
    as_edges = [t.transpose(1, 2) for t in (q, k, v)]  # (V, M, d)
    for backend in BACKENDS:
        torch.testing.assert_close(edge_attention(*as_edges, graph, get_backend(backend)).transpose(1, 2), reference)
    unmasked = dense_attention(*as_rows).permute(1, 2, 0)
    assert not torch.allclose(unmasked, reference)  # the mask matters for these inputs


@pytest.mark.parametrize("counts", [MASK.astype(int), power_edge_counts(3, "stgcn")], ids=["set", "repeated"])
def test_gather_kernel_equals_masked_dense_and_the_rows_kernel_with_gradients(counts):
    """float32 to 1e-5: against the masked dense softmax, and with a dropout mask against the rows kernel."""
    graph = NeighbourhoodGraph.from_mask(counts)
    generator = torch.Generator().manual_seed(0)
    n, h, d = 3, 2, 4
    q, k, v = (torch.randn(n, 25, h, d, generator=generator).requires_grad_() for _ in range(3))  # (N, V, H, d)
    weights = torch.randn(n, 25, h, d, generator=generator)
    gathered = gathered_attention(q, torch.stack([k, v], dim=2), graph)
    heads_first = [t.transpose(1, 2) for t in (q, k, v)]  # (N, H, V, d)
    dense = dense_attention(*heads_first, mask=torch.as_tensor(counts)).transpose(1, 2)
    torch.testing.assert_close(gathered, dense, atol=1e-5, rtol=1e-5)
    for got, want in zip(torch.autograd.grad((gathered * weights).sum(), (q, k, v)),
                         torch.autograd.grad((dense * weights).sum(), (q, k, v)), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    keep = (torch.rand(graph.num_edges, h * n, generator=generator) > 0.4) / 0.6  # (E, M), M = (H, N)
    keep_slots = keep[graph.slot_edges()].view(25, -1, h, n).permute(3, 0, 1, 2)  # (N, V, D, H)
    dropped = gathered_attention(q, torch.stack([k, v], dim=2), graph, keep_slots)
    torch.manual_seed(1)  # the model's form: the suite's dropout draws the mask, as it would from ones of that shape
    by_rate = gathered_attention(q, torch.stack([k, v], dim=2), graph, dropout=0.4)
    torch.manual_seed(1)
    drawn = dropout(torch.ones(n, 25, graph.table.shape[1], h), 0.4, True)  # (N, V, D, H)
    torch.testing.assert_close(by_rate, gathered_attention(q, torch.stack([k, v], dim=2), graph, drawn))
    assert not torch.allclose(by_rate, gathered)
    with pytest.raises(ValueError, match="a dropout mask or a dropout rate, not both"):
        gathered_attention(q, torch.stack([k, v], dim=2), graph, drawn, dropout=0.4)
    planes = [t.permute(1, 3, 2, 0).reshape(25, d, h * n) for t in (q, k, v)]  # (V, d, M)
    rows = row_attention(*planes, graph, keep).view(25, d, h, n).permute(3, 0, 2, 1)  # (N, V, H, d)
    torch.testing.assert_close(dropped, rows, atol=1e-5, rtol=1e-5)
    for got, want in zip(torch.autograd.grad((dropped * weights).sum(), (q, k, v)),
                         torch.autograd.grad((rows * weights).sum(), (q, k, v)), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def _token_rows(n, d, h, dtype=torch.float32, seed=0, heads_last=True):
    """Projections as F.linear writes them: (N, V, 3, d, H), or (N, V, 3, H, d) with heads_last False."""
    shape = (n, 25, 3, d, h) if heads_last else (n, 25, 3, h, d)
    return torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def _as_planes(qkv):
    """(N, V, 3, d, H) -> the rows kernel's q, k, v planes (V, d, M), M = (H, N)."""
    n, v, _, d, h = qkv.shape
    return qkv.permute(2, 1, 3, 4, 0).reshape(3, v, d, h * n).unbind(0)


@needs_fused
@pytest.mark.parametrize("counts", [MASK.astype(int), power_edge_counts(3, "stgcn")], ids=["set", "repeated"])
@pytest.mark.parametrize(("n", "d", "h"), [(75, 4, 2), (50, 4, 3), (9, 8, 8), (9, 16, 8)],
                         ids=["3-blocks", "3-heads", "star-64", "star-128"])
def test_fused_sparse_kernel_equals_masked_dense_and_the_rows_kernel_with_gradients(counts, n, d, h):
    """float32 to 1e-5 of the references in float64, on rows in the model's layout; 75 rows of 2 heads: two
    full blocks of the kernel's 64 columns and a partial one; 3 heads, which do not divide 64: blocks of 21
    rows (63 columns); 8 heads of depth 8 and 16 as STAR-64's and STAR-128's."""
    graph = NeighbourhoodGraph.from_mask(counts)
    qkv = _token_rows(n, d, h).requires_grad_()  # (N, V, 3, d, H)
    exact = qkv.detach().double().requires_grad_()
    weights = torch.randn(n, 25, h, d, generator=torch.Generator().manual_seed(2))
    keep = (torch.rand(graph.num_edges, n * h, generator=torch.Generator().manual_seed(1)) > 0.4) / 0.6  # (E, N H)
    q, k, v = exact.permute(2, 0, 4, 1, 3)  # (N, H, V, d) each
    by_head = keep.double().view(-1, n, h).transpose(1, 2).reshape(-1, h * n)  # the rows kernel's columns: (H, N)
    rows = row_attention(*_as_planes(exact), graph, by_head).view(25, d, h, n).permute(3, 0, 2, 1)  # (N, V, H, d)
    references = {None: dense_attention(q, k, v, mask=torch.as_tensor(counts)).transpose(1, 2), "dropout": rows}
    for case, reference in references.items():
        out = fused.sparse_attention(qkv, graph.rowptr, graph.key, keep if case else None)  # (N, V, H, d)
        torch.testing.assert_close(out, reference.float(), atol=1e-5, rtol=1e-5)
        (got,) = torch.autograd.grad((out * weights).sum(), qkv)
        (want,) = torch.autograd.grad((reference * weights.double()).sum(), exact)
        torch.testing.assert_close(got, want.float(), atol=1e-5, rtol=1e-5)
        with torch.no_grad():  # no backward to come: the attention weights are not written, the output is the same
            assert torch.equal(fused.sparse_attention(qkv, graph.rowptr, graph.key, keep if case else None), out)
    _, weights_kept = torch.ops.star_fused.sparse_attention_forward(qkv.detach(), graph.rowptr, graph.key, None,
                                                                    0.5, False)
    assert weights_kept.shape == (0, n * h)


@needs_fused
@pytest.mark.parametrize("d", [8, 16], ids=["star-64", "star-128"])
def test_fused_sparse_forward_in_float64_and_for_a_joint_without_edges(d):
    """STAR's shapes (8 heads of depth 8 and 16) in float64, whose lines of 8 heads are twice the bytes of
    float32's: to 1e-12 of the masked dense softmax, and 0 for a joint that attends to nothing (joint 3's edges
    removed; the dense softmax over no keys is NaN)."""
    counts = MASK.astype(int)
    counts[3] = 0  # (NeighbourhoodGraph refuses such a graph: the kernel's CSR is built here)
    rowptr = torch.as_tensor(np.concatenate([[0], np.cumsum(counts.sum(1))]), dtype=torch.int64)
    keys = torch.as_tensor(np.nonzero(counts)[1], dtype=torch.int64).contiguous()
    qkv = _token_rows(7, d, 8, dtype=torch.float64)  # (N, V, 3, d, H)
    out, _ = torch.ops.star_fused.sparse_attention_forward(qkv, rowptr, keys, None, d ** -0.5, False)
    q, k, v = qkv.permute(2, 0, 4, 1, 3)  # (N, H, V, d) each
    reference = dense_attention(q, k, v, mask=torch.as_tensor(counts)).transpose(1, 2)  # (N, V, H, d)
    others = [j for j in range(25) if j != 3]
    torch.testing.assert_close(out[:, others], reference[:, others], atol=1e-12, rtol=1e-12)
    assert torch.equal(out[:, 3], torch.zeros_like(out[:, 3]))


@needs_fused
@pytest.mark.parametrize("eps", [1e-6, 0.0])
@pytest.mark.parametrize(("h", "d"), [(2, 5), (8, 8), (8, 16)], ids=["any", "star-64", "star-128"])
def test_fused_linear_kernel_equals_the_quadratic_form_with_its_gradients(eps, h, d):
    """float32 to 1e-5 of the quadratic form in float64 on the raw projections (phi inside the kernel), clips of
    1 to 9 rows (the kernel sums over tiles of 8 rows: part of one, one and a part); the kernel's general form
    and its two specialised ones (8 heads of depth 8 and 16, sums in registers)."""
    bounds = [0, 3, 4, 13, 20]
    qkv = _token_rows(20, d, h, heads_last=False).requires_grad_()  # (N, V, 3, H, d)
    exact = qkv.detach().double().requires_grad_()
    weights = torch.randn(20, 25, h, d, generator=torch.Generator().manual_seed(1))
    out = fused.linear_attention(qkv, bounds, 0.7, eps)  # (N, V, H, d)
    segment_ids = torch.repeat_interleave(torch.arange(4), torch.tensor(bounds).diff())
    q, k, v = exact.permute(2, 1, 3, 0, 4).reshape(3, 25 * h, 20, d)  # (G, N, d) each
    reference = quadratic_linear_attention(elu_feature_map(q * 0.7), elu_feature_map(k * 0.7), v, segment_ids, eps)
    reference = reference.view(25, h, 20, d).permute(2, 0, 1, 3)  # (N, V, H, d)
    torch.testing.assert_close(out, reference.float(), atol=1e-5, rtol=1e-5)
    (got,) = torch.autograd.grad((out * weights).sum(), qkv)
    (want,) = torch.autograd.grad((reference * weights.double()).sum(), exact)
    torch.testing.assert_close(got, want.float(), atol=1e-5, rtol=1e-5)
    exact_out = fused.linear_attention(exact, bounds, 0.7, eps)  # the kernel in float64: its blocks of 8 doubles
    torch.testing.assert_close(exact_out, reference, atol=1e-10, rtol=1e-10)
    (exact_got,) = torch.autograd.grad((exact_out * weights.double()).sum(), exact)
    torch.testing.assert_close(exact_got, want, atol=1e-10, rtol=1e-10)


@needs_fused
def test_fused_linear_kernel_keeps_a_nan_query_to_its_own_output():
    """A NaN query gives NaN in its own token's head of the output and changes nothing else, as in Eq. 6: its
    phi comes from the kernels' exp, which has no NaN test of its own (star-128's float32 kernel)."""
    qkv = _token_rows(7, 16, 8, heads_last=False)  # (N, V, 3, H, d)
    clean = fused.linear_attention(qkv, [0, 3, 7], 0.7, 1e-6)
    qkv[4, 2, 0, 5, 3] = float("nan")  # row 4, joint 2, query, head 5
    out = fused.linear_attention(qkv, [0, 3, 7], 0.7, 1e-6)
    assert out[4, 2, 5].isnan().all()
    out[4, 2, 5] = clean[4, 2, 5]
    assert torch.equal(out, clean)


@needs_fused
def test_fused_kernel_gradients_match_finite_differences():
    graph = NeighbourhoodGraph.from_mask(MASK)
    qkv = _token_rows(1, 3, 2, torch.float64).requires_grad_()  # 450 inputs: gradcheck perturbs each in turn
    keep = (torch.rand(graph.num_edges, 2, generator=torch.Generator().manual_seed(1)) > 0.4).double() / 0.6
    assert torch.autograd.gradcheck(lambda p: fused.sparse_attention(p, graph.rowptr, graph.key, keep), (qkv,))
    qkv = torch.randn(7, 2, 3, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert torch.autograd.gradcheck(lambda p: fused.linear_attention(p, [0, 2, 7], 0.8, 1e-6), (qkv.requires_grad_(),))


@needs_fused
def test_fused_kernels_refuse_what_they_cannot_take_and_auto_falls_back(monkeypatch):
    graph = NeighbourhoodGraph.from_mask(MASK)
    qkv = _token_rows(6, 4, 2)  # (N, V, 3, d, H)
    with pytest.raises(RuntimeError, match="qkv must be contiguous"):
        fused.sparse_attention(qkv.transpose(3, 4), graph.rowptr, graph.key)
    with pytest.raises(RuntimeError, match=r"keep must be \(E, N H\) = \(191, 12\) in qkv's dtype"):
        fused.sparse_attention(qkv, graph.rowptr, graph.key, torch.ones(191, 12, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="keys must be joints in"):
        fused.sparse_attention(qkv, graph.rowptr, graph.key + 1)
    with pytest.raises(RuntimeError, match="rowptr must have V"):
        fused.sparse_attention(qkv, graph.rowptr[:-1], graph.key)
    falling = graph.rowptr.clone()
    falling[1] = falling[2] + 1
    with pytest.raises(RuntimeError, match="rowptr must rise from 0 to the 191 keys"):
        fused.sparse_attention(qkv, falling, graph.key)
    with pytest.raises(RuntimeError, match="at most 64 heads"):
        fused.sparse_attention(_token_rows(1, 1, 65), graph.rowptr, graph.key)
    with pytest.raises(ValueError, match="CPU operators, got a tensor on meta"):
        fused.sparse_attention(qkv.to("meta"), graph.rowptr, graph.key)
    with pytest.raises(RuntimeError, match="bounds must run from 0 to 6"):
        fused.linear_attention(qkv, [0, 5], 1.0, 0.0)
    with pytest.raises(RuntimeError, match=r"qkv must be \(N, V, 3, H, d\)"):
        fused.linear_attention(qkv[:, :, :2], [0, 6], 1.0, 0.0)
    spatial, temporal = SpatialAttention(16, 4, MASK), TemporalAttention(16, 4)
    x = torch.empty(1, 25, 16)
    assert (spatial.kernel_for(x), temporal.kernel_for(x.double())) == ("fused", "fused")
    assert (spatial.kernel_for(x.half()), temporal.kernel_for(x.bfloat16())) == ("rows", "split")
    with torch.autocast("cpu", torch.bfloat16):  # float32 input, bfloat16 projections
        assert (spatial.kernel_for(x), temporal.kernel_for(x)) == ("rows", "split")
    monkeypatch.setattr(fused, "available", lambda: False)  # no compiler: the ATen forms
    assert (spatial.kernel_for(x), temporal.kernel_for(x)) == KERNEL_FORMS["aten"]


def test_dense_attention_is_softmax_of_scaled_scores():
    q, k, v = (t.permute(2, 0, 1) for t in _planes())
    scores = torch.einsum("mid,mjd->mij", q, k) / math.sqrt(q.shape[-1])
    torch.testing.assert_close(dense_attention(q, k, v), torch.softmax(scores, -1) @ v)


def test_sparse_scores_are_stable_for_large_logits():
    graph = NeighbourhoodGraph.from_mask(MASK)
    q, k, v = (t * 1000 for t in _planes(dtype=torch.float32))
    assert torch.isfinite(row_attention(q, k, v, graph)).all()
    with torch.no_grad():  # traced (slot by slot), each query's maximum is subtracted as well
        traced = torch.jit.trace(lambda a, b, c: row_attention(a, b, c, graph), (q, k, v))
        torch.testing.assert_close(traced(q, k, v), row_attention(q, k, v, graph))
    assert torch.isfinite(fused.sparse_attention(_token_rows(3, 4, 2) * 1000, graph.rowptr, graph.key)).all()
    as_edges = [t.transpose(1, 2) for t in (q, k, v)]  # exp(score) alone would overflow for these
    for backend in BACKENDS:
        assert torch.isfinite(edge_attention(*as_edges, graph, get_backend(backend))).all()


class _Rows(nn.Module):
    """The rows kernel as a module, for a FLOP counter to trace."""

    def __init__(self, graph: NeighbourhoodGraph, keep: torch.Tensor | None):
        super().__init__()
        self.graph, self.keep = graph, keep

    def forward(self, q, k, v):
        return row_attention(q, k, v, self.graph, self.keep)


@pytest.mark.parametrize("counts", [MASK.astype(int), power_edge_counts(3, "stgcn")], ids=["set", "repeated"])
def test_traced_rows_kernel_makes_one_call_per_slot_and_the_same_numbers(counts):
    """A trace (the FLOP counters') records every call: traced, the rows kernel runs slot by slot."""
    graph = NeighbourhoodGraph.from_mask(counts)
    q, k, v = _planes()
    keep = (torch.rand(graph.num_edges, q.shape[-1], dtype=torch.float64,
                       generator=torch.Generator().manual_seed(1)) > 0.4) / 0.6
    for mask in (None, keep):
        with torch.no_grad():
            traced = torch.jit.trace(lambda a, b, c, mask=mask: row_attention(a, b, c, graph, mask), (q, k, v))
            torch.testing.assert_close(traced(q, k, v), row_attention(q, k, v, graph, mask), rtol=1e-12, atol=1e-12)
        products = [node.kind() for node in traced.graph.nodes() if node.kind().startswith("aten::linalg_vecdot")]
        assert len(products) == len(graph.slot_sizes) < graph.num_edges
        # and the counters see the per-edge form's products, operator by operator
        (v_joints, d, m), edges = q.shape, graph.num_edges
        counted = fvcore_count(_Rows(graph, mask), (q, k, v)).by_operator
        assert counted == {"linalg_vecdot": edges * d * m, "addcmul_": (edges - v_joints) * d * m,
                           "mul": v_joints * d * m + (0 if mask is None else edges * m)}


def test_row_kernel_gradient_is_autograds_through_the_masked_dense_softmax_with_and_without_dropout():
    """float64 to 1e-12: the hand-written backward against autograd through the dense reference, the dropout
    mask laid out on the (V, V) pairs (each pair an edge once here, so a pair has one mask entry)."""
    graph = NeighbourhoodGraph.from_mask(MASK)
    q, k, v = (t.requires_grad_() for t in _planes())  # (V, d, M)
    m = q.shape[-1]
    weights = torch.randn(q.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    keep = (torch.rand(graph.num_edges, m, generator=torch.Generator().manual_seed(1)) > 0.4).double() / 0.6
    on_pairs = torch.zeros(m, 25, 25, dtype=torch.float64)
    on_pairs[:, graph.query, graph.key] = keep.T  # (M, V, V)
    as_rows = [t.permute(2, 0, 1) for t in (q, k, v)]  # (M, V, d)
    scores = as_rows[0] @ as_rows[1].transpose(1, 2) * q.shape[1] ** -0.5 + torch.as_tensor(MASK).log()
    alpha = torch.softmax(scores, dim=-1)  # (M, V, V)
    for mask, dense_weights in ((None, alpha), (keep, alpha * on_pairs)):
        reference = (dense_weights @ as_rows[2]).permute(1, 2, 0)  # (V, d, M)
        out = row_attention(q, k, v, graph, mask)
        torch.testing.assert_close(out, reference, rtol=1e-12, atol=1e-12)
        for got, want in zip(torch.autograd.grad((out * weights).sum(), (q, k, v)),
                             torch.autograd.grad((reference * weights).sum(), (q, k, v), retain_graph=True),
                             strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_backends_agree_on_edge_attention_values_and_gradients():
    graph = NeighbourhoodGraph.from_mask(MASK)
    results = []
    for backend in BACKENDS:
        q, k, v = (t.transpose(1, 2).contiguous().requires_grad_() for t in _planes(dtype=torch.float32, m=50))
        out = edge_attention(q, k, v, graph, get_backend(backend))
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out, q.grad, k.grad, v.grad))
    for torch_result, pyg_result in zip(*results, strict=True):
        torch.testing.assert_close(torch_result, pyg_result)


@pytest.mark.parametrize("backend", BACKENDS)
def test_segment_ops_equal_python_loops(backend):
    ops = get_backend(backend)
    src = torch.randn(10, 3)
    ptr = torch.tensor([0, 4, 5, 10])
    segments = [src[a:b] for a, b in zip(ptr[:-1], ptr[1:], strict=True)]
    torch.testing.assert_close(ops.sum(src, ptr), torch.stack([s.sum(0) for s in segments]))
    torch.testing.assert_close(ops.max(src, ptr), torch.stack([s.max(0).values for s in segments]))
    ids = torch.tensor([0, 0, 0, 0, 1, 2, 2, 2, 2, 2])
    torch.testing.assert_close(ops.sum(src, ptr, ids), torch.stack([s.sum(0) for s in segments]))
    torch.testing.assert_close(ops.expand(ops.sum(src, ptr), ptr, 10),
                               torch.cat([s.sum(0).expand_as(s) for s in segments]))


def test_unknown_backend_and_kernel_are_refused():
    with pytest.raises(ValueError, match="unknown scatter back-end 'numpy'"):
        get_backend("numpy")
    with pytest.raises(ValueError, match="unknown sparse kernel"):
        SpatialAttention(64, 8, MASK, kernel="csr")
    with pytest.raises(ValueError, match="not divisible"):
        SpatialAttention(60, 8, MASK)


@pytest.mark.parametrize("kernel", [FUSED, "rows", "edges"])
def test_spatial_module_sparse_equals_masked_dense_and_full_equals_unmasked(kernel):
    torch.manual_seed(0)
    x = torch.randn(7, 25, 16)
    sparse = SpatialAttention(16, 4, MASK, kernel, get_backend("torch")).eval()
    full = SpatialAttention(16, 4, None).eval()
    full.load_state_dict(sparse.state_dict())
    q, k, v = full.qkv(x).view(7, 25, 3, 4, 4).permute(2, 0, 3, 1, 4)  # (N, H, V, d) each, nn.Linear
    with torch.no_grad():
        masked = dense_attention(q, k, v, torch.as_tensor(MASK)).transpose(1, 2).reshape(7, 25, 16)
        unmasked = dense_attention(q, k, v).transpose(1, 2).reshape(7, 25, 16)
        torch.testing.assert_close(sparse(x), masked)
        torch.testing.assert_close(full(x), unmasked)


def test_attention_dropout_drops_only_in_training():
    torch.manual_seed(0)
    module = SpatialAttention(16, 4, MASK, attention_dropout=0.5)
    x = torch.randn(5, 25, 16)
    module.train()
    assert not torch.equal(module(x), module(x))
    module.eval()
    assert torch.equal(module(x), module(x))


@needs_fused
def test_fused_dropout_multiplies_by_the_seeds_mask_forward_and_backward_without_keeping_it():
    x = torch.randn(30, 70).t().requires_grad_()  # not contiguous: the mask follows the logical order
    grad = torch.randn(30, 70).t()
    torch.manual_seed(3)
    out = fused.dropout(x, 0.4)
    torch.manual_seed(3)
    mask = fused.keep_mask((70, 30), 0.4, x.dtype)
    assert torch.equal(out, x * mask) and 0.3 < (mask == 0).float().mean() < 0.5
    assert out.grad_fn.saved_tensors == ()  # nothing but the seed kept for the backward pass
    (got,) = torch.autograd.grad(out, x, grad)
    assert torch.equal(got, grad * mask)
    again = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: (torch.manual_seed(0), fused.dropout(t, 0.4))[1], (again,))


@needs_fused
@pytest.mark.parametrize("p", [0.0, 0.4])
def test_fused_add_norm_is_layer_norm_of_the_residual_sum_with_the_seeds_dropout(p):
    """float32 to 1e-5 of the unfused form in float64 (layer norm of x + dropout(y) from the same seed),
    forward and the gradients of x, y, weight and bias; the sum is kept only where a gradient will be asked
    for; float64 by finite differences."""
    generator = torch.Generator().manual_seed(0)
    norm = torch.nn.LayerNorm(64)
    with torch.no_grad():
        norm.weight.normal_(generator=generator), norm.bias.normal_(generator=generator)
    x, y, grad = (torch.randn(6, 25, 64, generator=generator) for _ in range(3))  # 150 rows: 50 chunks of 3
    x.requires_grad_(), y.requires_grad_()
    torch.manual_seed(3)
    out = fused.add_norm(x, y, norm, p)
    exact = copy.deepcopy(norm).double()
    inputs = [t.detach().double().requires_grad_() for t in (x, y)]
    torch.manual_seed(3)
    reference = exact(inputs[0] + dropout(inputs[1], p, True))  # the same multipliers: drawn from the same seed
    torch.testing.assert_close(out, reference.float(), atol=1e-5, rtol=1e-5)
    got = torch.autograd.grad(out, (x, y, norm.weight, norm.bias), grad)
    want = torch.autograd.grad(reference, (*inputs, exact.weight, exact.bias), grad.double())
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b.float(), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.manual_seed(3)
        assert torch.equal(fused.add_norm(x, y, norm, p), out)
    kept = torch.ops.star_fused.add_norm_forward(x.detach(), y.detach(), norm.weight.detach(), norm.bias.detach(), p,
                                                 1, 1e-5, False)
    assert [t.numel() for t in kept[1:]] == [0, 0, 0]
    torch.manual_seed(3)  # only the norm's weight and bias asking for gradients: the sum is still kept for them
    (got,) = torch.autograd.grad(fused.add_norm(x.detach(), y.detach(), norm, p), norm.weight, grad)
    torch.testing.assert_close(got, want[2].float(), atol=1e-5, rtol=1e-5)
    small = [torch.randn(4, 6, dtype=torch.float64, generator=generator, requires_grad=True) for _ in range(2)]
    affine = [torch.randn(6, dtype=torch.float64, generator=generator, requires_grad=True) for _ in range(2)]
    assert torch.autograd.gradcheck(lambda *t: fused._AddNorm.apply(*t, p, 77, 1e-5, True), (*small, *affine))


@needs_fused
@pytest.mark.parametrize("seed", [12345, -2**63 + 7, 2**40 + 3])  # high words 0, 2^31 and 256
def test_fused_keep_mask_is_the_counter_hash_of_seed_and_index(seed):
    """An independent numpy reference: keep i iff mix(mix(i ^ low) + high + (i >> 32)) >= p 2^32, mix being
    MurmurHash3's 32-bit finaliser; fixed, so that a run's masks stay what they were for its seed."""
    def mix(h):
        h = h ^ (h >> 16)
        h = h * np.uint32(0x85EBCA6B)
        h = h ^ (h >> 13)
        h = h * np.uint32(0xC2B2AE35)
        return h ^ (h >> 16)

    index = np.arange(5000, dtype=np.uint64)
    low, high = np.uint32(seed & 0xFFFFFFFF), np.uint32((seed >> 32) & 0xFFFFFFFF)
    with np.errstate(over="ignore"):
        hashed = mix(mix(index.astype(np.uint32) ^ low) + high + (index >> np.uint64(32)).astype(np.uint32))
    expected = np.where(hashed >= np.uint32(0.3 * 2**32), np.float32(1 / 0.7), np.float32(0))
    mask = torch.ops.star_fused.keep_mask([5000], 0.3, seed, torch.float32)
    assert np.array_equal(mask.numpy(), expected)


@pytest.mark.parametrize("p", [0.0, 0.4], ids=["keep all", "drop 0.4"])
@pytest.mark.parametrize("form", [FUSED, "uniform"])
def test_dropout_masks_keep_each_element_independently_with_probability_1_minus_p(form, p, monkeypatch):
    if form == "uniform":
        monkeypatch.setattr(fused, "usable", lambda x: False)
    like = torch.empty(0)
    torch.manual_seed(0)
    mask = keep_mask((400, 500), p, like)
    assert mask.dtype == like.dtype and mask.shape == (400, 500)
    assert set(mask.unique().tolist()) <= {0.0, torch.tensor(1 / (1 - p)).item()}  # 1 / (1 - p) in float32
    kept = (mask > 0).double().flatten()
    assert abs(kept.mean().item() - (1 - p)) < 0.005  # 4.5 standard deviations at p = 0.4
    if p:
        for lag in (1, 500):  # neighbours in a row and in a column draw independently
            assert abs(torch.corrcoef(torch.stack([kept[:-lag], kept[lag:]]))[0, 1].item()) < 0.01
        assert not torch.equal(keep_mask((400, 500), p, like), mask)  # the next draw is another mask
    torch.manual_seed(0)
    assert torch.equal(keep_mask((400, 500), p, like), mask)  # the seed decides the mask


# --- segmented linear attention (Eq. 5-6) ---------------------------------------------------

def test_segmented_linear_attention_equals_the_quadratic_form_per_segment():
    generator = torch.Generator().manual_seed(0)
    bounds = [0, 3, 4, 11, 20]
    q, k, v = (torch.randn(6, 20, 5, dtype=torch.float64, generator=generator) for _ in range(3))
    q, k = elu_feature_map(q), elu_feature_map(k)
    segment_ids = torch.repeat_interleave(torch.arange(4), torch.tensor(bounds).diff())
    fast = segmented_linear_attention(q.mT, k.mT, v.mT, bounds).mT  # it takes time innermost: (G, d, N)
    torch.testing.assert_close(fast, quadratic_linear_attention(q, k, v, segment_ids))
    # and each segment alone is ordinary linear attention phi(Q) (phi(K)^T V) / phi(Q) sum phi(K)
    a, b = bounds[2], bounds[3]
    alone = (q[:, a:b] @ (k[:, a:b].transpose(1, 2) @ v[:, a:b])) / (q[:, a:b] @ k[:, a:b].sum(1, keepdim=True)
                                                                      .transpose(1, 2))
    torch.testing.assert_close(fast[:, a:b], alone, atol=1e-9, rtol=1e-6)


def test_elu_feature_map_is_positive_where_float32_can_say_so():
    assert (elu_feature_map(torch.linspace(-15, 50, 131)) > 0).all()
    assert (elu_feature_map(torch.tensor([-200.0])) == 0).all()  # exp underflows: the eps keeps 0/0 away
    torch.testing.assert_close(elu_feature_map(torch.tensor([2.0, 0.0])), torch.tensor([3.0, 1.0]))


@pytest.mark.parametrize("kernel", [FUSED, "split", "padded"])
def test_temporal_module_equals_eq6_on_linear_projections(kernel):
    torch.manual_seed(0)
    module = TemporalAttention(16, 4, kernel=kernel).eval()
    x, bounds = torch.randn(12, 25, 16), segments_of([0, 5, 12])
    qkv = (x @ module.qkv.weight.T).view(12, 25, 3, 4, 4).permute(2, 1, 3, 0, 4).reshape(3, 100, 12, 4)  # (3, G, N, d)
    q, k = elu_feature_map(qkv[0] * 4 ** -0.25), elu_feature_map(qkv[1] * 4 ** -0.25)
    reference = quadratic_linear_attention(q, k, qkv[2], torch.tensor([0] * 5 + [1] * 7), module.eps)  # (G, N, d)
    reference = reference.view(25, 4, 12, 4).permute(2, 0, 1, 3).reshape(12, 25, 16)  # (N, V, H*d)
    with torch.no_grad():
        torch.testing.assert_close(module(x, bounds), reference)


def test_plane_projection_holds_linear_weights_in_any_row_order():
    torch.manual_seed(0)
    x = torch.randn(7, 25, 16)
    projection = PlaneProjection(16, 4, ("depth", "qkv", "head"))
    expected = (x @ projection.weight.T).view(7, 25, 3, 4, 4).permute(1, 4, 2, 3, 0).reshape(25, 48, 7)  # (V, d3H, N)
    with torch.no_grad():
        torch.testing.assert_close(projection(x), expected)
    assert set(projection.state_dict()) == {"weight"}
    with pytest.raises(ValueError, match="permutation"):
        PlaneProjection(16, 4, ("qkv", "qkv", "depth"))


@pytest.mark.parametrize("kernel", [FUSED, "split", "padded"])
def test_temporal_module_never_mixes_segments(kernel):
    torch.manual_seed(0)
    module = TemporalAttention(16, 4, kernel=kernel).eval()
    x = torch.randn(12, 25, 16)
    bounds, one = segments_of([0, 5, 12]), segments_of([0, 12])
    changed = x.clone()
    changed[5:] = torch.randn(7, 25, 16)
    with torch.no_grad():
        torch.testing.assert_close(module(x, bounds)[:5], module(changed, bounds)[:5])
        assert not torch.allclose(module(x, one)[:5], module(changed, one)[:5])


@pytest.mark.parametrize("eps", [1e-6, 0.0])
def test_padded_linear_attention_equals_the_quadratic_form_with_its_gradients(eps):
    """float32 to 1e-5, forward and backward, clips of 1 to 9 rows (a one-row clip pads most)."""
    generator = torch.Generator().manual_seed(0)
    bounds = [0, 3, 4, 13, 20]
    qkv = torch.randn(20, 5, 3, 2, 3, generator=generator, requires_grad=True)  # (N, V, 3, H, d)
    weights = torch.randn(20, 5, 2, 3, generator=generator)
    padded = padded_linear_attention(qkv, segments_of(bounds), 0.7, eps)  # (N, V, H, d)
    (grad,) = torch.autograd.grad((padded * weights).sum(), qkv)
    groups = qkv.permute(2, 1, 3, 0, 4).reshape(3, 10, 20, 3)  # (3, G, N, d), G = (V, H)
    segment_ids = torch.repeat_interleave(torch.arange(4), torch.tensor(bounds).diff())
    reference = quadratic_linear_attention(elu_feature_map(groups[0] * 0.7), elu_feature_map(groups[1] * 0.7),
                                           groups[2], segment_ids, eps)
    reference = reference.view(5, 2, 20, 3).permute(2, 0, 1, 3)  # (N, V, H, d)
    (expected,) = torch.autograd.grad((reference * weights).sum(), qkv)
    torch.testing.assert_close(padded, reference, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad, expected, atol=1e-5, rtol=1e-5)


# --- positional encoding, pooling, features -------------------------------------------------

def test_positional_encoding_is_vaswani_and_restarts_with_positions():
    positions = torch.tensor([0, 1, 2, 0, 1, 5])
    pe = sinusoidal_encoding(positions, 8)
    for row, t in enumerate(positions.tolist()):
        for i in range(4):
            assert pe[row, 2 * i].item() == pytest.approx(math.sin(t / 10000 ** (2 * i / 8)), abs=1e-6)
            assert pe[row, 2 * i + 1].item() == pytest.approx(math.cos(t / 10000 ** (2 * i / 8)), abs=1e-6)
    torch.testing.assert_close(pe[3:5], pe[0:2])
    with pytest.raises(ValueError, match="even width"):
        sinusoidal_encoding(positions, 7)


@pytest.mark.parametrize(("weights", "reduce"), [("joint", "mean"), ("frame", "sum"), ("joint", "sum"),
                                                ("frame", "mean")])
@pytest.mark.parametrize("form", ["module", FUSED])
def test_context_pooling_follows_equation_7(weights, reduce, form):
    """The module and its fused kernel for inference (star.network.fused.context_pooling), against Eq. 7 written
    out clip by clip."""
    torch.manual_seed(0)
    pooling = ContextPooling(4, get_backend("torch"), weights, reduce)
    x = torch.randn(7, 25, 4)
    with torch.no_grad():
        out = pooling(x, segments_of([0, 3, 7])) if form == "module" else fused.context_pooling(x, [0, 3, 7], pooling)
    for clip, (a, b) in enumerate([(0, 3), (3, 7)]):
        rows = x[a:b]  # (F, V, D)
        context = torch.tanh(rows.mean(0) @ pooling.weight)  # (V, D)
        if weights == "joint":
            attention = torch.sigmoid((rows * context).sum(-1, keepdim=True))
        else:
            attention = torch.sigmoid((rows * context).sum((-2, -1), keepdim=True))
        expected = (attention * rows).mean(0) if reduce == "mean" else (attention * rows).sum(0)
        torch.testing.assert_close(out[clip], expected.detach())


def test_bones_and_motion_follow_their_definitions():
    x = torch.randn(7, 25, 3)
    parents = torch.as_tensor(parent_index())
    bones = bone_vectors(x, parents)
    assert (bones[:, 20] == 0).all()  # the root, spine shoulder
    torch.testing.assert_close(bones[:, 0], x[:, 0] - x[:, 1])  # spine base hangs from spine middle
    torch.testing.assert_close(bones[:, 21], x[:, 21] - x[:, 7])  # left hand tip from left hand
    # tracks: rows 0-2 (clip 0, person 0), row 3 (clip 0, person 1, one frame), rows 4-6 (clip 1)
    starts = segment_starts(torch.tensor([0, 0, 0, 0, 1, 1, 1]), torch.tensor([0, 0, 0, 1, 0, 0, 0]))
    assert starts.tolist() == [True, False, False, True, True, False, False]
    motion = segment_motion(x, starts)
    expected = torch.stack([x[1] - x[0], x[2] - x[1], x[2] - x[1], torch.zeros(25, 3),
                            x[5] - x[4], x[6] - x[5], x[6] - x[5]])
    torch.testing.assert_close(motion, expected)


# --- the whole network ---------------------------------------------------------------------

def _model(name="star-64", seed=0):
    torch.manual_seed(seed)
    return registry.build(name).eval()


@pytest.mark.parametrize("name", ["star-64", "star-64-full"])
def test_a_clip_gives_the_same_logits_alone_or_in_any_batch(name):
    model = _model(name)
    samples = random_samples(frames=[40, 7, 23, 1], persons=[1, 2, 1, 2], seed=5)
    with torch.no_grad():
        alone = [model(*inputs(collate_compact([s]))) for s in samples]
        for order in ([0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]):
            together = model(*inputs(collate_compact([samples[i] for i in order])))
            for position, i in enumerate(order):
                torch.testing.assert_close(together[position], alone[i][0], atol=1e-5, rtol=1e-4)
        # changing the other clips' values changes nothing for clip 0
        others = random_samples(frames=[7, 23, 1], persons=[2, 1, 2], seed=6)
        mixed = model(*inputs(collate_compact([samples[0], *others])))
        torch.testing.assert_close(mixed[0], alone[0][0], atol=1e-5, rtol=1e-4)


def test_all_lengths_and_person_counts_give_finite_logits_and_gradients():
    torch.manual_seed(0)
    model = registry.build("star-64").train()
    samples = random_samples(frames=[1, 2, 31, 300, 600, 1, 31], persons=[1, 1, 2, 2, 1, 2, 1], seed=2)
    batch = collate_compact(samples)
    logits = model(*inputs(batch))
    torch.nn.functional.cross_entropy(logits, batch.labels).backward()
    assert torch.isfinite(logits).all()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), parameter_name
    model.eval()
    with torch.no_grad():
        for sample in samples:
            assert torch.isfinite(model(*inputs(collate_compact([sample])))).all()


@needs_fused
def test_fused_add_norm_trains_the_model_as_the_unfused_form_does(monkeypatch):
    """STAR-64 in training, dropout on: the logits and every parameter's gradient with the fused Add & Norm equal
    those with LayerNorm(x + dropout(y)) (the same masks: both draw one seed per dropout), to 1e-5."""
    batch = collate_compact(random_samples(frames=[12, 5], persons=[2, 1], seed=1))
    results = []
    for unfused in (False, True):
        if unfused:
            monkeypatch.setattr(fused, "add_norm", lambda x, y, norm, p: norm(x + dropout(y, p, True)))
        torch.manual_seed(0)
        model = STAR(STARConfig()).train()
        logits = model(*inputs(batch))
        logits.square().sum().backward()
        results.append((logits.detach(), {name: p.grad for name, p in model.named_parameters()}))
    (fused_logits, fused_grads), (logits, grads) = results
    torch.testing.assert_close(fused_logits, logits, atol=1e-5, rtol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(fused_grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)


@needs_fused
@pytest.mark.parametrize("width", [64, 128, 24])  # the two compiled-in widths, and one read at run time
@pytest.mark.parametrize("activation", ["silu", "gelu", "relu"])
def test_fused_encoder_tails_are_add_norm_feed_forward_add_norm_summed(width, activation):
    """In inference, norm2(h + FF(h)) with h = norm1(x + y), of one layer and summed over two on the same x:
    float64 to 1e-12 of the unfused layers, float32 to 1e-5 of them in float64, on 307 rows (three tiles of 96
    and a fourth whose last register block is partial), 96 (one whole tile) and 5 (less than a register block).
    Four channels' pre-activations lie far out (biases of +-90 and +-120), past the kernels' exp's clamps."""
    generator = torch.Generator().manual_seed(width)
    layers = []
    for _ in range(2):
        first, second = nn.LayerNorm(width), nn.LayerNorm(width)
        feed_forward = FeedForward(width, activation, 0.5).eval()
        with torch.no_grad():
            for norm in (first, second):
                norm.weight.normal_(1, 0.3, generator=generator), norm.bias.normal_(0, 0.3, generator=generator)
            feed_forward[0].bias[:4] = torch.tensor([-120.0, -90.0, 90.0, 120.0])
        layers.append((first, feed_forward, second))
    exact_layers = [[copy.deepcopy(m).double() for m in layer] for layer in layers]
    for rows in (307, 96, 5):
        x, *ys = (2 * torch.randn(rows, width, generator=generator) for _ in range(3))
        with torch.no_grad():
            references = []
            for y, (norm1, feed_forward, norm2) in zip(ys, exact_layers, strict=True):
                h = norm1(x.double() + y.double())
                references.append(norm2(h + feed_forward(h)))
            for count in (1, 2):
                reference = sum(references[:count])
                exact = fused.encoder_tails(x.double(), [(y.double(), *layer) for y, layer in
                                                         zip(ys[:count], exact_layers, strict=False)], activation)
                got = fused.encoder_tails(x, [(y, *layer) for y, layer in zip(ys[:count], layers, strict=False)],
                                          activation)
                torch.testing.assert_close(exact, reference, atol=1e-12, rtol=1e-12)
                torch.testing.assert_close(got, reference.float(), atol=1e-5, rtol=1e-5)


@needs_fused
def test_fused_encoder_tails_name_what_is_missing():
    """A layer's parameters or epsilons missing, or a y of another shape, fail naming what was expected."""
    x = torch.randn(5, 8)
    norm, feed_forward = nn.LayerNorm(8), FeedForward(8, "relu", 0.0)
    params = [norm.weight, norm.bias, feed_forward[0].weight, feed_forward[0].bias, feed_forward[3].weight,
              feed_forward[3].bias, norm.weight, norm.bias]
    with torch.no_grad():
        for ys, given, eps, message in (([x], params[:7], [1e-5, 1e-5], "eight parameters"),
                                        ([x], params, [1e-5], "two epsilons"),
                                        ([x[:4]], params, [1e-5, 1e-5], "x's shape"),
                                        ([x], params[:2] + [params[3]] * 6, [1e-5, 1e-5], "layer 0's weight1")):
            with pytest.raises(RuntimeError, match=message):
                torch.ops.star_fused.encoder_tails_forward(x, ys, given, eps, "relu")


@needs_fused
@pytest.mark.parametrize(("width", "heads"), [(64, 8), (128, 8), (64, 4), (24, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_projected_attentions_are_the_projection_then_the_attention_bit_for_bit(width, heads, dtype):
    """Both attentions with the projection inside their kernels give the bits of the projection's tile product
    followed by the attention's kernel (the same products and sums in the same order): STAR's shapes, a compiled
    width with heads read at run time, and a width read at run time. Linear: clips of 1, 7 (whose register
    blocks read the next clip's rows), 49 and 3 rows (whose blocks would read past x's end). Sparse: 7 rows (the
    last group of 3 rows past x's end) and 1 row."""
    generator = torch.Generator().manual_seed(width)
    weight = torch.randn(3 * width, width, generator=generator, dtype=dtype) / width ** 0.5
    d = width // heads
    bounds = [0, 1, 8, 57, 60]
    x = torch.randn(bounds[-1], 25, width, generator=generator, dtype=dtype)
    qkv = fused.projection(x.view(-1, width), weight)  # (N*V, 3C)
    two_steps = fused.linear_attention(qkv.view(-1, 25, 3, heads, d), bounds, d ** -0.25, 1e-6)
    assert torch.equal(fused.projected_linear_attention(x, weight, bounds, heads, d ** -0.25, 1e-6), two_steps)
    graph = NeighbourhoodGraph.from_mask(MASK)
    for rows in (7, 1):
        qkv = fused.projection(x[:rows].reshape(-1, width), weight)  # (N*V, 3C), output rows (3, d, H)
        two_steps = fused.sparse_attention(qkv.view(rows, 25, 3, d, heads), graph.rowptr, graph.key)
        assert torch.equal(fused.projected_sparse_attention(x[:rows], weight, graph.rowptr, graph.key, heads),
                           two_steps)


@needs_fused
def test_projected_attentions_and_the_product_name_what_is_wrong():
    x, weight = torch.randn(6, 25, 64), torch.randn(192, 64)
    graph = NeighbourhoodGraph.from_mask(MASK)
    ops = torch.ops.star_fused
    for call, message in ((lambda: ops.linear_attention_projected_forward(x, weight[:64], [0, 6], 8, 1.0, 0.0),
                           r"contiguous \(192, 64\) CPU matrix in x's dtype \(Float\), got \[64, 64\] Float"),
                          (lambda: ops.linear_attention_projected_forward(x, weight, [0, 5], 8, 1.0, 0.0),
                           "bounds must run from 0 to 6"),
                          (lambda: ops.linear_attention_projected_forward(x, weight, [0, 6], 7, 1.0, 0.0),
                           "64 channels must split into 7 heads"),
                          (lambda: ops.sparse_attention_projected_forward(x, weight.double(), graph.rowptr,
                                                                          graph.key, 8, 1.0),
                           "in x's dtype"),
                          (lambda: ops.sparse_attention_projected_forward(x[0], weight, graph.rowptr, graph.key, 8,
                                                                          1.0),
                           r"contiguous \(N, V, C\)"),
                          (lambda: ops.linear_forward(x[0], weight.double(), None),
                           r"contiguous \(out, 64\) CPU matrix in x's dtype \(Float\), got \[192, 64\] Double"),
                          (lambda: ops.linear_forward(x[0], weight, weight[0]), r"bias must be a contiguous \(192\)"),
                          (lambda: ops.linear_forward(x, weight, None), r"contiguous \(rows, C\)")):
        with pytest.raises(RuntimeError, match=message):
            call()


@needs_fused
@pytest.mark.parametrize(("inputs", "outputs", "bias"), [(64, 64, True), (64, 192, False), (128, 128, True),
                                                         (128, 384, False), (192, 64, False), (24, 40, True)])
def test_fused_linear_is_f_linear_with_its_gradients(inputs, outputs, bias):
    """fused.linear against nn.functional.linear, output and the input's, weight's and bias's gradients: float64
    to 1e-12 and float32 to 1e-5, on 307 rows (a partial tile) and 5; compiled widths (a feed-forward layer, a
    projection and its gradient's product) and one read at run time."""
    generator = torch.Generator().manual_seed(inputs + outputs)
    weight = torch.randn(outputs, inputs, generator=generator, dtype=torch.float64) / inputs ** 0.5
    b = torch.randn(outputs, generator=generator, dtype=torch.float64) if bias else None
    for rows in (307, 5):
        x = torch.randn(rows, inputs, generator=generator, dtype=torch.float64)
        g = torch.randn(rows, outputs, generator=generator, dtype=torch.float64) / rows ** 0.5  # sums of order 1
        leaves = [t for t in (x, weight, b) if t is not None]
        want = [nn.functional.linear(x.requires_grad_(), weight.requires_grad_(),
                                     b.requires_grad_() if bias else None)]
        want += torch.autograd.grad(want[0], leaves, g)
        for dtype, tolerance in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
            got_leaves = [t.detach().to(dtype).requires_grad_() for t in leaves]
            out = fused.linear(got_leaves[0], got_leaves[1], got_leaves[2] if bias else None)
            got = [out, *torch.autograd.grad(out, got_leaves, g.to(dtype))]
            for name, a, e in zip(("out", "x", "weight", "bias"), got, want, strict=False):
                torch.testing.assert_close(a, e.detach().to(dtype), atol=tolerance, rtol=tolerance, msg=name)
        if not bias:  # inference's form: the same product without its autograd node
            torch.testing.assert_close(fused.projection(x.detach(), weight.detach()), want[0].detach(), atol=1e-12,
                                       rtol=1e-12)
        # the weight's gradient alone, x a constant
        trained = weight.detach().requires_grad_()
        (weight_grad,) = torch.autograd.grad(fused.linear(x.detach(), trained), trained, g)
        torch.testing.assert_close(weight_grad, g.T @ x.detach(), atol=1e-12, rtol=1e-12)


@needs_fused
def test_training_runs_the_linear_layers_on_the_tile_products_as_f_linear_would():
    """A STAR-64 training forward and backward with fused.linear (2 projections and 4 feed-forward layers a block)
    gives F.linear's logits and gradients to 1e-5; a forward hook, and alone a backward hook, on a feed-forward
    layer fires: that layer's feed-forward runs its modules."""
    batch = collate_compact(random_samples(frames=[12, 5], persons=[2, 1], seed=1))
    torch.manual_seed(0)
    model = STAR(STARConfig()).train()
    results, calls = [], []
    for product in (fused.linear, lambda x, w, b=None: nn.functional.linear(x, w, b)):
        def counted(*args, product=product):
            calls.append(1)
            return product(*args)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(fused, "linear", counted)
            torch.manual_seed(1)  # the same dropout masks in both runs
            logits = model(*inputs(batch))
            logits.square().sum().backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
        model.zero_grad()
    assert len(calls) == 2 * 6 * model.config.layers
    (fused_logits, fused_grads), (logits, grads) = results
    torch.testing.assert_close(fused_logits, logits, atol=1e-5, rtol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(fused_grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)
    layer = model.blocks[0].spatial.feed_forward[0]
    for register in (layer.register_forward_hook, layer.register_full_backward_hook):
        seen = []
        hook = register(lambda *_, seen=seen: seen.append(1))
        model(*inputs(batch)).sum().backward()
        hook.remove()
        assert seen == [1], register.__name__


@needs_fused
@pytest.mark.parametrize("spatial", ["sparse", "full"])
def test_st_blocks_fuse_their_projections_and_tails_only_in_inference(monkeypatch, spatial):
    """STAR-64 in eval mode without gradients runs each ST-block's temporal attention with its projection inside
    (5 calls), the sparse spatial attention likewise (the full one's projection a tile product before it), both
    encoder layers' tails and their sum as one kernel (5 calls of two layers), and the pooling as one (unless it
    has a hook), with the logits of the unfused layers to 1e-5; with gradients asked for, in training, in the
    ATen kernel form, with the config's inference_kernels off, or in a layer with a hook on it or inside it, the
    unfused layers run (autograd reaches every parameter, the hook fires)."""
    calls = []
    for name in ("projection", "projected_sparse_attention", "projected_linear_attention", "encoder_tails",
                 "context_pooling"):
        kernel = getattr(fused, name)
        monkeypatch.setattr(fused, name, lambda *args, name=name, kernel=kernel: calls.append(
            f"tails of {len(args[1])}" if name == "encoder_tails" else name) or kernel(*args))
    spatial_call = "projected_sparse_attention" if spatial == "sparse" else "projection"
    batch = collate_compact(random_samples(frames=[12, 5], persons=[2, 1], seed=1))
    torch.manual_seed(0)
    model = STAR(STARConfig(spatial=spatial)).eval()
    with torch.no_grad():
        fused_logits = model(*inputs(batch))
    layers = model.config.layers
    assert sorted(calls) == sorted([spatial_call, "projected_linear_attention", "tails of 2"] * layers
                                   + ["context_pooling"])
    logits = model(*inputs(batch))
    logits.square().sum().backward()
    assert len(calls) == 3 * layers + 1
    assert all(p.grad is not None for p in model.parameters())
    torch.testing.assert_close(fused_logits, logits.detach(), atol=1e-5, rtol=1e-5)
    # a hook on block 0's spatial layer and one inside it: that layer runs unfused, block 0's temporal layer on its
    # own projection and with its own tail
    for hooked_module in (model.blocks[0].spatial, model.blocks[0].spatial.feed_forward[0]):
        calls.clear()
        seen = []
        hook = hooked_module.register_forward_hook(lambda *_, seen=seen: seen.append(1))
        with torch.no_grad():
            hooked = model(*inputs(batch))
        hook.remove()
        assert len(seen) == 1
        fused_blocks = [spatial_call, "projected_linear_attention", "tails of 2"] * (layers - 1)
        assert sorted(calls) == sorted(fused_blocks + ["tails of 1", "context_pooling"])
        torch.testing.assert_close(hooked, fused_logits, atol=1e-5, rtol=1e-5)
    # a hook on the pooling: the blocks stay fused, the pooling runs as the module
    calls.clear()
    seen = []
    hook = model.pooling.register_forward_hook(lambda *_: seen.append(1))
    with torch.no_grad():
        torch.testing.assert_close(model(*inputs(batch)), fused_logits, atol=1e-5, rtol=1e-5)
    hook.remove()
    assert seen == [1] and "context_pooling" not in calls and len(calls) == 3 * layers
    calls.clear()
    with torch.no_grad():
        model.train()(*inputs(batch))
        with kernel_forms(model.eval(), "aten"):  # what the MAC counters trace
            model(*inputs(batch))
        torch.manual_seed(0)
        unfused = STAR(STARConfig(spatial=spatial, inference_kernels=False)).eval()(*inputs(batch))
    assert not calls
    torch.testing.assert_close(fused_logits, unfused, atol=1e-5, rtol=1e-5)


@needs_fused
def test_fused_context_pooling_names_what_is_wrong():
    x, weight = torch.randn(6, 25, 4), torch.randn(4, 4)
    pool = torch.ops.star_fused.context_pooling_forward
    for call, message in ((lambda: pool(x, [0, 5], weight, True, True), "bounds must run from 0 to 6"),
                          (lambda: pool(x, [0, 3, 3, 6], weight, True, True), "every clip needs a row"),
                          (lambda: pool(x, [0, 6], weight[:3], True, True), r"\(4, 4\) CPU matrix .* got \[3, 4\]"),
                          (lambda: pool(x, [0, 6], weight.double(), True, True),
                           r"in x's dtype \(Float\), got .*Double")):
        with pytest.raises(RuntimeError, match=message):
            call()


def test_sparse_kernels_and_backends_give_the_same_model_output():
    samples = random_samples(frames=[12, 5], persons=[2, 1], seed=1)
    batch = collate_compact(samples)
    outputs = []
    for kernel, backend, temporal in [("rows", "torch", "split"), ("edges", "torch", "split"),
                                      ("edges", "pyg", "split"), ("rows", "pyg", "split"),
                                      ("gather", "torch", "padded"),
                                      *([("fused", "torch", "fused")] if fused.available() else [])]:
        torch.manual_seed(0)
        model = STAR(STARConfig(sparse_kernel=kernel, scatter_backend=backend, temporal_kernel=temporal)).eval()
        with torch.no_grad():
            outputs.append(model(*inputs(batch)))
    for other in outputs[1:]:
        torch.testing.assert_close(other, outputs[0], atol=1e-5, rtol=1e-4)


def test_bad_clip_offsets_are_refused():
    model = _model()
    batch = collate_compact(random_samples(frames=[4], persons=[1]))
    with pytest.raises(ValueError, match="clip_offsets must run from 0 to the 4 rows"):
        model(batch.x, torch.tensor([0, 3]), batch.person_ids, batch.positions)
    with pytest.raises(ValueError, match="clip_offsets must run from 0 to the 4 rows"):
        ClipSegments.of(batch.clip_offsets, batch.clip_ids, batch.steps, (0, 3))
    with pytest.raises(ValueError, match="clip_offsets must run from 0 to the 4 rows"):
        ClipSegments.of(torch.tensor([0, 0, 4]), batch.clip_ids, batch.steps, (0, 0, 4))  # an empty clip
    with pytest.raises(ValueError, match="segments cover 4 rows, x has 3"):
        model(batch.x[:3], *inputs(batch)[1:])


@pytest.mark.parametrize("name", ["star-64-full", "star-128-full"])
def test_analytic_macs_equal_the_matrix_products_pytorch_counts(name):
    """In the full variant every counted product is a matmul, so torch's FLOP counter must agree exactly."""
    model = _model(name)
    batch = collate_compact(random_samples(frames=[9, 4, 6], persons=[1, 2, 1]))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter, kernel_forms(model, "aten"):  # the fused kernels are one opaque operator each
        model(*inputs(batch))
    macs = model.analytic_macs(rows=len(batch.x), clips=batch.num_clips)
    categories = model.mac_categories()
    matmul_macs = sum(m for component, m in macs.items() if categories[component] != "Mul")
    assert counter.get_total_flops() == 2 * matmul_macs


def test_sparse_needs_under_a_third_of_the_full_attention_products():
    sparse, full = _model("star-64"), _model("star-64-full")
    rows, clips = 1000, 16
    sparse_macs = sparse.analytic_macs(rows, clips)["spatial_attention"]
    assert sparse_macs / full.analytic_macs(rows, clips)["spatial_attention"] == pytest.approx(191 / 625)


def test_auto_kernels_follow_the_device_and_kernel_forms_switch_them_for_a_block():
    model = _model("star-64")
    spatial, temporal = model.blocks[0].spatial.attention, model.blocks[0].temporal.attention
    on_cpu, on_meta = torch.empty(1, 25, 64), torch.empty(1, 25, 64, device="meta")
    assert (spatial.kernel_for(on_cpu), temporal.kernel_for(on_cpu)) == KERNEL_FORMS["cpu" if fused.available()
                                                                                     else "aten"]
    assert (spatial.kernel_for(on_meta), temporal.kernel_for(on_meta)) == KERNEL_FORMS["device"]
    with kernel_forms(model, "edge list"):
        assert (spatial.kernel_for(on_meta), temporal.kernel_for(on_meta)) == KERNEL_FORMS["edge list"]
    assert (spatial.kernel, temporal.kernel) == ("auto", "auto")
    with pytest.raises(ValueError, match="unknown temporal_kernel 'loop'"):
        STARConfig(temporal_kernel="loop")
