"""Model speed on one batch of 16 NTU-like clips: STAR compact, the baselines on the same clips padded.

    python benchmarks/bench_model.py [--clips 16] [--repeats 10] [--threads N] [--seed 0] [--device auto]
                                     [--models NAME ...] [--compile]
                                     [--skip models|attention|backends|dispatch ...]

Prints, from one run on one machine:
1. the practical ceiling: GFLOP/s of a large float32 matrix product;
2. every registered model's (or each of --models) forward latency (inference
   mode, median and spread over --repeats after warm-up) on the batch in its
   own layout, with GMACs (STAR's analytic count; for the baselines torch's
   FlopCounterMode: convolutions and matrix products) and achieved GFLOP/s,
   then each STAR model's speed-up over each padded baseline; with --compile
   also the latency of the model compiled by torch.compile and compiled/eager;
3. one spatial attention call in each form (sparse rows, gather and edges on
   each scatter back-end, full dense): the sparse-over-full ratio and the
   reason behind it (products computed against bytes gathered);
4. STAR-64 forward and forward+backward with each kernel form and scatter
   back-end, and the fused form's forward without its inference kernels
   (`STARConfig.inference_kernels`);
5. the operators STAR-64's forward and forward+backward dispatch in each
   kernel form for 4, 16 and 64 clips, all of them and those that launch a
   kernel (views launch none), ST-GCN's beside them: on a GPU each launch
   costs several microseconds whatever it computes.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from star import registry, runtime
from star.data.batching import PaddedCollate, collate_compact
from star.data.synthetic import ntu_like_clips, random_samples
from star.device import DEVICES, compiled, resolve_device
from star.network import fused
from star.network.scatter import BACKENDS, get_backend
from star.network.sparse_attention import SpatialAttention
from star.network.star import KERNEL_FORMS, STAR, STARConfig
from star.profiling.dispatch import count_dispatches
from star.profiling.timing import forward_latency
from star.skeleton import neighbourhood_mask


def latency_ms(function, device: torch.device, repeats: int, warmup: int = 2) -> tuple[float, float, float]:
    """Median, min and max wall time of function() in ms, after warm-up."""
    timing = forward_latency(function, device, repeats, warmup)
    return timing["median_ms"], timing["min_ms"], timing["max_ms"]


def matmul_ceiling(device: torch.device, repeats: int) -> float:
    """GFLOP/s of a 2048^3 float32 matrix product."""
    a, b = torch.randn(2048, 2048, device=device), torch.randn(2048, 2048, device=device)
    median, _, _ = latency_ms(lambda: a @ b, device, repeats)
    return 2 * 2048 ** 3 / median / 1e6


def forward(model, inputs):
    with torch.inference_mode():
        return model(*inputs)


def padded_macs(model, padded) -> float:
    """Multiply-accumulates of a padded batch as torch's FlopCounterMode counts them (products, convolutions).

    Every padded clip costs the same, so one clip is counted and multiplied.
    """
    counter = FlopCounterMode(display=False)
    with counter:
        forward(model, (padded.x[:1],))
    return counter.get_total_flops() / 2 * len(padded.x)


def model_table(samples, names: list[str], device, repeats: int, ceiling: float, compile: bool) -> dict:
    """Print each model's latency, GMACs and share of the product ceiling; returns those figures per model name
    (layout, latency_ms, gmacs, of_ceiling)."""
    compact = collate_compact(samples).to(device)
    padded = PaddedCollate()(samples).to(device)
    rows = len(compact.x)
    print(f"\nbatch: {len(samples)} clips, {rows} compact rows; padded {tuple(padded.x.shape)}")
    print("gmacs: STAR's analytic count; the padded baselines' convolutions and matrix products (FlopCounterMode)")
    print(f"{'model':16s} {'layout':8s} {'params_m':>8s} {'latency_ms':>10s} {'min..max':>15s} {'gmacs':>7s} "
          f"{'gflop/s':>8s} {'of ceiling':>10s}" + (f" {'compiled_ms':>11s} {'compiled/eager':>14s}" if compile
                                                    else ""))
    results = {}
    for name in names:
        spec = registry.spec(name)
        torch.manual_seed(0)
        model = registry.build(name).to(device).eval()
        batch = compact if spec.layout == "compact" else padded
        inputs = registry.model_inputs(spec, batch)
        median, low, high = latency_ms(lambda m=model, i=inputs: forward(m, i), device, repeats)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        if spec.layout == "compact":
            macs = sum(model.analytic_macs(rows, len(samples)).values())
        else:
            macs = padded_macs(model, padded)
        rate = 2 * macs / median / 1e6
        results[name] = {"layout": spec.layout, "latency_ms": median, "gmacs": macs / 1e9, "of_ceiling": rate / ceiling}
        line = (f"{name:16s} {spec.layout:8s} {params:8.3f} {median:10.1f} {f'{low:.1f}..{high:.1f}':>15s} "
                f"{macs / 1e9:7.2f} {rate:8.1f} {rate / ceiling:9.1%}")
        if compile:  # the first call compiles: it is part of the warm-up
            fast = compiled(model, True)
            timed, _, _ = latency_ms(lambda m=fast, i=inputs: forward(m, i), device, repeats)
            line += f" {timed:11.1f} {timed / median:14.2f}"
        print(line, flush=True)
    baselines = {n: r["latency_ms"] for n, r in results.items() if r["layout"] == "padded"}
    for name, result in results.items():
        if result["layout"] == "compact" and baselines:
            ratios = ", ".join(f"{baselines[b] / result['latency_ms']:.1f}x vs {b}" for b in baselines)
            print(f"speed-up of {name}: {ratios}")
    return results


def attention_table(rows: int, device, repeats: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(rows, 25, 64, device=device)
    mask = neighbourhood_mask(3)
    edges = int(mask.sum())
    forms = {
        "sparse rows": (SpatialAttention(64, 8, mask, "rows"), edges),
        "sparse gather": (SpatialAttention(64, 8, mask, "gather"), edges),
        **{f"sparse edges/{b}": (SpatialAttention(64, 8, mask, "edges", get_backend(b)), edges) for b in BACKENDS},
        "full (dense)": (SpatialAttention(64, 8, None), 625),
    }
    print(f"\none spatial attention call, width 64, 8 heads, {rows} rows (projection included)")
    print(f"{'form':20s} {'pairs':>5s} {'latency_ms':>10s} {'gmacs':>10s} {'gflop/s':>8s} {'gathered MB':>11s}")
    timings = {}
    for name, (module, pairs) in forms.items():
        module = module.to(device).eval()
        median, _, _ = latency_ms(lambda m=module: forward(m, (x,)), device, repeats)
        timings[name] = median
        macs = 2 * rows * pairs * 64 + rows * 25 * 64 * 192  # scores + aggregation, and the q/k/v projection
        # the edges form copies each attended key and value plane once per edge, the gather form once per slot
        # of the padded neighbour table; rows and dense gather nothing
        slots = module.graph.table.numel() if name == "sparse gather" else pairs
        gathered = 2 * rows * slots * 64 * 4 / 1e6 if name.startswith(("sparse edges", "sparse gather")) else 0.0
        print(f"{name:20s} {pairs:5d} {median:10.2f} {macs / 1e9:10.3f} {2 * macs / median / 1e6:8.1f} "
              f"{gathered:11.1f}")
    ratio = timings["full (dense)"] / timings["sparse rows"]
    print(f"sparse rows vs full: {ratio:.2f}x {'faster' if ratio >= 1 else 'slower'} "
          f"(computes {edges}/625 = {edges / 625:.0%} of the pairs, one plane operation per edge at memory speed; "
          "the dense form computes all 625 as batched matrix products of 25 x 25 at BLAS speed)")


FORMS = {f"{sparse}+{temporal}": dict(sparse_kernel=sparse, temporal_kernel=temporal)
         for sparse, temporal in KERNEL_FORMS.values()}
# the fused kernels without the inference-only ones (projections and layer tails): their effect on the forward
FORMS["fused, no inference kernels"] = dict(sparse_kernel="fused", temporal_kernel="fused", inference_kernels=False)


def forms_on(device: torch.device) -> dict[str, dict]:
    """FORMS that run on `device`: the fused kernels are CPU operators, and need a C++ compiler."""
    cpu_ready = device.type == "cpu" and fused.available()
    return {form: kernels for form, kernels in FORMS.items() if cpu_ready or "fused" not in kernels.values()}


def backend_table(samples, device, repeats: int) -> None:
    inputs = registry.model_inputs(registry.spec("star-64"), collate_compact(samples).to(device))
    print("\nSTAR-64 in each kernel form and scatter back-end (pooling sums; the edges kernel's segment reductions)")
    print(f"{'back-end':10s} {'form':28s} {'forward_ms':>10s} {'fwd+bwd_ms':>10s}")
    for form, kernels in forms_on(device).items():
        for backend in BACKENDS:
            torch.manual_seed(0)
            model = STAR(STARConfig(scatter_backend=backend, **kernels)).to(device)
            model.eval()
            fwd, _, _ = latency_ms(lambda m=model: forward(m, inputs), device, repeats)
            if not kernels.get("inference_kernels", True):  # training runs as fused+fused does
                print(f"{backend:10s} {form:28s} {fwd:10.1f} {'':>10s}")
                continue
            model.train()

            def step(m=model):
                m.zero_grad(set_to_none=True)
                m(*inputs).sum().backward()

            both, _, _ = latency_ms(step, device, max(3, repeats // 3), warmup=1)
            print(f"{backend:10s} {form:28s} {fwd:10.1f} {both:10.1f}")


def dispatch_table(seed: int) -> None:
    """Operators dispatched by STAR-64 in each form and by ST-GCN.

    The CPU forms are counted on the CPU; the device form on the meta device,
    which dispatches what CUDA does (torch's fused dropout included, where the
    CPU draws its own masks) without a GPU.
    """
    print("\noperators dispatched per call (all / launching a kernel, i.e. without views)")
    print(f"{'model':8s} {'form':28s} {'device':6s} {'clips':>5s} {'forward':>13s} {'fwd+bwd':>13s}")
    for form, kernels in forms_on(torch.device("cpu")).items():
        device = "meta" if form == "+".join(KERNEL_FORMS["device"]) else "cpu"
        for clips in (4, 16, 64):
            frames, persons = ntu_like_clips(clips, seed)
            batch = collate_compact(random_samples(frames, persons)).to(device)
            inputs = registry.model_inputs(registry.spec("star-64"), batch)
            torch.manual_seed(0)
            model = STAR(STARConfig(**kernels)).to(device).eval()
            with torch.no_grad():
                ahead = count_dispatches(lambda m=model, i=inputs: m(*i))
            model.train()
            both = count_dispatches(lambda m=model, i=inputs: m(*i).sum().backward())
            print(f"{'star-64':8s} {form:28s} {device:6s} {clips:5d} {f'{ahead.total} / {ahead.launches}':>13s} "
                  f"{f'{both.total} / {both.launches}':>13s}", flush=True)
    model = registry.build("st-gcn").eval()
    with torch.no_grad():
        ahead = count_dispatches(lambda: model(torch.zeros(2, 3, 300, 25, 2)))
    print(f"{'st-gcn':8s} {'padded':28s} {'cpu':6s} {2:5d} {f'{ahead.total} / {ahead.launches}':>13s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--models", nargs="*", default=None, help="registered models to time (default: all)")
    parser.add_argument("--compile", action="store_true", help="also time each model compiled by torch.compile")
    parser.add_argument("--skip", nargs="*", default=[], choices=["models", "attention", "backends", "dispatch"])
    args = parser.parse_args()
    runtime.apply()  # as the star command does (star.runtime)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    frames, persons = ntu_like_clips(args.clips, args.seed)
    samples = random_samples(frames, persons, seed=args.seed)
    ceiling = matmul_ceiling(device, args.repeats)
    print(f"device {device} ({torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; "
          f"matrix-product ceiling {ceiling:.1f} GFLOP/s")
    print(f"clip frames {frames}, persons {persons}")
    if "models" not in args.skip:
        names = args.models or registry.names()
        for name in names:
            registry.spec(name)  # an unknown name fails here, before anything is timed
        model_table(samples, names, device, args.repeats, ceiling, args.compile)
    if "attention" not in args.skip:
        attention_table(sum(f * p for f, p in zip(frames, persons, strict=True)), device, args.repeats)
    if "backends" not in args.skip:
        backend_table(samples, device, args.repeats)
    if "dispatch" not in args.skip:
        dispatch_table(args.seed)


if __name__ == "__main__":
    main()
