"""Importing the preprocessed forms users hold (pyskl pickles, CTR-GCN arrays): exact round trips from a store
made from raw files, the source's splits kept, and every kind of bad input refused with nothing written."""

import pickle

import numpy as np
import pytest

from star.data.importing import SourceError
from star.data.padded_arrays import import_npz, npz_arrays, write_npz, write_npz_files
from star.data.pyskl import import_pyskl, pyskl_content, write_pyskl, write_pyskl_files
from star.data.splits import BENCHMARKS
from star.data.store import CompactStore, StoreError


def assert_same_clips(store, clips, original, original_clips, dtype=np.float32):
    """Clip `clips[k]` of `store` holds exactly what clip `original_clips[k]` of `original` holds."""
    assert len(clips) == len(original_clips)
    for clip, source in zip(clips, original_clips, strict=True):
        row, expected = store.clips[clip], original.clips[source]
        assert (row["label"], row["frames"], row["persons"]) == (expected["label"], expected["frames"],
                                                                 expected["persons"])
        for track, original_track in zip(store.clip_tracks(clip), original.clip_tracks(source), strict=True):
            assert (track["person"], track["first_frame"]) == (original_track["person"], original_track["first_frame"])
            expected_xyz = original.track_frames(original_track).astype(dtype).astype(np.float32)
            np.testing.assert_array_equal(store.track_frames(track), expected_xyz)


def test_raw_to_pyskl_to_store_gives_the_same_clips_and_splits(tiny_store, tmp_path):
    paths = write_pyskl_files(tiny_store, tmp_path / "pyskl")
    import_pyskl(paths, tmp_path / "store", progress=False)
    store = CompactStore(tmp_path / "store")
    for field in ("name", "label", "setup", "camera", "subject", "replication", "frames", "persons"):
        np.testing.assert_array_equal(store.clips[field], tiny_store.clips[field])
    assert_same_clips(store, range(len(store)), tiny_store, range(len(tiny_store)))
    for benchmark in BENCHMARKS:
        for side in ("train", "test"):
            np.testing.assert_array_equal(store.split(benchmark, side), tiny_store.split(benchmark, side))
    manifest = store.manifest
    assert manifest["source_format"] == "pyskl" and manifest["benchmarks"] == tiny_store.manifest["benchmarks"]
    assert [f["path"] for f in manifest["source_files"]] == [str(p) for p in paths]
    assert all(len(f["sha256"]) == 64 and f["bytes"] == p.stat().st_size
               for f, p in zip(manifest["source_files"], paths, strict=True))
    import_pyskl(paths[::-1], tmp_path / "reversed", progress=False)  # the same data, named in another order
    assert CompactStore(tmp_path / "reversed").manifest["content_sha256"] == manifest["content_sha256"]


def test_the_source_split_lists_decide_membership_and_float16_is_read(tiny_store, tmp_path):
    content = pyskl_content(tiny_store, "ntu60", dtype=np.float16)  # pyskl's own files hold float16
    moved = content["split"]["xsub_val"].pop()  # a test clip the official rule would not put in training
    content["split"]["xsub_train"].append(moved)
    path = tmp_path / "ntu60_3danno.pkl"
    path.write_bytes(pickle.dumps(content))
    import_pyskl([path], tmp_path / "store", progress=False)
    store = CompactStore(tmp_path / "store")
    assert moved in set(store.clips["name"][store.split("ntu60/xsub", "train")])
    assert len(store.split("ntu60/xsub", "test")) == len(tiny_store.split("ntu60/xsub", "test")) - 1
    names = list(tiny_store.clips["name"])
    assert_same_clips(store, range(len(store)), tiny_store, [names.index(n) for n in store.clips["name"]],
                      dtype=np.float16)
    with pytest.raises(StoreError, match="splits only ntu60/xsub, ntu60/xview, so it cannot serve ntu120/xset"):
        store.split("ntu120/xset", "train")


@pytest.mark.parametrize("layout", ["ctr-gcn", "agcn"])
def test_raw_to_npz_to_store_keeps_each_array_as_its_side(tiny_store, tmp_path, layout):
    arrays = npz_arrays(tiny_store, "ntu60/xview")
    if layout == "agcn":  # (clips, frames, 150) -> (clips, 3, frames, 25, persons)
        for key in ("x_train", "x_test"):
            x = arrays[key]
            arrays[key] = x.reshape(len(x), x.shape[1], 2, 25, 3).transpose(0, 4, 1, 3, 2)
        arrays["y_train"], arrays["y_test"] = arrays["y_train"].argmax(1), arrays["y_test"].argmax(1)
    path = tmp_path / "xview.npz"
    np.savez(path, **arrays)
    import_npz([path], tmp_path / "store", benchmark="ntu60/xview", progress=False)
    store = CompactStore(tmp_path / "store")
    for side in ("train", "test"):
        assert_same_clips(store, store.split("ntu60/xview", side), tiny_store, tiny_store.split("ntu60/xview", side))
    assert store.clips["name"][0] == "0:x_train[0]" and store.clips["subject"].max() == 0
    assert store.manifest["benchmarks"] == {"ntu60/xview": tiny_store.manifest["benchmarks"]["ntu60/xview"]}
    in_benchmark = np.concatenate([tiny_store.split("ntu60/xview", side) for side in ("train", "test")])
    assert store.manifest["summary"]["empty_persons"] == (tiny_store.clips["persons"][in_benchmark] == 1).sum()


def contents(store, clips) -> list[bytes]:
    """What each clip holds (label, persons' starts and coordinates), sorted: clips compared without names."""
    keys = []
    for clip in clips:
        parts = [np.int64(store.clips["label"][clip]).tobytes()]
        for track in store.clip_tracks(clip):
            parts += [np.int64(track["first_frame"]).tobytes(), store.track_frames(track).tobytes()]
        keys.append(b"".join(parts))
    return sorted(keys)


def test_ctr_gcns_four_files_make_one_store_with_each_clip_once(tiny_store, tmp_path):
    paths = write_npz_files(tiny_store, tmp_path / "npz")
    summary = import_npz(paths, tmp_path / "store", progress=False)
    store = CompactStore(tmp_path / "store")
    assert len(store) == summary.clips == len(tiny_store)  # every tiny clip is in one benchmark at least
    assert summary.repeated_clips == sum(len(tiny_store.split(b, side)) for b in BENCHMARKS
                                         for side in ("train", "test")) - len(tiny_store)
    assert contents(store, range(len(store))) == contents(tiny_store, range(len(tiny_store)))
    for benchmark in BENCHMARKS:
        for side in ("train", "test"):
            imported, original = store.split(benchmark, side), tiny_store.split(benchmark, side)
            assert contents(store, imported) == contents(tiny_store, original)
    assert store.manifest["benchmarks"] == tiny_store.manifest["benchmarks"]
    with pytest.raises(SourceError, match=rf"{paths[0]}: splits ntu60/xsub, as {paths[0]} does"):
        import_npz([paths[0], paths[0]], tmp_path / "again", progress=False)


def test_compressed_npz_and_ctr_gcn_file_names(tiny_store, tmp_path):
    path = tmp_path / "NTU60_CS.npz"
    np.savez_compressed(path, **npz_arrays(tiny_store, "ntu60/xsub"))
    import_npz([path], tmp_path / "store", progress=False)
    store = CompactStore(tmp_path / "store")
    assert_same_clips(store, store.split("ntu60/xsub", "test"), tiny_store, tiny_store.split("ntu60/xsub", "test"))


def _pyskl(tiny_store, change):
    content = pyskl_content(tiny_store, "ntu60")
    change(content)
    return content


PYSKL_CASES = {
    "no split and annotations": (lambda c: c.clear() or c.update(x=1), "keys 'split' and 'annotations'"),
    "annotation without keypoint": (lambda c: c["annotations"][3].pop("keypoint"), r"annotations\[3\]: expected"),
    "keypoint of 24 joints": (lambda c: c["annotations"][4].update(keypoint=np.zeros((1, 5, 24, 3), np.float32)),
                              r"annotations\[4\] \(S\d+C\d+P\d+R\d+A\d+\) keypoint: shape \(1, 5, 24, 3\)"),
    "integer keypoint": (lambda c: c["annotations"][5].update(keypoint=c["annotations"][5]["keypoint"].astype(int)),
                         r"annotations\[5\] .* dtype int64"),
    "label outside the classes": (lambda c: c["annotations"][6].update(label=60),
                                  r"annotations\[6\] .*label 60 outside 0-59"),
    "label against its name": (lambda c: c["annotations"][7].update(label=2),
                               r"annotations\[7\] .*label 2 but the name"),
    "a name that does not parse": (lambda c: c["annotations"][8].update(frame_dir="clip_8"),
                                   r"annotations\[8\]: frame_dir 'clip_8' is not an NTU sample name"),
    "total_frames against keypoint": (lambda c: c["annotations"][9].update(total_frames=1),
                                      r"annotations\[9\] .*total_frames 1"),
    "no one ever seen": (lambda c: c["annotations"][10]["keypoint"].fill(0),
                         r"annotations\[10\] \(S\d+C\d+P\d+R\d+A\d+\): every coordinate is zero"),
    "a split list of numbers": (lambda c: c["split"].update(xsub_train=[1, 2]),
                                r"split\['xsub_train'\]: expected a list"),
    "NaN coordinates": (lambda c: c["annotations"][11]["keypoint"].fill(np.nan), r"annotations\[11\] .*NaN"),
    "a listed name without annotation": (lambda c: c["split"]["xsub_val"].append("S001C001P001R001A099"),
                                         r"split\['xsub_val'\]\[\d+\]: 'S001C001P001R001A099' has no annotation"),
    "a name on both sides": (lambda c: c["split"]["xview_val"].append(c["split"]["xview_train"][0]),
                             r"split\['xview_val'\]\[\d+\]: .* is on both sides of ntu60/xview"),
}


@pytest.mark.parametrize("case", PYSKL_CASES)
def test_bad_pyskl_input_is_refused_naming_file_and_place_and_nothing_is_written(tiny_store, tmp_path, case):
    change, message = PYSKL_CASES[case]
    path = tmp_path / "ntu60_3danno.pkl"
    path.write_bytes(pickle.dumps(_pyskl(tiny_store, change)))
    with pytest.raises(SourceError, match=message) as error:
        import_pyskl([path], tmp_path / "store", progress=False)
    assert str(error.value).startswith(str(path))
    assert list(tmp_path.iterdir()) == [path]


def test_an_ntu120_pickle_with_xsub_lists_alone_is_ntu120_and_one_benchmark_comes_from_one_pickle(tiny_store,
                                                                                                 tmp_path):
    content = pyskl_content(tiny_store, "ntu120")
    del content["split"]["xset_train"], content["split"]["xset_val"]
    path = tmp_path / "xsub.pkl"
    path.write_bytes(pickle.dumps(content))
    import_pyskl([path], tmp_path / "store", progress=False)
    store = CompactStore(tmp_path / "store")
    np.testing.assert_array_equal(store.split("ntu120/xsub", "test"), tiny_store.split("ntu120/xsub", "test"))
    other = write_pyskl(tiny_store, tmp_path / "ntu120_3danno.pkl", "ntu120")
    with pytest.raises(SourceError, match=rf"{other}: split\['xsub_train'\]: ntu120/xsub is split by {path} too"):
        import_pyskl([path, other], tmp_path / "both", progress=False)


def test_a_clip_that_differs_between_two_pickles_is_refused(tiny_store, tmp_path):
    first = write_pyskl(tiny_store, tmp_path / "a.pkl", "ntu60")
    content = pyskl_content(tiny_store, "ntu120")
    content["annotations"][0]["keypoint"][0, 0, 0, 0] += 1
    second = tmp_path / "b.pkl"
    second.write_bytes(pickle.dumps(content))
    with pytest.raises(SourceError, match=rf"{second}: annotations\[0\]: .* differs from its annotation in {first}"):
        import_pyskl([first, second], tmp_path / "store", progress=False)
    assert not (tmp_path / "store").exists()


def _npz_change(key, value):
    return lambda arrays: arrays.update({key: value(arrays[key])})


NPZ_CASES = {
    "x and y lengths differ": (_npz_change("y_test", lambda y: y[:-1]), "y_test has 35 labels but its x array has 36"),
    "a missing key": (lambda arrays: arrays.pop("x_test"), "key 'x_test' missing"),
    "x of the wrong shape": (_npz_change("x_train", lambda x: x[:, :, :149]), r"x_train: shape \(108, 300, 149\)"),
    "a one-hot row with two classes": (_npz_change("y_train", lambda y: y + np.eye(len(y), y.shape[1])[::-1]),
                                       r"y_train\[\d+\]: a one-hot row with 2 positive"),
    "a label outside the classes": (_npz_change("y_train", lambda y: y.argmax(1) + 59), r"y_train\[\d+\]: label 6\d"),
    "NaN coordinates": (_npz_change("x_test", lambda x: np.where(np.arange(len(x))[:, None, None] == 7, np.nan, x)),
                        r"x_test\[7\]: holds NaN"),
}


@pytest.mark.parametrize("case", NPZ_CASES)
def test_bad_npz_input_is_refused_naming_file_and_key_and_nothing_is_written(tiny_store, tmp_path, case):
    change, message = NPZ_CASES[case]
    arrays = npz_arrays(tiny_store, "ntu60/xsub")
    change(arrays)
    path = tmp_path / "NTU60_CS.npz"
    np.savez(path, **arrays)
    with pytest.raises(SourceError, match=message) as error:
        import_npz([path], tmp_path / "store", progress=False)
    assert str(error.value).startswith(str(path))
    assert list(tmp_path.iterdir()) == [path]


def test_an_npz_whose_name_does_not_say_the_benchmark_needs_it_given(tiny_store, tmp_path):
    path = write_npz(tiny_store, tmp_path / "mine.npz", "ntu60/xsub")
    with pytest.raises(SourceError, match="which benchmark.*--benchmark"):
        import_npz([path], tmp_path / "store", progress=False)
    path.write_bytes(b"not a zip")
    with pytest.raises(SourceError, match="not a readable .npz"):
        import_npz([path], tmp_path / "store", benchmark="ntu60/xsub", progress=False)
