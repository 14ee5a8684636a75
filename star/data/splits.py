"""The NTU RGB+D benchmarks: which clips each data set holds and how each splits them.

NTU 60 is setups S001-S017 of NTU 120, so one store parsed from NTU 120 serves
all four benchmarks; each benchmark leaves out its data set's official list of
samples with missing or empty skeletons (shipped in `resources/`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np

from star import names
from star.errors import InputError

NTU60_LAST_SETUP = 17
XSUB60_TRAIN_SUBJECTS = frozenset(
    (1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38))
XSUB120_TRAIN_SUBJECTS = XSUB60_TRAIN_SUBJECTS | frozenset(
    (45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85, 86,
     89, 91, 92, 93, 94, 95, 97, 98, 100, 103))
XVIEW_TRAIN_CAMERAS = frozenset((2, 3))
SIDES = ("train", "test")


@cache
def missing_samples(dataset: str) -> frozenset[str]:
    """The official list of samples whose skeletons are missing or empty (302 for ntu60, 535 for ntu120)."""
    text = resources.files("star.data.resources").joinpath(f"{dataset}_missing_skeletons.txt").read_text()
    return frozenset(line.strip() for line in text.splitlines() if line.strip())


@cache
def class_names() -> tuple[str, ...]:
    """The 120 action names; entry k is action A(k+1), i.e. label k."""
    text = resources.files("star.data.resources").joinpath("ntu120_class_names.txt").read_text()
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def check_side(side: str) -> str:
    if side not in SIDES:
        raise InputError(f"unknown split side {side!r}; choose 'train' or 'test'")
    return side


@dataclass(frozen=True)
class Benchmark:
    """One evaluation protocol: a data set (ntu60 or ntu120) and a rule that sends a clip to training."""

    name: str
    dataset: str
    num_classes: int
    criterion: str

    def in_dataset(self, clips: np.ndarray) -> np.ndarray:
        """Boolean mask over a clip table: the clip belongs to this data set and is not officially missing."""
        in_setups = clips["setup"] <= NTU60_LAST_SETUP if self.dataset == "ntu60" else np.ones(len(clips), bool)
        missing = missing_samples(self.dataset)
        return in_setups & ~np.isin(clips["name"], list(missing))

    def is_train(self, clips: np.ndarray) -> np.ndarray:
        """Boolean mask over a clip table: the clip is on the training side."""
        if self.criterion == "xsub":
            subjects = XSUB60_TRAIN_SUBJECTS if self.dataset == "ntu60" else XSUB120_TRAIN_SUBJECTS
            return np.isin(clips["subject"], list(subjects))
        if self.criterion == "xview":
            return np.isin(clips["camera"], list(XVIEW_TRAIN_CAMERAS))
        return clips["setup"] % 2 == 0

    def indices(self, clips: np.ndarray, side: str) -> np.ndarray:
        """Row numbers of the clip table on `side` ('train' or 'test'), ascending."""
        train = self.is_train(clips)
        return np.flatnonzero(self.in_dataset(clips) & (train if check_side(side) == "train" else ~train))


BENCHMARKS = {name: Benchmark(name, *spec) for name, spec in names.BENCHMARKS.items()}


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called `name`, or a ValueError listing the known ones."""
    if name not in BENCHMARKS:
        raise InputError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]
