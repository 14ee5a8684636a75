import numpy as np
import pytest

from star.data.ntu import RawSkeleton, SkeletonFileError, parse_name
from star.data.preprocess import MIN_TRACK_FRAMES, find_raw_files, load_clip, preprocess, select_persons
from star.data.store import CompactStore
from star.data.synthetic import TINY, clip_rng, synthesize, tiny_names, write_skeleton


def _expected_persons(bodies):
    """The performers of a synthetic clip as the selection rule must keep them: [(first_frame, xyz)]."""
    performers = {}
    for body in bodies:
        if body.role.startswith("performer"):
            frames, xyz = performers.get(body.role, (np.zeros(0, int), np.zeros((0, 25, 3), np.float32)))
            performers[body.role] = (np.concatenate([frames, body.frames]), np.concatenate([xyz, body.xyz]))
    timeline = np.unique(np.concatenate([frames for frames, _ in performers.values()]))
    return len(timeline), [(int(np.searchsorted(timeline, frames.min())), xyz) for frames, xyz in performers.values()]


@pytest.mark.parametrize("index", range(192))
def test_selection_keeps_exactly_the_performers(tmp_path, index):
    """Flicker, furniture and ghosts go, a switched tracking ID is joined, a late second person starts late."""
    name = sorted(tiny_names(TINY), key=str)[index]
    frame_count, bodies = synthesize(name, clip_rng(TINY, index))
    clip = load_clip(write_skeleton(tmp_path / f"{name}.skeleton", frame_count, bodies))
    frames, expected = _expected_persons(bodies)
    assert clip.frames == frames
    assert len(clip.persons) == len(expected)
    for person in clip.persons:
        assert any(person.first_frame == first and np.array_equal(person.xyz, xyz) for first, xyz in expected)
    assert clip.raw_bodies == len({b.body_id for b in bodies})


def _raw(tracks):
    """A RawSkeleton from {body_id: (frames, xyz)}, body-frames in frame order."""
    rows = sorted((int(f), body_id, k) for body_id, (frames, _) in tracks.items() for k, f in enumerate(frames))
    ids = list(tracks)
    xyz = np.array([tracks[body_id][1][k] for _, body_id, k in rows], dtype=np.float32)
    return RawSkeleton("x.skeleton", max(f for f, _, _ in rows) + 1, ids, np.array([f for f, _, _ in rows]),
                       np.array([ids.index(b) for _, b, _ in rows]), xyz, np.zeros((len(rows), 9), np.float32),
                       np.zeros(len(rows), int))


def _person(frames, scale=1.0, seed=0):
    """A tall, thin moving body over `frames` frames."""
    rng = np.random.default_rng(seed)
    base = np.stack([rng.uniform(-0.1, 0.1, 25), np.linspace(-0.9, 0.8, 25), np.full(25, 3.0)], axis=1)
    return (base + scale * rng.normal(size=(frames, 25, 3)) * 0.05).astype(np.float32)


def test_third_person_with_least_motion_is_dropped_and_lost_frames_are_held():
    a, b, c = _person(40, 3.0, 1), _person(40, 2.0, 2), _person(40, 0.5, 3)
    a[10:13] = 0  # Kinect lost person a for three frames
    clip = select_persons(_raw({"1": (np.arange(40), a), "2": (np.arange(40), b), "3": (np.arange(40), c)}),
                          parse_name("S001C001P001R001A001"))
    assert clip.frames == 40 and len(clip.persons) == 2
    assert clip.dropped_tracks["extra"] == 1
    first, second = sorted((p.xyz for p in clip.persons), key=lambda xyz: not np.array_equal(xyz[:10], a[:10]))
    np.testing.assert_array_equal(first[10:13], np.repeat(a[9:10], 3, axis=0))
    np.testing.assert_array_equal(first[13:], a[13:])
    np.testing.assert_array_equal(second, b)


def test_a_bystander_after_the_performer_left_is_not_joined_to_the_performer():
    performer, bystander = _person(60, 2.0, 1), _person(40, 1.0, 2) + np.float32([1.5, 0, 0])
    clip = select_persons(_raw({"1": (np.arange(60), performer), "2": (np.arange(60, 100), bystander)}),
                          parse_name("S001C001P001R001A001"))
    assert clip.frames == 100
    assert [(p.first_frame, len(p.xyz)) for p in clip.persons] == [(0, 60), (60, 40)]
    np.testing.assert_array_equal(clip.persons[0].xyz, performer)


def test_a_switched_tracking_id_is_joined_back():
    performer = _person(80, 2.0, 1)
    clip = select_persons(_raw({"1": (np.arange(30), performer[:30]), "2": (np.arange(30, 80), performer[30:])}),
                          parse_name("S001C001P001R001A001"))
    assert len(clip.persons) == 1
    np.testing.assert_array_equal(clip.persons[0].xyz, performer)


def test_a_brief_ghost_does_not_displace_the_partner():
    """A jittery ghost seen in 20 of 100 frames has more motion than the partner, yet the partner stays."""
    first, partner = _person(100, 2.0, 1), _person(100, 0.5, 2) + np.float32([0.9, 0, 0])
    ghost = _person(20, 20.0, 3) + np.float32([-1.5, 0, 0])
    clip = select_persons(_raw({"1": (np.arange(100), first), "2": (np.arange(100), partner),
                                "3": (np.arange(40, 60), ghost)}), parse_name("S001C001P001R001A050"))
    assert len(clip.persons) == 2 and clip.dropped_tracks == {"brief": 1}
    assert any(np.array_equal(p.xyz, partner) for p in clip.persons)
    alone = select_persons(_raw({"1": (np.arange(100), first), "3": (np.arange(40, 60), ghost)}),
                           parse_name("S001C001P001R001A001"))
    assert len(alone.persons) == 1 and alone.dropped_tracks == {"brief": 1}


def test_a_body_listed_twice_in_a_frame_keeps_its_first_listing():
    performer = _person(30, 1.0, 1)
    raw = _raw({"1": (np.arange(30), performer)})
    raw.frame, raw.body = np.r_[raw.frame, 5], np.r_[raw.body, 0]
    raw.joints = np.concatenate([raw.joints, performer[:1] + 1])
    clip = select_persons(raw, parse_name("S001C001P001R001A001"))
    np.testing.assert_array_equal(clip.persons[0].xyz, performer)
    assert clip.dropped_tracks == {"duplicate": 1}


def test_filters_that_would_drop_every_track_are_not_applied():
    short = MIN_TRACK_FRAMES - 1
    clip = select_persons(_raw({"1": (np.arange(short), _person(short))}), parse_name("S001C001P001R001A001"))
    assert clip.frames == short and len(clip.persons) == 1


def test_body_less_frames_are_dropped_from_the_timeline():
    frames = np.r_[3:20, 25:40]
    clip = select_persons(_raw({"1": (frames, _person(len(frames)))}), parse_name("S001C001P001R001A001"))
    assert clip.frames == len(frames)
    assert clip.persons[0].first_frame == 0


def test_no_observed_body_is_an_error():
    with pytest.raises(SkeletonFileError, match="no body is observed"):
        select_persons(_raw({"1": (np.arange(20), np.zeros((20, 25, 3)))}), parse_name("S001C001P001R001A001"))


def _small_raw(tmp_path, count=6):
    names = sorted(tiny_names(TINY), key=str)
    folder = tmp_path / "raw"
    folder.mkdir()
    for index in range(count):
        write_skeleton(folder / f"{names[index]}.skeleton", *synthesize(names[index], clip_rng(TINY, index)))
    return folder


def test_bad_file_stops_the_run_and_writes_nothing(tmp_path):
    raw = _small_raw(tmp_path)
    (raw / "S001C001P009R001A001.skeleton").write_text("3\n1\n")
    out = tmp_path / "store"
    with pytest.raises(SkeletonFileError, match="S001C001P009R001A001.skeleton:2: file ends early"):
        preprocess([raw], out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_skip_bad_lists_bad_files_and_official_missing_ones_are_not_parsed(tmp_path):
    raw = _small_raw(tmp_path)
    (raw / "S001C001P009R001A001.skeleton").write_text("")
    (raw / "S001C002P005R002A008.skeleton").write_text("garbage")  # on the official missing list
    (raw / "notes.skeleton").write_text("1\n0\n")
    summary = preprocess([raw], tmp_path / "store", skip_bad=True, progress=False)
    assert summary.clips == 6 and summary.files == 9
    assert summary.officially_missing == ["S001C002P005R002A008"]
    assert len(summary.bad_files) == 2
    assert any("S001C001P009R001A001.skeleton:1: file is empty" in e for e in summary.bad_files)
    assert any("notes.skeleton: file name does not follow" in e for e in summary.bad_files)
    text = "\n".join(summary.lines())
    assert "skipped 2 bad files" in text and "official missing-skeleton list" in text
    assert CompactStore(tmp_path / "store").manifest["summary"]["bad_files"] == summary.bad_files


def test_missing_raw_folder_says_how_to_get_ntu(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*ROSE Lab.*raw_dirs"):
        find_raw_files([tmp_path / "nturgb+d_skeletons"])
    with pytest.raises(FileNotFoundError, match="no .skeleton files"):
        find_raw_files([tmp_path])


def test_same_file_in_two_folders_is_refused(tmp_path):
    raw = _small_raw(tmp_path, count=1)
    other = tmp_path / "other"
    other.mkdir()
    name = next(raw.iterdir()).name
    (other / name).write_text("")
    with pytest.raises(ValueError, match=f"{name} is in two raw folders"):
        find_raw_files([raw, other])


def test_worker_processes_write_the_same_store(tiny_raw, tiny_store, tmp_path):
    preprocess([tiny_raw], tmp_path / "parallel", workers=2, progress=False)
    for name in ("frames.f32", "tracks.npy", "clips.npy"):
        assert (tmp_path / "parallel" / name).read_bytes() == (tiny_store.path / name).read_bytes()


def test_tiny_set_selection_summary(tiny_store):
    """Every mutual clip of the tiny set keeps two persons, every other clip one."""
    clips = tiny_store.clips
    mutual = np.isin(clips["label"] + 1, [50, 58, 106])
    np.testing.assert_array_equal(clips["persons"], np.where(mutual, 2, 1))
    dropped = tiny_store.manifest["summary"]["dropped_tracks"]
    assert set(dropped) == {"short", "wide", "brief"} and min(dropped.values()) > 0
