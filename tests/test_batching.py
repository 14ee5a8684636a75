import numpy as np
import pytest
import torch

from star.data.batching import (
    ClipBatchSampler,
    ClipDataset,
    ClipSample,
    PaddedCollate,
    ShardedBatchSampler,
    clip_loader,
    collate_compact,
    pad_clip,
)
from star.network.segments import ClipSegments


@pytest.fixture(scope="module")
def dataset(tiny_store):
    return ClipDataset(tiny_store, tiny_store.split("ntu60/xsub", "train"))


def test_compact_batch_concatenates_clips_with_their_ids_and_positions(tiny_store, dataset):
    picks = [0, 5, 17, 40]
    batch = collate_compact([dataset[i] for i in picks])
    assert batch.x.shape == (int(dataset.rows()[picks].sum()), 25, 3) and batch.x.dtype == torch.float32
    offsets = batch.clip_offsets.tolist()
    for b, item in enumerate(picks):
        clip = int(dataset.indices[item])
        rows = slice(offsets[b], offsets[b + 1])
        assert (batch.clip_ids[rows] == b).all()
        assert batch.labels[b] == tiny_store.clips["label"][clip]
        start = offsets[b]
        for track in tiny_store.clip_tracks(clip):
            span = slice(start, start + track["length"])
            np.testing.assert_array_equal(batch.x[span].numpy(), tiny_store.track_frames(track))
            assert (batch.person_ids[span] == track["person"]).all()
            assert batch.positions[span].tolist() == list(range(track["first_frame"],
                                                                 track["first_frame"] + track["length"]))
            start += track["length"]
        assert start == offsets[b + 1]


@pytest.mark.parametrize("fill", ["zero", "repeat"])
def test_padded_batch_puts_frames_where_stgcn_expects_them(tiny_store, dataset, fill):
    two_person = next(i for i in range(len(dataset)) if tiny_store.clips["persons"][dataset.indices[i]] == 2)
    late = next(i for i in range(len(dataset)) if tiny_store.clip_tracks(dataset.indices[i])["first_frame"].any())
    picks = [0, two_person, late]
    batch = PaddedCollate(fill=fill)([dataset[i] for i in picks])
    assert batch.x.shape == (3, 3, 300, 25, 2)
    for b, item in enumerate(picks):
        clip = int(dataset.indices[item])
        frames = tiny_store.clips["frames"][clip]
        assert frames < 300
        # Reference: x[b, c, t, v, m] is coordinate c of joint v of person m at frame t.
        expected = np.zeros((3, 300, 25, 2), np.float32)
        for track in tiny_store.clip_tracks(clip):
            t = slice(track["first_frame"], track["first_frame"] + track["length"])
            expected[:, t, :, track["person"]] = tiny_store.track_frames(track).transpose(2, 0, 1)
        if fill == "repeat":
            expected = expected[:, np.arange(300) % frames]
        np.testing.assert_array_equal(batch.x[b].numpy(), expected)


def _sample(frames, persons=1, first_frame=0):
    rng = np.random.default_rng(frames)
    xyz, person_ids, positions = [], [], []
    for person in range(persons):
        start = first_frame if person else 0
        xyz.append(rng.normal(size=(frames - start, 25, 3)).astype(np.float32))
        person_ids.append(np.full(frames - start, person))
        positions.append(np.arange(start, frames))
    return ClipSample(np.concatenate(xyz), np.concatenate(person_ids), np.concatenate(positions), frames, 3)


def test_repeat_fill_tiles_the_clip_and_zero_fill_pads_zeros():
    sample = _sample(70, persons=2, first_frame=4)
    repeated, zeros = pad_clip(sample, fill="repeat"), pad_clip(sample, fill="zero")
    np.testing.assert_array_equal(repeated[:, :70], zeros[:, :70])
    np.testing.assert_array_equal(repeated[:, 70:140], repeated[:, :70])
    np.testing.assert_array_equal(repeated[:, 280:300], repeated[:, :20])
    assert not zeros[:, 70:].any()
    assert not repeated[:, :4, :, 1].any() and not repeated[:, 70:74, :, 1].any()  # late second person
    assert repeated[:, 4, :, 1].any()


def test_long_clips_are_cut_and_single_persons_get_a_zero_second_person():
    sample = _sample(350)
    padded = pad_clip(sample)
    assert padded.shape == (3, 300, 25, 2)
    np.testing.assert_array_equal(padded[..., 0], sample.xyz[:300].transpose(2, 0, 1))
    assert not padded[..., 1].any()


def test_unknown_fill_is_refused():
    with pytest.raises(ValueError, match="unknown fill 'edge'"):
        PaddedCollate(fill="edge")


@pytest.mark.parametrize("group", [False, True])
def test_sampler_covers_every_clip_once_and_reshuffles_by_epoch(group):
    lengths = np.random.default_rng(0).integers(30, 600, size=203)
    sampler = ClipBatchSampler(lengths, 16, seed=3, group_by_length=group, pool_batches=4)
    epoch0 = list(sampler)
    assert sorted(i for batch in epoch0 for i in batch) == list(range(203))
    assert len(epoch0) == len(sampler) == 13
    assert list(sampler) == epoch0
    sampler.set_epoch(1)
    assert list(sampler) != epoch0
    assert list(ClipBatchSampler(lengths, 16, seed=3, group_by_length=group, pool_batches=4)) == epoch0


def test_grouping_by_length_makes_batches_of_similar_length():
    lengths = np.random.default_rng(0).integers(30, 600, size=640)
    spread = {}
    for group in (False, True):
        batches = list(ClipBatchSampler(lengths, 16, seed=0, group_by_length=group))
        spread[group] = np.mean([np.ptp(lengths[b]) for b in batches])
    assert spread[True] < spread[False] / 5


def test_drop_last_and_no_shuffle():
    sampler = ClipBatchSampler(np.ones(10), 4, shuffle=False, drop_last=True)
    assert list(sampler) == [[0, 1, 2, 3], [4, 5, 6, 7]] and len(sampler) == 2


@pytest.mark.parametrize("layout", ["compact", "padded"])
def test_worker_processes_load_the_same_batches(tiny_store, layout):
    indices = tiny_store.split("ntu120/xset", "test")
    batches = [list(clip_loader(tiny_store, indices, layout, 8, shuffle=True, seed=1, workers=workers))
               for workers in (0, 2)]
    assert len(batches[0]) == len(batches[1]) == -(-len(indices) // 8)
    for one, other in zip(*batches, strict=True):
        assert torch.equal(one.x, other.x) and torch.equal(one.labels, other.labels)


def test_batches_move_as_a_whole(tiny_store, dataset):
    for batch in (collate_compact([dataset[0], dataset[1]]), PaddedCollate()([dataset[0], dataset[1]])):
        moved = batch.to("meta")
        assert type(moved) is type(batch) and moved.num_clips == 2
        for name, value in vars(batch).items():
            if isinstance(value, torch.Tensor):
                assert getattr(moved, name).device.type == "meta" and getattr(moved, name).shape == value.shape
            else:  # host facts stay on the host
                assert getattr(moved, name) == value
    compact = collate_compact([dataset[0], dataset[1]])
    assert compact.bounds == tuple(compact.clip_offsets.tolist())
    derived = ClipSegments.from_offsets(compact.clip_offsets, len(compact.x))  # the device-side derivation
    assert torch.equal(compact.steps, derived.steps) and torch.equal(compact.clip_ids, derived.clip_ids)
    assert compact.steps[compact.bounds[1]] == 0 and compact.steps[compact.bounds[1] - 1] == compact.bounds[1] - 1


@pytest.mark.parametrize("world,accumulate", [(1, 1), (1, 3), (2, 1), (3, 2)])
def test_shards_and_micro_batches_make_up_each_batch_again(world, accumulate):
    batches = ClipBatchSampler(np.ones(23), 5, seed=4)
    shards = [ShardedBatchSampler(batches, rank, world, accumulate, drop_short=True) for rank in range(world)]
    plans = [shard.steps() for shard in shards]
    kept = [batch for batch in batches.batches() if len(batch) >= world]  # the last batch has 3 clips
    assert [len(plan) for plan in plans] == [len(kept)] * world
    for step, batch in enumerate(kept):
        parts = [part for plan in plans for part in plan[step][0]]
        assert sorted(sum(parts, [])) == sorted(batch.tolist())
        assert all(len(plan[step][0]) <= accumulate and plan[step][1] == len(batch) for plan in plans)
    assert list(shards[0]) == [part for parts, _ in plans[0] for part in parts]
    assert len(shards[0]) == sum(len(parts) for parts, _ in plans[0])


def test_evaluation_shards_keep_every_clip_and_skip_empty_shares():
    batches = ClipBatchSampler(np.ones(7), 3, shuffle=False)
    shares = [list(ShardedBatchSampler(batches, rank, 4)) for rank in range(4)]
    assert sorted(sum(sum(shares, []), [])) == list(range(7))
    assert shares[0] == [[0], [3], [6]]
    assert shares[3] == []  # batches of three clips leave the fourth process nothing
