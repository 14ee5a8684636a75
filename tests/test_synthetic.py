import hashlib
from dataclasses import replace

import numpy as np
import pytest

from star.data.splits import BENCHMARKS
from star.data.synthetic import MUTUAL_ACTIONS, TINY, generate, tiny_names


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
