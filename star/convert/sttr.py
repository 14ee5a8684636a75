"""The ST-TR code's state dict (Chiaraplizz/ST-TR, code/st_gcn/net/st_gcn.py Model) and `st-tr-s`, `st-tr-t`.

The code's network for NTU joint coordinates at standard widths: 3 channels,
`double_channel: False`, `agcn: False` (graph convolutions are `unit_gcn`),
`mask_learning: True`, `relative: False`; the S-TR stream has `attention: True,
tcn_attention: False`, the T-TR stream the reverse. The units hold the same
tensors under other names; four differ in layout:
- A graph convolution there is one 1 x 1 convolution (with its bias) per
  partition, `conv_list.k`; here one convolution reads the partitions stacked
  on its input channels (input channel k * C_in + c) and the K biases are one
  (K, C_out) tensor.
- Its mask multiplies the code's A[k, v, w], which sends joint v to joint w
  (`x @ A`); rows here are the receiving joints, so the mask is transposed. The
  code rebuilds its graph from the configuration and never stores it: ours
  (`star.skeleton`, "stgcn" hands, "subset" averaging) equals the code's
  transposed, which the golden comparison (scripts/golden/sttr.py) checks.
- TSA's q/k/v convolution runs on (N*V, C, 1, T) there, kernel (1, s), and on
  (N, C, T, V) here, kernel (s, 1): its weight is transposed.
- The classifier is a Conv1d (60, 256, 1) there and nn.Linear here.
The code also builds `person_bn`, which its forward never uses: a checkpoint's
holds its initial values, which is what the map requires of it.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from star.convert import Built, Dropped, KeyMap, ReferenceLayout, renamed, transpose

CODE = "Chiaraplizz/ST-TR, code/st_gcn/net/st_gcn.py Model"
PARTITIONS = 3  # root, centripetal, centrifugal: the code's `labeling_mode: spatial`

# our name within a stream -> the code's, applied in order
RENAMES = (
    (r"^input_norm\.norm\.", "data_bn."),
    (r"^first\.0\.", "gcn0."),
    (r"^first\.1\.", "tcn0."),
    (r"^units\.(\d+)\.spatial\.", r"backbone.\1.gcn1."),
    (r"^units\.(\d+)\.temporal\.", r"backbone.\1.tcn1."),
    (r"^units\.(\d+)\.residual\.", r"backbone.\1.down1."),
    (r"\.input_norm\.", ".data_bn."),  # an attention block's input BatchNorm
    (r"(^|\.)norm\.", r"\1bn."),
    (r"\.qkv\.", ".qkv_conv."),
    (r"\.out\.", ".attn_out."),
    (r"gcn1\.(qkv_conv|attn_out)\.", r"gcn1.attention_conv.\1."),  # SSA's projections sit in `spatial_attention`
    (r"^classifier\.", "fcn."),
)


def stream_maps(model: nn.Module, stream: str) -> list[KeyMap | Dropped | Built]:
    prefix = f"streams.{stream}."
    result: list[KeyMap | Dropped | Built] = []
    for ours in model.state_dict():
        name = renamed(ours.removeprefix(prefix), RENAMES)
        graph = re.match(r"^(.+)\.gcn\.(.+)$", name)  # a graph convolution's own tensors
        if graph is None:
            if name.endswith("tcn1.qkv_conv.weight"):
                result.append(KeyMap(name, ours, transpose, transpose))  # (O, C, 1, s) there, (O, C, s, 1) here
            elif name == "fcn.weight":
                result.append(KeyMap(name, ours, lambda t: t[..., 0], lambda t: t[..., None]))  # (60, 256, 1) there
            else:
                result.append(KeyMap(name, ours))
        elif graph[2] == "partitions":
            result.append(Built(ours, "the code rebuilds its graph (st_gcn.graph.NTU_RGB_D) and never stores it"))
        elif graph[2] == "edge_importance":
            result.append(KeyMap(f"{graph[1]}.mask", ours, transpose, transpose))
        elif graph[2] == "conv.weight":
            convs = tuple(f"{graph[1]}.conv_list.{k}.weight" for k in range(PARTITIONS))
            # K x (C_out, C_in, 1, 1) there, (C_out, K*C_in, 1, 1) here
            result.append(KeyMap(convs, ours, lambda ts: torch.cat(ts, dim=1), lambda t: t.chunk(PARTITIONS, dim=1)))
        elif graph[2] == "bias":
            biases = tuple(f"{graph[1]}.conv_list.{k}.bias" for k in range(PARTITIONS))
            result.append(KeyMap(biases, ours, torch.stack, torch.unbind))  # K x (C_out,) there, (K, C_out) here
        else:
            raise ValueError(f"the ST-TR layout has no rule for {ours!r}")
    initial = nn.BatchNorm1d(model.streams[stream].classifier.in_features).state_dict()
    result += [Dropped(f"person_bn.{tensor}", "built by the code but never used by its forward",
                       lambda _, value=value: value) for tensor, value in initial.items()]
    return result


def layouts() -> list[ReferenceLayout]:
    return [ReferenceLayout(name, f"{CODE} ({label} stream)", lambda model, stream=stream: stream_maps(model, stream))
            for name, stream, label in (("st-tr-s", "spatial", "S-TR"), ("st-tr-t", "temporal", "T-TR"))]
