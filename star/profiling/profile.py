"""One model's profile (`results/profile/{model}.json`) and the clip-length and batch-size sweep.

The JSON holds what the paper's Tables 2, 3 and 5 and Figures 8-10 show:
`summary` (latency, parameters, GMACs: Table 2 and 5), `top3` (the three
costliest categories for MACs, parameters and latency: Table 3) and the full
breakdowns they come from (Figures 8-10), with the batch, device and threads
they were measured on.

Choices:
- GMACs in `summary` are fvcore's total with the product handle of
  `star.profiling.counting`: products plus normalisations as fvcore counts
  them, which is how the paper's Table 3 lists BatchNorm2d among MACs.
  `macs.<counter>.products` is the part all three counters are compared on.
- A padded model's MACs on more than two clips are counted on one and on two
  clips and extended to the batch along that line (`_extrapolated`; a test
  checks it against a direct count). Latency and memory are always measured on the whole batch.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

import torch

from star import registry
from star.data.splits import get_benchmark
from star.data.store import CompactStore
from star.defaults import (
    PADDED_FRAMES,
    PADDED_PERSONS,
    PROFILE_CLIPS,
    PROFILE_REPEATS,
    PROFILE_SEED,
    PROFILE_WARMUP,
    PROFILER_RUNS,
    SWEEP_REPEATS,
)
from star.device import compiled, resolve_device
from star.formats import PROFILE_FORMAT
from star.network.star import kernel_forms
from star.profiling.batch import ProfilingBatch, draw_batch, uniform_batch
from star.profiling.counting import MacCount, analytic_count, deepspeed_count, fvcore_count, parameter_counts
from star.profiling.timing import category_latency, forward_latency, peak_memory
from star.provenance import environment


def set_threads(threads: int | None) -> int:
    """Pin torch's CPU threads to `threads`, or to every core this process may run on."""
    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
    return torch.get_num_threads()


def _extrapolated(one: MacCount, two: MacCount, clips: int) -> MacCount:
    """The count for `clips` padded clips from counts on one and two: cost = fixed + per clip x clips.

    Exact for any cost affine in the batch size; a padded model's is (every
    clip has the same shape, and in eval mode none depends on another), with
    a small fixed part computed once per forward pass (e.g. ST-GCN's
    adjacency times edge importance).
    """
    def line(a: dict, b: dict) -> dict:
        return {k: a.get(k, 0) + (clips - 1) * (b.get(k, 0) - a.get(k, 0)) for k in {**a, **b}}

    fields = ("by_category", "by_module", "by_operator", "missed")
    return replace(two, total=one.total + (clips - 1) * (two.total - one.total),
                   **{f: line(getattr(one, f), getattr(two, f)) for f in fields})


def _model_batch(spec: registry.ModelSpec, batch: ProfilingBatch, device: torch.device):
    return (batch.compact() if spec.layout == "compact" else batch.padded(spec.fill)).to(device)


def count_macs(model, spec: registry.ModelSpec, batch: ProfilingBatch, device: torch.device,
               counters: tuple[str, ...] = ("fvcore", "deepspeed", "analytic")) -> dict[str, MacCount]:
    """`counters` (all three by default) on `batch`; a padded model's counts on more than two clips come from its
    first one and two."""
    def counts(model_batch) -> dict[str, MacCount]:
        inputs = registry.model_inputs(spec, model_batch)
        count = {"fvcore": lambda: fvcore_count(model, inputs), "deepspeed": lambda: deepspeed_count(model, inputs),
                 "analytic": lambda: analytic_count(model, inputs, batch.rows, batch.num_clips)}
        return {name: count[name]() for name in counters}

    model_batch = _model_batch(spec, batch, device)
    if spec.layout == "compact":
        with kernel_forms(model, "aten"):  # any device: the GPU form computes on padding, the fused ops hide theirs
            return counts(model_batch)
    x = model_batch.x
    if len(x) <= 2:
        return counts(model_batch)
    model_batch.x = x[:1]
    one = counts(model_batch)
    model_batch.x = x[:1].expand(2, *x.shape[1:])  # the cost does not depend on the values
    two = counts(model_batch)
    return {name: _extrapolated(one[name], two[name], len(x)) for name in one}


def _forward(model, inputs):
    def run():
        with torch.inference_mode():
            return model(*inputs)
    return run


def _top3(breakdown: dict[str, float]) -> list[list]:
    return [[k, v] for k, v in sorted(breakdown.items(), key=lambda kv: -kv[1])[:3]]


def profile_model(name: str, batch: ProfilingBatch, num_classes: int, device: torch.device,
                  repeats: int = PROFILE_REPEATS, warmup: int = PROFILE_WARMUP, profiler_runs: int = PROFILER_RUNS,
                  compile: bool = False) -> dict:
    """Everything measured about model `name` on `batch`; see the module docstring.

    With `compile`, the whole-forward latency and the peak memory are the
    compiled model's (its compilation is part of the warm-up); the MAC counters
    and the per-category breakdown, which hook into modules, and the sweep
    run it eagerly.
    """
    spec = registry.spec(name)
    torch.manual_seed(0)
    model = registry.build(name, num_classes).to(device).eval()
    inputs = registry.model_inputs(spec, _model_batch(spec, batch, device))
    forward = _forward(model, inputs)
    timed = _forward(compiled(model, compile), inputs)
    params = parameter_counts(model)
    macs = count_macs(model, spec, batch, device)
    latency = forward_latency(timed, device, repeats, max(warmup, 1) if compile else warmup)
    breakdown = category_latency(model, forward, device, profiler_runs)
    description = batch.describe()
    memory = {**peak_memory(timed, device), "input_bytes": description[spec.layout]["bytes"]}
    return {
        "format": PROFILE_FORMAT,
        "model": name,
        "description": spec.description,
        "layout": spec.layout,
        "num_classes": num_classes,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **environment(device),
        "compiled": compile,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "batch": {**description, "fed_as": spec.layout if spec.layout == "compact" else
                  f"padded to {batch.padded_frames} frames x {PADDED_PERSONS} persons, fill {spec.fill}"},
        "summary": {
            "latency_ms": latency["median_ms"],
            "params": params["total"],
            "params_m": params["total"] / 1e6,
            "gmacs": macs["fvcore"].total / 1e9,
            "gmacs_products": macs["fvcore"].products / 1e9,
            "peak_memory_bytes": memory["peak_bytes"],
        },
        "top3": {
            "macs": _top3(macs["fvcore"].by_category),
            "params": _top3(params["by_category"]),
            "latency_ms": _top3(breakdown["by_category_ms"]),
        },
        "params": params,
        "macs": {name: count.as_dict() for name, count in macs.items()},
        "latency": {**latency, **breakdown},
        "memory": memory,
    }


def sweep(name: str, frames: list[int], clips: list[int], num_classes: int, device: torch.device,
          repeats: int = SWEEP_REPEATS, warmup: int = 1, padded_frames: int = PADDED_FRAMES) -> list[dict]:
    """Latency and GMACs against clip length and batch size: one-person clips of exactly `frames` frames.

    A compact model gets the clips as they are; a padded model always gets
    `padded_frames` x 2 (300 x 2 as in its paper), so its cost depends on the
    batch size alone and is measured once per batch size.
    """
    spec = registry.spec(name)
    torch.manual_seed(0)
    model = registry.build(name, num_classes).to(device).eval()
    points = []
    for count in clips:
        padded_point = None
        for length in frames:
            batch = uniform_batch(count, length, padded_frames=padded_frames)
            if spec.layout == "padded" and padded_point is not None:
                points.append({**padded_point, "frames": length})
                continue
            inputs = registry.model_inputs(spec, _model_batch(spec, batch, device))
            latency = forward_latency(_forward(model, inputs), device, repeats, warmup)
            point = {
                "clips": count, "frames": length, "layout": spec.layout,
                "rows": batch.rows if spec.layout == "compact" else count * padded_frames * PADDED_PERSONS,
                "latency_ms": latency["median_ms"], "latency_min_ms": latency["min_ms"],
                "latency_max_ms": latency["max_ms"],
                "gmacs": count_macs(model, spec, batch, device, ("fvcore",))["fvcore"].total / 1e9,
            }
            if spec.layout == "padded":
                padded_point = point
            points.append(point)
    return points


def profile(store: str, benchmark: str, model: str, clips: int = PROFILE_CLIPS, seed: int = PROFILE_SEED,
            device: torch.device | None = None, repeats: int = PROFILE_REPEATS, warmup: int = PROFILE_WARMUP,
            profiler_runs: int = PROFILER_RUNS, sweep_frames: list[int] | None = None,
            sweep_clips: list[int] | None = None, sweep_repeats: int = SWEEP_REPEATS, compile: bool = False,
            padded_frames: int = PADDED_FRAMES) -> dict:
    """`star profile`: the model's profile on the profiling batch of `store`, with the sweep if frames are given."""
    registry.spec(model)  # an unknown name fails before the store is read
    device = device or resolve_device("auto")
    num_classes = get_benchmark(benchmark).num_classes
    batch = draw_batch(CompactStore(store), benchmark, clips, seed, padded_frames)
    result = profile_model(model, batch, num_classes, device, repeats, warmup, profiler_runs, compile)
    if sweep_frames:
        result["sweep"] = sweep(model, sweep_frames, sweep_clips or [1, clips], num_classes, device, sweep_repeats,
                                padded_frames=padded_frames)
    return result
