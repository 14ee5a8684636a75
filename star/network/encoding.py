"""Segmented sinusoidal positional encoding (the paper's Figure 7).

Each row of a compact batch gets the encoding of a time step, added to every
joint's embedding of the row; the time steps restart with every clip, so
clips concatenated along the rows each see a timeline of their own. The paper
names neither the formula nor what a second person's rows count from; both
are options of STARConfig (`positional_encoding`, `positions`):

- "vaswani" (as described): Vaswani et al.'s encoding, channel 2i holds
  sin(t / 10000^(2i/d)) and channel 2i+1 cos(t / 10000^(2i/d)).
- "code": `SeqPosEncoding` of models/encoding.py in imj2185/STAR, the phase
  (t / 10^4)^(i / d) for channel i, sin on even and cos on odd channels.

- positions "clock" (as described): the batch's `positions`, the time step on
  the clip's own timeline from 0, both persons sharing one clock (a late second
  person starts at its first frame).
- positions "rows" (the code, `SeqPosEncoding.segment`): the row's number in its
  clip, the persons' rows one after another (the second person continues from
  the first person's last row), and every clip after the first in a batch
  starting from 1 instead of 0 (the code subtracts the index of the previous
  clip's last row).
"""

from __future__ import annotations

import torch

from star.network.segments import ClipSegments

ENCODINGS = ("vaswani", "code")
POSITIONS = ("clock", "rows")


def sinusoidal_encoding(positions: torch.Tensor, width: int) -> torch.Tensor:
    """(N,) integer time steps -> (N, width) Vaswani encodings; width must be even."""
    if width % 2:
        raise ValueError(f"positional encoding needs an even width, got {width}")
    inverse_frequency = 10000.0 ** (-torch.arange(0, width, 2, device=positions.device) / width)  # (width/2,)
    angles = positions.to(torch.float32)[:, None] * inverse_frequency  # (N, width/2)
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(1)  # (N, width), sin and cos interleaved


def code_encoding(positions: torch.Tensor, width: int) -> torch.Tensor:
    """(N,) time steps -> (N, width): the STAR code's phase (t / 10^4)^(i / d), sin on even i, cos on odd i."""
    channels = torch.arange(width, device=positions.device, dtype=torch.float32)  # (width,)
    phase = (positions.to(torch.float32)[:, None] / 1e4) ** (channels / width)  # (N, width); 0^0 = 1
    return torch.where(channels.long() % 2 == 0, phase.sin(), phase.cos())


def row_positions(segments: ClipSegments) -> torch.Tensor:
    """(N,) the code's time steps: row number within the clip, from 1 for every clip after the first."""
    return segments.steps + (segments.clip_ids > 0).long()


def positional_encoding(kind: str, positions: torch.Tensor, width: int) -> torch.Tensor:
    return sinusoidal_encoding(positions, width) if kind == "vaswani" else code_encoding(positions, width)
