"""Segmented sinusoidal positional encoding (the paper's Figure 7).

Row r of a compact batch gets the encoding of its time step `positions[r]`,
which restarts at 0 at the start of every clip (at the person's first frame
for a late second person), so clips concatenated along the rows each see the
positions 0, 1, 2, ... of their own timeline and both persons of a clip share
one clock. The encoding is Vaswani et al.'s: channel 2i holds
sin(t / 10000^(2i/d)) and channel 2i+1 cos(t / 10000^(2i/d)); it is added to
every joint's embedding of the row. (The authors' code raises t / 10^4 to the
power i/d instead, a non-standard variant; the paper names no formula.)
"""

from __future__ import annotations

import torch


def sinusoidal_encoding(positions: torch.Tensor, width: int) -> torch.Tensor:
    """(N,) integer time steps -> (N, width) encodings; width must be even."""
    if width % 2:
        raise ValueError(f"positional encoding needs an even width, got {width}")
    inverse_frequency = 10000.0 ** (-torch.arange(0, width, 2, device=positions.device) / width)  # (width/2,)
    angles = positions.to(torch.float32)[:, None] * inverse_frequency  # (N, width/2)
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(1)  # (N, width), sin and cos interleaved
