"""ST-GCN (Yan, Xiong and Lin, AAAI 2018), fed the padded layout (B, 3, T, 25, M).

The network of the paper, with what the paper leaves open settled as the
authors' public code (yysijie/st-gcn) settles it:

- Input: a BatchNorm over the 75 (joint, channel) pairs, both persons sharing
  its statistics (each person is normalised as a separate sample); the persons
  then run through the network side by side as separate samples.
- Ten units, output channels 64, 64, 64, 64, 128, 128, 128, 256, 256, 256 with
  temporal stride 2 at the first 128 and the first 256. A unit is the
  partitioned graph convolution with the learnable edge-importance mask M, then
  BatchNorm, ReLU, a 9 x 1 temporal convolution, BatchNorm and dropout 0.5,
  plus a residual (identity, or a strided 1 x 1 convolution and BatchNorm when
  the shape changes), then ReLU. The first unit has neither residual nor dropout.
- Global average pooling over time and joints, then over persons; a classifier
  on the pooled 256 features.
- Weights start as the reference training script starts them: convolutions
  N(0, 0.02) with zero bias, BatchNorm scales N(1, 0.02) with zero shift; the
  edge-importance masks start at one.

Choices, each said once:
- The skeleton graph is `star.skeleton` with the chained hand layout ("stgcn"),
  the one the reference code uses (each hand tip hangs off its thumb).
- The partition (`STGCNConfig.partition`): "paper" (`st-gcn`) is the paper's
  spatial configuration, computed correctly: every joint's parent is its
  centripetal neighbour, in the order root, centripetal, centrifugal.
  "reference" (`st-gcn-code`, the network behind the published 81.5 / 88.3) is
  what the reference code builds (`star.skeleton.capped_spatial_partitions`):
  its distance cap files 16 of the 24 parents beside the children, and its
  order is root, centrifugal, centripetal. The parameter count is the same
  either way; the reference code's checkpoints load into `st-gcn-code`
  (`star convert`), their partitions and edge-importance masks transposed
  (rows here are output joints).
- The reference classifies with a 1 x 1 Conv2d on the pooled (B, 256, 1, 1)
  map, which is a linear layer on the pooled vector; it is written as nn.Linear
  (the same 15,420 parameters at 60 classes and the same outputs), the module
  type the STAR paper's Table 3 counts it under.

Parameters: 3,098,832 at 60 classes and 3,114,252 at 120, the reference's exact
counts. Convolution cost on one 300-frame, 2-person sample: 16.23 GMACs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from star import skeleton
from star.network.dropout import Dropout
from star.recipe import TrainingRecipe

PARTITIONS = ("paper", "reference")
# (output channels, temporal stride) of the ten units.
UNITS = ((64, 1), (64, 1), (64, 1), (64, 1), (128, 2), (128, 1), (128, 1), (256, 2), (256, 1), (256, 1))


@dataclass(frozen=True)
class STGCNConfig:
    num_classes: int = 60
    in_channels: int = 3
    hand_layout: str = "stgcn"
    temporal_kernel: int = 9
    dropout: float = 0.5
    partition: str = "paper"  # "paper" or "reference" (the reference code's hop-capped partitions)

    def __post_init__(self):
        if self.partition not in PARTITIONS:
            raise ValueError(f"unknown partition {self.partition!r}; choose one of {PARTITIONS}")

    def partitions(self) -> torch.Tensor:
        """(3, 25, 25) spatial partitions, rows = output joints."""
        if self.partition == "reference":
            return torch.from_numpy(skeleton.capped_spatial_partitions(self.hand_layout))
        return torch.from_numpy(skeleton.spatial_partitions(self.hand_layout, "neighbourhood"))


class InputNorm(nn.Module):
    """BatchNorm of the raw coordinates, then persons folded into the batch.

    With `persons=None` it normalises the V x C (joint, channel) pairs with both
    persons' frames pooled (ST-GCN); with `persons=M` it keeps separate
    statistics for each of the M person slots, M x V x C features (ST-TR).
    """

    def __init__(self, channels: int, persons: int | None = None):
        super().__init__()
        self.per_person = persons is not None
        self.norm = nn.BatchNorm1d(channels * skeleton.NUM_JOINTS * (persons or 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, v, m = x.shape
        x = x.permute(0, 4, 3, 1, 2)  # (N, M, V, C, T)
        if self.per_person:
            x = self.norm(x.reshape(n, m * v * c, t))  # (N, M*V*C, T)
        else:
            x = self.norm(x.reshape(n * m, v * c, t))  # (N*M, V*C, T)
        x = x.reshape(n, m, v, c, t).permute(0, 1, 3, 4, 2)  # (N, M, C, T, V)
        return x.reshape(n * m, c, t, v)  # (N*M, C, T, V)


def pool_persons(x: torch.Tensor, clips: int) -> torch.Tensor:
    """Average (N*M, C, T, V) features over time, joints and then persons: (N, C)."""
    pooled = x.mean(dim=(2, 3))  # (N*M, C)
    return pooled.reshape(clips, -1, pooled.shape[1]).mean(dim=1)  # (N, C)


class GraphConvolution(nn.Module):
    """The partitioned graph convolution with a learnable edge-importance mask M (starting at one).

    `partitions` is (K, V, V), row i the weights joint i draws from each joint
    (`star.skeleton.spatial_partitions`); write A_k for partition k times M_k.
    The two reference codes order the work differently, which moves the bias:
    - ST-GCN (`aggregate_first=False`): y_i = sum_k sum_j A_k[i, j] (W_k x_j + b_k);
      one 1 x 1 convolution computes W_k x + b_k for every k at once (K x out
      channels), and each partition then aggregates its own slice;
    - ST-TR (`aggregate_first=True`): y_i = sum_k (W_k sum_j A_k[i, j] x_j + b_k);
      every partition aggregates the input, and one 1 x 1 convolution over the
      K x in stacked channels applies all W_k. The code's K convolutions each
      carry a bias, kept as K biases so the parameter count is the code's.
    """

    def __init__(self, in_channels: int, out_channels: int, partitions: torch.Tensor, aggregate_first: bool = False):
        super().__init__()
        k = partitions.shape[0]
        self.aggregate_first = aggregate_first
        self.register_buffer("partitions", partitions)
        self.edge_importance = nn.Parameter(torch.ones_like(partitions))
        if aggregate_first:
            self.conv = nn.Conv2d(k * in_channels, out_channels, kernel_size=1, bias=False)
            bound = in_channels ** -0.5  # torch's default for a convolution of in_channels inputs
            self.bias = nn.Parameter(torch.empty(k, out_channels).uniform_(-bound, bound))
        else:
            self.conv = nn.Conv2d(in_channels, k * out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, t, v = x.shape
        adjacency = self.partitions * self.edge_importance  # (K, V, V)
        if self.aggregate_first:
            aggregated = torch.einsum("nctj,kij->nkcti", x, adjacency).reshape(n, -1, t, v)  # (N, K*C_in, T, V)
            return self.conv(aggregated) + self.bias.sum(dim=0)[:, None, None]  # (N, C_out, T, V)
        y = self.conv(x).reshape(n, adjacency.shape[0], -1, t, v)  # (N, K, C_out, T, V)
        return torch.einsum("nkctj,kij->ncti", y, adjacency)  # (N, C_out, T, V)


class STGCNUnit(nn.Module):
    """Graph convolution, then the temporal convolution block, plus a residual, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, partitions: torch.Tensor, stride: int,
                 temporal_kernel: int, dropout: float, residual: bool):
        super().__init__()
        self.gcn = GraphConvolution(in_channels, out_channels, partitions)
        self.tcn = nn.Sequential(
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, (temporal_kernel, 1), (stride, 1), ((temporal_kernel - 1) // 2, 0)),
            nn.BatchNorm2d(out_channels),
            Dropout(dropout, inplace=True),
        )
        if not residual:
            self.residual = None
        elif in_channels == out_channels and stride == 1:
            self.residual = nn.Identity()
        else:
            self.residual = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=(stride, 1)),
                nn.BatchNorm2d(out_channels),
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.tcn(self.gcn(x))
        if self.residual is not None:
            y = y + self.residual(x)
        return self.relu(y)


class STGCN(nn.Module):
    """ST-GCN on a padded batch (B, C, T, 25, M): logits (B, num_classes)."""

    def __init__(self, config: STGCNConfig):
        super().__init__()
        self.config = config
        partitions = config.partitions()
        self.input_norm = InputNorm(config.in_channels)
        units = []
        in_channels = config.in_channels
        for index, (out_channels, stride) in enumerate(UNITS):
            first = index == 0
            units.append(STGCNUnit(in_channels, out_channels, partitions, stride, config.temporal_kernel,
                                   dropout=0.0 if first else config.dropout, residual=not first))
            in_channels = out_channels
        self.units = nn.Sequential(*units)
        self.classifier = nn.Linear(in_channels, config.num_classes)
        self.apply(_reference_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.units(self.input_norm(x))  # (B*M, 256, T/4, V)
        return self.classifier(pool_persons(features, x.shape[0]))


def _reference_init(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d | nn.Linear):
        nn.init.normal_(module.weight, 0.0, 0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


# The ST-GCN paper's NTU RGB+D schedule, which the STAR paper keeps for this baseline.
STGCN_RECIPES = {
    "paper": TrainingRecipe(optimizer="sgd", lr=0.1, schedule="step", epochs=80, batch_size=64, momentum=0.9,
                            nesterov=True, weight_decay=1e-4, milestones=(10, 50), gamma=0.1),
}
