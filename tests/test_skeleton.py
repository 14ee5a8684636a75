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
