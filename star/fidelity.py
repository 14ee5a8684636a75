"""Where each model "as described" by its paper differs from the model "as run" by its authors' code.

Every point names the options that switch it (fields of the model's config),
what the paper says, what the code does and where (file and line of the public
code, at the commits the golden fixtures name). `measure` switches each point
alone back from "as run" to "as described", on the same weights and the golden
clips (`star.convert.golden`), and records the largest change of a logit: the
point's effect on what the network computes. Points marked training-only do
not act in evaluation (dropout), so their effect there is 0 by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from star import registry
from star.convert.golden import golden_inputs, seeded_model
from star.formats import FIDELITY_FORMAT


@dataclass(frozen=True)
class Point:
    name: str
    options: tuple[str, ...]  # config fields switched together
    paper: str
    code: str
    where: str  # in the public code
    training_only: bool = False


STAR_CODE = "imj2185/STAR main"
STAR_POINTS = (
    Point("positional encoding", ("positional_encoding",), "segmented, formula not given (Vaswani's taken)",
          "phase (t / 10^4)^(i/d), sin on even, cos on odd channels", "models/encoding.py:85"),
    Point("positions", ("positions",), "each clip from 0 (Figure 7); persons not said (one shared clock taken)",
          "row number in the clip, persons one after another; clips after the first start at 1",
          "models/encoding.py:71-75, data/dataset3.py:382"),
    Point("input channels", ("feature_rules",),
          "names only 3D coordinates (both forms feed 9: bones per joint, motion per person track taken)",
          "bones from a list shifted by one joint (joint 0 zero); motion differenced across the persons",
          "data/dataset3.py:35, 43, 382"),
    Point("repeated edges", ("duplicate_edges",), "topology of A + A^2 + A^3",
          "edge lists of A, A^2, A^3 concatenated: each one-hop pair twice (235 edges, 187 pairs)",
          "data/dataset3.py:228"),
    Point("hand joints", ("hand_layout",), "not said (the data set's anatomy taken)",
          "hand tip on thumb on hand (ST-GCN's chain)", "data/dataset3.py:212"),
    Point("activation", ("activation",), "SiLU", "GELU", "models/attentions.py:250"),
    Point("linear-attention eps", ("linear_eps",), "not said (1e-6 of Katharopoulos et al. taken)",
          "none in the denominator", "models/attentions.py:214"),
    Point("dropout rates", ("dropout", "attention_dropout", "head_dropout"), "0.5 for every module",
          "0.4 in the encoders, 0.3 in the head", "README.md:35, models/net2streams.py:71", training_only=True),
    Point("feed-forward output dropout", ("feed_forward_dropout_twice",), "not said (once, by Add & Norm)",
          "FeedForward ends in dropout and Add & Norm drops again", "models/attentions.py:242, 253",
          training_only=True),
)
STGCN_POINTS = (
    Point("spatial partitions", ("partition",), "parent centripetal, children centrifugal",
          "distance to the centre capped at one hop: 16 of 24 parents filed with the children; order root, "
          "centrifugal, centripetal", "net/utils/graph.py:28, 34, 104-116"),
)
# (as described, as run, the code's repository, its points)
PAIRS = (
    ("star-64", "star-64-code", STAR_CODE, STAR_POINTS),
    ("star-128", "star-128-code", STAR_CODE, STAR_POINTS),
    ("st-gcn", "st-gcn-code", "yysijie/st-gcn", STGCN_POINTS),
)


def _with_options(model: torch.nn.Module, source, options: tuple[str, ...]) -> torch.nn.Module:
    """`model`'s network with `options` taken from config `source`, on `model`'s weights (its own graph buffers)."""
    switched = type(model)(replace(model.config, **{option: getattr(source, option) for option in options}))
    state, own = model.state_dict(), switched.state_dict()
    state.update({key: own[key] for key in own if key.endswith("partitions")})  # the graph is part of the point
    switched.load_state_dict(state)
    return switched.eval()


@torch.no_grad()
def measure() -> dict:
    """Each point's effect alone (largest |logit change| on the golden clips), for every pair of PAIRS."""
    rows = []
    for described, as_run, code, points in PAIRS:
        model = seeded_model(as_run)
        inputs = golden_inputs(as_run)
        logits = model(*inputs)
        paper_config = registry.build(described).config
        every_point = Point("all points", tuple(option for p in points for option in p.options), "", "", "")
        for point in (*points, every_point):
            effect = (_with_options(model, paper_config, point.options)(*inputs) - logits).abs().max().item()
            rows.append({"described": described, "as_run": as_run, "code": code, "point": point.name,
                         "options": list(point.options), "paper": point.paper, "as_run_does": point.code,
                         "where": point.where, "training_only": point.training_only,
                         "max_logit_change": effect, "largest_logit": logits.abs().max().item()})
    return {"format": FIDELITY_FORMAT, "clips": len(logits), "points": rows}
