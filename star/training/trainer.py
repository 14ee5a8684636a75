"""One trainer for every registered model: what `star train` runs.

A run trains one model of the registry (star.registry) on one benchmark of a
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
import sys
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from star import registry
from star.data.batching import clip_loader
from star.data.splits import get_benchmark
from star.data.store import CompactStore
from star.device import autocast, compiled, resolve_device
from star.formats import CHECKPOINT_FORMAT, RUN_FORMAT
from star.io import read_result, write_csv, write_result
from star.provenance import environment
from star.recipe import TrainingRecipe
from star.training.checkpoint import config_differences, load_checkpoint, load_model_state, save_checkpoint
from star.training.config import RunConfig, RunError, check_labels, subset
from star.training.distributed import Processes, epoch_seed
from star.training.prediction import TOP_K, predict
from star.training.progress import Progress

HISTORY_COLUMNS = ("epoch", "train_loss", "train_top1_pct", "test_loss", "test_top1_pct", "test_top5_pct", "lr",
                   "epoch_s", "train_samples_per_s", "test_samples_per_s")
TIMING_COLUMNS = ("epoch_s", "train_samples_per_s", "test_samples_per_s")  # all that differs between equal runs
REPLACED_PREFIX = "replaced-"  # the folder a run of other settings is moved into (star train --replace-changed)


def _resumed_fused(optimizer: torch.optim.Optimizer, state: dict) -> dict:
    """A state saved by the unfused optimizer (checkpoints written before the trainer fused it) resumes fused:
    load_state_dict would restore its groups' `fused: None`, and the step would then take the unfused path with
    arguments meant for the fused one (under AMP a GradScaler's scale, which the unfused paths refuse)."""
    return {**state, "param_groups": [{**group, "fused": True, "foreach": None} for group in state["param_groups"]]}


def build_optimizer(recipe: TrainingRecipe, parameters) -> torch.optim.Optimizer:
    """The recipe's optimizer in torch's fused form: on the CPU one kernel a parameter and step, where torch's
    default there is a Python loop of a few operators a parameter; on CUDA a few launches for all of them."""
    if recipe.optimizer == "adam":
        optimizer = torch.optim.Adam(parameters, lr=recipe.lr, betas=recipe.betas, eps=recipe.eps,
                                     weight_decay=recipe.weight_decay, fused=True)
    else:
        optimizer = torch.optim.SGD(parameters, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
                                    weight_decay=recipe.weight_decay, fused=True)
    optimizer.register_load_state_dict_pre_hook(_resumed_fused)
    return optimizer


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
        self.config = config = replace(config, store_content=self.store.manifest.get("content_sha256"))
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
        differences = config_differences(checkpoint["config"], self.config.as_dict())
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
            save_checkpoint(best, self.out / "best.pt")
        checkpoint = {"format": CHECKPOINT_FORMAT, "config": config, "epoch": self.epoch, "step": self.step,
                      "model": model_state, "optimizer": self.optimizer.state_dict(),
                      "scaler": self.scaler.state_dict(), "history": self.history, "best": self.best,
                      "replaced": self.replaced}
        save_checkpoint(checkpoint, self.checkpoint_path)
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


def train(config: RunConfig, progress: bool = True, log_every_s: float = 60.0, replace_changed: bool = False) -> dict:
    """Train (or resume) one run and return its metrics.json contents; `replace_changed`: see Trainer.resume."""
    started_group = not dist.is_initialized()
    try:
        return Trainer(config, progress, log_every_s, replace_changed).run()
    finally:
        if started_group and dist.is_initialized():
            dist.destroy_process_group()
