"""Training and evaluation throughput of each model through the trainer, on the same clips.

    python benchmarks/bench_train.py [--store STORE | --set ntu-like|tiny] [--benchmark ntu60/xsub]
                                     [--steps 4] [--batch-size 16] [--models NAME ...] [--device auto]
                                     [--workers 0] [--threads N] [--amp] [--accumulate 1]

Each model trains through star.training.trainer.Trainer (data loading, forward, backward,
optimiser step, its own recipe's optimiser) on the first --steps x --batch-size
clips of the benchmark's training side, evenly spread, and is evaluated on as
many clips of its test side: STAR on compact batches, the baselines on the
same clips padded to 300 frames. One pass warms up, the second is timed.
Prints samples (clips) per second for training and evaluation side by side,
and STAR-64's ratio over ST-GCN. Without --store, a synthetic set is generated
and preprocessed into a temporary folder: by default the NTU-like one
(star.data.synthetic.NTU_LIKE: lengths around a median of 70 frames, a second
person in one clip in five, as bench_model.py's clips), or with --set tiny the
test suite's tiny set (lengths log-uniform over 32-300 frames, a median near
98, and three of its eight actions two-person). STAR's cost follows the rows
it is given and the padded baselines' does not, so the ratio depends on the
set; the mean compact rows per clip are printed beside it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from star import registry, runtime
from star.data.preprocess import preprocess
from star.data.store import CompactStore
from star.data.synthetic import NTU_LIKE, TINY, generate
from star.device import DEVICES
from star.training.config import run_config, subset
from star.training.prediction import predict
from star.training.trainer import Trainer

DEFAULT_MODELS = ("star-64", "star-128", "st-gcn", "st-tr")
SETS = {"ntu-like": NTU_LIKE, "tiny": TINY}


def synthetic_store(scratch: Path, name: str) -> Path:
    """The synthetic set `name` (SETS) generated and preprocessed under `scratch`; the store's folder."""
    generate(scratch / "raw", SETS[name])
    preprocess([scratch / "raw"], scratch / "store", progress=False)
    return scratch / "store"


def throughput(store: Path, benchmark: str, model: str, scratch: Path, steps: int, batch_size: int,
               device: str = "auto", workers: int = 0, amp: bool = False, accumulate: int = 1) -> tuple[float, float]:
    """Training and evaluation clips per second of the second of two passes over steps x batch_size clips."""
    config = run_config(store, benchmark, model, scratch / model, overrides={"batch_size": batch_size},
                        max_clips=steps * batch_size, device=device, workers=workers, amp=amp,
                        accumulate=accumulate)
    trainer = Trainer(config, progress=False)
    rates = []
    for epoch in range(2):
        start = time.monotonic()
        _, _, clips = trainer.train_epoch(epoch)
        trained = time.monotonic() - start
        start = time.monotonic()
        predictions = predict(trainer.network, trainer.spec, trainer.test_loader, trainer.device, amp)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        rates.append((clips / trained, len(predictions.labels) / (time.monotonic() - start)))
    return rates[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--store", type=Path, default=None, help="a compact store")
    source.add_argument("--set", choices=SETS, default="ntu-like", help="without --store: the synthetic set made")
    parser.add_argument("--benchmark", default="ntu60/xsub")
    parser.add_argument("--steps", type=int, default=4, help="optimiser steps per pass")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--models", nargs="*", default=list(DEFAULT_MODELS))
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--workers", type=int, default=0, help="data loader processes")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--amp", action="store_true", help="mixed precision")
    parser.add_argument("--accumulate", type=int, default=1,
                        help="micro-batches per batch (ST-TR at batch 16 needs more than 24 GB without)")
    args = parser.parse_args()
    for name in args.models:
        registry.spec(name)  # an unknown name fails here, before anything runs
    runtime.apply()  # as `star train` does (star.runtime)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        store = args.store or synthetic_store(scratch, args.set)
        print(f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} "
              f"threads, device {args.device}; store {store if args.store else f'{args.set} (synthetic)'}; "
              f"{args.steps} steps of {args.batch_size} clips, second pass timed")
        print(f"{'model':10s} {'layout':8s} {'train samples/s':>16s} {'eval samples/s':>15s}")
        rates = {}
        for name in args.models:
            rates[name] = throughput(store, args.benchmark, name, scratch, args.steps, args.batch_size,
                                     device=args.device, workers=args.workers, amp=args.amp,
                                     accumulate=args.accumulate)
            print(f"{name:10s} {registry.spec(name).layout:8s} {rates[name][0]:16.1f} {rates[name][1]:15.1f}",
                  flush=True)
        compact = CompactStore(store)
        rows = compact.clip_rows[subset(compact.split(args.benchmark, "train"), args.steps * args.batch_size)]
        print(f"training clips: {rows.mean():.1f} compact rows (frames x persons) each on average")
    if "star-64" in rates and "st-gcn" in rates:
        train_ratio, eval_ratio = (rates["star-64"][k] / rates["st-gcn"][k] for k in (0, 1))
        print(f"star-64 over st-gcn: {train_ratio:.1f}x training, {eval_ratio:.1f}x evaluation")


if __name__ == "__main__":
    main()
