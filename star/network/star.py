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

Two forms of every choice where the paper and the authors' code part ways,
each an option of STARConfig so that any one can be switched alone (the
registry's `star-64` / `star-128` are "as described", `star-64-code` /
`star-128-code` "as run", `STAR_AS_RUN` below):

| choice | as described (paper, else standard) | as run (imj2185/STAR main, DualGraphEncoder) |
|---|---|---|
| positional_encoding | Vaswani's sinusoids | (t / 10^4)^(i/d), see star.network.encoding |
| positions | clip clock from 0, persons share it | row number in the clip, from 1 after the first clip |
| feature_rules | bones per joint, motion per track | shifted bone list, motion across persons (features) |
| duplicate_edges | A + A^2 + A^3 as a set of pairs | A, A^2, A^3 edge lists concatenated: one-hop pairs twice |
| hand_layout | anatomical (tips and thumbs on the hand) | chained (tip on thumb, as ST-GCN) |
| activation | SiLU (the paper's text) | GELU |
| dropout, attention_dropout | 0.5 ("every module") | 0.4 (README and args.py) |
| head_dropout | 0.5 | 0.3 (net2streams.py) |
| feed_forward_dropout_twice | no | yes: FeedForward ends in dropout, Add & Norm drops again |
| linear_eps | 1e-6 (Katharopoulos et al.'s code) | 0: no eps in the denominator |

Shared by both: 9 input channels (coords, bones, motion; the paper speaks of
3D coordinates, the published parameter counts need 9); post-norm Add & Norm,
LayerNorm(x + dropout(sublayer(x))); feed-forward Linear(d, d), activation,
dropout, Linear(d, d); 8 heads, q/k/v projections without bias, no output
projection; head hidden size 128 at both widths (the code's README; its
args.py says 64, which gives 320,190 parameters at d = 64 instead of the
published 0.42M); the input batch norm normalises over all rows of a batch in
training, so a clip's training-mode output depends on its batch mates, while in
eval mode (running statistics) no clip sees another. STAR-64 and STAR-128 have
426,494 and 1,262,462 parameters (60 classes) in both forms, the code's counts.
The training settings (the paper's Adam and warm-up schedule, the code's label
smoothing and fixed rate) are `STAR_RECIPES` below, for the trainer.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from star.network import fused
from star.network.dropout import Dropout
from star.network.encoding import ENCODINGS, POSITIONS, positional_encoding, row_positions
from star.network.features import (
    FEATURES,
    bone_vectors,
    parent_index,
    segment_motion,
    segment_starts,
    shifted_bone_vectors,
)
from star.network.linear_attention import KERNELS as TEMPORAL_KERNELS
from star.network.linear_attention import TemporalAttention
from star.network.pooling import ContextPooling
from star.network.scatter import DEFAULT_BACKEND, get_backend
from star.network.segments import ClipSegments
from star.network.sparse_attention import KERNELS as SPARSE_KERNELS
from star.network.sparse_attention import SpatialAttention
from star.recipe import TrainingRecipe
from star.skeleton import NUM_JOINTS, bones, neighbourhood_mask, power_edge_counts

ACTIVATIONS = {"gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU}
SPATIAL = ("sparse", "full")
FEATURE_RULES = ("track", "code")

STAR_RECIPES = {
    # the paper's "Training setting": Adam (0.9, 0.98, 1e-9) and lr = d^-0.5 min(t^-0.5, t w^-1.5); it names
    # no warm-up or batch size: 5 warm-up epochs as the distributed branch's args.py (whose NoamOpt also takes
    # a factor of 4 and d = 150), batch 64 as main's args.py
    "paper": TrainingRecipe(optimizer="adam", lr=1.0, betas=(0.9, 0.98), eps=1e-9, schedule="noam",
                            warmup_epochs=5, epochs=100, batch_size=64),
    # main's train_dist.py (and the best_performing branch's train.py): Adam at a fixed 1e-3, label smoothing 0.1
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
    duplicate_edges: bool = False  # True: A, A^2, A^3 edge lists concatenated unmerged (the code)
    features: tuple[str, ...] = FEATURES  # input channels per joint: 3 per feature kind
    feature_rules: str = "track"  # "track" or "code", see star.network.features
    positional_encoding: str = "vaswani"  # "vaswani" or "code", see star.network.encoding
    positions: str = "clock"  # "clock" or "rows", see star.network.encoding
    activation: str = "silu"  # feed-forward non-linearity (the code uses "gelu")
    dropout: float = 0.5  # after each sublayer and inside the feed-forward
    attention_dropout: float = 0.5  # on the spatial attention weights
    feed_forward_dropout_twice: bool = False  # True: the feed-forward's output dropped, then again by Add & Norm
    head_hidden: int = 128
    head_dropout: float = 0.5
    pooling_weights: str = "joint"  # see star.network.pooling
    pooling_reduce: str = "mean"
    sparse_kernel: str = "auto"  # "fused"/"rows" (CPU), "gather" (GPU), "edges" (literal), see sparse_attention
    temporal_kernel: str = "auto"  # "fused"/"split" (CPU) or "padded" (GPU), see star.network.linear_attention
    scatter_backend: str = DEFAULT_BACKEND  # "torch" or "pyg", see star.network.scatter
    linear_eps: float = 1e-6  # added to the linear attention's denominator
    inference_kernels: bool = True  # in inference on the fused kernels: fused projections and layer tails

    def __post_init__(self):
        unknown = [f for f in self.features if f not in FEATURES]
        if unknown or not self.features:
            raise ValueError(f"unknown input features {unknown or '()'}; choose from {FEATURES}")
        if self.spatial not in SPATIAL:
            raise ValueError(f"unknown spatial attention {self.spatial!r}; choose one of {SPATIAL}")
        for option, value, allowed in (("activation", self.activation, tuple(ACTIVATIONS)),
                                       ("feature_rules", self.feature_rules, FEATURE_RULES),
                                       ("positional_encoding", self.positional_encoding, ENCODINGS),
                                       ("positions", self.positions, POSITIONS),
                                       ("sparse_kernel", self.sparse_kernel, SPARSE_KERNELS),
                                       ("temporal_kernel", self.temporal_kernel, TEMPORAL_KERNELS)):
            if value not in allowed:
                raise ValueError(f"unknown {option} {value!r}; choose one of {allowed}")

    @property
    def in_channels(self) -> int:
        return 3 * len(self.features)

    def neighbourhood(self) -> np.ndarray:
        """(25, 25) edge counts of the sparse attention: 0 or 1, or 2 for the code's repeated one-hop pairs."""
        if self.duplicate_edges:
            return power_edge_counts(self.max_hop, self.hand_layout)
        return neighbourhood_mask(self.max_hop, hand_layout=self.hand_layout).astype(np.int64)


# STAR's kernel forms (sparse_kernel, temporal_kernel) by what they are for; `auto` takes "cpu" on the CPU ("aten"
# where the fused kernels cannot be built) and "device" elsewhere (star.network.sparse_attention); "aten" is
# also what the MAC counters trace (a fused kernel is one opaque operator); the edge list is the literal reading
KERNEL_FORMS = {"cpu": ("fused", "fused"), "aten": ("rows", "split"), "device": ("gather", "padded"),
                "edge list": ("edges", "split")}


@contextmanager
def kernel_forms(model: nn.Module, form: str):
    """Run `model`'s STAR attentions in the kernel form `form` (a key of KERNEL_FORMS) inside the block.

    The MAC counters use the ATen CPU form on every device: the GPU form
    computes on padding (neighbour slots, a padded timeline) that is not part
    of the model, and the fused kernels are opaque to tracing.
    """
    sparse, temporal = KERNEL_FORMS[form]
    # the full ablation's dense attention has one form, but its kernel decides its layers' Add & Norm as well;
    # the attentions' kernels decide the inference kernels (fused projections and layer tails) too
    attentions = [m for m in model.modules() if isinstance(m, (SpatialAttention, TemporalAttention))]
    before = [m.kernel for m in attentions]
    for module in attentions:
        module.kernel = sparse if isinstance(module, SpatialAttention) else temporal
    try:
        yield model
    finally:
        for module, kernel in zip(attentions, before, strict=True):
            module.kernel = kernel


# The network the authors' code runs (imj2185/STAR main, models/net2streams.py DualGraphEncoder with the
# settings of its README): every "as run" choice of the table above.
STAR_AS_RUN = dict(hand_layout="stgcn", duplicate_edges=True, feature_rules="code", positional_encoding="code",
                   positions="rows", activation="gelu", dropout=0.4, attention_dropout=0.4, head_dropout=0.3,
                   feed_forward_dropout_twice=True, linear_eps=0.0)


def _hooked(module: nn.Module) -> bool:
    """True where a call of `module` or of a module inside it would run a hook, forward or backward, its own or one
    registered for every module (the hooks nn.Module.__call__ runs): a fused kernel that calls none of them is
    then not taken."""
    from torch.nn.modules import module as modules

    if (modules._global_forward_hooks or modules._global_forward_pre_hooks or modules._global_backward_hooks
            or modules._global_backward_pre_hooks):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
               for m in module.modules())


class FeedForward(nn.Sequential):
    def __init__(self, width: int, activation: str, dropout: float, dropout_output: bool = False):
        super().__init__(nn.Linear(width, width), ACTIVATIONS[activation](), Dropout(dropout),
                         nn.Linear(width, width), *([Dropout(dropout)] if dropout_output else []))


class EncoderLayer(nn.Module):
    """One Transformer encoder around an attention: MHSA, Add & Norm, feed-forward, Add & Norm."""

    def __init__(self, attention: nn.Module, config: STARConfig):
        super().__init__()
        self.attention = attention
        self.attention_norm = nn.LayerNorm(config.width)
        self.feed_forward = FeedForward(config.width, config.activation, config.dropout,
                                        config.feed_forward_dropout_twice)
        self.feed_forward_norm = nn.LayerNorm(config.width)
        self.dropout = Dropout(config.dropout)
        self.activation, self.inference_kernels = config.activation, config.inference_kernels

    def add_norm(self, norm: nn.LayerNorm, x: torch.Tensor, sublayer: torch.Tensor) -> torch.Tensor:
        """norm(x + dropout(sublayer)); one pass of a fused kernel (star.network.fused.add_norm) where the
        attention runs its fused kernel, so that every kernel form but the CPU's runs the unfused ATen form."""
        if self.attention.kernel_for(x) == "fused":
            return fused.add_norm(x, sublayer, norm, self.dropout.p if self.training else 0.0)
        return norm(x + self.dropout(sublayer))

    def inference_tail(self, x: torch.Tensor) -> bool:
        """True where the layer after its attention runs as one fused kernel (star.network.fused.encoder_tails):
        the attention's fused kernel runs, every module of the layer in eval mode (every dropout the identity),
        no gradient asked for, and no hook on the layer or a module inside it (the kernel calls none of them;
        STBlock's fused path does not call the layer either, so a hook on the layer keeps it unfused even where
        its own forward would have fired the hook), unless the config's inference_kernels is off."""
        if not self.inference_kernels or self.attention.kernel_for(x) != "fused":
            return False
        if any(m.training for m in self.modules()) or _hooked(self):
            return False
        return not (torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())))

    def tail(self, attended: torch.Tensor) -> tuple:
        """The layer's part of star.network.fused.encoder_tails: its attention's output and the modules after it."""
        return attended, self.attention_norm, self.feed_forward, self.feed_forward_norm

    def forward(self, x: torch.Tensor, *context) -> torch.Tensor:
        n, v, c = x.shape
        attended = self.attention(x, *context)
        if self.inference_tail(x):
            return fused.encoder_tails(x, [self.tail(attended)], self.activation)
        x = self.add_norm(self.attention_norm, x, attended).view(n * v, c)  # (N*V, C)
        # rows of a matrix, so each linear layer is one product (3-D input adds two reshapes per layer)
        return self.add_norm(self.feed_forward_norm, x, self.feed_forward_rows(x)).view(n, v, c)

    def feed_forward_rows(self, x: torch.Tensor) -> torch.Tensor:
        """The feed-forward on rows (R, C): where the attention runs its fused kernel, the fused kernels can take x
        (fused.usable: no autocast, float32 or float64) and no module of the feed-forward has a hook, its plain
        nn.Linear layers' products by the fused kernels' tile products (star.network.fused.linear, which calls no
        module), else the modules."""
        if self.attention.kernel_for(x) != "fused" or not fused.usable(x) or _hooked(self.feed_forward):
            return self.feed_forward(x)
        for module in self.feed_forward:
            x = fused.linear(x, module.weight, module.bias) if type(module) is nn.Linear else module(x)
        return x


class STBlock(nn.Module):
    """A spatial and a temporal encoder side by side on the same input; their outputs are summed."""

    def __init__(self, config: STARConfig):
        super().__init__()
        mask = config.neighbourhood() if config.spatial == "sparse" else None
        spatial = SpatialAttention(config.width, config.heads, mask, config.sparse_kernel,
                                   get_backend(config.scatter_backend), config.attention_dropout)
        self.spatial = EncoderLayer(spatial, config)
        temporal = TemporalAttention(config.width, config.heads, config.linear_eps, config.temporal_kernel)
        self.temporal = EncoderLayer(temporal, config)

    def forward(self, x: torch.Tensor, segments: ClipSegments) -> torch.Tensor:
        if not (self.spatial.inference_tail(x) and self.temporal.inference_tail(x)):
            return self.spatial(x) + self.temporal(x, segments)
        # inference on the fused kernels: both attentions with their projections inside (the full attention's by
        # the tile products before it), and both layers' tails and their sum in one pass (no hook on either layer:
        # inference_tail)
        n, v, c = x.shape
        spatial = self.spatial.attention
        if spatial.graph is None:
            projected = fused.projection(x.reshape(n * v, c), spatial.rows_weight())  # (N*V, 3C)
            attended = spatial(x, projected=projected)
        else:
            attended = spatial.projected_attention(x)
        temporal = self.temporal.attention.projected_attention(x, segments)
        tails = [self.spatial.tail(attended), self.temporal.tail(temporal)]
        return fused.encoder_tails(x, tails, self.spatial.activation)  # both layers' activation: the config's


class STAR(nn.Module):
    """Compact batch in (x, clip_offsets, person_ids, positions, segments), logits (B, num_classes) out.

    `segments` (star.network.segments.ClipSegments) are the clips' index tensors
    and host bounds, which a batch brings (`star.registry.model_inputs`); given,
    they are used and clip_offsets is not read. Without them the forward
    computes them from clip_offsets, reading it back from the device (a
    synchronisation on a GPU).
    """

    def __init__(self, config: STARConfig):
        super().__init__()
        self.config = config
        self.ops = get_backend(config.scatter_backend)
        self.register_buffer("parents", torch.as_tensor(parent_index(config.hand_layout)), persistent=False)
        self.register_buffer("bone_list", torch.as_tensor(bones(config.hand_layout)), persistent=False)
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

    def input_features(self, x: torch.Tensor, clip_ids: torch.Tensor, person_ids: torch.Tensor) -> torch.Tensor:
        """(N, 25, 3) joints -> (N, 25, 3 x len(features)) in the order of config.features."""
        code = self.config.feature_rules == "code"
        parts = []
        for kind in self.config.features:
            if kind == "coords":
                parts.append(x)
            elif kind == "bones":
                parts.append(shifted_bone_vectors(x, self.bone_list) if code else bone_vectors(x, self.parents))
            else:
                parts.append(segment_motion(x, segment_starts(clip_ids, None if code else person_ids)))
        return torch.cat(parts, dim=-1)

    def forward(self, x: torch.Tensor, clip_offsets: torch.Tensor, person_ids: torch.Tensor,
                positions: torch.Tensor, segments: ClipSegments | None = None) -> torch.Tensor:
        n = x.shape[0]
        if segments is None:
            segments = ClipSegments.from_offsets(clip_offsets, n)
        if segments.clip_ids.shape[0] != n:
            raise ValueError(f"the batch's segments cover {segments.clip_ids.shape[0]} rows, x has {n}")
        if self.config.positions == "rows":
            positions = row_positions(segments)
        features = self.input_features(x, segments.clip_ids, person_ids)  # (N, V, C_in)
        features = self.input_norm(features.reshape(n, -1)).view_as(features)  # normalised over (V x C_in)
        encoding = positional_encoding(self.config.positional_encoding, positions, self.config.width)  # (N, d)
        h = self.embedding(features) + encoding[:, None, :]  # (N, V, d)
        for block in self.blocks:
            h = block(h, segments)
        if self.inference_pooling(h):
            pooled = fused.context_pooling(h, segments.bounds, self.pooling)  # (B, V, d)
        else:
            pooled = self.pooling(h, segments)  # (B, V, d)
        return self.head(pooled.flatten(1))  # (B, V*d) -> (B, classes)

    def inference_pooling(self, h: torch.Tensor) -> bool:
        """True where the pooling runs as one fused kernel (star.network.fused.context_pooling): the last ST-block's
        layers run on their inference kernels (EncoderLayer.inference_tail: the fused kernels, eval mode, no
        gradient asked for, no hook, the config's inference_kernels), and no hook is on the pooling."""
        last = self.blocks[-1] if len(self.blocks) else None
        return (last is not None and last.spatial.inference_tail(h) and last.temporal.inference_tail(h)
                and not _hooked(self.pooling)
                and not (torch.is_grad_enabled() and self.pooling.weight.requires_grad))

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
        pairs = NUM_JOINTS * NUM_JOINTS if c.spatial == "full" else int(c.neighbourhood().sum())
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
