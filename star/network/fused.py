"""STAR's two attentions and its Add & Norm as single CPU kernels, two kernels for inference, and dropout
masks drawn without a generator's serial state (the C++ sources in `csrc/`), built on first use and cached.

The `rows` and `split` forms spend most of their time between operators:
each edge of the sparse attention is a few ATen calls over a whole (d, M)
plane, each clip of the linear attention a few more, so every key and value
plane goes through memory once per edge, and the projection's output is
turned into planes and the attention's output back into rows. The fused
kernels take the projection as one nn.Linear product writes it, rows of
tokens, walk it row by row or in cache-sized blocks, one operator a call, and give output
and gradient back as rows (forward and backward written by hand, tested
against autograd of the reference forms). Add & Norm, LayerNorm(x +
dropout(y)), is one pass over x and y instead of three. In inference (eval
mode, no gradient asked for) everything of an encoder layer after its
attention, Add & Norm, the feed-forward's two products and activation, and
Add & Norm again, is one kernel that takes a tile of rows through all of it
in the cache (`encoder_tails`), instead of five operators that write and read
back an activation of the layer's size each, an ST-block's two encoders'
tails and their sum are one such kernel, and both attentions take the
block's input itself (`projected_sparse_attention`,
`projected_linear_attention`): its rows go through the projection's tile
product into the cache (four rows, or a clip's rows of one joint) and the
attention reads them there, so q, k and v, three times the activations,
are never written and read back; the context pooling after the last block
is one operator (`context_pooling`). The same register-blocked tile products run the linear
layers elsewhere (`projection`: the full attention's projection in inference;
`linear`: the projections feeding the attentions and the feed-forward's
layers, in training too, forward and the input's gradient).

The extension is compiled by `torch.utils.cpp_extension` for the instruction
set torch itself uses on this machine (`torch.backends.cpu.get_cpu_capability()`),
one translation unit per source file (the two attentions, dropout with Add &
Norm, the inference kernels, the operators' registration), which ninja compiles side by side on
every core, under a name that includes the instruction set, so machines of
two kinds sharing a home folder never load each other's build; torch caches
it under TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions) and ninja
rebuilds only what a changed source, header or flag touches. Where it cannot
be built (no C++ compiler, ninja or setuptools) `available()` is False with
the reason in `build_error()`, and the `auto` kernels take the ATen forms;
STAR_FUSED=0 asks for that on purpose.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from functools import cache
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

SOURCES = [Path(__file__).parent / "csrc" / name for name in  # and the headers common.h, tile_product.h
           ("sparse_attention.cpp", "linear_attention.cpp", "dropout_norm.cpp", "inference.cpp", "library.cpp")]
DTYPES = (torch.float32, torch.float64)
ISA_FLAGS = {  # compiler flags for the instruction set torch reports (get_cpu_capability)
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma"],
    "AVX2": ["-mavx2", "-mfma"],
}
_error: list[str] = []
_lock = threading.Lock()


@cache
def _build() -> bool:
    if os.environ.get("STAR_FUSED", "1") == "0":
        _error.append("STAR_FUSED=0")
        return False
    capability = torch.backends.cpu.get_cpu_capability()
    try:
        from torch.utils.cpp_extension import load  # imports setuptools: only when the kernels are wanted

        # OpenMP: ATen's parallel_for is a header template that runs its threads through OpenMP pragmas
        load(name=f"star_fused_{re.sub(r'[^a-z0-9]+', '_', capability.lower())}",
             sources=[str(path) for path in SOURCES], is_python_module=False,
             extra_cflags=["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", *ISA_FLAGS.get(capability, [])],
             extra_ldflags=["-fopenmp"])
    except Exception as error:  # noqa: BLE001 - any build failure (compiler, ninja, setuptools) means: not available
        _error.append(f"{type(error).__name__}: {error}")
        warnings.warn(f"STAR's fused CPU kernels could not be built, using the ATen forms "
                      f"(star.network.fused.build_error() has the whole message): {_error[-1][:300]}", stacklevel=3)
        return False
    return True


def available() -> bool:
    """Build (or load the cached build of) the kernels once per process; False, with the reason kept, where that
    fails. Threads wait for one build (and processes do too: torch locks the build folder)."""
    with _lock:
        return _build()


def build_error() -> str | None:
    """Why `available()` is False (the whole message, the compiler's output included), or None."""
    return _error[-1] if _error else None


def _require(x: torch.Tensor) -> None:
    if x.device.type != "cpu":
        raise ValueError(f"STAR's fused kernels are CPU operators, got a tensor on {x.device}")
    if not available():
        raise RuntimeError(f"STAR's fused CPU kernels are not available ({build_error()}); "
                           "choose the rows and split kernels")


def usable(x: torch.Tensor) -> bool:
    """True where a fused kernel can take `x`'s projections: a float32/64 CPU tensor outside autocast (whose
    products give half precision), a compiled graph or a JIT trace, and the kernels built."""
    return (x.device.type == "cpu" and x.dtype in DTYPES and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling() and not torch.jit.is_tracing() and available())


class _SparseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, keep, rowptr, keys, scale, weights):
        out, alpha = torch.ops.star_fused.sparse_attention_forward(qkv, rowptr, keys, keep, scale, weights)
        ctx.save_for_backward(qkv, keep, alpha, rowptr, keys)
        ctx.scale = scale
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        qkv, keep, alpha, rowptr, keys = ctx.saved_tensors
        grad = torch.ops.star_fused.sparse_attention_backward(grad_out, qkv, alpha, rowptr, keys, keep, ctx.scale)
        return grad, None, None, None, None, None


def sparse_attention(qkv: torch.Tensor, rowptr: torch.Tensor, keys: torch.Tensor,
                     keep: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 2-3 on the projections as F.linear writes them with channels in (3, d, H) order, qkv (N, V, 3, d, H)
    contiguous -> (N, V, H, d); the neighbourhood as CSR (rowptr, keys).

    The gradient comes back in qkv's layout, so the projection's backward
    pass is two plain matrix products. `keep` is the scaled dropout mask on
    the attention weights, (E, N H) in edge order with columns (row, head),
    or None. The weights (E, N H) are written for the backward pass only
    where a gradient will be asked for.
    """
    _require(qkv)
    weights = torch.is_grad_enabled() and qkv.requires_grad
    return _SparseAttention.apply(qkv, keep, rowptr, keys, qkv.shape[3] ** -0.5, weights)


def projected_sparse_attention(x: torch.Tensor, weight: torch.Tensor, rowptr: torch.Tensor, keys: torch.Tensor,
                               heads: int) -> torch.Tensor:
    """sparse_attention on x's projections x W^T, for inference: x (N, V, C) -> (N, V, H, d), weight (3C, C) with
    output rows (3, d, H). A few rows of x at a time are multiplied by W in the cache and attended there, so the
    projections (three times the activations) are never written; the same products and sums as `projection`
    then `sparse_attention`, in the same order. No dropout, and no gradient flows through it."""
    _require(x)
    return torch.ops.star_fused.sparse_attention_projected_forward(x.contiguous(), weight.contiguous(), rowptr, keys,
                                                                   heads, (x.shape[2] // heads) ** -0.5)


class _LinearAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, bounds, scale, eps):
        ctx.save_for_backward(qkv)
        ctx.bounds, ctx.scale, ctx.eps = bounds, scale, eps
        return torch.ops.star_fused.linear_attention_forward(qkv, bounds, scale, eps)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        (qkv,) = ctx.saved_tensors
        grad = torch.ops.star_fused.linear_attention_backward(grad_out, qkv, ctx.bounds, ctx.scale, ctx.eps)
        return grad, None, None, None


def linear_attention(qkv: torch.Tensor, bounds: list[int], scale: float, eps: float) -> torch.Tensor:
    """Eq. 6 on the raw projections as F.linear writes them, qkv (N, V, 3, H, d) contiguous -> (N, V, H, d):
    phi(scale x) is taken of q and k inside; clip m is rows bounds[m]:bounds[m+1]. The gradient comes back in
    qkv's layout, so the projection's backward pass is two plain matrix products."""
    _require(qkv)
    return _LinearAttention.apply(qkv, list(bounds), scale, eps)


def projected_linear_attention(x: torch.Tensor, weight: torch.Tensor, bounds: list[int], heads: int, scale: float,
                               eps: float) -> torch.Tensor:
    """linear_attention on x's projections x W^T, for inference: x (N, V, C) -> (N, V, H, d), weight (3C, C) with
    output rows (3, H, d). Each clip's rows of a joint are multiplied by W in the cache and attended there, so
    the projections (three times the activations) are never written; the same products and sums as
    `projection` then `linear_attention`, in the same order. No gradient flows through it."""
    _require(x)
    return torch.ops.star_fused.linear_attention_projected_forward(x.contiguous(), weight.contiguous(), list(bounds),
                                                                   heads, scale, eps)


def _seed() -> int:
    return int(torch.randint(-2**63, 2**63 - 1, (), dtype=torch.long))


def keep_mask(shape: tuple[int, ...], p: float, dtype: torch.dtype) -> torch.Tensor:
    """Inverted-dropout multipliers on the CPU, 0 with probability p and 1 / (1 - p) otherwise, each element an
    independent draw from a hash of one seed and its index; the seed comes from torch's default generator."""
    return torch.ops.star_fused.keep_mask(list(shape), p, _seed(), dtype)


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p, seed):
        ctx.p, ctx.seed = p, seed
        return torch.ops.star_fused.apply_keep_mask(x, p, seed)

    @staticmethod
    def backward(ctx, grad_out):  # the same multiplication, so differentiable again
        return _Dropout.apply(grad_out, ctx.p, ctx.seed), None, None


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """x * keep_mask(x.shape, p, x.dtype) without writing the mask: the multipliers are drawn again from the
    seed in the backward pass, so nothing but the seed is kept for it."""
    _require(x)
    return _Dropout.apply(x, p, _seed())


class _AddNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, weight, bias, p, seed, eps, keep_sum):
        out, total, mean, rstd = torch.ops.star_fused.add_norm_forward(x, y, weight, bias, p, seed, eps, keep_sum)
        ctx.save_for_backward(total, mean, rstd, weight)
        ctx.p, ctx.seed = p, seed
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        total, mean, rstd, weight = ctx.saved_tensors
        grads = torch.ops.star_fused.add_norm_backward(grad_out, total, mean, rstd, weight, ctx.p, ctx.seed)
        return *grads, None, None, None, None


def add_norm(x: torch.Tensor, y: torch.Tensor, norm: torch.nn.LayerNorm, p: float) -> torch.Tensor:
    """Add & Norm, norm(x + dropout(y, p)) over the last axis, in one pass: the dropout multipliers are those
    `dropout` draws from the same seed, drawn again in the backward pass. The sum is kept for the backward
    pass only where a gradient will be asked for; the backward pass is not differentiable again (as the
    attention kernels' are not)."""
    _require(x)
    keep_sum = torch.is_grad_enabled() and any(t.requires_grad for t in (x, y, norm.weight, norm.bias))
    return _AddNorm.apply(x.contiguous(), y.contiguous(), norm.weight, norm.bias, p, _seed() if p > 0 else 0,
                          norm.eps, keep_sum)


def encoder_tails(x: torch.Tensor, tails: list[tuple], activation: str) -> torch.Tensor:
    """Encoder layers after their attentions, in inference, summed: the sum over `tails` of
    norm2(h + W2 act(W1 h + b1) + b2) with h = norm1(x + y), each tail (y, norm1, feed_forward, norm2) of one
    layer on the same x, x and every y (..., C); a tile of rows at a time in the cache, the intermediate
    activations never written, and of two layers (an ST-block's encoders) their sum written once.
    `feed_forward` is star.network.star.FeedForward, whose first and fourth modules are its linear layers; its
    dropout, as the layers', is the identity in inference. No gradient flows through it."""
    _require(x)
    params, eps = [], []
    for _, norm1, feed_forward, norm2 in tails:
        first, second = feed_forward[0], feed_forward[3]
        params += [norm1.weight, norm1.bias, first.weight, first.bias, second.weight, second.bias, norm2.weight,
                   norm2.bias]
        eps += [norm1.eps, norm2.eps]
    return torch.ops.star_fused.encoder_tails_forward(x.contiguous(), [y.contiguous() for y, *_ in tails], params,
                                                      eps, activation)


def context_pooling(x: torch.Tensor, bounds: list[int], pooling) -> torch.Tensor:
    """star.network.pooling.ContextPooling's forward on rows x (N, V, D) of clips bounds[m]:bounds[m+1] -> (B, V,
    D), for inference: each clip's two passes over its rows (the sums, then the weighted sums) in one operator,
    where the module writes and reads back three (N, V, D) temporaries. No gradient flows through it."""
    _require(x)
    return torch.ops.star_fused.context_pooling_forward(x.contiguous(), list(bounds), pooling.weight.contiguous(),
                                                        pooling.weights == "joint", pooling.reduce == "mean")


def projection(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x W^T, x (R, C), by the tile products, for inference (`linear` without its autograd node): no gradient
    flows through it."""
    _require(x)
    return torch.ops.star_fused.linear_forward(x.contiguous(), weight.contiguous(), None)


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return torch.ops.star_fused.linear_forward(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:  # grad_out W: the same kernel with W^T as the weight
            grad_x = torch.ops.star_fused.linear_forward(grad_out, weight.t().contiguous(), None)
        if ctx.needs_input_grad[1]:
            grad_weight = grad_out.t().mm(x)  # a sum over all rows: the BLAS's long inner product
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum(0)
        return grad_x, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear on rows x (R, C) by the fused kernels' register-blocked tile products, which at STAR's widths
    (64 and 128, their projections' 3 x, and back) outrun the BLAS on these long, narrow matrices; the input's
    gradient by the same products, the weight's by the BLAS. The backward pass is not differentiable again (as
    the attention kernels' are not)."""
    _require(x)
    return _Linear.apply(x.contiguous(), weight.contiguous(), None if bias is None else bias.contiguous())
