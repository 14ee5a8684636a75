"""Where each clip's rows lie in a compact batch: index tensors on the model's device, bounds on the host.

The rows of clip m are bounds[m]:bounds[m+1]. The per-clip forms on the CPU
slice by the host bounds; the launch-light forms index by `clip_ids` and
`steps` and size their padded view by `max_rows`. A batch brings all of them
(`star.registry.model_inputs`, from the collate function's arrays), so no
forward pass computes them or reads a number back from the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ClipSegments:
    offsets: torch.Tensor  # (B + 1,) the bounds, on the device
    clip_ids: torch.Tensor  # (N,) clip of each row
    steps: torch.Tensor  # (N,) row number within its clip, from 0
    bounds: tuple[int, ...]  # (B + 1,) on the host
    max_rows: int  # rows of the longest clip

    @classmethod
    def of(cls, offsets: torch.Tensor, clip_ids: torch.Tensor, steps: torch.Tensor,
           bounds: tuple[int, ...]) -> ClipSegments:
        """Checks that the host bounds run from 0 up to the rows the index tensors cover, every clip a row or more."""
        bounds = tuple(int(b) for b in bounds)
        lengths = [stop - start for start, stop in zip(bounds[:-1], bounds[1:], strict=False)]
        if len(bounds) < 2 or bounds[0] != 0 or min(lengths) < 1 or len(bounds) != len(offsets) \
                or bounds[-1] != len(clip_ids) or len(steps) != len(clip_ids):
            raise ValueError(f"clip_offsets must run from 0 to the {len(clip_ids)} rows of x, got {list(bounds)}")
        return cls(offsets, clip_ids, steps, bounds, max(lengths))

    @classmethod
    def from_offsets(cls, offsets: torch.Tensor, rows: int) -> ClipSegments:
        """From the device offsets alone: reads them back to the host (a synchronisation on a GPU)."""
        bounds = tuple(offsets.tolist())
        lengths = [stop - start for start, stop in zip(bounds[:-1], bounds[1:], strict=False)]
        if len(bounds) < 2 or bounds[0] != 0 or bounds[-1] != rows or min(lengths) < 1:
            raise ValueError(f"clip_offsets must run from 0 to the {rows} rows of x, got {list(bounds)}")
        clip_ids = torch.repeat_interleave(torch.arange(len(bounds) - 1, device=offsets.device), offsets.diff(),
                                           output_size=rows)  # (N,)
        return cls.of(offsets, clip_ids, torch.arange(rows, device=offsets.device) - offsets[clip_ids], bounds)

    @property
    def num_clips(self) -> int:
        return self.offsets.shape[0] - 1
