"""Golden fixtures of STAR "as run" against the authors' code, run beside this repository.

    python scripts/golden/star_code.py --reference PATH/TO/imj2185-STAR --out tests/golden

PATH is a checkout of imj2185/STAR (branch main; never committed here), which
needs torch-scatter, torch-sparse, torch_geometric, einops, networkx and scipy.
For star-64-code and star-128-code: our model is built under the golden seed
(`star.convert.golden.seeded_model`), its weights are copied into the code's
DualGraphEncoder (`star.convert.to_reference`, loaded strictly), and both run
in eval mode on the golden clips, the code fed its own input channels
(`gen_bone_data`, `gen_motion_vector` per clip, persons one after another) and
its own edge list (`skeleton_parts`). The fixture keeps the code's logits, its
layer-1 spatial and temporal outputs and the pooled clips, its train-mode
logits with every dropout at 0 (batch statistics in the input norm), and the
dropout rates its train-mode forward applies, in order.
"""

from __future__ import annotations

import sys
from collections import Counter

import numpy as np
import torch

from star.convert import layout, to_reference
from star.convert.golden import (
    TOLERANCE,
    golden_inputs,
    golden_samples,
    outputs_of,
    reference_checkout,
    save_fixture,
    seeded_model,
)


def code_inputs(samples) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The code's model inputs: (rows, 25, 9) channels made by its own dataset functions, edges, batch index."""
    from data.dataset3 import gen_bone_data, gen_motion_vector, skeleton_parts

    edges, bone_list = skeleton_parts()
    rows, batch_index = [], []
    for clip, sample in enumerate(samples):
        x = torch.from_numpy(sample.xyz)  # (rows, 25, 3), person 0's rows first
        rows.append(torch.cat([x, gen_bone_data(x, bone_list), gen_motion_vector(x)], dim=-1))
        batch_index.append(torch.full((len(x),), clip))
    return torch.cat(rows), edges, torch.cat(batch_index)


def code_model(width: int) -> torch.nn.Module:
    """DualGraphEncoder with the settings of the code's README (its configuration section)."""
    from models.encoding import SeqPosEncoding
    from models.net2streams import DualGraphEncoder

    return DualGraphEncoder(in_channels=9, hidden_channels=width, out_channels=width, mlp_head_hidden=128,
                            num_layers=5, num_heads=8, classes=60, temporal_pos_enc=SeqPosEncoding(width),
                            drop_rate=[0.4, 0.4, 0.4, 0.4])


def dropout_rates(model: torch.nn.Module, inputs: tuple) -> list[float]:
    """The rate of every dropout a train-mode forward applies, in order (torch.nn.functional.dropout calls)."""
    rates = []
    original = torch.nn.functional.dropout

    def recording(x, p=0.5, training=True, inplace=False):
        rates.append(p)
        return original(x, p, training, inplace)

    torch.nn.functional.dropout = recording
    try:
        model.train()(*inputs)
    finally:
        torch.nn.functional.dropout = original
    return rates


def zero_dropout(model: torch.nn.Module) -> None:
    from models.attentions import SparseAttention

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(module, SparseAttention):
            module.dropout = 0.0


def main() -> None:
    args = reference_checkout(__doc__.split("\n\n")[0])
    x, edges, batch_index = code_inputs(golden_samples())
    failed = False
    for width in (64, 128):
        name = f"star-{width}-code"
        ours = seeded_model(name)
        reference = code_model(width)
        reference.load_state_dict(to_reference(layout(name), ours), strict=True)
        reference.eval()
        modules = {"blocks.0.spatial": "spatial_layers.0", "blocks.0.temporal": "temporal_layers.0",
                   "pooling": "context_attention"}
        logits, outputs = outputs_of(reference, modules, x, edges, batch_index)
        difference = (logits - outputs_of(ours, {}, *golden_inputs(name))[0]).abs().max().item()
        intermediates = {**outputs, "blocks.0.temporal": outputs["blocks.0.temporal"].transpose(0, 1),  # (N, V, C)
                         "pooling": outputs["pooling"].transpose(0, 1)}  # (V, B, C) -> (B, V, C)
        rates = dropout_rates(reference, (x, edges, batch_index))
        zero_dropout(reference)
        with torch.no_grad():
            train_logits = reference.train()(x, adj=edges, bi=batch_index)
        state = code_model(width).state_dict()
        save_fixture(args.out / f"{name}.npz", f"imj2185/STAR@{args.commit} models/net2streams.py DualGraphEncoder",
                     logits, intermediates, state, train_logits=train_logits.numpy(),
                     dropout_rates=np.array(rates))
        print(f"{name}: max |logit difference| {difference:.2e} (largest logit {logits.abs().max():.2f}), "
              f"dropout rates {dict(Counter(rates))}")
        failed |= difference > TOLERANCE
    if failed:
        sys.exit(f"the code's logits differ from ours by more than {TOLERANCE}")


if __name__ == "__main__":
    main()
