"""ST-GCN and ST-TR: sizes against the reference code, and the operators against their definitions.

The registry-wide checks (shapes, gradients, determinism) live in test_models.py.
"""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from star import registry, skeleton
from star.recipe import TrainingRecipe
from star_baselines.stgcn import GraphConvolution, InputNorm
from star_baselines.sttr import SpatialSelfAttention, STTRConfig, STTRStream, TemporalSelfAttention, attend

# Measured on the public reference code at 3 input channels (yysijie/st-gcn; Chiaraplizz/ST-TR at
# standard widths): trainable parameters, and per-sample GMACs at 300 frames x 2 persons as fvcore
# counts them (convolutions, matrix products, BatchNorm) and as torch's FlopCounterMode does (no BatchNorm).
STGCN_PARAMETERS = {60: 3_098_832, 120: 3_114_252}
STGCN_CONV_GMACS = 16.229
STTR_REFERENCE = {"st-tr-s": (3_075_338, 16.573), "st-tr-t": (1_768_870, 11.512)}
STTR_REFERENCE_COUNTED_MACS = {"st-tr-s": 16_515_390_360, "st-tr-t": 11_446_845_360}
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
    assert parameter_count(registry.build(name)) == reference_parameters - UNUSED_REFERENCE_PARAMETERS


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
    macs = sum(_one_padded_sample_macs(name).values())
    assert macs == STTR_REFERENCE_COUNTED_MACS[name]
    # fvcore's figure also counts BatchNorm, about 0.06 GMACs
    assert macs / 1e9 == pytest.approx(STTR_REFERENCE[name][1], rel=0.05)


@pytest.mark.parametrize("aggregate_first", [False, True])
def test_graph_convolution_is_the_partitioned_sum(aggregate_first):
    torch.manual_seed(0)
    partitions = torch.from_numpy(skeleton.spatial_partitions("stgcn"))
    layer = GraphConvolution(4, 5, partitions, aggregate_first)
    with torch.no_grad():
        layer.edge_importance.uniform_(0.5, 1.5)
    x = torch.randn(2, 4, 3, 25)
    adjacency = partitions * layer.edge_importance  # (K, V, V)
    if aggregate_first:
        # ST-TR: y[n, :, t, i] = sum_k (W_k sum_j A_k[i, j] x[n, :, t, j] + b_k)
        weight = layer.conv.weight[:, :, 0, 0].reshape(5, 3, 4).transpose(0, 1)  # (K, C_out, C_in)
        aggregated = torch.einsum("kij,nctj->nkcti", adjacency, x)
        expected = torch.einsum("koc,nkcti->noti", weight, aggregated) + layer.bias.sum(0)[None, :, None, None]
    else:
        # ST-GCN: y[n, :, t, i] = sum_k sum_j A_k[i, j] (W_k x[n, :, t, j] + b_k)
        weight = layer.conv.weight[:, :, 0, 0].reshape(3, 5, 4)  # (K, C_out, C_in)
        bias = layer.conv.bias.reshape(3, 5)
        transformed = torch.einsum("koc,nctj->nkotj", weight, x) + bias[None, :, :, None, None]
        expected = torch.einsum("kij,nkotj->noti", adjacency, transformed)
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("persons", [None, 2])
def test_input_norm_standardises_each_coordinate_of_each_joint(persons):
    torch.manual_seed(0)
    norm = InputNorm(channels=3, persons=persons).train()
    x = torch.randn(4, 3, 10, 25, 2) * torch.arange(1.0, 3.0)  # the second person spreads twice as wide
    # Statistics per (channel, joint), and per person slot too when persons are separate.
    over = (0, 2) if persons else (0, 2, 4)
    mean, variance = x.mean(dim=over, keepdim=True), x.var(dim=over, unbiased=False, keepdim=True)
    expected = ((x - mean) / torch.sqrt(variance + norm.norm.eps)).permute(0, 4, 1, 2, 3)  # (N, M, C, T, V)
    torch.testing.assert_close(norm(x), expected.reshape(8, 3, 10, 25), atol=1e-5, rtol=1e-5)


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


def _normalised(block, x):
    """The block's input BatchNorm in evaluation mode, per (channel, joint), written out."""
    c, v = x.shape[1], x.shape[3]
    stats = [t.reshape(c, v)[None, :, None, :] for t in (block.input_norm.running_mean, block.input_norm.running_var,
                                                         block.input_norm.weight, block.input_norm.bias)]
    mean, variance, scale, shift = stats
    return (x - mean) / torch.sqrt(variance + block.input_norm.eps) * scale + shift


def _heads_attention(tokens, block):
    """Multi-head attention over tokens (L, C_in x s) written head by head: (L, d_v)."""
    weight = block.qkv.weight.permute(0, 2, 1, 3).reshape(block.qkv.out_channels, -1)  # (2 d_k + d_v, s x C_in)
    q, k, v = (tokens @ weight.T + block.qkv.bias).split([block.key_depth, block.key_depth, block.value_depth], 1)
    key_width, value_width = block.key_depth // block.heads, block.value_depth // block.heads
    heads = []
    for h in range(block.heads):
        keys, queries = (y[:, h * key_width:(h + 1) * key_width] for y in (k, q))
        weights = torch.softmax(queries @ keys.T / key_width ** 0.5, dim=-1)
        heads.append(weights @ v[:, h * value_width:(h + 1) * value_width])
    return torch.cat(heads, dim=1) @ block.out.weight[:, :, 0, 0].T + block.out.bias


def _with_random_statistics(block):
    for norm in (block.input_norm, block.norm):
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.uniform_(-0.5, 0.5)
    return block.eval()


@pytest.mark.parametrize("in_channels", [16, 8])
def test_spatial_attention_is_per_frame_multi_head_attention(in_channels):
    torch.manual_seed(0)
    block = _with_random_statistics(SpatialSelfAttention(in_channels, 16, heads=4, key_fraction=0.5, drop_connect=0.5))
    x = torch.randn(2, in_channels, 3, 25)
    normalised = _normalised(block, x)
    expected = torch.zeros(2, 16, 3, 25)
    for clip in range(2):
        for frame in range(3):
            expected[clip, :, frame] = _heads_attention(normalised[clip, :, frame].T, block).T  # joints attend
    if in_channels == 16:
        expected = expected + x  # the input comes back where the channel count allows
    with torch.no_grad():
        torch.testing.assert_close(block(x), torch.relu(block.norm(expected)))


@pytest.mark.parametrize("stride, frames", [(1, 6), (2, 6), (2, 7)])
def test_temporal_attention_is_per_joint_multi_head_attention(stride, frames):
    torch.manual_seed(0)
    block = _with_random_statistics(TemporalSelfAttention(16, stride, heads=4, key_fraction=0.5, drop_connect=0.5))
    x = torch.randn(2, 16, frames, 25)
    normalised = torch.nn.functional.pad(_normalised(block, x), (0, 0, 0, -frames % stride))  # zero frames appended
    tokens = -(-frames // stride)
    expected = torch.zeros(2, 16, tokens, 25)
    for clip in range(2):
        for joint in range(25):
            # each token is `stride` consecutive frames of one joint, frame-major
            sequence = normalised[clip, :, :, joint].T.reshape(tokens, stride * 16)  # (T', s x C)
            expected[clip, :, :, joint] = _heads_attention(sequence, block).T
    with torch.no_grad():
        torch.testing.assert_close(block(x), torch.relu(block.norm(expected + block.down(x))))


def test_st_tr_feeds_the_raw_coordinates_to_its_fourth_unit():
    model = registry.build("st-tr-s").eval()
    x = torch.randn(2, 3, 16, 25, 2)
    seen = []
    model.streams["spatial"].units[3].register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    with torch.no_grad():
        model(x)
    coordinates = x.permute(0, 4, 1, 2, 3).reshape(4, 3, 16, 25)  # (N*M, C, T, V), before the input BatchNorm
    assert seen[0].shape[1] == 64 + 3
    assert torch.equal(seen[0][:, 64:], coordinates)


@pytest.mark.parametrize("name", ["st-gcn", "st-tr"])
def test_baselines_take_any_clip_length(name):
    torch.manual_seed(0)
    model = registry.build(name, num_classes=5)
    for frames in (1, 7, 33):
        x = torch.randn(2, 3, frames, 25, 2)
        model.train()
        model(x).sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        model.zero_grad()
        with torch.no_grad():
            assert torch.isfinite(model.eval()(x)).all()


def test_baseline_recipes_are_their_papers_schedules():
    sgd = dict(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4, schedule="step", gamma=0.1)
    stgcn = TrainingRecipe(**sgd, milestones=(10, 50), epochs=80, batch_size=64)
    assert registry.spec("st-gcn").recipes["default"] == stgcn
    for name in ("st-tr", "st-tr-s", "st-tr-t"):
        sttr = registry.spec(name).recipes["default"]
        assert sttr == TrainingRecipe(**sgd, milestones=(60, 90), epochs=120, batch_size=32)


def test_baselines_use_the_chained_hand_layout_of_their_reference_code():
    for name in ("st-gcn", "st-tr-s"):
        model = registry.build(name)
        graph = next(m for m in model.modules() if isinstance(m, GraphConvolution))
        # Chained layout: the left hand tip (21) hangs off the thumb (22), not the hand (7).
        assert graph.partitions[1, 21, 22] > 0 and graph.partitions[1, 21, 7] == 0


def test_unknown_stream_is_refused():
    with pytest.raises(ValueError, match="unknown ST-TR stream 'depth'"):
        STTRStream(STTRConfig(), "depth")
