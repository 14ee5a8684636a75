"""Segment reductions over the first axis, in two interchangeable back-ends.

A segment is a run of consecutive entries along dim 0, delimited by a CSR
pointer `ptr` (S + 1,): segment s is `src[ptr[s]:ptr[s+1]]`. The model uses
them for the edge-list form of the sparse attention (the edges of one query
joint form a segment) and for the per-clip sums of the context pooling (the
rows of one clip form a segment).

- `torch`: plain PyTorch (`segment_reduce` for the maximum, `index_add_` for
  sums, `repeat_interleave` to broadcast a segment's value back to its entries;
  the sizes come from the host, so no call reads the device back).
- `pyg`: the paper's own stack, torch-scatter's `segment_csr` and `gather_csr`.

Both give the same numbers to float32 rounding (tests compare them on random
inputs); `benchmarks/bench_model.py` measures both and the faster one on this
machine's CPU is `DEFAULT_BACKEND`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SegmentOps:
    """The three segment operations one back-end provides, each over dim 0."""

    name: str
    # (E, ...) -> (S, ...); `ids` (E,), each entry's segment, saves the torch back-end from deriving it
    sum: Callable[..., torch.Tensor]
    max: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (E, ...) -> (S, ...)
    expand: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]  # (S, ...), ptr, E -> (E, ...)


def _segment_ids(src: torch.Tensor, ptr: torch.Tensor) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(ptr) - 1, device=ptr.device), ptr[1:] - ptr[:-1],
                                   output_size=src.shape[0])


def _torch_sum(src: torch.Tensor, ptr: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
    out = src.new_zeros((len(ptr) - 1, *src.shape[1:]))
    return out.index_add_(0, _segment_ids(src, ptr) if ids is None else ids, src)


def _torch_max(src: torch.Tensor, ptr: torch.Tensor) -> torch.Tensor:
    return torch.segment_reduce(src, "max", offsets=ptr, axis=0)


def _torch_expand(values: torch.Tensor, ptr: torch.Tensor, size: int) -> torch.Tensor:
    lengths = ptr[1:] - ptr[:-1]
    return torch.repeat_interleave(values, lengths, dim=0, output_size=size)


TORCH = SegmentOps("torch", _torch_sum, _torch_max, _torch_expand)


def _pyg_ops() -> SegmentOps:
    try:
        import torch_scatter
    except ImportError as error:
        raise ImportError("scatter back-end 'pyg' needs torch-scatter: pip install -e '.[pyg]'") from error
    # segment_csr reduces the axis of ptr's last dimension, so a 1-D ptr reduces dim 0
    return SegmentOps(
        "pyg",
        sum=lambda src, ptr, ids=None: torch_scatter.segment_csr(src, ptr, reduce="sum"),
        max=lambda src, ptr: torch_scatter.segment_csr(src, ptr, reduce="max"),
        expand=lambda values, ptr, size: torch_scatter.gather_csr(values, ptr),
    )


BACKENDS = ("torch", "pyg")
DEFAULT_BACKEND = "torch"


def get_backend(name: str) -> SegmentOps:
    """The back-end called `name` (one of BACKENDS)."""
    if name == "torch":
        return TORCH
    if name == "pyg":
        return _pyg_ops()
    raise ValueError(f"unknown scatter back-end {name!r}; choose one of {BACKENDS}")
