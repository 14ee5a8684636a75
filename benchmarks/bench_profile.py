"""The paper's Tables 2 and 5 side by side: every model profiled on the same clips in one run, with the speed targets.

    python benchmarks/bench_profile.py [--store STORE --benchmark ntu60/xsub] [--clips 16] [--seed 0]
                                       [--models NAME ...] [--repeats 5] [--threads N] [--device auto]
                                       [--allocator keep|default]

Clips: a seeded draw from the store's test split (as `star profile` makes it),
or without --store, NTU-like synthetic clips (star.data.synthetic.ntu_like_clips).
For each model it prints latency (median, min..max), parameters, GMACs
(fvcore with the product handle) and the three categories taking the most
time; then STAR-64's speed-up over ST-GCN and ST-TR (targets: 10x and 20x)
and each STAR width's sparse-over-full speed-up. `--allocator default` leaves
glibc's malloc and torch's pages as they are (see star.runtime) for a
before/after comparison.
"""

from __future__ import annotations

import argparse

import torch

from star import registry
from star.data.store import CompactStore
from star.data.synthetic import ntu_like_clips, random_samples
from star.device import DEVICES, resolve_device
from star.profiling.batch import ProfilingBatch, draw_batch
from star.profiling.profile import profile_model, set_threads
from star.runtime import allocator, flush_denormals, keep_freed_memory, use_huge_pages

DEFAULT_MODELS = ["star-64", "star-64-full", "star-128", "star-128-full", "st-gcn", "st-tr"]
TARGETS = {"st-gcn": 10.0, "st-tr": 20.0}  # STAR-64's speed-up over each baseline, from the profiling issue


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None)
    parser.add_argument("--benchmark", default="ntu60/xsub")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="*", default=DEFAULT_MODELS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--allocator", default="keep", choices=["keep", "default"])
    args = parser.parse_args()
    for name in args.models:
        registry.spec(name)  # an unknown name fails before anything is timed
    setting = "glibc defaults, huge pages not requested"
    if args.allocator == "keep":  # as the star command sets it
        keep_freed_memory()
        use_huge_pages()
        setting = allocator()
    denormals = flush_denormals()["denormals"]  # as the star command does
    threads = set_threads(args.threads)
    device = resolve_device(args.device)
    if args.store:
        batch = draw_batch(CompactStore(args.store), args.benchmark, args.clips, args.seed)
    else:
        frames, persons = ntu_like_clips(args.clips, args.seed)
        batch = ProfilingBatch(random_samples(frames, persons, seed=args.seed), ["ntu-like"] * args.clips, {})
    described = batch.describe()
    print(f"device {device}, {threads} threads, torch {torch.__version__}, allocator: {setting}, "
          f"subnormal floats: {denormals}")
    print(f"batch: {described['clips']} clips, {described['total_frames']} frames, {described['rows']} compact rows; "
          f"baselines padded to {described['padded']['shape']}")
    print(f"{'model':14s} {'latency_ms':>10s} {'min..max':>17s} {'params':>10s} {'gmacs':>8s}  most time (ms)")
    latency = {}
    for name in args.models:
        result = profile_model(name, batch, 60, device, repeats=args.repeats, warmup=1, profiler_runs=1)
        summary, times = result["summary"], result["latency"]
        latency[name] = summary["latency_ms"]
        top = ", ".join(f"{k} {v:.0f}" for k, v in result["top3"]["latency_ms"])
        spread = f"{times['min_ms']:.1f}..{times['max_ms']:.1f}"
        print(f"{name:14s} {summary['latency_ms']:10.1f} {spread:>17s} "
              f"{summary['params']:10,d} {summary['gmacs']:8.2f}  {top}")
    if "star-64" in latency:
        for baseline, target in TARGETS.items():
            if baseline in latency:
                ratio = latency[baseline] / latency["star-64"]
                verdict = "met" if ratio >= target else "MISSED"
                print(f"STAR-64 over {baseline}: {ratio:.1f}x (target {target:.0f}x: {verdict})")
    for width in (64, 128):
        sparse, full = f"star-{width}", f"star-{width}-full"
        if sparse in latency and full in latency:
            print(f"{sparse} sparse over full: {latency[full] / latency[sparse]:.2f}x")


if __name__ == "__main__":
    main()
