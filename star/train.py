"""One trainer for every registered model: what `star train` runs.

A run trains one model of the registry (star.models) on one benchmark of a
compact store, with one seed, and keeps everything in its folder:

- `history.csv`: one row per epoch, HISTORY_COLUMNS (accuracies in percent;
  the train columns are measured on the training batches as they are trained,
  dropout on; `test_loss` is plain cross-entropy, without label smoothing).
- `metrics.json`: final and best test accuracy, parameters, wall time, device,
  versions, the source commit and the full resolved configuration.
- `checkpoint.pt`: model, optimiser, gradient scaler, step count and history,
  rewritten after every epoch; `best.pt`: the model of the best test top-1.

Every file is written to a temporary name and renamed, best.pt first, then
checkpoint.pt, then history.csv, so a run killed at any moment leaves the last
finished epoch whole. The same command on the same folder resumes from it.
Nothing random crosses an epoch boundary except through the checkpoint: the
clip order is a function of (seed, epoch) and the stream dropout draws from is
reseeded from (seed, rank, epoch) when each epoch starts, so a resumed run ends
with the numbers of an uninterrupted one (bit for bit on the CPU) and the
checkpoint needs no generator states besides its epoch.

The recipe's batch_size counts the clips of one optimiser step over all
processes and micro-batches. Each process takes its share
(star.data.batching.ShardedBatchSampler) and each micro-batch contributes its
summed loss over the clips of the whole batch, so the gradient is that of the
batch mean however the batch is split (batch norm still sees each micro-batch
alone, as in any data-parallel training). Several GPUs: launch with
`torchrun --nproc-per-node G -m star.cli train ...`; the processes find each
other through torchrun's environment and the first one writes the files.
"""

from __future__ import annotations

import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import star.models as registry
from star.data.batching import clip_loader
from star.data.splits import get_benchmark
from star.data.store import PADDED_FRAMES, CompactStore, StoreError
from star.device import autocast, compiled, resolve_device
from star.errors import InputError, StarError, existing_file
from star.formats import CHECKPOINT_FORMAT, RUN_FORMAT
from star.io import read_result, write_atomic, write_csv, write_result
from star.provenance import environment
from star.recipe import TrainingRecipe

HISTORY_COLUMNS = ("epoch", "train_loss", "train_top1_pct", "test_loss", "test_top1_pct", "test_top5_pct", "lr",
                   "epoch_s", "train_samples_per_s", "test_samples_per_s")
TIMING_COLUMNS = ("epoch_s", "train_samples_per_s", "test_samples_per_s")  # all that differs between equal runs
TOP_K = 5


class RunError(StarError, ValueError):
    """A run that cannot start or go on: a checkpoint of another run, unusable labels, a diverged loss."""


@dataclass(frozen=True)
class RunConfig:
    """One run: what decides its numbers, and (EXECUTION_FIELDS) where and how it executes."""

    store: str  # compact store folder (star preprocess)
    benchmark: str  # ntu60/xsub, ntu60/xview, ntu120/xsub or ntu120/xset
    model: str  # a name of star.models
    out: str  # run folder
    recipe: TrainingRecipe  # optimiser, schedule, epochs, batch size
    recipe_name: str = "default"  # which of the model's recipes the overrides were applied to
    seed: int = 0
    fill: str = "repeat"  # padded layout: filling clips shorter than padded_frames
    padded_frames: int = PADDED_FRAMES
    group_by_length: bool = False  # batch clips of similar length together
    accumulate: int = 1  # micro-batches per batch and process (gradient accumulation)
    amp: bool = False  # mixed precision: float16 and a gradient scaler on CUDA, bfloat16 on the CPU
    device: str = "auto"
    workers: int = 0  # loader processes
    deterministic: bool = False  # torch.use_deterministic_algorithms (CUDA; the CPU is deterministic anyway)
    compile: bool = False  # torch.compile the network (star.device.compiled)
    max_clips: int | None = None  # use at most this many clips of each side, evenly spread (quick checks)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        return cls(**{**data, "recipe": TrainingRecipe(**data["recipe"])})


EXECUTION_FIELDS = ("store", "out", "device", "workers", "deterministic", "compile")
REPLACED_PREFIX = "replaced-"  # the folder a run of other settings is moved into (star train --replace-changed)


def run_config(store: str | Path, benchmark: str, model: str, out: str | Path, recipe: str = "default",
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


@dataclass(frozen=True)
class Processes:
    """This process's place among the data-parallel processes torchrun started (or alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> Processes:
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum over all processes."""
        if self.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def all(self, flag: bool, device: torch.device) -> bool:
        """True when `flag` holds in every process."""
        return self.sum([float(not flag)], device)[0] == 0


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0])


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


def load_checkpoint(path: str | Path) -> dict:
    path = existing_file(path, "checkpoint")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise RunError(f"{path} is not a readable checkpoint: {error}") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise RunError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
    return checkpoint


def load_model_state(model: nn.Module, state: dict, source: Path, model_name: str) -> None:
    """Load a state dict, or a RunError naming what does not fit (keys or shapes)."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    reshaped = [f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}"
                for key in sorted(set(own) & set(state)) if state[key].shape != own[key].shape]
    if missing or unexpected or reshaped:
        problems = [f"{label}: {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}"
                    for label, items in (("missing", missing), ("unexpected", unexpected), ("shapes", reshaped))
                    if items]
        raise RunError(f"{source} does not fit model {model_name!r} as registered now ({'; '.join(problems)})")
    model.load_state_dict(state)


@dataclass
class Predictions:
    """Per clip: the true label and the TOP_K best classes, best first; and the summed cross-entropy."""

    labels: np.ndarray  # (n,)
    ranked: np.ndarray  # (n, TOP_K)
    loss_sum: float

    def top_pct(self, k: int) -> float:
        return 100.0 * float((self.ranked[:, :k] == self.labels[:, None]).any(1).mean())

    @property
    def loss(self) -> float:
        return self.loss_sum / len(self.labels)


def predict(model: nn.Module, spec: registry.ModelSpec, loader, device: torch.device, amp: bool = False,
            processes: Processes = Processes()) -> Predictions:
    """The model's predictions on every clip of the loader (all processes' shares, gathered)."""
    model.eval()
    labels, ranked, loss_sum = [], [], 0.0
    with torch.inference_mode():
        for batch in loader:
            batch = batch.to(device, non_blocking=True)
            with autocast(device, amp):
                logits = model(*registry.model_inputs(spec, batch)).float()
            loss_sum += float(F.cross_entropy(logits, batch.labels, reduction="sum"))
            labels.append(batch.labels.cpu().numpy())
            ranked.append(logits.topk(min(TOP_K, logits.shape[1]), dim=1).indices.cpu().numpy())
    local = Predictions(np.concatenate(labels) if labels else np.zeros(0, np.int64),
                        np.concatenate(ranked) if ranked else np.zeros((0, TOP_K), np.int64), loss_sum)
    if processes.world == 1:
        return local
    shares: list[Predictions | None] = [None] * processes.world
    dist.all_gather_object(shares, local)
    return Predictions(np.concatenate([s.labels for s in shares]), np.concatenate([s.ranked for s in shares]),
                       sum(s.loss_sum for s in shares))


class Progress:
    """A progress bar on a terminal; otherwise a plain line every `every_s` seconds (workflow logs)."""

    def __init__(self, total: int, description: str, enabled: bool, every_s: float = 60.0):
        self.enabled, self.every_s, self.description, self.total = enabled, every_s, description, total
        terminal = enabled and sys.stderr.isatty()
        self.bar = tqdm(total=total, desc=description, unit="batch", leave=False) if terminal else None
        self.done = self.clips = 0
        self.start = self.last = time.monotonic()

    def update(self, clips: int, loss: float) -> None:
        self.done += 1
        self.clips += clips
        rate = self.clips / max(time.monotonic() - self.start, 1e-9)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.3f}", samples_s=f"{rate:.1f}", refresh=False)
            self.bar.update()
        elif self.enabled and time.monotonic() - self.last >= self.every_s:
            self.last = time.monotonic()
            print(f"{self.description}: batch {self.done}/{self.total}, loss {loss:.4f}, {rate:.1f} samples/s",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def build_optimizer(recipe: TrainingRecipe, parameters) -> torch.optim.Optimizer:
    if recipe.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=recipe.lr, betas=recipe.betas, eps=recipe.eps,
                                weight_decay=recipe.weight_decay)
    return torch.optim.SGD(parameters, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
                           weight_decay=recipe.weight_decay)


def _differences(saved: dict, asked: dict) -> list[str]:
    """Settings that change a run's numbers and differ between a checkpoint's run and this one."""
    saved = {**saved, "recipe": {**saved["recipe"], "epochs": None}}
    asked = {**asked, "recipe": {**asked["recipe"], "epochs": None}}
    return [f"{key}: {saved.get(key)!r} there, {asked.get(key)!r} here" for key in asked
            if key not in EXECUTION_FIELDS and saved.get(key) != asked.get(key)]


class Trainer:
    """Trains one run; `run()` starts it or resumes it from its checkpoint."""

    def __init__(self, config: RunConfig, progress: bool = True, log_every_s: float = 60.0,
                 replace_changed: bool = False):
        self.config, self.progress, self.log_every_s = config, progress, log_every_s
        self.replace_changed, self.replaced = replace_changed, None
        self.out = Path(config.out)
        self.processes = Processes.from_environment()
        if self.processes.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if config.device != "cpu" and torch.cuda.is_available() else "gloo")
        self.device = resolve_device(config.device, self.processes.local_rank)
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        self.spec = registry.spec(config.model)
        self.benchmark = get_benchmark(config.benchmark)
        self.store = CompactStore(config.store)
        self.train_clips = subset(self.store.split(config.benchmark, "train"), config.max_clips)
        self.test_clips = subset(self.store.split(config.benchmark, "test"), config.max_clips)
        check_labels(self.store, self.train_clips, config.benchmark, "train")
        check_labels(self.store, self.test_clips, config.benchmark, "test")

        torch.manual_seed(config.seed)
        self.model = registry.build(config.model, self.benchmark.num_classes).to(self.device)
        self.params = sum(p.numel() for p in self.model.parameters())
        self.width = getattr(getattr(self.model, "config", None), "width", None)
        self.network = compiled(self.model if self.processes.world == 1 else DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None), config.compile)
        self.optimizer = build_optimizer(config.recipe, self.model.parameters())
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp and self.device.type == "cuda")
        self.train_loader = self._loader(self.train_clips, train=True)
        self.test_loader = self._loader(self.test_clips, train=False)
        self.steps_per_epoch = len(self.train_loader.batch_sampler.steps())
        if self.steps_per_epoch == 0:
            raise RunError(f"{config.store}: the training side of {config.benchmark} has fewer clips "
                           f"({len(self.train_clips)}) than processes ({self.processes.world})")
        self.epoch = self.step = 0
        self.history: list[dict] = []
        self.best: dict | None = None

    def _loader(self, clips: np.ndarray, train: bool):
        config = self.config
        return clip_loader(self.store, clips, self.spec.layout, config.recipe.batch_size, shuffle=train,
                           seed=config.seed, group_by_length=train and config.group_by_length,
                           workers=config.workers, fill=config.fill, frames=config.padded_frames,
                           rank=self.processes.rank, world=self.processes.world,
                           accumulate=config.accumulate if train else 1, drop_short=train,
                           pin_memory=self.device.type == "cuda")

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def log(self, message: str) -> None:
        if self.processes.main:
            print(message, file=sys.stderr, flush=True)

    def resume(self) -> None:
        """Continue from checkpoint.pt if there is one; one of another run is refused, or with replace_changed
        moved aside with everything else in the folder (`set_aside`) so that this run starts afresh."""
        if not self.checkpoint_path.exists():
            return
        checkpoint = load_checkpoint(self.checkpoint_path)
        differences = _differences(checkpoint["config"], self.config.as_dict())
        too_long = checkpoint["epoch"] > self.config.recipe.epochs
        if self.replace_changed and (differences or too_long):
            self.replaced = self.set_aside(differences or [f"{checkpoint['epoch']} epochs done there, "
                                                           f"{self.config.recipe.epochs} asked for here"])
            return
        if differences:
            raise RunError(f"{self.checkpoint_path} belongs to another run ({'; '.join(differences)}); "
                           f"use another --out, or delete {self.out} to start this one afresh")
        if too_long:
            raise RunError(f"{self.checkpoint_path} has {checkpoint['epoch']} epochs done, more than the "
                           f"{self.config.recipe.epochs} asked for")
        self.replaced = checkpoint.get("replaced")  # a resumed run that replaced another still says so
        load_model_state(self.model, checkpoint["model"], self.checkpoint_path, self.config.model)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.epoch, self.step = checkpoint["epoch"], checkpoint["step"]
        self.history, self.best = checkpoint["history"], checkpoint["best"]
        self.log(f"resuming {self.out} after epoch {self.epoch}")

    def set_aside(self, reasons: list[str]) -> str:
        """Move the folder's earlier run (every file and folder but earlier set-aside ones; checkpoint.pt last,
        so an interrupted move is redone) into `replaced-<UTC time>/`, and return that name. Every process
        has read the checkpoint before the first process moves it, and all take the first process's name."""
        names = [f"{REPLACED_PREFIX}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"]
        if dist.is_initialized():
            dist.barrier()
            dist.broadcast_object_list(names, src=0)
        if self.processes.main:
            aside = self.out / names[0]
            aside.mkdir()
            moved = sorted((p for p in self.out.iterdir() if not p.name.startswith(REPLACED_PREFIX)),
                           key=lambda p: p == self.checkpoint_path)
            for path in moved:
                path.rename(aside / path.name)
            self.log(f"{self.out} held a run of other settings ({'; '.join(reasons)}): moved to {aside}, "
                     "starting afresh")
        if dist.is_initialized():
            dist.barrier()
        return names[0]

    def run(self) -> dict:
        """Train the remaining epochs; returns the contents of metrics.json."""
        self.resume()
        finished = self.out / "metrics.json"
        if self.epoch == self.config.recipe.epochs and finished.exists():
            self.log(f"{self.out} has finished its {self.epoch} epochs")
            return read_result(finished, "run")
        if self.processes.main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_csv(self.out / "history.csv", HISTORY_COLUMNS, self.history)
        try:
            while self.epoch < self.config.recipe.epochs:
                self.run_epoch()
        except KeyboardInterrupt:
            self.log(f"interrupted; {self.checkpoint_path} holds epoch {self.epoch}: run the same command to resume")
            raise
        metrics = self.metrics()
        if self.processes.main:
            write_result(self.out / "metrics.json", metrics, "run")
        return metrics

    def run_epoch(self) -> None:
        config, epoch = self.config, self.epoch
        torch.manual_seed(epoch_seed(config.seed, self.processes.rank, epoch))
        start = time.monotonic()
        train_loss, train_top1, train_clips = self.train_epoch(epoch)
        train_s = time.monotonic() - start
        test = predict(self.network, self.spec, self.test_loader, self.device, config.amp, self.processes)
        epoch_s = time.monotonic() - start
        row = {"epoch": epoch + 1, "train_loss": train_loss, "train_top1_pct": train_top1,
               "test_loss": test.loss, "test_top1_pct": test.top_pct(1), "test_top5_pct": test.top_pct(TOP_K),
               "lr": self.optimizer.param_groups[0]["lr"], "epoch_s": epoch_s,
               "train_samples_per_s": train_clips / train_s,
               "test_samples_per_s": len(test.labels) / max(epoch_s - train_s, 1e-9)}
        self.history.append(row)
        self.epoch += 1
        improved = self.best is None or row["test_top1_pct"] > self.best["test_top1_pct"]
        if improved:
            self.best = {key: row[key] for key in ("epoch", "test_loss", "test_top1_pct", "test_top5_pct")}
        if self.processes.main:
            self.save(improved)
        self.log(f"epoch {row['epoch']}/{config.recipe.epochs}: train loss {train_loss:.4f} top-1 {train_top1:.1f}%"
                 f" | test loss {test.loss:.4f} top-1 {row['test_top1_pct']:.2f}% top-5 {row['test_top5_pct']:.2f}%"
                 f" | lr {row['lr']:.3g} | {epoch_s:.1f} s, {row['train_samples_per_s']:.1f} samples/s training")
        if self.processes.world > 1:
            dist.barrier()

    def train_epoch(self, epoch: int) -> tuple[float, float, int]:
        """One pass over the training side; returns mean loss, top-1 (%) and the clips seen, over all processes."""
        config, recipe = self.config, self.config.recipe
        self.network.train()
        sampler = self.train_loader.batch_sampler
        sampler.set_epoch(epoch)
        plan = sampler.steps()
        batches = iter(self.train_loader)
        progress = Progress(len(plan), f"epoch {epoch + 1}/{recipe.epochs}", self.progress and self.processes.main,
                            self.log_every_s)
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss sum, correct, clips
        for number, (parts, batch_clips) in enumerate(plan, start=1):
            self.step += 1
            lr = recipe.learning_rate(self.step, self.steps_per_epoch, self.width)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            step_loss = 0.0
            for part_number, _ in enumerate(parts, start=1):
                batch = next(batches).to(self.device, non_blocking=True)
                last = part_number == len(parts)
                with nullcontext() if last or self.processes.world == 1 else self.network.no_sync():
                    with autocast(self.device, config.amp):
                        logits = self.network(*registry.model_inputs(self.spec, batch)).float()
                    loss_sum = F.cross_entropy(logits, batch.labels, reduction="sum",
                                               label_smoothing=recipe.label_smoothing)
                    if not self.processes.all(bool(torch.isfinite(loss_sum)), self.device):
                        raise RunError(f"{config.model}: the training loss is not finite at epoch {epoch + 1}, "
                                       f"batch {number} of {len(plan)}; {self.checkpoint_path} keeps epoch {epoch} "
                                       "(lower the learning rate, or look for bad values in the store)")
                    self.scaler.scale(loss_sum * self.processes.world / batch_clips).backward()
                totals += torch.stack([loss_sum.detach().double(),
                                       (logits.argmax(1) == batch.labels).sum().double(),
                                       torch.tensor(len(batch.labels), dtype=torch.float64, device=self.device)])
                step_loss += float(loss_sum.detach()) / batch_clips * self.processes.world
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            progress.update(batch_clips, step_loss)
        progress.close()
        loss_sum, correct, clips = self.processes.sum(totals.tolist(), self.device)
        return loss_sum / clips, 100.0 * correct / clips, int(clips)

    def save(self, improved: bool) -> None:
        """best.pt (when this epoch is the best so far), then checkpoint.pt, then history.csv."""
        config = self.config.as_dict()
        model_state = self.model.state_dict()
        if improved:
            best = {"format": CHECKPOINT_FORMAT, "config": config, "epoch": self.epoch, "step": self.step,
                    "model": model_state, "metrics": self.best}
            _save(best, self.out / "best.pt")
        checkpoint = {"format": CHECKPOINT_FORMAT, "config": config, "epoch": self.epoch, "step": self.step,
                      "model": model_state, "optimizer": self.optimizer.state_dict(),
                      "scaler": self.scaler.state_dict(), "history": self.history, "best": self.best,
                      "replaced": self.replaced}
        _save(checkpoint, self.checkpoint_path)
        write_csv(self.out / "history.csv", HISTORY_COLUMNS, self.history)

    def metrics(self) -> dict:
        last = self.history[-1]
        return {
            "format": RUN_FORMAT,
            "model": self.config.model,
            "benchmark": self.config.benchmark,
            "dataset": self.benchmark.dataset,
            "seed": self.config.seed,
            "epochs": self.epoch,
            "top1_pct": last["test_top1_pct"],
            "top5_pct": last["test_top5_pct"],
            "test_loss": last["test_loss"],
            "best_epoch": self.best["epoch"],
            "best_top1_pct": self.best["test_top1_pct"],
            "best_top5_pct": self.best["test_top5_pct"],
            "params": self.params,
            "params_m": self.params / 1e6,
            "wall_s": math.fsum(row["epoch_s"] for row in self.history),
            "train_clips": len(self.train_clips),
            "test_clips": len(self.test_clips),
            "world_size": self.processes.world,
            "replaced": self.replaced,
            **environment(self.device),
            "config": self.config.as_dict(),
        }


def _save(data: dict, path: Path) -> None:
    write_atomic(path, lambda tmp: torch.save(data, tmp))


def train(config: RunConfig, progress: bool = True, log_every_s: float = 60.0, replace_changed: bool = False) -> dict:
    """Train (or resume) one run and return its metrics.json contents; `replace_changed`: see Trainer.resume."""
    started_group = not dist.is_initialized()
    try:
        return Trainer(config, progress, log_every_s, replace_changed).run()
    finally:
        if started_group and dist.is_initialized():
            dist.destroy_process_group()
