"""Per-joint input features of a compact batch: coordinates, bone vectors, motion.

The paper speaks of 3D coordinates; the authors' code, which produced its
numbers and its parameter counts, feeds 9 channels per joint. Each kind is
one small function, and `STARConfig.features` picks which are concatenated:

- coords: the joint's (x, y, z) in metres.
- bones: the joint minus its parent (`star.skeleton.bones`); the root's is 0.
- motion: the joint's displacement to the next frame of the same person track;
  a track's last row repeats the displacement before it (as the code does) and
  a one-frame track has none (0).
"""

from __future__ import annotations

import numpy as np
import torch

from star.skeleton import NUM_JOINTS, ROOT_JOINT, bones

FEATURES = ("coords", "bones", "motion")


def parent_index(hand_layout: str = "anatomical") -> np.ndarray:
    """(25,) parent of every joint, the root being its own parent."""
    parents = np.full(NUM_JOINTS, ROOT_JOINT, dtype=np.int64)
    child, parent = bones(hand_layout).T
    parents[child] = parent
    return parents


def bone_vectors(x: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
    """(N, 25, 3) joints -> (N, 25, 3) vectors from each joint's parent to the joint."""
    return x - x[:, parents]


def track_motion(x: torch.Tensor, track_starts: torch.Tensor) -> torch.Tensor:
    """(N, 25, 3) rows and a (N,) bool marking each track's first row -> (N, 25, 3) displacements."""
    step = torch.zeros_like(x)
    step[:-1] = x[1:] - x[:-1]  # (N-1, 25, 3), row r to row r+1
    last = torch.ones_like(track_starts)
    last[:-1] = track_starts[1:]  # row r ends its track when row r+1 starts one
    has_previous = ~track_starts
    # a track's last row repeats the step before it, if its track has one
    repeat = last & has_previous
    step[repeat] = step[repeat.nonzero().squeeze(1) - 1]
    step[last & ~has_previous] = 0
    return step


def track_starts(clip_ids: torch.Tensor, person_ids: torch.Tensor) -> torch.Tensor:
    """(N,) bool: True where a row begins a new (clip, person) track."""
    starts = torch.ones_like(clip_ids, dtype=torch.bool)
    starts[1:] = (clip_ids[1:] != clip_ids[:-1]) | (person_ids[1:] != person_ids[:-1])
    return starts
