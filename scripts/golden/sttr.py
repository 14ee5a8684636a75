"""Golden fixtures of the ST-TR streams against the authors' code, run beside this repository.

    python scripts/golden/sttr.py --reference PATH/TO/Chiaraplizz-ST-TR --out tests/golden

PATH is a checkout of Chiaraplizz/ST-TR (never committed here). For st-tr-s and
st-tr-t: our model is built under the golden seed
(`star.convert.golden.seeded_model`), its weights are copied into the code's
code/st_gcn/net/st_gcn.py Model (`star.convert.to_reference`, loaded strictly),
built for NTU joints as `CODE_ARGS` says, and both run in eval mode on the
golden clips. The fixture keeps the code's logits, a `probe` of three of its intermediate
outputs (the first layer, the first attention block, the last unit) and the
names of its state dict's tensors in order (`reference_keys`).

The code is imported as it is, with three shims: its package `__init__` is
skipped (it imports the data feeders, which need torchvision), its prints are
silenced, and the `.cuda(x.get_device())` with which its graph convolutions move
their graphs on every call leaves them on the CPU.
"""

from __future__ import annotations

import contextlib
import io
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from torch import nn

from star.convert import layout, to_reference
from star.convert.golden import TOLERANCE, golden_inputs, outputs_of, reference_checkout, save_fixture, seeded_model

# code/config/st_gcn/nturgbd/train.yaml (the shipped S-TR on joints and bones at doubled widths) set to
# 3-channel joints at standard widths, graph convolutions of `unit_gcn` (`agcn: False`)
CODE_ARGS = dict(
    channel=3, num_class=60, window_size=300, num_point=25, num_person=2, mask_learning=True, use_data_bn=True,
    only_attention=True, only_temporal_attention=True, attention_3=False, relative=False, kernel_temporal=9,
    double_channel=False, drop_connect=True, concat_original=True, all_layers=False, data_normalization=True,
    skip_conn=True, adjacency=False, bn_flag=True, weight_matrix=2, dv=0.25, dk=0.25, Nh=8, n=4,
    more_channels=False, dim_block1=10, dim_block2=30, dim_block3=75, visualization=False, agcn=False,
    graph="st_gcn.graph.NTU_RGB_D", graph_args={"labeling_mode": "spatial"}, device=torch.device("cpu"),
)
# each stream's switches (the code's README), and our module -> the code's module with the same output
STREAMS = {
    "st-tr-s": (dict(attention=True, tcn_attention=False),
                {"streams.spatial.first": "tcn0", "streams.spatial.units.3.spatial": "backbone.3.gcn1",
                 "streams.spatial.units.8": "backbone.8"}),
    "st-tr-t": (dict(attention=False, tcn_attention=True),
                {"streams.temporal.first": "tcn0", "streams.temporal.units.3.temporal": "backbone.3.tcn1",
                 "streams.temporal.units.8": "backbone.8"}),
}


def code_model_class(reference: Path) -> type[nn.Module]:
    """The code's Model class, imported without st_gcn/__init__.py."""
    sys.path.insert(0, str(reference / "code"))
    package = types.ModuleType("st_gcn")
    package.__path__ = [str(reference / "code" / "st_gcn")]
    sys.modules["st_gcn"] = package
    import st_gcn.graph  # noqa: F401  (the code looks its graph class up as an attribute of the package)
    from st_gcn.net.st_gcn import Model

    return Model


@contextlib.contextmanager
def code_shims() -> Iterator[None]:
    with contextlib.redirect_stdout(io.StringIO()), mock.patch.object(torch.Tensor, "cuda", lambda t, *_, **__: t):
        yield


def main() -> None:
    args = reference_checkout(__doc__.split("\n\n")[0])
    code_model = code_model_class(args.reference)
    failed = False
    for name, (switches, modules) in STREAMS.items():
        ours = seeded_model(name)
        with code_shims():
            reference = code_model(**CODE_ARGS, **switches)
            state = reference.state_dict()
            reference.load_state_dict(to_reference(layout(name), ours), strict=True)
            inputs = golden_inputs(name)
            logits, outputs = outputs_of(reference.eval(), modules, *inputs, None, None)  # then (label, name)
        our_logits, our_outputs = outputs_of(ours, {key: key for key in modules}, *inputs)
        differences = {"logits": (logits - our_logits).abs().max().item()}
        differences |= {key: (outputs[key] - our_outputs[key]).abs().max().item() for key in modules}
        save_fixture(args.out / f"{name}.npz", f"Chiaraplizz/ST-TR@{args.commit} code/st_gcn/net/st_gcn.py Model",
                     logits, outputs, state, reference_keys=np.array(list(state)))
        print(f"{name}: max |difference| " + ", ".join(f"{key} {value:.1e}" for key, value in differences.items())
              + f" (largest logit {logits.abs().max():.2f})")
        failed |= max(differences.values()) > TOLERANCE
    if failed:
        sys.exit(f"the code's outputs differ from ours by more than {TOLERANCE}")


if __name__ == "__main__":
    main()
