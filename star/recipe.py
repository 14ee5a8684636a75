"""Training settings that travel with a model: what the trainer reads from the registry.

Each model module defines its recipes next to the network (STAR: the paper's
and its code's; the baselines: their papers'), and the registry names the
default one. Every field can be overridden from the command line.
"""

from __future__ import annotations

from dataclasses import dataclass

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
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {SCHEDULES}")
