"""`star evaluate`: a run's checkpoint on one side of its benchmark, in detail.

Writes into `RUN/evaluation/` (or `--out`), named `{checkpoint}-{split}`:
- `.json` (star/schemas/evaluation.schema.json): top-1 and top-5 (percent), mean loss, clips, the checkpoint's epoch,
  device and versions, and the per-class table;
- `-per-class.csv`: class, name, clips, correct, accuracy_pct (every class of the
  data set; a class without clips on this side has an empty accuracy);
- `-confusion.csv`: clip counts, one row per true class, one column per predicted class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from star import registry
from star.data.batching import clip_loader
from star.data.splits import class_names, get_benchmark
from star.data.store import CompactStore
from star.device import resolve_device
from star.formats import EVALUATION_FORMAT
from star.io import write_csv, write_result
from star.provenance import environment
from star.training.checkpoint import load_checkpoint, load_model_state
from star.training.config import RunConfig, check_labels, subset
from star.training.prediction import predict

CHECKPOINTS = {"best": "best.pt", "last": "checkpoint.pt"}
PER_CLASS_COLUMNS = ("class", "name", "clips", "correct", "accuracy_pct")


def checkpoint_path(run: str | Path, checkpoint: str) -> Path:
    """`best` and `last` name the run's own checkpoints; anything else is a path."""
    return Path(run) / CHECKPOINTS[checkpoint] if checkpoint in CHECKPOINTS else Path(checkpoint)


def per_class(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> tuple[list[dict], np.ndarray]:
    """The per-class table and the confusion matrix (true class x predicted class, clip counts)."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    names = class_names()
    rows = []
    for label in range(num_classes):
        clips, correct = int(confusion[label].sum()), int(confusion[label, label])
        rows.append({"class": label, "name": names[label], "clips": clips, "correct": correct,
                     "accuracy_pct": 100.0 * correct / clips if clips else None})
    return rows, confusion


def evaluate(run: str | Path, checkpoint: str = "best", split: str = "test", store: str | Path | None = None,
             out: str | Path | None = None, device: str = "auto", workers: int = 0,
             batch_size: int | None = None) -> dict:
    """Evaluate a run's checkpoint on `split` of its benchmark; returns the JSON written."""
    path = checkpoint_path(run, checkpoint)
    saved = load_checkpoint(path)
    config = RunConfig.from_dict(saved["config"])
    benchmark = get_benchmark(config.benchmark)
    data = CompactStore(store or config.store)
    clips = subset(data.split(config.benchmark, split), config.max_clips)  # the clips the run saw
    check_labels(data, clips, config.benchmark, split)

    spec = registry.spec(config.model)
    target = resolve_device(device)
    model = registry.build(config.model, benchmark.num_classes)
    load_model_state(model, saved["model"], path, config.model)
    loader = clip_loader(data, clips, spec.layout, batch_size or config.recipe.batch_size, workers=workers,
                         fill=config.fill, frames=config.padded_frames, pin_memory=target.type == "cuda")
    predictions = predict(model.to(target), spec, loader, target, config.amp)
    rows, confusion = per_class(predictions.labels, predictions.ranked[:, 0], benchmark.num_classes)

    name = f"{checkpoint if checkpoint in CHECKPOINTS else path.stem}-{split}"
    folder = Path(out) if out else Path(run) / "evaluation"
    result = {
        "format": EVALUATION_FORMAT, "run": str(run), "checkpoint": str(path), "epoch": saved["epoch"],
        "model": config.model,
        "benchmark": config.benchmark, "split": split, "clips": len(predictions.labels),
        "top1_pct": predictions.top_pct(1), "top5_pct": predictions.top_pct(5), "loss": predictions.loss,
        "params": sum(p.numel() for p in model.parameters()), **environment(target),
        "per_class": rows, "config": config.as_dict(),
    }
    write_csv(folder / f"{name}-per-class.csv", PER_CLASS_COLUMNS, rows)
    names = class_names()[:benchmark.num_classes]
    write_csv(folder / f"{name}-confusion.csv", ("true", *names),
              [{"true": names[label], **dict(zip(names, map(int, confusion[label]), strict=True))}
               for label in range(benchmark.num_classes)])
    write_result(folder / f"{name}.json", result, "evaluation")
    return result

