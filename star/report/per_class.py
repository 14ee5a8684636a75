"""Per-class evidence on one benchmark, from the files `star evaluate` writes for each run.

A run's `RUN/evaluation/{checkpoint}-{split}.json` names the model, benchmark,
side and seed; the `-confusion.csv` beside it holds the clip counts (true class
x predicted class). Several seeds of one model pool their counts, so a class's
top-1 is over every seed's clips. The workflow evaluates the test side. From these:

- per-class top-1 of each STAR model minus each baseline's, by class name,
  over the classes with clips in both (the per-class figure);
- each model's most confused class pairs: a pair's count is the clips of
  either class predicted as the other, its share that count over both
  classes' clips (the report's table).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from star.errors import StarError
from star.io import read_result
from star.paper import paper_row

TOP_PAIRS = 10


class PerClassError(StarError, ValueError):
    """Evaluation files that cannot give per-class evidence (named in the message)."""


@dataclass(frozen=True)
class ClassCounts:
    model: str
    benchmark: str
    split: str
    seeds: tuple[int, ...]
    names: tuple[str, ...]
    confusion: np.ndarray  # (classes, classes) clip counts, true x predicted, summed over seeds

    @property
    def clips(self) -> np.ndarray:
        return self.confusion.sum(1)

    @property
    def accuracy_pct(self) -> np.ndarray:
        """Top-1 per class in percent; NaN for a class without test clips."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return 100.0 * np.diag(self.confusion) / self.clips

    @property
    def is_star(self) -> bool:
        return paper_row(self.model).startswith("star-")


def confusion_path(evaluation: Path) -> Path:
    return evaluation.with_name(f"{evaluation.stem}-confusion.csv")


def _read_confusion(path: Path, names: list[str]) -> np.ndarray:
    try:
        with open(path, newline="") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise PerClassError(f"{path}: cannot read the confusion matrix ({error})") from error
    if not rows or rows[0][1:] != names or [row[0] for row in rows[1:]] != names:
        raise PerClassError(f"{path}: not the confusion matrix of its evaluation JSON (its class names differ)")
    try:
        return np.array([[int(count) for count in row[1:]] for row in rows[1:]], dtype=np.int64)
    except ValueError as error:
        raise PerClassError(f"{path}: a count that is not a whole number ({error})") from error


def read_evaluation(path: str | Path) -> tuple[dict, np.ndarray]:
    """An evaluation JSON and its confusion matrix, checked against each other."""
    path = Path(path)
    evaluation = read_result(path, "evaluation")
    names = [row["name"] for row in evaluation["per_class"]]
    confusion = _read_confusion(confusion_path(path), names)
    if confusion.sum(1).tolist() != [row["clips"] for row in evaluation["per_class"]] or \
            np.diag(confusion).tolist() != [row["correct"] for row in evaluation["per_class"]]:
        raise PerClassError(f"{confusion_path(path)}: its counts disagree with the per-class table of {path.name}")
    return evaluation, confusion


def read_evaluations(paths: list[str | Path]) -> list[ClassCounts]:
    """One ClassCounts per model (seeds pooled), in the order the models first appear; one benchmark and side."""
    if not paths:
        raise PerClassError("per-class evidence needs at least one evaluation JSON (star evaluate)")
    pooled: dict[str, ClassCounts] = {}
    place = None
    for path in paths:
        evaluation, confusion = read_evaluation(path)
        model, seed = evaluation["model"], evaluation["config"]["seed"]
        if place not in (None, (evaluation["benchmark"], evaluation["split"])):
            raise PerClassError(f"{path}: evaluations of one benchmark and side are compared, not of "
                                f"{' '.join(place)} and {evaluation['benchmark']} {evaluation['split']}")
        place = evaluation["benchmark"], evaluation["split"]
        earlier = pooled.get(model)
        if earlier is not None and seed in earlier.seeds:
            raise PerClassError(f"{path}: a second evaluation of {model} seed {seed}")
        names = tuple(row["name"] for row in evaluation["per_class"])
        pooled[model] = ClassCounts(model, evaluation["benchmark"], evaluation["split"],
                                    (*earlier.seeds, seed) if earlier else (seed,), names,
                                    confusion + (earlier.confusion if earlier else 0))
    return list(pooled.values())


def differences(model: ClassCounts, baseline: ClassCounts) -> list[tuple[str, float]]:
    """(class name, model's top-1 minus the baseline's in points), largest first, over classes both were tested on."""
    gap = model.accuracy_pct - baseline.accuracy_pct
    return sorted(((name, float(value)) for name, value in zip(model.names, gap, strict=True) if np.isfinite(value)),
                  key=lambda item: -item[1])


def confused_pairs(counts: ClassCounts, top: int = TOP_PAIRS) -> list[dict]:
    """The `top` class pairs confused most often (either way), most clips first, ties by the larger share."""
    both = counts.confusion + counts.confusion.T  # (classes, classes), symmetric
    first, second = np.triu_indices_from(both, k=1)
    confused = both[first, second]
    shares = confused / np.maximum(counts.clips[first] + counts.clips[second], 1)
    order = sorted((i for i in range(len(confused)) if confused[i] > 0), key=lambda i: (-confused[i], -shares[i]))
    return [{"class": counts.names[first[i]], "other": counts.names[second[i]], "clips": int(confused[i]),
             "as_other": int(counts.confusion[first[i], second[i]]),
             "as_class": int(counts.confusion[second[i], first[i]]), "share_pct": 100.0 * float(shares[i])}
            for i in order[:top]]
