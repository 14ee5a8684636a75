"""A model's predictions on every clip of a loader: the top classes and the summed loss (test and evaluation)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from star import registry
from star.device import autocast
from star.training.distributed import Processes

TOP_K = 5


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
            processes: Processes | None = None) -> Predictions:
    """The model's predictions on every clip of the loader (all processes' shares, gathered; one process
    unless `processes` says otherwise)."""
    processes = processes or Processes()
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
