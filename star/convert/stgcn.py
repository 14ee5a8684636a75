"""The ST-GCN code's state dict (yysijie/st-gcn, net/st_gcn.py Model) and `st-gcn-code`.

The units hold the same tensors under other names. Two differ in layout: the
graph operators, (K, in, out) there (`einsum('nkctv,kvw->nctw')`) and
(K, out, in) here, so the partitions and the edge-importance masks are
transposed; and the classifier, a 1 x 1 Conv2d there (weight (classes, 256,
1, 1)) and nn.Linear here. The code keeps its partitions once as the buffer
`A`; every unit here keeps a copy, which must equal it (a checkpoint of
another graph is refused).
"""

from __future__ import annotations

import re

from torch import nn

from star.convert import KeyMap, ReferenceLayout, transpose


def maps(model: nn.Module) -> list[KeyMap]:
    result = []
    for key in model.state_dict():
        unit = re.match(r"^units\.(\d+)\.(.*)$", key)
        if key.startswith("input_norm.norm."):
            result.append(KeyMap("data_bn." + key.removeprefix("input_norm.norm."), key))
        elif key == "classifier.weight":
            result.append(KeyMap("fcn.weight", key, lambda t: t.flatten(1), lambda t: t[:, :, None, None]))
        elif key == "classifier.bias":
            result.append(KeyMap("fcn.bias", key))
        elif unit and unit[2] == "gcn.partitions":
            result.append(KeyMap("A", key, transpose, transpose, fixed=True))
        elif unit and unit[2] == "gcn.edge_importance":
            result.append(KeyMap(f"edge_importance.{unit[1]}", key, transpose, transpose))
        elif unit:
            result.append(KeyMap(f"st_gcn_networks.{unit[1]}.{unit[2]}", key))
        else:
            raise ValueError(f"the ST-GCN layout has no rule for {key!r}")
    return result


def layouts() -> list[ReferenceLayout]:
    return [ReferenceLayout("st-gcn-code", "yysijie/st-gcn, net/st_gcn.py Model", maps)]
