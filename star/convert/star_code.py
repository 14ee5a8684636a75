"""The STAR code's state dict (imj2185/STAR main, models/net2streams.py DualGraphEncoder) and the "as run" STAR.

The two networks hold the same tensors under other names, in the same
layouts: nn.Linear weights as (out, in) with the q, k, v projections stacked
(q, k, v) x (heads, depth) along the rows (the code's `chunk(3)` then
`(h c)`), which `star.network.projection.PlaneProjection` keeps under its own
name `qkv`; the context-attention matrix applied as `mean @ W` on both sides.
The code's full-attention layer (`SpatialFullEncoderLayer`, commented out in
models/attentions.py, and not runnable as written) names its tensors as the
sparse one does, so the same map reads a checkpoint into the "as run"
full-attention models; no reference network checks that map.
"""

from __future__ import annotations

from torch import nn

from star.convert import KeyMap, ReferenceLayout, renamed

CODE = "imj2185/STAR main, models/net2streams.py DualGraphEncoder"

# our name -> the code's, applied in order to every key of our state dict
RENAMES = (
    (r"^input_norm\.", "dn."),
    (r"^embedding\.", "lls."),
    (r"^blocks\.(\d+)\.(spatial|temporal)\.attention\.qkv\.", r"\2_layers.\1.lin_qkv."),
    (r"^blocks\.(\d+)\.(spatial|temporal)\.attention_norm\.", r"\2_layers.\1.add_norm_att.ln."),
    (r"^blocks\.(\d+)\.(spatial|temporal)\.feed_forward_norm\.", r"\2_layers.\1.add_norm_ffn.ln."),
    (r"^blocks\.(\d+)\.(spatial|temporal)\.feed_forward\.", r"\2_layers.\1.ffn.net."),
    (r"^pooling\.weight$", "context_attention.weights"),
    (r"^head\.", "mlp_head."),
)


def maps(model: nn.Module) -> list[KeyMap]:
    return [KeyMap(renamed(key, RENAMES), key) for key in model.state_dict()]


def layouts() -> list[ReferenceLayout]:
    return [ReferenceLayout(f"star-{width}{spatial}-code", CODE, maps)
            for width in (64, 128) for spatial in ("", "-full")]
