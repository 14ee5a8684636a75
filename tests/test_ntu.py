import pickle

import numpy as np
import pytest

from star.data.ntu import SampleName, SkeletonFileError, parse_name, read_skeleton
from star.data.synthetic import TINY, SynthBody, clip_rng, synthesize, write_skeleton


def test_names_round_trip_and_give_labels():
    name = parse_name("some/dir/S032C003P106R002A120.skeleton")
    assert name == SampleName(32, 3, 106, 2, 120)
    assert name.label == 119
    assert str(name) == "S032C003P106R002A120"


@pytest.mark.parametrize("bad", ["S001C001P001R001A01", "X001C001P001R001A001", "S001C001P001R001A001x",
                                 "S000C001P001R001A001", "S001C004P001R001A001", "S001C001P107R001A001",
                                 "S001C001P001R003A001", "S001C001P001R001A121", "S033C001P001R001A001"])
def test_bad_names_are_refused_with_the_name(bad):
    with pytest.raises(SkeletonFileError, match=bad):
        parse_name(f"{bad}.skeleton")


@pytest.fixture
def written(tmp_path):
    """A generated two-person file with a late entry, written to disk, and its bodies."""
    name = parse_name("S001C001P001R001A058")
    for index in range(50):
        frame_count, bodies = synthesize(name, clip_rng(TINY, index))
        if len(bodies) >= 2:
            break
    path = write_skeleton(tmp_path / f"{name}.skeleton", frame_count, bodies)
    return path, frame_count, bodies


def _expected_rows(frame_count: int, bodies: list[SynthBody]) -> tuple[list[tuple[int, str]], np.ndarray]:
    """(frame, body id) and xyz of every body-frame in file order: frame by frame, bodies in list order."""
    rows, xyz = [], []
    for frame in range(frame_count):
        for body in bodies:
            hit = np.flatnonzero(body.frames == frame)
            if hit.size:
                rows.append((frame, body.body_id))
                xyz.append(body.xyz[hit[0]])
    return rows, np.array(xyz)


def test_parser_reads_back_exactly_the_joints_written(written):
    path, frame_count, bodies = written
    raw = read_skeleton(path)
    rows, xyz = _expected_rows(frame_count, bodies)
    assert raw.frame_count == frame_count
    assert [(int(f), raw.body_ids[b]) for f, b in zip(raw.frame, raw.body, strict=True)] == rows
    assert raw.joints.dtype == np.float32
    np.testing.assert_array_equal(raw.xyz, xyz)


def test_all_fields_and_crlf_give_the_same_coordinates(written, tmp_path):
    path, _, _ = written
    raw = read_skeleton(path)
    full = read_skeleton(path, all_fields=True)
    assert full.joints.shape[1:] == (25, 12)
    np.testing.assert_array_equal(full.xyz, raw.xyz)
    assert np.all(full.joints[..., 11] == 2)  # tracking state 'tracked'
    crlf = tmp_path / "crlf" / path.name
    crlf.parent.mkdir()
    crlf.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    np.testing.assert_array_equal(read_skeleton(crlf).xyz, raw.xyz)


def _edit(path, tmp_path, edit):
    """Copy `path` with its lines passed through `edit` (a function of the list of lines)."""
    lines = path.read_text().splitlines()
    out = tmp_path / "bad" / path.name
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(edit(lines)) + "\n")
    return out


def _edit_line(path, tmp_path, offset, edit):
    """Copy `path` with the line `offset` lines below the first joint count passed through `edit`.

    Returns the copy and the 1-based number of the edited line."""
    at = path.read_text().splitlines().index("25") + offset
    return _edit(path, tmp_path, lambda lines: lines[:at] + [edit(lines[at])] + lines[at + 1:]), at + 1


def _with_token(index, value):
    return lambda line: " ".join(value if k == index else token for k, token in enumerate(line.split()))


def test_truncated_file_names_the_last_line(written, tmp_path):
    path, _, _ = written
    bad = _edit(path, tmp_path, lambda lines: lines[:400])
    with pytest.raises(SkeletonFileError, match=rf"{bad}:400: file ends"):
        read_skeleton(bad)


@pytest.mark.parametrize(("offset", "edit", "message"), [
    (0, lambda line: "24", "joint count is 24, expected 25"),
    (7, _with_token(1, "0.1x3"), "non-numeric value '0.1x3'"),
    (3, lambda line: " ".join(line.split()[:2]), "expected at least 3 values, found 2"),
    (30, _with_token(2, "nan"), "NaN or infinite joint coordinate"),
    (31, _with_token(0, "inf"), "NaN or infinite joint coordinate"),
    (32, _with_token(1, "-inf"), "NaN or infinite joint coordinate"),
    (9, lambda line: "", "expected at least 3 values, found 0"),
    (10, lambda line: "   ", "expected at least 3 values, found 0"),
    (11, _with_token(0, "#0.5"), "non-numeric value '#0.5'"),
    (12, _with_token(2, "1_0"), "non-numeric value '1_0'"),
    (-1, lambda line: "", "expected at least 10 values, found 0"),  # the body line
])
def test_a_bad_line_is_named(written, tmp_path, offset, edit, message):
    path, _, _ = written
    bad, line = _edit_line(path, tmp_path, offset, edit)
    with pytest.raises(SkeletonFileError, match=rf"{bad}:{line}: {message}"):
        read_skeleton(bad)


@pytest.mark.parametrize("cut", [1, 5, 20, 40, 60])
def test_a_file_cut_inside_its_last_line_is_refused(written, tmp_path, cut):
    path, _, _ = written
    data = path.read_bytes().rstrip(b"\n")
    bad = tmp_path / "cut" / path.name
    bad.parent.mkdir()
    bad.write_bytes(data[:-cut])
    last = data.count(b"\n") + 1
    with pytest.raises(SkeletonFileError, match=rf"{bad}:{last}: expected (12|at least 3) values, found \d+"):
        read_skeleton(bad)


def test_negative_frame_count(tmp_path):
    bad = tmp_path / "S001C001P001R001A001.skeleton"
    bad.write_text("-3\n")
    with pytest.raises(SkeletonFileError, match=rf"{bad}:1: negative frame count -3"):
        read_skeleton(bad)


def test_empty_file(tmp_path):
    empty = tmp_path / "S001C001P001R001A001.skeleton"
    empty.write_text("\n\n")
    with pytest.raises(SkeletonFileError, match=rf"{empty}:1: file is empty"):
        read_skeleton(empty)


def test_bad_counts_and_trailing_lines(written, tmp_path):
    path, _, _ = written
    bad = _edit(path, tmp_path, lambda lines: ["many"] + lines[1:])
    with pytest.raises(SkeletonFileError, match=rf"{bad}:1: expected the frame count"):
        read_skeleton(bad)
    bad = _edit(path, tmp_path, lambda lines: lines + ["0", "0"])
    with pytest.raises(SkeletonFileError, match=r"2 unexpected lines after the last frame"):
        read_skeleton(bad)


def test_binary_file(tmp_path):
    binary = tmp_path / "S001C001P001R001A001.skeleton"
    binary.write_bytes(b"3\n\xff\xfe\n")
    with pytest.raises(SkeletonFileError, match="not a text file"):
        read_skeleton(binary)


def test_errors_survive_pickling_to_and_from_worker_processes():
    error = pickle.loads(pickle.dumps(SkeletonFileError("a/b.skeleton", "file is empty", 3)))
    assert (str(error), error.path, error.line, error.reason) == ("a/b.skeleton:3: file is empty", "a/b.skeleton", 3,
                                                                 "file is empty")
