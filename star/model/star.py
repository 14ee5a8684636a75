"""STAR: Sparse Transformer-based Action Recognition (the paper's Figure 5c), on the compact layout.

Rows of a compact batch (one person in one frame, clips concatenated, nothing
padded) flow through:

    input features (coords, bones, motion: 9 channels per joint)
    -> batch norm over joints x channels -> linear joint embedding (width d)
    -> + segmented positional encoding                      (Figure 7)
    -> 5 ST-blocks: spatial encoder + temporal encoder, in parallel, summed
         spatial:  sparse MHSA over each row's joints        (Eq. 1-3)
         temporal: segmented linear MHSA over each clip's rows (Eq. 5-6)
         each encoder: MHSA, Add & Norm, feed-forward, Add & Norm
    -> context-aware attention pooling per clip              (Eq. 7)
    -> MLP head: Linear(25 d -> 128), LeakyReLU, Dropout, Linear(-> classes)

Choices the paper leaves open or states differently from the authors' code,
which produced its numbers. Defaults follow the code, so that STAR-64 and
STAR-128 have the code's 426,494 and 1,262,462 parameters (60 classes); each
is an option of STARConfig:
- features: 9 channels (coords, bones, motion; the paper speaks of 3D
  coordinates: `features=("coords",)`).
- activation in the feed-forward: GELU (the paper says SiLU: `activation="silu"`).
- feed-forward: Linear(d, d), activation, dropout, Linear(d, d): hidden size d,
  "uniform across the attention heads and the feed-forward networks".
- Add & Norm is post-norm: LayerNorm(x + dropout(sublayer(x))).
- 8 heads; query, key, value projections without bias; no output projection.
- head hidden size: 128 at both widths (the paper says it scales with the
  model; `head_hidden`).
- dropout 0.5 everywhere ("every module"), including the attention weights of
  the sparse attention and the head.
- the input batch norm normalises over all rows of a batch in training, so a
  clip's training-mode output depends on its batch mates; in eval mode (running
  statistics) no clip sees another.
- hand tips and thumbs attach to the hand joints (`hand_layout="anatomical"`),
  giving 191 edges in A + A^2 + A^3.
The training settings (the paper's Adam and warm-up schedule, the code's label
smoothing and fixed rate) are `STAR_RECIPES` below, for the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from star.model.dropout import Dropout
from star.model.encoding import sinusoidal_encoding
from star.model.features import FEATURES, bone_vectors, parent_index, track_motion, track_starts
from star.model.linear_attention import TemporalAttention
from star.model.pooling import ContextPooling
from star.model.scatter import DEFAULT_BACKEND, get_backend
from star.model.sparse_attention import SpatialAttention
from star.recipe import TrainingRecipe
from star.skeleton import NUM_JOINTS, neighbourhood_mask

ACTIVATIONS = {"gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU}
SPATIAL = ("sparse", "full")

STAR_RECIPES = {
    # the paper's "Training setting": Adam (0.9, 0.98, 1e-9) and lr = d^-0.5 min(t^-0.5, t w^-1.5);
    # it names no warm-up or batch size: the code's distributed script warms up for 5 epochs, batch 64
    "paper": TrainingRecipe(optimizer="adam", lr=1.0, betas=(0.9, 0.98), eps=1e-9, schedule="noam",
                            warmup_epochs=5, epochs=100, batch_size=64),
    # the authors' best-performing training script: Adam at a fixed 1e-3, label smoothing 0.1
    "code": TrainingRecipe(optimizer="adam", lr=1e-3, schedule="constant", epochs=100, batch_size=64,
                           label_smoothing=0.1),
}


@dataclass(frozen=True)
class STARConfig:
    num_classes: int = 60
    width: int = 64  # d: embedding, attention and feed-forward width (64 or 128 in the paper)
    layers: int = 5  # ST-blocks
    heads: int = 8
    spatial: str = "sparse"  # "sparse" (A + A^2 + A^3) or "full" (dense softmax over all 25 joints)
    max_hop: int = 3  # neighbourhood of the sparse attention
    hand_layout: str = "anatomical"  # see star.skeleton.HAND_LAYOUTS
    features: tuple[str, ...] = FEATURES  # input channels per joint: 3 per feature kind
    activation: str = "gelu"  # feed-forward non-linearity (the paper's text says "silu")
    dropout: float = 0.5  # after each sublayer and inside the feed-forward
    attention_dropout: float = 0.5  # on the spatial attention weights
    head_hidden: int = 128
    head_dropout: float = 0.5
    pooling_weights: str = "joint"  # see star.model.pooling
    pooling_reduce: str = "mean"
    sparse_kernel: str = "rows"  # "rows" (fast) or "edges" (reference), see star.model.sparse_attention
    scatter_backend: str = DEFAULT_BACKEND  # "torch" or "pyg", see star.model.scatter
    linear_eps: float = 1e-6

    def __post_init__(self):
        unknown = [f for f in self.features if f not in FEATURES]
        if unknown or not self.features:
            raise ValueError(f"unknown input features {unknown or '()'}; choose from {FEATURES}")
        if self.spatial not in SPATIAL:
            raise ValueError(f"unknown spatial attention {self.spatial!r}; choose one of {SPATIAL}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {sorted(ACTIVATIONS)}")

    @property
    def in_channels(self) -> int:
        return 3 * len(self.features)


class FeedForward(nn.Sequential):
    def __init__(self, width: int, activation: str, dropout: float):
        super().__init__(nn.Linear(width, width), ACTIVATIONS[activation](), Dropout(dropout),
                         nn.Linear(width, width))


class EncoderLayer(nn.Module):
    """One Transformer encoder around an attention: MHSA, Add & Norm, feed-forward, Add & Norm."""

    def __init__(self, attention: nn.Module, config: STARConfig):
        super().__init__()
        self.attention = attention
        self.attention_norm = nn.LayerNorm(config.width)
        self.feed_forward = FeedForward(config.width, config.activation, config.dropout)
        self.feed_forward_norm = nn.LayerNorm(config.width)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: torch.Tensor, *context) -> torch.Tensor:
        x = self.attention_norm(x + self.dropout(self.attention(x, *context)))
        return self.feed_forward_norm(x + self.dropout(self.feed_forward(x)))


class STBlock(nn.Module):
    """A spatial and a temporal encoder side by side on the same input; their outputs are summed."""

    def __init__(self, config: STARConfig):
        super().__init__()
        sparse = config.spatial == "sparse"
        mask = neighbourhood_mask(config.max_hop, hand_layout=config.hand_layout) if sparse else None
        spatial = SpatialAttention(config.width, config.heads, mask, config.sparse_kernel,
                                   get_backend(config.scatter_backend), config.attention_dropout)
        self.spatial = EncoderLayer(spatial, config)
        self.temporal = EncoderLayer(TemporalAttention(config.width, config.heads, config.linear_eps), config)

    def forward(self, x: torch.Tensor, bounds: list[int]) -> torch.Tensor:
        return self.spatial(x) + self.temporal(x, bounds)


class STAR(nn.Module):
    """Compact batch in (x, clip_offsets, person_ids, positions), logits (B, num_classes) out."""

    def __init__(self, config: STARConfig):
        super().__init__()
        self.config = config
        self.ops = get_backend(config.scatter_backend)
        self.register_buffer("parents", torch.as_tensor(parent_index(config.hand_layout)), persistent=False)
        self.input_norm = nn.BatchNorm1d(NUM_JOINTS * config.in_channels)
        self.embedding = nn.Linear(config.in_channels, config.width)
        self.blocks = nn.ModuleList(STBlock(config) for _ in range(config.layers))
        self.pooling = ContextPooling(config.width, self.ops, config.pooling_weights, config.pooling_reduce)
        self.head = nn.Sequential(
            nn.Linear(NUM_JOINTS * config.width, config.head_hidden),
            nn.LeakyReLU(),
            Dropout(config.head_dropout),
            nn.Linear(config.head_hidden, config.num_classes),
        )

    def input_features(self, x: torch.Tensor, clip_offsets: torch.Tensor, person_ids: torch.Tensor) -> torch.Tensor:
        """(N, 25, 3) joints -> (N, 25, 3 x len(features)) in the order of config.features."""
        parts = []
        for kind in self.config.features:
            if kind == "coords":
                parts.append(x)
            elif kind == "bones":
                parts.append(bone_vectors(x, self.parents))
            else:
                clip_ids = torch.repeat_interleave(torch.arange(len(clip_offsets) - 1, device=x.device),
                                                   clip_offsets.diff(), output_size=len(x))
                parts.append(track_motion(x, track_starts(clip_ids, person_ids)))
        return torch.cat(parts, dim=-1)

    def forward(self, x: torch.Tensor, clip_offsets: torch.Tensor, person_ids: torch.Tensor,
                positions: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if clip_offsets.numel() < 2 or int(clip_offsets[-1]) != n:
            raise ValueError(f"clip_offsets must run from 0 to the {n} rows of x, got {clip_offsets.tolist()}")
        features = self.input_features(x, clip_offsets, person_ids)  # (N, V, C_in)
        features = self.input_norm(features.reshape(n, -1)).view_as(features)  # normalised over (V x C_in)
        h = self.embedding(features) + sinusoidal_encoding(positions, self.config.width)[:, None, :]  # (N, V, d)
        bounds = clip_offsets.tolist()
        for block in self.blocks:
            h = block(h, bounds)
        pooled = self.pooling(h, clip_offsets)  # (B, V, d)
        return self.head(pooled.flatten(1))  # (B, V*d) -> (B, classes)

    def analytic_macs(self, rows: int, clips: int) -> dict[str, int]:
        """Multiply-accumulates of one forward pass on `rows` rows in `clips` clips, by component.

        Counted: every product of two tensors (linear layers, attention scores
        and aggregations, the linear attention's U, outputs and normaliser, the
        pooling's context and weighting). Not counted: normalisation,
        activations, softmax, exp, sums without a product (the linear
        attention's Z, segment means), scaling by constants, the positional
        encoding's angles. `mac_categories` names the kind of product of each.
        """
        c = self.config
        tokens = rows * NUM_JOINTS
        d, depth = c.width, c.width // c.heads
        pairs = NUM_JOINTS * NUM_JOINTS if c.spatial == "full" else int(
            neighbourhood_mask(c.max_hop, hand_layout=c.hand_layout).sum())
        return {
            "embedding": tokens * c.in_channels * d,
            "qkv": 2 * c.layers * tokens * d * 3 * d,
            # scores q.k and aggregation alpha v over each attended pair, d per pair over all heads
            "spatial_attention": c.layers * 2 * rows * pairs * d,
            # U = phi(K)^T V and phi(Q) U: depth x depth per head per token each
            "temporal_attention": c.layers * tokens * d * 2 * depth,
            # phi(Q).Z: depth per head per token
            "temporal_normaliser": c.layers * tokens * d,
            "feed_forward": 2 * c.layers * tokens * 2 * d * d,
            "pooling_context": clips * NUM_JOINTS * d * d,  # mean rows (per clip and joint) times W
            "pooling_weighting": 2 * tokens * d,  # the agreement <v_i, c> and the weighted rows a_i v_i
            "head": clips * (NUM_JOINTS * d * c.head_hidden + c.head_hidden * c.num_classes),
        }

    def mac_categories(self) -> dict[str, str]:
        """The kind of product behind each component of `analytic_macs`, in the paper's Table 3 categories.

        Linear: nn.Linear layers; MatMul: matrix products; Mul: element-wise
        products summed afterwards (the sparse attention's rows, the linear
        attention's normaliser, the pooling's weights).
        """
        spatial = "Mul" if self.config.spatial == "sparse" else "MatMul"
        return {"embedding": "Linear", "qkv": "Linear", "spatial_attention": spatial, "temporal_attention": "MatMul",
                "temporal_normaliser": "Mul", "feed_forward": "Linear", "pooling_context": "MatMul",
                "pooling_weighting": "Mul", "head": "Linear"}
