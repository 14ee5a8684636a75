"""The 25-joint NTU RGB+D (Kinect v2) skeleton graph, in one place for every model.

Joints are 0-based here (joint k of the official 1-based list is index k-1).
The 20 body bones are fixed; the four hand bones come in two layouts (see
`HAND_LAYOUTS`): the anatomical one, where both hand tips and thumbs hang off the
hand joint, and the chained one the ST-GCN reference code uses, where each hand
tip hangs off its thumb. Every model names the layout it uses.

Graph operators follow one convention: row i of a (25, 25) matrix says how
joint i's output draws on every joint's input, so aggregation is `A @ x`.
"""

from __future__ import annotations

import numpy as np

NUM_JOINTS = 25

JOINT_NAMES = (
    "spine_base", "spine_mid", "neck", "head",
    "left_shoulder", "left_elbow", "left_wrist", "left_hand",
    "right_shoulder", "right_elbow", "right_wrist", "right_hand",
    "left_hip", "left_knee", "left_ankle", "left_foot",
    "right_hip", "right_knee", "right_ankle", "right_foot",
    "spine_shoulder", "left_hand_tip", "left_thumb", "right_hand_tip", "right_thumb",
)

# (child, parent) in the official 1-based numbering, as the data set documents them.
_BODY_BONES_1BASED = (
    (1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21),
    (10, 9), (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1),
    (18, 17), (19, 18), (20, 19),
)
HAND_LAYOUTS = {
    "anatomical": ((22, 8), (23, 8), (24, 12), (25, 12)),
    "stgcn": ((22, 23), (23, 8), (24, 25), (25, 12)),
}

# Spine base: the body's centre, used to follow and join person tracks.
CENTER_JOINT = 0
# Spine shoulder: the root of the bone tree (ST-GCN's centre for NTU); every bone points from a child towards it.
ROOT_JOINT = 20


def bones(hand_layout: str = "anatomical") -> np.ndarray:
    """The 24 bones as 0-based (child, parent) pairs, shape (24, 2)."""
    if hand_layout not in HAND_LAYOUTS:
        raise ValueError(f"unknown hand layout {hand_layout!r}; choose one of {sorted(HAND_LAYOUTS)}")
    return np.array(_BODY_BONES_1BASED + HAND_LAYOUTS[hand_layout], dtype=np.int64) - 1


def adjacency(hand_layout: str = "anatomical") -> np.ndarray:
    """Symmetric 0/1 adjacency matrix A of the bone graph, no self loops, (25, 25)."""
    a = np.zeros((NUM_JOINTS, NUM_JOINTS), dtype=np.int64)
    child, parent = bones(hand_layout).T
    a[child, parent] = 1
    a[parent, child] = 1
    return a


def hop_distance(hand_layout: str = "anatomical") -> np.ndarray:
    """Shortest-path hop count between every pair of joints, (25, 25) int64."""
    a = adjacency(hand_layout)
    unreached = NUM_JOINTS + 1
    dist = np.full((NUM_JOINTS, NUM_JOINTS), unreached, dtype=np.int64)
    np.fill_diagonal(dist, 0)
    reach = np.eye(NUM_JOINTS, dtype=np.int64)
    for hop in range(1, NUM_JOINTS):
        reach = np.minimum(reach @ (a + np.eye(NUM_JOINTS, dtype=np.int64)), 1)
        dist[(reach > 0) & (dist == unreached)] = hop
    return dist


def neighbourhood_mask(max_hop: int, include_self: bool = True, hand_layout: str = "anatomical") -> np.ndarray:
    """Boolean (25, 25) mask of the joints within `max_hop` hops: the support of A + A^2 + ... + A^k.

    Row i lists the joints that joint i attends to. A^2 and A^3 contain the
    diagonal (a walk out and back), so the paper's A + A^2 + A^3 already holds the
    self loop; `include_self=False` removes it for models that want it out.
    """
    mask = hop_distance(hand_layout) <= max_hop
    if not include_self:
        np.fill_diagonal(mask, False)
    return mask


def edge_index(max_hop: int, include_self: bool = True, hand_layout: str = "anatomical") -> np.ndarray:
    """The neighbourhood as an edge list (2, E): row 0 the attending joint, row 1 the attended one.

    Edges are sorted by attending joint, so row 0 is a CSR-ready run of segments.
    """
    query, key = np.nonzero(neighbourhood_mask(max_hop, include_self, hand_layout))
    return np.stack([query, key]).astype(np.int64)


def power_edge_counts(max_hop: int, hand_layout: str = "anatomical") -> np.ndarray:
    """(25, 25) int64: for how many p in 1..max_hop the walks of A^p link joint i to joint j.

    The STAR code (`skeleton_parts` in data/dataset3.py of imj2185/STAR) builds
    its attention edges by concatenating the edge lists of A, A^2 and A^3
    without merging them. On the bone tree (no odd cycles) A^p reaches the
    joints at hop distance p, p - 2, ...: the joint itself once (A^2), each
    two- and three-hop joint once, each one-hop neighbour twice (A and A^3).
    From max_hop 2 on the support equals `neighbourhood_mask(max_hop)` (A alone
    has no self loop); the counts are what an attention over the unmerged list
    weights each key by.
    """
    a = adjacency(hand_layout)
    power = np.eye(NUM_JOINTS, dtype=np.int64)
    counts = np.zeros((NUM_JOINTS, NUM_JOINTS), dtype=np.int64)
    for _ in range(max_hop):
        power = power @ a
        counts += power > 0
    return counts


PARTITION_NORMALISATIONS = ("neighbourhood", "subset")


def spatial_partitions(hand_layout: str = "anatomical", normalisation: str = "neighbourhood") -> np.ndarray:
    """ST-GCN's spatial-configuration partition of the 1-hop neighbourhood, (3, 25, 25) float32.

    Partition k of row i holds the joints j that joint i aggregates:
    k = 0 the root (i itself), k = 1 the centripetal neighbour (i's parent, one
    hop nearer the spine shoulder), k = 2 the centrifugal ones (i's children).
    The ST-GCN paper splits by distance to the skeleton's gravity centre; its
    code and ST-TR's use the hop distance to the spine shoulder instead, and so
    does this function. (The ST-GCN code computes that distance with hops capped
    at 1, so a joint three or more hops from the centre ties with its parent at
    "infinity" and the parent lands in the children's subset; 16 of the 24
    parents are filed so. See open-mmlab/mmskeleton#367. Here every joint's
    parent is centripetal, as the paper defines.)

    `normalisation` "neighbourhood" divides every entry of row i by the size of
    i's whole 1-hop neighbourhood, itself included (ST-GCN's Lambda^-1);
    "subset" averages within each partition, so every non-empty row of every
    partition sums to 1 (the graph ST-TR's code builds).
    """
    if normalisation not in PARTITION_NORMALISATIONS:
        raise ValueError(f"unknown normalisation {normalisation!r}; choose one of {PARTITION_NORMALISATIONS}")
    child, parent = bones(hand_layout).T
    partitions = np.zeros((3, NUM_JOINTS, NUM_JOINTS), dtype=np.float64)
    partitions[0] = np.eye(NUM_JOINTS)
    partitions[1, child, parent] = 1
    partitions[2, parent, child] = 1
    if normalisation == "neighbourhood":
        partitions /= partitions.sum(axis=(0, 2))[None, :, None]
    else:
        row_sums = partitions.sum(axis=2, keepdims=True)
        partitions = np.divide(partitions, row_sums, out=np.zeros_like(partitions), where=row_sums > 0)
    return partitions.astype(np.float32)


def capped_spatial_partitions(hand_layout: str = "stgcn") -> np.ndarray:
    """The ST-GCN code's spatial partitions, (3, 25, 25) float32 in this module's convention (rows = outputs).

    What yysijie/st-gcn's `Graph(layout="ntu-rgb+d", strategy="spatial")`
    (net/utils/graph.py) builds, transposed to rows = output joints and in its
    order: 0 the root (i itself); 1 the neighbours as far from the centre
    (spine shoulder) as i or farther; 2 those nearer. The code measures the
    distance to the centre with hops capped at `max_hop` = 1, so every joint two
    or more hops away sits at "infinity" and ties with its parent, which lands
    in partition 1 beside its children. Every entry of output row i is divided
    by the size of i's 1-hop neighbourhood, itself included.
    """
    hops = hop_distance(hand_layout).astype(np.float64)
    hops[hops > 1] = np.inf  # the code's max_hop = 1
    to_centre = hops[:, ROOT_JOINT]
    near = hops == 1  # (out i, in j) pairs one hop apart
    out_far, in_far = to_centre[:, None], to_centre[None, :]
    partitions = np.stack([np.eye(NUM_JOINTS), near & (in_far >= out_far), near & (in_far < out_far)])
    return (partitions / (1 + near.sum(axis=1))[None, :, None]).astype(np.float32)
