"""ST-GCN and ST-TR: sizes against the reference code, and the operators against their definitions.

The registry-wide checks (shapes, gradients, determinism) live in test_models.py.
"""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import star.models as registry
from baselines.stgcn import GraphConvolution, InputNorm
from baselines.sttr import SpatialSelfAttention, STTRConfig, STTRStream, TemporalSelfAttention, attend
from star import skeleton
from star.recipe import TrainingRecipe

# Trainable parameters of the public reference code at 3 input channels (yysijie/st-gcn;
# Chiaraplizz/ST-TR at standard widths), and its per-sample GMACs at 300 frames x 2 persons.
STGCN_PARAMETERS = {60: 3_098_832, 120: 3_114_252}
STGCN_CONV_GMACS = 16.229
STTR_REFERENCE = {"st-tr-s": (3_075_338, 16.573), "st-tr-t": (1_768_870, 11.512)}
# The ST-TR code also builds a BatchNorm over 256 channels (`person_bn`) that its forward never uses.
UNUSED_REFERENCE_PARAMETERS = 2 * 256


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("classes", [60, 120])
def test_st_gcn_has_the_reference_parameter_count(classes):
    assert parameter_count(registry.build("st-gcn", classes)) == STGCN_PARAMETERS[classes]


@pytest.mark.parametrize("name", sorted(STTR_REFERENCE))
def test_st_tr_streams_have_the_reference_size(name):
    reference_parameters, _ = STTR_REFERENCE[name]
    parameters = parameter_count(registry.build(name))
    assert parameters == reference_parameters - UNUSED_REFERENCE_PARAMETERS
    assert abs(parameters / reference_parameters - 1) < 0.05


def test_two_stream_st_tr_is_both_streams():
    streams = [parameter_count(registry.build(name)) for name in ("st-tr-s", "st-tr-t")]
    assert parameter_count(registry.build("st-tr")) == sum(streams)


def _one_padded_sample_macs(name: str) -> dict:
    model = registry.build(name).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.randn(1, 3, 300, 25, 2))
    return {str(op): flops / 2 for op, flops in counter.get_flop_counts()["Global"].items()}


def test_st_gcn_convolutions_cost_the_papers_16_gmacs_per_sample():
    macs = _one_padded_sample_macs("st-gcn")
    assert macs["aten.convolution"] / 1e9 == pytest.approx(STGCN_CONV_GMACS, abs=0.001)


@pytest.mark.parametrize("name", sorted(STTR_REFERENCE))
def test_st_tr_streams_cost_what_the_reference_costs(name):
    # The reference figure counts convolutions, matrix products and BatchNorm (about 0.06 GMACs, not counted here).
    gmacs = sum(_one_padded_sample_macs(name).values()) / 1e9
    assert gmacs == pytest.approx(STTR_REFERENCE[name][1], rel=0.05)


def test_graph_convolution_is_the_partitioned_sum():
    torch.manual_seed(0)
    partitions = torch.from_numpy(skeleton.spatial_partitions("stgcn"))
    layer = GraphConvolution(4, 5, partitions)
    with torch.no_grad():
        layer.edge_importance.uniform_(0.5, 1.5)
    x = torch.randn(2, 4, 3, 25)
    weight = layer.conv.weight[:, :, 0, 0].reshape(3, 5, 4)  # (K, C_out, C_in)
    bias = layer.conv.bias.reshape(3, 5)
    adjacency = partitions * layer.edge_importance  # (K, V, V)
    # y[n, :, t, i] = sum_k sum_j A_k[i, j] (W_k x[n, :, t, j] + b_k)
    transformed = torch.einsum("koc,nctj->nkotj", weight, x) + bias[None, :, :, None, None]
    expected = torch.einsum("kij,nkotj->noti", adjacency, transformed)
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("per_person", [False, True])
def test_input_norm_standardises_each_feature_over_the_right_samples(per_person):
    torch.manual_seed(0)
    norm = InputNorm(channels=3, persons=2, per_person=per_person).train()
    x = torch.randn(4, 3, 10, 25, 2) * torch.arange(1.0, 3.0)  # the second person spreads twice as wide
    y = norm(x).reshape(4, 2, 3, 10, 25)  # (N, M, C, T, V)
    per_feature = (0, 3) if per_person else (0, 1, 3)
    # Each normalised feature has mean 0 and variance 1 over the samples that shared its statistics.
    torch.testing.assert_close(y.mean(dim=per_feature), torch.zeros_like(y.mean(dim=per_feature)), atol=1e-5, rtol=0)
    variance = y.var(dim=per_feature, unbiased=False)
    torch.testing.assert_close(variance, torch.ones_like(variance), atol=1e-3, rtol=0)


def test_attention_without_drop_connect_is_softmax_attention():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 7, 4), torch.randn(3, 2, 7, 4), torch.randn(3, 2, 7, 5)
    expected = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
    torch.testing.assert_close(attend(q, k, v, drop_connect=0.5, training=False), expected)


def test_drop_connect_renormalises_over_the_keys_left():
    torch.manual_seed(0)
    q, k, v = torch.randn(6, 2, 9, 4), torch.randn(6, 2, 9, 4), torch.randn(6, 2, 9, 5)
    torch.manual_seed(1)
    out = attend(q, k, v, drop_connect=0.5, training=True)
    torch.manual_seed(1)
    keep = torch.rand(6, 2, 1, 9) >= 0.5
    assert 0 < keep.sum() < keep.numel()
    # Softmax over the kept keys only; a row that loses every key gives zeros.
    logits = (q @ k.transpose(-1, -2)).masked_fill(~keep, float("-inf"))
    expected = torch.nan_to_num(torch.softmax(logits, dim=-1)) @ v
    torch.testing.assert_close(out, expected)


def test_spatial_attention_mixes_joints_within_a_frame_only():
    torch.manual_seed(0)
    block = SpatialSelfAttention(16, 16, heads=8, key_fraction=0.5, drop_connect=0.5).eval()
    x = torch.randn(2, 16, 6, 25)
    changed = x.clone()
    changed[:, :, 3, 10] += 5.0  # one joint of frame 3
    with torch.no_grad():
        difference = (block(changed) - block(x)).abs().amax(dim=(0, 1))  # (T, V)
    assert (difference[3] > 0).sum() > 1  # the change reached other joints of its frame
    assert difference[[0, 1, 2, 4, 5]].max() == 0


@pytest.mark.parametrize("stride, frames", [(1, 8), (2, 8), (2, 9)])
def test_temporal_attention_mixes_frames_of_one_joint_only(stride, frames):
    torch.manual_seed(0)
    block = TemporalSelfAttention(16, stride=stride, heads=8, key_fraction=0.5, drop_connect=0.5).eval()
    x = torch.randn(2, 16, frames, 25)
    changed = x.clone()
    changed[:, :, 0, 4] += 5.0  # joint 4 in the first frame
    with torch.no_grad():
        before, after = block(x), block(changed)
    assert after.shape == (2, 16, -(-frames // stride), 25)
    difference = (after - before).abs().amax(dim=(0, 1))  # (T', V)
    assert (difference[:, 4] > 0).all()  # every output frame of joint 4 saw the change
    assert torch.cat([difference[:, :4], difference[:, 5:]], dim=1).max() == 0


@pytest.mark.parametrize("name", ["st-gcn", "st-tr"])
def test_baselines_take_any_clip_length(name):
    model = registry.build(name, num_classes=5).eval()
    with torch.no_grad():
        for frames in (1, 7, 33):
            assert torch.isfinite(model(torch.randn(2, 3, frames, 25, 2))).all()


def test_baseline_recipes_are_their_papers_schedules():
    sgd = dict(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4, schedule="step", gamma=0.1)
    stgcn = TrainingRecipe(**sgd, milestones=(10, 50), epochs=80, batch_size=64)
    assert registry.spec("st-gcn").recipes["default"] == stgcn
    for name in ("st-tr", "st-tr-s", "st-tr-t"):
        sttr = registry.spec(name).recipes["default"]
        assert sttr == TrainingRecipe(**sgd, milestones=(60, 90), epochs=120, batch_size=sttr.batch_size)


def test_baselines_use_the_chained_hand_layout_of_their_reference_code():
    for name in ("st-gcn", "st-tr-s"):
        model = registry.build(name)
        graph = next(m for m in model.modules() if isinstance(m, GraphConvolution))
        # Chained layout: the left hand tip (21) hangs off the thumb (22), not the hand (7).
        assert graph.partitions[1, 21, 22] > 0 and graph.partitions[1, 21, 7] == 0


def test_unknown_stream_is_refused():
    with pytest.raises(ValueError, match="unknown ST-TR stream 'depth'"):
        STTRStream(STTRConfig(), "depth")
