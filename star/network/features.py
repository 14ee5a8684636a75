"""Per-joint input features of a compact batch: coordinates, bone vectors, motion.

The paper speaks of 3D coordinates; the authors' code, which produced its
numbers and its parameter counts, feeds 9 channels per joint. Each kind is
one small function, and `STARConfig.features` picks which are concatenated:

- coords: the joint's (x, y, z) in metres.
- bones: the joint minus its parent (`star.skeleton.bones`); the root's is 0.
- motion: the joint's displacement to the next row of the same segment; a
  segment's last row repeats the displacement before it and a one-row segment
  has none (0).

`STARConfig.feature_rules` says what a segment is and which joint a bone
belongs to. "track" (as described): segments are person tracks, each joint
carries its own bone. "code" (the channels `gen_bone_data` and
`gen_motion_vector` of data/dataset3.py in imj2185/STAR compute): the bone
list is written from joint 1 on (`bone[:, 1:] = x[adj[0]] - x[adj[1]]` over the
24 bones in list order), so joint 0 gets zero, joints 1-20 the bones of joints
0-19 and joints 21-24 the bones of joints 21-24 (the list skips joint 20, the
root); and motion is differenced over the whole clip, persons one after
another, so the last row of the first person takes the step to the second
person's first row.
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


def shifted_bone_vectors(x: torch.Tensor, bone_list: torch.Tensor) -> torch.Tensor:
    """The code's bone channels: (N, 25, 3) joints and the (24, 2) (child, parent) list -> (N, 25, 3)."""
    out = torch.zeros_like(x)
    out[:, 1:] = x[:, bone_list[:, 0]] - x[:, bone_list[:, 1]]  # bone k lands on joint k + 1
    return out


def segment_motion(x: torch.Tensor, segment_starts: torch.Tensor) -> torch.Tensor:
    """(N, 25, 3) rows and a (N,) bool marking each segment's first row -> (N, 25, 3) displacements.

    Written with `where`, not boolean indexing, so the number of rows selected is never read back to the host.
    """
    zero = x.new_zeros(1, *x.shape[1:])
    step = torch.cat([x[1:] - x[:-1], zero])  # (N, 25, 3), row r to row r+1
    previous = torch.cat([zero, step[:-1]])  # (N, 25, 3), row r-1 to row r
    last = torch.cat([segment_starts[1:], segment_starts.new_ones(1)])  # row r ends its segment
    # a segment's last row repeats the step before it if its segment has one, else has none
    at_end = torch.where(segment_starts[:, None, None], 0.0, previous)
    return torch.where(last[:, None, None], at_end, step)


def segment_starts(clip_ids: torch.Tensor, person_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) bool: True where a row begins a new clip, or with `person_ids` a new (clip, person) track."""
    starts = torch.ones_like(clip_ids, dtype=torch.bool)
    starts[1:] = clip_ids[1:] != clip_ids[:-1]
    if person_ids is not None:
        starts[1:] |= person_ids[1:] != person_ids[:-1]
    return starts
