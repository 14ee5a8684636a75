import numpy as np
import pytest

from star import skeleton


@pytest.mark.parametrize("layout", sorted(skeleton.HAND_LAYOUTS))
def test_bones_form_a_tree_spanning_all_joints(layout):
    bones = skeleton.bones(layout)
    assert bones.shape == (24, 2)
    assert len({tuple(sorted(b)) for b in bones.tolist()}) == 24
    # 24 distinct edges on 25 nodes form a tree exactly when every joint is reachable.
    assert skeleton.hop_distance(layout).max() < skeleton.NUM_JOINTS


def test_hand_layouts_differ_only_in_the_hand_tips():
    anatomical = {tuple(b) for b in skeleton.bones("anatomical").tolist()}
    chained = {tuple(b) for b in skeleton.bones("stgcn").tolist()}
    # 0-based: tip of left hand 21 hangs off the hand 7 or the thumb 22; likewise right 23 off 11 or 24.
    assert anatomical - chained == {(21, 7), (23, 11)}
    assert chained - anatomical == {(21, 22), (23, 24)}


@pytest.mark.parametrize("layout", sorted(skeleton.HAND_LAYOUTS))
@pytest.mark.parametrize("hops", [1, 2, 3])
def test_neighbourhood_is_the_support_of_the_adjacency_powers(layout, hops):
    a = skeleton.adjacency(layout)
    powers = sum(np.linalg.matrix_power(a, k) for k in range(hops + 1))
    np.testing.assert_array_equal(skeleton.neighbourhood_mask(hops, hand_layout=layout), powers > 0)
    without_self = skeleton.neighbourhood_mask(hops, include_self=False, hand_layout=layout)
    assert not without_self.diagonal().any()


def test_three_hop_edge_list_is_sorted_and_matches_the_mask():
    edges = skeleton.edge_index(3)
    mask = skeleton.neighbourhood_mask(3)
    assert edges.shape == (2, mask.sum())
    assert np.all(np.diff(edges[0]) >= 0)
    assert mask[edges[0], edges[1]].all()


def test_hand_worked_neighbourhoods():
    head, neck, spine_shoulder = 3, 2, 20
    assert set(np.flatnonzero(skeleton.neighbourhood_mask(1)[head])) == {head, neck}
    assert set(np.flatnonzero(skeleton.neighbourhood_mask(2)[head])) == {head, neck, spine_shoulder}
    # Three hops from the head reach the shoulders and the middle of the spine.
    assert set(np.flatnonzero(skeleton.neighbourhood_mask(3)[head])) == {head, neck, spine_shoulder, 1, 4, 8}


def test_unknown_hand_layout_is_refused():
    with pytest.raises(ValueError, match="unknown hand layout 'left'"):
        skeleton.bones("left")


@pytest.mark.parametrize("layout", sorted(skeleton.HAND_LAYOUTS))
def test_bones_form_a_tree_rooted_at_the_spine_shoulder(layout):
    child, parent = skeleton.bones(layout).T
    assert sorted(child.tolist()) == [j for j in range(25) if j != skeleton.ROOT_JOINT]
    parent_of = dict(zip(child.tolist(), parent.tolist(), strict=True))
    for joint in range(25):
        hops = 0
        while joint != skeleton.ROOT_JOINT:
            joint, hops = parent_of[joint], hops + 1
            assert hops < 25


def _partition_rows(partitions, joint):
    """Each partition's row for `joint` as {neighbour: weight}."""
    return [{int(j): round(float(row[j]), 4) for j in np.flatnonzero(row)} for row in partitions[:, joint]]


def test_hand_worked_spatial_partitions_for_st_gcn():
    partitions = skeleton.spatial_partitions("stgcn", "neighbourhood")
    spine_base, spine_mid, neck, head, spine_shoulder = 0, 1, 2, 3, 20
    # The spine shoulder is the centre: no centripetal neighbour, four centrifugal ones, 5 in its neighbourhood.
    assert _partition_rows(partitions, spine_shoulder) == [{20: 0.2}, {}, {spine_mid: 0.2, neck: 0.2, 4: 0.2, 8: 0.2}]
    # The spine base draws on the middle of the spine (towards the centre) and both hips (away from it).
    assert _partition_rows(partitions, spine_base) == [{0: 0.25}, {spine_mid: 0.25}, {12: 0.25, 16: 0.25}]
    assert _partition_rows(partitions, head) == [{head: 0.5}, {neck: 0.5}, {}]
    # Chained hands: the left hand's only child is its thumb (22), whose child is the hand tip (21).
    left_wrist, left_hand, left_hand_tip, left_thumb = 6, 7, 21, 22
    assert _partition_rows(partitions, left_hand) == [{7: 0.3333}, {left_wrist: 0.3333}, {left_thumb: 0.3333}]
    assert _partition_rows(partitions, left_thumb) == [{22: 0.3333}, {left_hand: 0.3333}, {left_hand_tip: 0.3333}]


def test_anatomical_hand_hangs_both_tips_off_the_hand():
    partitions = skeleton.spatial_partitions("anatomical", "neighbourhood")
    assert _partition_rows(partitions, 7) == [{7: 0.25}, {6: 0.25}, {21: 0.25, 22: 0.25}]


def test_subset_normalisation_averages_within_each_partition():
    partitions = skeleton.spatial_partitions("stgcn", "subset")
    assert _partition_rows(partitions, 0) == [{0: 1.0}, {1: 1.0}, {12: 0.5, 16: 0.5}]
    assert _partition_rows(partitions, 20) == [{20: 1.0}, {}, {1: 0.25, 2: 0.25, 4: 0.25, 8: 0.25}]


@pytest.mark.parametrize("layout", sorted(skeleton.HAND_LAYOUTS))
def test_partitions_split_the_normalised_one_hop_neighbourhood(layout):
    partitions = skeleton.spatial_partitions(layout, "neighbourhood")
    one_hop = skeleton.neighbourhood_mask(1, hand_layout=layout).astype(np.float32)
    np.testing.assert_allclose(partitions.sum(axis=0), one_hop / one_hop.sum(axis=1, keepdims=True), rtol=1e-6)
    # Disjoint subsets: one root per joint, one centripetal edge per bone, and as many centrifugal ones.
    assert ((partitions > 0).sum(axis=0) <= 1).all()
    assert [(p > 0).sum() for p in partitions] == [25, 24, 24]
    hops_to_centre = skeleton.hop_distance(layout)[:, skeleton.ROOT_JOINT]
    joint, neighbour = np.nonzero(partitions[1])
    assert (hops_to_centre[neighbour] == hops_to_centre[joint] - 1).all()


def test_unknown_partition_normalisation_is_refused():
    with pytest.raises(ValueError, match="unknown normalisation 'sym'"):
        skeleton.spatial_partitions("stgcn", "sym")
