"""Golden fixture of `st-gcn-code` against the official ST-GCN code, run beside this repository.

    python scripts/golden/stgcn.py --reference PATH/TO/yysijie-st-gcn --out tests/golden

PATH is a checkout of yysijie/st-gcn (never committed here). Our `st-gcn-code`
is built under the golden seed (`star.convert.golden.seeded_model`), its
weights are copied into the code's `net.st_gcn.Model` for NTU RGB+D
(`star.convert.to_reference`, loaded strictly: the code's own partitions must
equal ours), and both run in eval mode on the golden clips padded with zeros
to 16 frames. The fixture keeps the code's logits and its first and last unit's
outputs.
"""

from __future__ import annotations

import sys

from star.convert import layout, to_reference
from star.convert.golden import TOLERANCE, golden_inputs, outputs_of, reference_checkout, save_fixture, seeded_model

NAME = "st-gcn-code"


def main() -> None:
    args = reference_checkout(__doc__.split("\n\n")[0])
    from net.st_gcn import Model

    ours = seeded_model(NAME)
    reference = Model(in_channels=3, num_class=60, graph_args={"layout": "ntu-rgb+d", "strategy": "spatial"},
                      edge_importance_weighting=True, dropout=0.5)
    state = reference.state_dict()
    reference.load_state_dict(to_reference(layout(NAME), ours), strict=True)
    reference.eval()
    (x,) = golden_inputs(NAME)
    logits, outputs = outputs_of(reference, {f"units.{i}": f"st_gcn_networks.{i}" for i in (0, 9)}, x)
    outputs = {key: out[0] for key, out in outputs.items()}  # the code's units return (x, A)
    difference = (logits - outputs_of(ours, {}, x)[0]).abs().max().item()
    save_fixture(args.out / f"{NAME}.npz", f"yysijie/st-gcn@{args.commit} net/st_gcn.py Model", logits, outputs, state)
    print(f"{NAME}: max |logit difference| {difference:.2e} (largest logit {logits.abs().max():.2f})")
    if difference > TOLERANCE:
        sys.exit(f"the code's logits differ from ours by more than {TOLERANCE}")


if __name__ == "__main__":
    main()
