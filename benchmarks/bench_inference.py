"""STAR's forward in inference with and without its inference kernels, timed in alternating pairs.

    python benchmarks/bench_inference.py [--models star-64 star-128] [--clips 16] [--pairs 20] [--threads N]

On the fused CPU kernels, inference (eval mode, no gradient asked for) runs
both attentions with their projection inside, the two encoder layers' tails of
an ST-block as one kernel and the context pooling as one
(`STARConfig.inference_kernels`). This builds each model twice
from one seed, with them and without, prints the largest difference of their
logits, and times
one forward of each in turn on the `bench_model.py` batch of NTU-like clips:
a noisy machine's drift then falls on both alike, and the median of the
pairs' ratios is the speed-up. Prints the CPU's capability first.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

from star import registry, runtime
from star.data.batching import collate_compact
from star.data.synthetic import ntu_like_clips, random_samples
from star.network import STAR, fused


def paired_times(models: list[torch.nn.Module], inputs, pairs: int, warmup: int = 3) -> list[list[float]]:
    """Seconds of each model's forward, the models called in turn `pairs` times after `warmup` rounds."""
    times = [[] for _ in models]
    with torch.inference_mode():
        for round_ in range(warmup + pairs):
            for model, kept in zip(models, times, strict=True):
                start = time.perf_counter()
                model(*inputs)
                if round_ >= warmup:
                    kept.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["star-64", "star-128"])
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    runtime.apply()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not fused.available():
        raise SystemExit(f"the fused CPU kernels are not available: {fused.build_error()}")
    frames, persons = ntu_like_clips(args.clips, args.seed)
    batch = collate_compact(random_samples(frames, persons, seed=args.seed))
    print(f"cpu {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}; {args.clips} clips, {len(batch.x)} rows; {args.pairs} alternating pairs")
    print(f"{'model':16s} {'without_ms':>10s} {'with_ms':>10s} {'speed-up':>9s} {'max |diff|':>10s}")
    for name in args.models:
        spec = registry.spec(name)
        models = []
        for on in (False, True):
            torch.manual_seed(args.seed)
            base = registry.build(name)
            if not isinstance(base, STAR):
                raise SystemExit(f"{name} is not a STAR model")
            model = STAR(replace(base.config, inference_kernels=on))
            model.load_state_dict(base.state_dict())
            models.append(model.eval())
        inputs = registry.model_inputs(spec, batch)
        with torch.inference_mode():
            difference = (models[0](*inputs) - models[1](*inputs)).abs().max().item()
        without, with_ = paired_times(models, inputs, args.pairs)
        ratio = statistics.median(a / b for a, b in zip(without, with_, strict=True))
        print(f"{name:16s} {statistics.median(without) * 1e3:10.1f} {statistics.median(with_) * 1e3:10.1f} "
              f"{ratio:8.2f}x {difference:10.1e}", flush=True)


if __name__ == "__main__":
    main()
