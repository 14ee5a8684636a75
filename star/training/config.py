"""What decides a run's numbers and where it executes (RunConfig), and which clips it trains and tests on."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from star import defaults, registry
from star.data.splits import get_benchmark
from star.data.store import CompactStore, StoreError
from star.errors import InputError, StarError
from star.recipe import TrainingRecipe


class RunError(StarError, ValueError):
    """A run that cannot start or go on: a checkpoint of another run, unusable labels, a diverged loss."""


@dataclass(frozen=True)
class RunConfig:
    """One run: what decides its numbers, and (EXECUTION_FIELDS) where and how it executes."""

    store: str  # compact store folder (star preprocess)
    benchmark: str  # ntu60/xsub, ntu60/xview, ntu120/xsub or ntu120/xset
    model: str  # a name of star.registry
    out: str  # run folder
    recipe: TrainingRecipe  # optimiser, schedule, epochs, batch size
    recipe_name: str = defaults.RECIPE  # which of the model's recipes the overrides were applied to
    seed: int = defaults.SEED
    fill: str = "repeat"  # padded layout: filling clips shorter than padded_frames
    padded_frames: int = defaults.PADDED_FRAMES
    group_by_length: bool = False  # batch clips of similar length together
    accumulate: int = defaults.ACCUMULATE  # micro-batches per batch and process (gradient accumulation)
    amp: bool = False  # mixed precision: float16 and a gradient scaler on CUDA, bfloat16 on the CPU
    device: str = defaults.DEVICE
    workers: int = 0  # loader processes
    deterministic: bool = False  # torch.use_deterministic_algorithms (CUDA; the CPU is, on one thread: README)
    compile: bool = False  # torch.compile the network (star.device.compiled)
    max_clips: int | None = None  # use at most this many clips of each side, evenly spread (quick checks)
    # the store's content_sha256 (its manifest), filled in by the trainer: a store made again from other data
    # makes another run, wherever it lives (None: a store made before stores recorded it)
    store_content: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        return cls(**{**data, "recipe": TrainingRecipe(**data["recipe"])})


EXECUTION_FIELDS = ("store", "out", "device", "workers", "deterministic", "compile")


def run_config(store: str | Path, benchmark: str, model: str, out: str | Path, recipe: str = defaults.RECIPE,
               overrides: dict | None = None, fill: str | None = None, **options) -> RunConfig:
    """A RunConfig with the model's recipe `recipe` changed by `overrides` (recipe field -> value)."""
    spec = registry.spec(model)
    get_benchmark(benchmark)
    if recipe not in spec.recipes:
        raise InputError(f"model {model!r} has no recipe {recipe!r}; it has {', '.join(spec.recipes)}")
    overrides = dict(overrides or {})
    known = {f.name for f in fields(TrainingRecipe)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InputError(f"unknown recipe setting {', '.join(unknown)}; the settings are {', '.join(sorted(known))}")
    config = RunConfig(str(store), benchmark, model, str(out), replace(spec.recipes[recipe], **overrides),
                       recipe, fill=fill or spec.fill, **options)
    if config.accumulate < 1:
        raise InputError(f"accumulate must be at least 1, got {config.accumulate}")
    return config


def subset(clips: np.ndarray, max_clips: int | None) -> np.ndarray:
    """At most `max_clips` of `clips`, evenly spread over them (in name order: setups, cameras, subjects)."""
    if max_clips is None or len(clips) <= max_clips:
        return clips
    if max_clips < 1:
        raise InputError(f"max_clips must be at least 1, got {max_clips}")
    return clips[np.linspace(0, len(clips) - 1, max_clips).round().astype(np.int64)]


def check_labels(store: CompactStore, indices: np.ndarray, benchmark: str, side: str) -> None:
    """Every label of the clips is a class of the benchmark's data set, or a StoreError saying why not."""
    spec = get_benchmark(benchmark)
    labels = store.clips["label"][indices]
    bad = labels[(labels < 0) | (labels >= spec.num_classes)]
    if len(bad):
        raise StoreError(f"{store.path}: the {side} side of {benchmark} holds label {int(bad[0])}, but "
                         f"{spec.dataset} has {spec.num_classes} classes (0-{spec.num_classes - 1}); make the store "
                         f"from the {spec.dataset} .skeleton files with `star preprocess`")
