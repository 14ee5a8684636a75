"""Latency and memory of a forward pass: whole, and per module category from torch's profiler.

Whole-forward latency is timed with CUDA events on a GPU and a monotonic
clock on the CPU, after warm-up, and reported as the median with its spread.
The per-category breakdown runs the forward under torch's profiler (the tool
the paper used; its `torch.autograd.profiler` form, which `torch.profiler.profile`
wraps: the wrapper imports torch._inductor on start, which a profile job has no
other use for) with a profiler range around every built-in leaf module, so
an operator inside a Linear or Conv2d module is charged to that module type
and one written in a model's own forward to its operator's category (see
`star.profiling.counting`). The profiler's own overhead makes the category
times add up to more than the whole-forward latency; both are reported.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable

import torch
from torch import nn
from torch.autograd.profiler import profile, record_function

from star.defaults import PROFILE_REPEATS, PROFILE_WARMUP, PROFILER_RUNS
from star.errors import InputError
from star.profiling.counting import builtin_leaves, op_category

RANGE = "[module] "


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_ms(forward: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        forward()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end)
    start = time.perf_counter()
    forward()
    return (time.perf_counter() - start) * 1e3


def forward_latency(forward: Callable[[], object], device: torch.device, repeats: int = PROFILE_REPEATS,
                    warmup: int = PROFILE_WARMUP) -> dict:
    """Median and spread of `forward()`'s wall time in ms over `repeats` runs after `warmup` runs."""
    if repeats < 1 or warmup < 0:
        raise InputError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    for _ in range(warmup):
        forward()
    synchronize(device)
    times = [_timed_ms(forward, device) for _ in range(repeats)]
    quartiles = statistics.quantiles(times, n=4) if repeats > 1 else [times[0]] * 3
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "iqr_ms": quartiles[2] - quartiles[0],
        "times_ms": times,
        "repeats": repeats,
        "warmup": warmup,
        "clock": "CUDA events" if device.type == "cuda" else "time.perf_counter",
    }


def category_latency(model: nn.Module, forward: Callable[[], object], device: torch.device,
                     runs: int = PROFILER_RUNS) -> dict:
    """Milliseconds per forward pass in each category, from torch's profiler over `runs` passes (after a warm-up)."""
    leaves = builtin_leaves(model)
    open_ranges = []

    def enter(kind: str):
        def hook(module, args):
            open_ranges.append(record_function(RANGE + kind))
            open_ranges[-1].__enter__()
        return hook

    def leave(module, args, output):
        open_ranges.pop().__exit__(None, None, None)

    modules = dict(model.named_modules())
    handles = [hook for name, kind in leaves.items()
               for hook in (modules[name].register_forward_pre_hook(enter(kind)),
                            modules[name].register_forward_hook(leave))]
    try:
        forward()
        synchronize(device)
        # kineto as torch.profiler runs it: on CUDA the kernels' own times (the legacy default, use_kineto=False,
        # times each operator between two CUDA events instead)
        with profile(use_device="cuda" if device.type == "cuda" else None, use_kineto=True) as prof:
            for _ in range(runs):
                forward()
            synchronize(device)
    finally:
        for handle in handles:
            handle.remove()
    microseconds = Counter()

    def walk(event, category: str | None) -> None:
        if event.name.startswith(RANGE):
            category = event.name[len(RANGE):]
        elif "::" in event.name:  # an operator (aten::, torch_scatter::, ...): charge it whole, children included
            time_us = event.device_time_total if device.type == "cuda" else event.cpu_time_total
            microseconds[category or op_category(event.name)] += time_us
            return
        for child in event.cpu_children:
            walk(child, category)

    for event in prof.function_events:
        if event.cpu_parent is None:
            walk(event, None)
    by_category = {k: us / runs / 1e3 for k, us in microseconds.most_common()}
    return {"by_category_ms": by_category, "profiled_total_ms": sum(by_category.values()), "runs": runs,
            "time": "CUDA kernel time" if device.type == "cuda" else "CPU time"}


def peak_memory(forward: Callable[[], object], device: torch.device) -> dict:
    """Bytes allocated at the peak of one forward pass, above what was allocated before it.

    On a GPU, CUDA's max_memory_allocated. On the CPU, torch's allocator has no
    peak counter, so the allocations and frees torch's profiler records are
    replayed in time order (operator granularity: an operator's own
    allocations count from its start); this excludes the Python heap and the
    allocator's cached pages that peak RSS would include.
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        forward()
        synchronize(device)
        return {"peak_bytes": torch.cuda.max_memory_allocated(device) - before,
                "method": "torch.cuda.max_memory_allocated"}
    with profile(profile_memory=True, use_kineto=True) as prof:
        forward()
    allocated = peak = 0
    for event in sorted(prof.function_events, key=lambda e: e.time_range.start):
        allocated += event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        peak = max(peak, allocated)
    return {"peak_bytes": peak, "method": "torch's profiler: CPU allocations replayed in time order"}
