import hashlib
from dataclasses import replace

import numpy as np
import pytest

from star.data.splits import BENCHMARKS
from star.data.synthetic import (
    MUTUAL_ACTIONS,
    NTU_LIKE,
    NTU_TWO_PERSON_SHARE,
    TINY,
    clip_rng,
    generate,
    ntu_like_clips,
    synthesize,
    tiny_names,
)
from star.errors import InputError


def _digest(folder):
    return hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in sorted(folder.iterdir()))).hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    spec = replace(TINY, clips_per_action=2)
    digests = []
    for folder, seed in (("a", 0), ("b", 0), ("c", 1)):
        generate(tmp_path / folder, replace(spec, seed=seed))
        digests.append(_digest(tmp_path / folder))
    assert digests[0] == digests[1] != digests[2]


def test_tiny_names_are_real_ntu_names_on_both_sides_of_every_benchmark(tiny_store):
    names = tiny_names(TINY)
    assert len(set(names)) == len(names) == 192
    assert all((n.setup <= 17) == (n.action <= 60) for n in names)
    clips = tiny_store.clips
    for name, benchmark in BENCHMARKS.items():
        in_set = set(clips["label"][benchmark.indices(clips, "train")])
        assert in_set == set(clips["label"][benchmark.indices(clips, "test")]), name
        assert len(in_set) == (6 if benchmark.dataset == "ntu60" else 8)


def test_tiny_set_has_the_features_preprocessing_must_handle(tiny_raw, tiny_store):
    clips = tiny_store.clips
    assert clips["frames"].min() >= 32 and clips["frames"].max() <= 300
    assert clips["frames"].max() - clips["frames"].min() > 150
    assert (clips["raw_bodies"] > clips["persons"]).sum() > 10  # spurious bodies and switched IDs
    late = tiny_store.tracks["first_frame"] > 0
    assert late.any()
    body_less = sum(1 for row in clips if int((tiny_raw / f"{row['name']}.skeleton").open().readline()) > row["frames"])
    assert body_less > 10
    assert set(clips["label"][clips["persons"] == 2] + 1) <= MUTUAL_ACTIONS


def _spread_features(store):
    """Per joint, the spread over time of its offset from the spine base, for both persons."""
    features = np.zeros((len(store), 2, 75))
    for clip in range(len(store)):
        for track in store.clip_tracks(clip):
            xyz = np.asarray(store.track_frames(track))
            features[clip, track["person"]] = (xyz - xyz[:, :1]).std(axis=0).ravel()
    return features.reshape(len(store), -1)


@pytest.mark.parametrize("benchmark_name", sorted(BENCHMARKS))
def test_classes_are_learnable_and_shuffled_labels_are_not(tiny_store, benchmark_name):
    """A nearest-centroid classifier on joint spreads: the classes differ, and not by an accident of the split."""
    features, labels = _spread_features(tiny_store), tiny_store.clips["label"]
    train, test = tiny_store.split(benchmark_name, "train"), tiny_store.split(benchmark_name, "test")
    scale = features[train].std(axis=0) + 1e-6
    accuracy = {}
    for shuffled in (False, True):
        train_labels = np.random.default_rng(0).permutation(labels[train]) if shuffled else labels[train]
        classes = np.unique(train_labels)
        centroids = np.stack([features[train][train_labels == c].mean(axis=0) for c in classes]) / scale
        distance = ((features[test][:, None] / scale - centroids) ** 2).sum(axis=-1)
        accuracy[shuffled] = (classes[distance.argmin(axis=1)] == labels[test]).mean()
    assert accuracy[False] >= 0.9
    assert accuracy[True] <= 0.5


def test_the_ntu_like_set_and_clips_have_ntu_like_lengths_and_persons():
    """The benchmarks' NTU-like clips (lengths around a median of 70, one clip in five two-person), drawn as
    files by the generator (bench_train) and as in-memory clips (bench_model), against the tiny set's
    log-uniform lengths (median about 98)."""
    def lengths(spec, names):  # the first performer's frames, whichever bodies carry them
        return [len({int(f) for body in synthesize(name, clip_rng(spec, index), spec)[1]
                     if body.role == "performer0" for f in body.frames}) for index, name in enumerate(names)]

    names = sorted(tiny_names(NTU_LIKE), key=str)
    ntu_like, log_uniform = lengths(NTU_LIKE, names), lengths(replace(NTU_LIKE, median_frames=None), names)
    assert 64 <= np.median(ntu_like) <= 76 and min(ntu_like) >= 32 and max(ntu_like) <= 300
    assert np.median(log_uniform) >= 90
    assert np.mean([name.action in MUTUAL_ACTIONS for name in names]) == pytest.approx(NTU_TWO_PERSON_SHARE)
    frames, persons = ntu_like_clips(2000, seed=0)
    assert 66 <= np.median(frames) <= 74 and min(frames) >= 32 and max(frames) <= 300
    assert 0.17 <= np.mean(np.array(persons) == 2) <= 0.23
    # the clips bench_model.py has timed since its first version (README figures compare across commits)
    assert ntu_like_clips(8, seed=0) == ([74, 65, 93, 73, 55, 82, 125, 107], [1, 1, 1, 2, 1, 2, 1, 2])
    with pytest.raises(InputError, match="median clip length 20 is outside the lengths 32-300"):
        replace(NTU_LIKE, median_frames=20)
