"""Accept a GPU machine in one command: every model right, trainable, profiled and launch-light on its device.

    bash benchmarks/gpu_acceptance.sh [--device cuda] [--quick] [--out gpu_acceptance.json] [--work DIR]

On a machine with a CUDA GPU and this repository installed, it checks, and
prints as a pass/fail table and writes to --out as JSON:

1. equality: every registered model's outputs on the device equal its outputs
   on the CPU (float32, TF32 off) to 1e-4 of the logits' scale, with any
   device-to-host synchronisation in the forward an error; on the CPU
   (`--device cpu`) the device side runs STAR's launch-light kernel forms,
   so the check compares them with the CPU forms instead;
2. kernels: each STAR kernel form (sparse rows, gather, edges; temporal split,
   padded), forward and backward on the device, equals its reference (masked
   dense softmax, quadratic linear attention) to 1e-5 in float32;
3. amp: one epoch of every model on the generated tiny set under autocast
   float16 with a GradScaler and under bfloat16 (on the CPU bfloat16 only),
   every loss finite;
4. resume: a run killed after its first epoch and resumed equals the same
   run uninterrupted, on the device;
5. profile: `star profile`'s measurements of every model on the 16-clip
   profiling batch (latency by the device's clock, per-category kernel time,
   peak memory, the fvcore, DeepSpeed and analytic MAC counts), with Table 2's
   published rows beside the measured ones;
6. dispatch: the operators STAR-64 dispatches in each kernel form for 4, 16
   and 64 clips, and each form's latency on the device;
7. distributed: a one-epoch run under torchrun with one process per GPU
   (NCCL); skipped, with a line saying so, on fewer than two GPUs.

`--quick` shrinks it for CI (`--device cpu --quick` runs inside .ci/run):
STAR-64, STAR-64-code, ST-GCN and ST-TR only, fewer clips and repeats.
It exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from acceptance import finish, row, run_checks

from star import registry
from star.data.batching import PaddedCollate, clip_loader, collate_compact
from star.data.preprocess import preprocess
from star.data.splits import get_benchmark
from star.data.store import CompactStore
from star.data.synthetic import TINY, generate, random_samples
from star.device import DEVICES, autocast, resolve_device
from star.network import fused
from star.network.linear_attention import (
    elu_feature_map,
    padded_linear_attention,
    quadratic_linear_attention,
    segmented_linear_attention,
)
from star.network.scatter import get_backend
from star.network.segments import ClipSegments
from star.network.sparse_attention import (
    NeighbourhoodGraph,
    dense_attention,
    edge_attention,
    gathered_attention,
    row_attention,
)
from star.network.star import KERNEL_FORMS, STAR, STARConfig, kernel_forms
from star.paper import paper_row, published
from star.profiling.batch import ProfilingBatch
from star.profiling.dispatch import count_dispatches
from star.profiling.profile import profile_model
from star.profiling.timing import forward_latency
from star.skeleton import neighbourhood_mask, power_edge_counts
from star.training.checkpoint import load_checkpoint
from star.training.config import run_config
from star.training.trainer import train

BENCHMARK = "ntu60/xsub"
QUICK_MODELS = ["star-64", "star-64-code", "st-gcn", "st-tr"]


@contextmanager
def no_host_sync(device: torch.device):
    """On CUDA, make any device-to-host synchronisation inside the block an error."""
    if device.type != "cuda":
        yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def example_batch(layout: str, frames: int = 24):
    samples = random_samples(frames=[20, 33, 7, 12], persons=[1, 2, 1, 2], seed=3)
    return collate_compact(samples) if layout == "compact" else PaddedCollate(frames=frames)(samples)


def scale_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest difference relative to the largest magnitude (untrained logits run into the thousands)."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    return float((got - want).abs().max() / want.abs().max().clamp(min=1))


# --- 1. equality --------------------------------------------------------------------------------------------

def check_equality(names: list[str], device: torch.device) -> list[dict]:
    rows = []
    for name in names:
        spec = registry.spec(name)
        torch.manual_seed(0)
        model = registry.build(name).eval()
        batch = example_batch(spec.layout)
        with torch.no_grad():
            on_cpu = model(*registry.model_inputs(spec, batch))
            if device.type == "cpu":
                if spec.layout != "compact":
                    rows.append(row("equality", name, None, "one form only, and the device is the CPU"))
                    continue
                with kernel_forms(model, "device"):
                    on_device = model(*registry.model_inputs(spec, batch))
            else:
                inputs = registry.model_inputs(spec, batch.to(device))
                model.to(device)
                with no_host_sync(device):
                    on_device = model(*inputs)
        error = scale_error(on_device, on_cpu)
        what = "device forms vs CPU forms" if device.type == "cpu" else f"{device.type} vs cpu"
        rows.append(row("equality", name, error <= 1e-4, f"{what}: max error {error:.1e} of the logit scale",
                        error=error))
    return rows


# --- 2. kernels ---------------------------------------------------------------------------------------------

def check_kernels(device: torch.device) -> list[dict]:
    """Each form against its reference on random inputs, forward and gradients, float32."""
    rows = []
    generator = torch.Generator().manual_seed(0)
    n, h, d = 40, 8, 8
    for counts_name, counts in (("set", neighbourhood_mask(3).astype(int)),
                                ("repeated", power_edge_counts(3, "stgcn"))):
        graph = NeighbourhoodGraph.from_mask(counts).to(device)
        q, k, v = (torch.randn(n, 25, h, d, generator=generator).to(device).requires_grad_() for _ in range(3))
        weights = torch.randn(n, 25, h, d, generator=generator).to(device)
        heads_first = [t.transpose(1, 2) for t in (q, k, v)]  # (N, H, V, d)
        mask = torch.as_tensor(counts, device=device)
        reference = dense_attention(*heads_first, mask=mask).transpose(1, 2)  # (N, V, H, d)
        planes = [t.permute(1, 3, 2, 0).reshape(25, d, h * n) for t in (q, k, v)]  # (V, d, M), M = (H, N)
        edges = [t.permute(1, 2, 0, 3).reshape(25, h * n, d) for t in (q, k, v)]  # (V, M, d)
        forms = {
            "rows": row_attention(*planes, graph).view(25, d, h, n).permute(3, 0, 2, 1),
            "gather": gathered_attention(q, torch.stack([k, v], dim=2), graph),
            "edges": edge_attention(*edges, graph, get_backend("torch")).view(25, h, n, d).permute(2, 0, 1, 3),
        }
        if device.type == "cpu" and fused.available():  # the fused kernels are CPU operators
            rows_dh = torch.stack((q, k, v), 2).transpose(3, 4).contiguous()  # (N, V, 3, d, H), as the kernel reads
            forms["fused"] = fused.sparse_attention(rows_dh, graph.rowptr, graph.key)
        want = torch.autograd.grad((reference * weights).sum(), (q, k, v))
        for form, out in forms.items():
            got = torch.autograd.grad((out * weights).sum(), (q, k, v))
            error = max(scale_error(out, reference), *(scale_error(a, b) for a, b in zip(got, want, strict=True)))
            rows.append(row("kernels", f"sparse {form} ({counts_name})", error <= 1e-5,
                            f"forward and gradients vs masked dense: max error {error:.1e}", error=error))
    bounds = [0, 1, 40, 57, 120]
    segments = ClipSegments.from_offsets(torch.tensor(bounds, device=device), bounds[-1])
    for eps in (1e-6, 0.0):
        qkv = torch.randn(120, 25, 3, h, d, generator=generator).to(device).requires_grad_()
        weights = torch.randn(120, 25, h, d, generator=generator).to(device)
        scale = d ** -0.25
        groups = qkv.permute(2, 1, 3, 0, 4).reshape(3, 25 * h, 120, d)  # (3, G, N, d)
        phi_q, phi_k = elu_feature_map(groups[0] * scale), elu_feature_map(groups[1] * scale)
        as_rows = lambda t: t.view(25, h, 120, d).permute(2, 0, 1, 3)  # noqa: E731  (G, N, d) -> (N, V, H, d)
        reference = as_rows(quadratic_linear_attention(phi_q, phi_k, groups[2], segments.clip_ids, eps))
        split = segmented_linear_attention(phi_q.mT, phi_k.mT, groups[2].mT, bounds, eps).mT
        forms = {"split": as_rows(split), "padded": padded_linear_attention(qkv, segments, scale, eps)}
        if device.type == "cpu" and fused.available():
            forms["fused"] = fused.linear_attention(qkv, bounds, scale, eps)
        (want,) = torch.autograd.grad((reference * weights).sum(), qkv, retain_graph=True)
        for form, out in forms.items():
            (got,) = torch.autograd.grad((out * weights).sum(), qkv, retain_graph=True)
            error = max(scale_error(out, reference), scale_error(got, want))
            rows.append(row("kernels", f"temporal {form} (eps {eps:g})", error <= 1e-5,
                            f"forward and gradients vs quadratic: max error {error:.1e}", error=error))
    return rows


# --- 3. amp and 4. resume -----------------------------------------------------------------------------------

def tiny_store(work: Path) -> CompactStore:
    store = work / "store"
    if not (store / "manifest.json").exists():
        generate(work / "raw", replace(TINY, max_frames=64))
        preprocess([work / "raw"], store, workers=1, progress=False)
    return CompactStore(store)


def check_amp(names: list[str], store: CompactStore, device: torch.device, quick: bool) -> list[dict]:
    rows = []
    clips = store.split(BENCHMARK, "train")[: 8 if quick else None]
    # float16 on a CPU without float16 arithmetic runs reference kernels for minutes: CUDA only
    dtypes = (torch.float16, torch.bfloat16) if device.type == "cuda" else (torch.bfloat16,)
    for name in names:
        spec = registry.spec(name)
        for dtype in dtypes:
            torch.manual_seed(0)
            model = registry.build(name, get_benchmark(BENCHMARK).num_classes).to(device).train()
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
            loader = clip_loader(store, clips, spec.layout, batch_size=8, shuffle=True, fill=spec.fill,
                                 frames=64 if quick else 300)
            losses = []
            started = time.perf_counter()
            for batch in loader:
                batch = batch.to(device)
                with autocast(device, True, dtype):
                    loss = F.cross_entropy(model(*registry.model_inputs(spec, batch)).float(), batch.labels)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                losses.append(loss.item())
            finite = all(math.isfinite(value) for value in losses)
            label = str(dtype).removeprefix("torch.")
            rows.append(row("amp", f"{name} {label}", finite,
                            f"{len(losses)} steps in {time.perf_counter() - started:.1f} s, losses "
                            f"{losses[0]:.3f} .. {losses[-1]:.3f}", losses=losses))
    return rows


def check_resume(store: CompactStore, device: torch.device, work: Path) -> list[dict]:
    settings = dict(recipe="code", overrides={"epochs": 2, "batch_size": 8}, max_clips=24, device=device.type)
    whole = run_config(store.path, BENCHMARK, "star-64", work / "whole", **settings)
    train(whole, progress=False)
    killed = run_config(store.path, BENCHMARK, "star-64", work / "resumed", **{**settings,
                        "overrides": {"epochs": 1, "batch_size": 8}})
    train(killed, progress=False)
    train(run_config(store.path, BENCHMARK, "star-64", work / "resumed", **settings), progress=False)
    one, other = (load_checkpoint(work / run / "checkpoint.pt")["model"] for run in ("whole", "resumed"))
    error = max(float((one[key].double() - other[key].double()).abs().max()) for key in one)
    return [row("resume", "star-64", error == 0.0,
                f"2 epochs straight vs 1 epoch, stop, resume: largest weight difference {error:.1e}", error=error)]


# --- 5. profile ---------------------------------------------------------------------------------------------

def check_profiles(names: list[str], device: torch.device, quick: bool) -> list[dict]:
    clips = 4 if quick else 16
    frames, persons = [int(f) for f in torch.linspace(40, 120, clips)], [1 + (i % 5 == 0) for i in range(clips)]
    batch = ProfilingBatch(random_samples(frames, persons), [f"synthetic-{i}" for i in range(clips)], {})
    paper = published()["table2_efficiency"]
    rows = []
    for name in names:
        result = profile_model(name, batch, 60, device, repeats=2 if quick else 10, warmup=1,
                               profiler_runs=1 if quick else 3)
        summary, macs = result["summary"], result["macs"]
        counters = {counter: macs[counter]["total"] / 1e9 for counter in ("fvcore", "deepspeed", "analytic")}
        complete = all(math.isfinite(v) and v > 0 for v in (summary["latency_ms"], *counters.values())) and \
            result["latency"]["by_category_ms"] and summary["peak_memory_bytes"] > 0
        published_row = paper["rows"].get(paper_row(name))
        beside = f"; published (CUDA, 16 clips) {published_row[0]:.1f} ms, {published_row[2]:.2f} GMACs" \
            if published_row else ""
        rows.append(row("profile", name, bool(complete),
                        f"{summary['latency_ms']:.1f} ms ({result['latency']['clock']}), GMACs fvcore "
                        f"{counters['fvcore']:.2f} / deepspeed {counters['deepspeed']:.2f} / analytic "
                        f"{counters['analytic']:.2f}, peak {summary['peak_memory_bytes'] / 2**20:.0f} MiB{beside}",
                        latency_ms=summary["latency_ms"], gmacs=counters, clips=clips,
                        published=dict(zip(paper["columns"], published_row, strict=True)) if published_row else None))
    return rows


# --- 6. dispatch --------------------------------------------------------------------------------------------

def check_dispatch(device: torch.device, quick: bool) -> list[dict]:
    """The launch-light forms' counts must not grow with the clips; forward <= 300 and fwd+bwd <= 900 launches."""
    rows = []
    for form, (sparse, temporal) in KERNEL_FORMS.items():
        if "fused" in (sparse, temporal) and device.type != "cpu":
            continue  # CPU operators
        counts = {}
        for clips in (4, 16, 64):
            # the counts do not depend on the clips' lengths, only on their number: short clips in quick mode
            frames = [(8 if quick else 40) + (13 * i) % (10 if quick else 90) for i in range(clips)]
            batch = collate_compact(random_samples(frames, [1 + (i % 5 == 0) for i in range(clips)])).to(device)
            inputs = registry.model_inputs(registry.spec("star-64"), batch)
            torch.manual_seed(0)
            model = STAR(STARConfig(sparse_kernel=sparse, temporal_kernel=temporal)).to(device).eval()
            with torch.no_grad(), no_host_sync(device if form == "device" else torch.device("cpu")):
                ahead = count_dispatches(lambda m=model, i=inputs: m(*i))
                latency = forward_latency(lambda m=model, i=inputs: m(*i), device, 1 if quick else 10, 1)
            model.train()
            both = count_dispatches(lambda m=model, i=inputs: m(*i).sum().backward())
            counts[clips] = {"forward": ahead.launches, "forward_all": ahead.total, "train_step": both.launches,
                             "train_step_all": both.total, "latency_ms": latency["median_ms"]}
        constant = len({(c["forward"], c["train_step"]) for c in counts.values()}) == 1
        light = all(c["forward"] <= 300 and c["train_step"] <= 900 for c in counts.values())
        summary = ", ".join(f"{clips} clips {c['forward']}/{c['train_step']} ({c['latency_ms']:.1f} ms)"
                            for clips, c in counts.items())
        judged = form == "device"  # the other forms are printed for comparison
        rows.append(row("dispatch", f"star-64 {form} forms ({sparse}, {temporal})",
                        constant and light if judged else None, f"launches forward/train step: {summary}",
                        counts=counts, comparison=not judged))
    return rows


# --- 7. distributed -----------------------------------------------------------------------------------------

def check_distributed(store: CompactStore, device: torch.device, work: Path) -> list[dict]:
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if gpus < 2:
        return [row("distributed", "torchrun nccl", None, f"skipped: {gpus} GPU(s); it needs two or more")]
    out = work / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={gpus}", "-m", "star.cli", "train",
               "--store", str(store.path), "--benchmark", BENCHMARK, "--model", "star-64", "--out", str(out),
               "--recipe", "code", "--epochs", "1", "--batch-size", str(8 * gpus), "--device", "cuda", "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True)
    metrics = out / "metrics.json"
    passed = done.returncode == 0 and metrics.exists()
    detail = f"{gpus} processes: " + ("metrics.json written" if passed else done.stderr.strip()[-500:])
    return [row("distributed", "torchrun nccl", passed, detail)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=DEVICES, default="cuda")
    parser.add_argument("--quick", action="store_true", help="a few models, clips and repeats (CI)")
    parser.add_argument("--out", default="gpu_acceptance.json", metavar="FILE.json")
    parser.add_argument("--work", default=None, metavar="DIR", help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    names = QUICK_MODELS if args.quick else registry.names()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.work or scratch)
        work.mkdir(parents=True, exist_ok=True)
        store = tiny_store(work)
        steps = [("equality", lambda: check_equality(names, device)),
                 ("kernels", lambda: check_kernels(device)),
                 ("amp", lambda: check_amp(names, store, device, args.quick)),
                 ("resume", lambda: check_resume(store, device, work)),
                 ("profile", lambda: check_profiles(names, device, args.quick)),
                 ("dispatch", lambda: check_dispatch(device, args.quick)),
                 ("distributed", lambda: check_distributed(store, device, work))]
        rows = run_checks(steps)
    finish(rows, args.out, started, format="star-gpu-acceptance-1", device=str(device), quick=args.quick,
           device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else
           f"cpu ({torch.backends.cpu.get_cpu_capability()})", torch=torch.__version__)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
