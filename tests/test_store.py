import hashlib
import json

import numpy as np
import pytest

from star.data.ntu import parse_name
from star.data.preprocess import Clip, Person, load_clip
from star.data.store import CompactStore, StoreError, StoreWriter


def test_store_round_trips_every_clip_exactly(tiny_raw, tiny_store):
    assert len(tiny_store) == 192
    for index, row in enumerate(tiny_store.clips):
        clip = load_clip(tiny_raw / f"{row['name']}.skeleton")
        name = clip.name
        assert (row["label"], row["setup"], row["camera"], row["subject"], row["replication"]) == (
            name.label, name.setup, name.camera, name.subject, name.replication)
        assert (row["frames"], row["persons"], row["raw_bodies"]) == (clip.frames, len(clip.persons), clip.raw_bodies)
        tracks = tiny_store.clip_tracks(index)
        assert tracks["person"].tolist() == list(range(len(clip.persons)))
        for track, person in zip(tracks, clip.persons, strict=True):
            assert track["first_frame"] == person.first_frame
            np.testing.assert_array_equal(tiny_store.track_frames(track), person.xyz)


def test_tracks_tile_the_frames_file_without_gaps(tiny_store):
    tracks = tiny_store.tracks
    assert tracks["offset"][0] == 0
    np.testing.assert_array_equal(tracks["offset"][1:], np.cumsum(tracks["length"])[:-1])
    assert tracks["length"].sum() == tiny_store.manifest["total_frames"] == len(tiny_store.frames)


def test_manifest_bytes_are_measured(tiny_store):
    manifest = tiny_store.manifest
    sizes = {path.name: path.stat().st_size for path in tiny_store.path.iterdir() if path.name != "manifest.json"}
    assert manifest["bytes"]["files"] == sizes
    assert manifest["bytes"]["compact"] == sum(sizes.values())
    assert manifest["bytes"]["frames"] == manifest["total_frames"] * 25 * 3 * 4
    # The padded layout: every clip as 300 frames x 2 persons x 25 joints x 3 float32.
    assert manifest["bytes"]["padded_300x2"] == len(tiny_store) * 180_000
    ratio = manifest["bytes"]["compact"] / manifest["bytes"]["padded_300x2"]
    assert manifest["bytes"]["compact_over_padded"] == pytest.approx(ratio)
    assert 0.05 < ratio < 0.5


def test_manifest_counts_both_sides_of_every_benchmark(tiny_store):
    counts = tiny_store.manifest["benchmarks"]
    assert set(counts) == {"ntu60/xsub", "ntu60/xview", "ntu120/xsub", "ntu120/xset"}
    for name, sides in counts.items():
        assert sides["train"] > 0 and sides["test"] > 0, name
        assert sides["train"] == len(tiny_store.split(name, "train"))
    assert counts["ntu60/xsub"]["train"] + counts["ntu60/xsub"]["test"] == 6 * 24
    assert counts["ntu120/xset"]["train"] + counts["ntu120/xset"]["test"] == 8 * 24


def _clip(frames, value=1.0):
    return Clip(parse_name("S001C001P001R001A001"), frames, [Person(0, np.full((frames, 25, 3), value, "<f4"))], 1)


def test_the_content_digest_is_that_of_the_data_and_changes_with_it(tmp_path):
    def store(name, value):
        with StoreWriter(tmp_path / name, source=[name]) as writer:
            writer.add(_clip(4, value))
        return CompactStore(tmp_path / name)

    first, again, other = store("first", 0.5), store("again", 0.5), store("other", 0.25)
    digest = hashlib.sha256(hashlib.sha256((first.path / "frames.f32").read_bytes()).digest())
    for name in ("clips.npy", "tracks.npy"):
        digest.update(name.encode() + (first.path / name).read_bytes())
    assert first.manifest["content_sha256"] == digest.hexdigest() == again.manifest["content_sha256"]
    assert other.manifest["content_sha256"] != digest.hexdigest()


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    out = tmp_path / "store"
    with pytest.raises(RuntimeError, match="interrupted"), StoreWriter(out, source=[]) as writer:
        writer.add(_clip(5))
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_rewriting_replaces_the_old_store_whole(tmp_path):
    out = tmp_path / "store"
    for frames in (5, 7):
        with StoreWriter(out, source=[]) as writer:
            writer.add(_clip(frames))
    assert CompactStore(out).manifest["total_frames"] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["store"]


def test_a_folder_that_is_not_a_store_is_never_replaced(tmp_path):
    precious = tmp_path / "mydata"
    (precious / "raw").mkdir(parents=True)
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(StoreError, match=rf"refusing to replace {precious}: it exists and is neither empty"):
        with StoreWriter(precious, source=[]) as writer:
            writer.add(_clip(5))
    assert sorted(p.name for p in precious.iterdir()) == ["notes.txt", "raw"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mydata"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with StoreWriter(empty, source=[]) as writer:
        writer.add(_clip(5))
    assert CompactStore(empty).manifest["clips"] == 1


def test_opening_something_else_says_how_to_make_a_store(tmp_path):
    with pytest.raises(StoreError, match=rf"{tmp_path} is not a data store.*star preprocess"):
        CompactStore(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(StoreError, match="format 'other'"):
        CompactStore(tmp_path)


def test_a_manifest_missing_a_key_is_refused_naming_it(tmp_path):
    with StoreWriter(tmp_path / "store", source=[]) as writer:
        writer.add(_clip(5))
    manifest_path = tmp_path / "store" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert CompactStore(tmp_path / "store").manifest == manifest
    del manifest["frames_shape"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=f"{manifest_path}: no key 'frames_shape'.*make the store again"):
        CompactStore(tmp_path / "store")


def test_an_ntu60_only_store_refuses_ntu120_benchmarks(tmp_path):
    out = tmp_path / "store"
    with StoreWriter(out, source=[]) as writer:
        writer.add(_clip(5))
    store = CompactStore(out)
    with pytest.raises(StoreError, match="holds only NTU 60 setups.*ntu120/xsub"):
        store.split("ntu120/xsub", "train")
    with pytest.raises(StoreError, match="no clip on the test side of ntu60/xsub"):
        store.split("ntu60/xsub", "test")
