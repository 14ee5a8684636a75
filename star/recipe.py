"""Training settings that travel with a model: what the trainer reads from the registry.

Each model module defines its recipes next to the network (STAR: the paper's
and its code's; the baselines: their papers'), and the registry names the
default one. Every field can be overridden from the command line.
"""

from __future__ import annotations

from dataclasses import dataclass

from star.errors import InputError

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "noam", "step")


@dataclass(frozen=True)
class TrainingRecipe:
    optimizer: str  # "adam" or "sgd"
    lr: float  # base rate; for "noam" the factor in front of d^-0.5 min(t^-0.5, t w^-1.5)
    schedule: str  # "constant", "noam" (Transformer warm-up) or "step" (x gamma at each milestone epoch)
    epochs: int
    batch_size: int
    betas: tuple[float, float] = (0.9, 0.999)  # adam
    eps: float = 1e-8  # adam
    momentum: float = 0.0  # sgd
    nesterov: bool = False  # sgd
    weight_decay: float = 0.0
    warmup_epochs: float = 0.0  # noam: w, in epochs of the training split
    milestones: tuple[int, ...] = ()  # step
    gamma: float = 0.1  # step
    label_smoothing: float = 0.0

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"unknown optimizer {self.optimizer!r}; choose one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise InputError(f"unknown schedule {self.schedule!r}; choose one of {SCHEDULES}")
        for name in ("lr", "epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise InputError(f"{name} must be positive, got {getattr(self, name)}")
        if self.schedule == "noam" and self.warmup_epochs <= 0:
            raise InputError(f"the noam schedule needs warmup_epochs > 0, got {self.warmup_epochs}")
        if list(self.milestones) != sorted(self.milestones):
            raise InputError(f"milestones must be ascending epochs, got {self.milestones}")
        if not all(0 <= beta < 1 for beta in self.betas):
            raise InputError(f"betas must be in [0, 1), got {self.betas}")
        for name in ("eps", "momentum", "weight_decay", "warmup_epochs"):
            if not getattr(self, name) >= 0:  # also refuses NaN
                raise InputError(f"{name} must be at least 0, got {getattr(self, name)}")
        if not self.gamma > 0:
            raise InputError(f"gamma must be positive, got {self.gamma}")
        if self.optimizer == "sgd" and self.nesterov and self.momentum <= 0:  # adam ignores both
            raise InputError("nesterov needs a positive momentum")
        if not 0 <= self.label_smoothing < 1:
            raise InputError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")

    def learning_rate(self, step: int, steps_per_epoch: int, width: int | None = None) -> float:
        """The rate for optimiser step `step` (1, 2, ...); `width` is d of the noam schedule.

        noam (the paper's Equation 8): lr d^-0.5 min(t^-0.5, t w^-1.5) with w =
        warmup_epochs x steps_per_epoch steps, rising linearly to its peak at t = w.
        step: lr x gamma^(milestones passed), epochs counted from 0 as the
        baselines' own code does, so milestone 10 lowers the rate from the 11th epoch.
        """
        if self.schedule == "constant":
            return self.lr
        if self.schedule == "step":
            epoch = (step - 1) // steps_per_epoch
            return self.lr * self.gamma ** sum(epoch >= milestone for milestone in self.milestones)
        if width is None:
            raise InputError("the noam schedule needs the model width d; this model has none")
        warmup = max(1.0, self.warmup_epochs * steps_per_epoch)
        return self.lr * width ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)
