"""Training and evaluation throughput of each model through the trainer, on the same clips.

    python benchmarks/bench_train.py [--store STORE] [--benchmark ntu60/xsub] [--steps 4] [--batch-size 16]
                                     [--models NAME ...] [--device auto] [--workers 0] [--threads N] [--amp]
                                     [--accumulate 1]

Each model trains through star.training.trainer.Trainer (data loading, forward, backward,
optimiser step, its own recipe's optimiser) on the first --steps x --batch-size
clips of the benchmark's training side, evenly spread, and is evaluated on as
many clips of its test side: STAR on compact batches, the baselines on the
same clips padded to 300 frames. One pass warms up, the second is timed.
Prints samples (clips) per second for training and evaluation side by side,
and STAR-64's ratio over ST-GCN. Without --store, the tiny synthetic set
(clips of 32-300 frames) is generated and preprocessed into a temporary folder.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from star import registry, runtime
from star.data.preprocess import preprocess
from star.data.synthetic import TINY, generate
from star.device import DEVICES
from star.training.config import run_config
from star.training.prediction import predict
from star.training.trainer import Trainer

DEFAULT_MODELS = ("star-64", "star-128", "st-gcn", "st-tr")


def throughput(store: Path, benchmark: str, model: str, args, scratch: Path) -> tuple[float, float]:
    """Training and evaluation clips per second of the second of two passes."""
    config = run_config(store, benchmark, model, scratch / model, overrides={"batch_size": args.batch_size},
                        max_clips=args.steps * args.batch_size, device=args.device, workers=args.workers,
                        amp=args.amp, accumulate=args.accumulate)
    trainer = Trainer(config, progress=False)
    rates = []
    for epoch in range(2):
        start = time.monotonic()
        _, _, clips = trainer.train_epoch(epoch)
        trained = time.monotonic() - start
        start = time.monotonic()
        predictions = predict(trainer.network, trainer.spec, trainer.test_loader, trainer.device, args.amp)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        rates.append((clips / trained, len(predictions.labels) / (time.monotonic() - start)))
    return rates[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=None, help="a compact store (default: the tiny synthetic set)")
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
        store = args.store
        if store is None:
            generate(scratch / "raw", TINY)
            store = scratch / "store"
            preprocess([scratch / "raw"], store, progress=False)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}; store {store}; "
              f"{args.steps} steps of {args.batch_size} clips, second pass timed")
        print(f"{'model':10s} {'layout':8s} {'train samples/s':>16s} {'eval samples/s':>15s}")
        rates = {}
        for name in args.models:
            rates[name] = throughput(store, args.benchmark, name, args, scratch)
            print(f"{name:10s} {registry.spec(name).layout:8s} {rates[name][0]:16.1f} {rates[name][1]:15.1f}",
                  flush=True)
    if "star-64" in rates and "st-gcn" in rates:
        train_ratio, eval_ratio = (rates["star-64"][k] / rates["st-gcn"][k] for k in (0, 1))
        print(f"star-64 over st-gcn: {train_ratio:.1f}x training, {eval_ratio:.1f}x evaluation")


if __name__ == "__main__":
    main()
