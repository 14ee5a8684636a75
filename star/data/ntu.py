"""Reading NTU RGB+D: sample names and the Kinect v2 `.skeleton` text format.

The format (Kinect v2, as the NTU RGB+D release describes it) is line oriented: a frame count, then per
frame a body count, then per body one line of 10 body values, a joint count
(25) and 25 lines of 12 joint values. `read_skeleton` walks the count lines in a
short Python loop (one step per body-frame) and converts every joint line of the
file with a single NumPy call, so the cost per value is C, not Python.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from star.errors import StarError
from star.skeleton import NUM_JOINTS

JOINT_FIELDS = (
    "x", "y", "z", "depth_x", "depth_y", "color_x", "color_y",
    "orientation_w", "orientation_x", "orientation_y", "orientation_z", "tracking_state",
)
BODY_FIELDS = (
    "body_id", "clipped_edges", "hand_left_confidence", "hand_left_state",
    "hand_right_confidence", "hand_right_state", "is_restricted", "lean_x", "lean_y",
    "tracking_state",
)
LINES_PER_BODY = 2 + NUM_JOINTS

_NAME = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})")
NAME_FIELDS = {"setup": (1, 32), "camera": (1, 3), "subject": (1, 106), "replication": (1, 2), "action": (1, 120)}


class SkeletonFileError(StarError, ValueError):
    """A raw file that cannot be used; the message names the file and, where known, the line."""

    def __init__(self, path: str | Path, message: str, line: int | None = None):
        self.path, self.line, self.reason = str(path), line, message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")

    def __reduce__(self):
        # Worker processes send these back to the parent; the default pickling would lose the arguments.
        return type(self), (self.path, self.reason, self.line)


@dataclass(frozen=True)
class SampleName:
    """The IDs coded in a file name `SsssCcccPpppRrrrAaaa`; `label` is action - 1."""

    setup: int
    camera: int
    subject: int
    replication: int
    action: int

    @property
    def label(self) -> int:
        return self.action - 1

    def __str__(self) -> str:
        return f"S{self.setup:03d}C{self.camera:03d}P{self.subject:03d}R{self.replication:03d}A{self.action:03d}"


@dataclass(frozen=True)
class ArraySample:
    """A clip known only by the array and row it came from: no setup, camera, subject or replication (0)."""

    name: str
    label: int
    setup: int = 0
    camera: int = 0
    subject: int = 0
    replication: int = 0

    def __str__(self) -> str:
        return self.name


def parse_name(name: str | Path) -> SampleName:
    """Parse a sample name or a path to `SsssCcccPpppRrrrAaaa.skeleton`; raises SkeletonFileError."""
    stem = os.path.basename(name).removesuffix(".skeleton")
    match = _NAME.fullmatch(stem)
    if match is None:
        raise SkeletonFileError(name, "file name does not follow SsssCcccPpppRrrrAaaa(.skeleton)")
    values = dict(zip(NAME_FIELDS, map(int, match.groups()), strict=True))
    for field, (low, high) in NAME_FIELDS.items():
        if not low <= values[field] <= high:
            raise SkeletonFileError(name, f"{field} {values[field]} outside {low}-{high}")
    return SampleName(**values)


@dataclass
class RawSkeleton:
    """Every body-frame of one file, in file order.

    `joints[k]` holds the joint values of body-frame k (x, y, z, or all 12
    of `JOINT_FIELDS` when read with `all_fields`), `frame[k]` its frame
    number and `body[k]` the index of its body in `body_ids` (the Kinect tracking
    IDs, kept as text: they exceed float precision). `body_info[k]` holds the
    other 9 body values. `joint_lines[k]` is the file line (1-based) of the first
    joint of body-frame k, for error messages further down the pipeline.
    """

    path: str
    frame_count: int
    body_ids: list[str]
    frame: np.ndarray  # (K,) int64
    body: np.ndarray  # (K,) int64
    joints: np.ndarray  # (K, 25, 3) or (K, 25, 12) float32
    body_info: np.ndarray  # (K, 9) float32
    joint_lines: np.ndarray  # (K,) int64

    @property
    def xyz(self) -> np.ndarray:
        """Camera-space joint positions in metres, (K, 25, 3)."""
        return self.joints[:, :, :3]


def _int_line(lines: list[str], index: int, path: str, what: str) -> int:
    if index >= len(lines):
        raise SkeletonFileError(path, f"file ends early: expected {what} after the last line", len(lines))
    try:
        return int(lines[index])
    except ValueError:
        found = lines[index].strip()
        raise SkeletonFileError(path, f"expected {what} (an integer), found {found!r}", index + 1) from None


def _parse_columns(lines: list[str], path: str, line_numbers: np.ndarray, columns: tuple[int, ...]) -> np.ndarray:
    """Read `columns` of the lines at 0-based `line_numbers` (any shape S) as float64, (*S, len(columns))."""
    block = [lines[i] for i in line_numbers.ravel()]
    if not block:
        return np.zeros((*line_numbers.shape, len(columns)))
    try:
        # comments=None: a line starting with '#' is malformed here, not a comment to skip.
        values = np.loadtxt(block, dtype=np.float64, usecols=columns, ndmin=2, comments=None)
    except ValueError:
        values = None
    # loadtxt also skips blank lines, so a short result is an error too.
    if values is None or len(values) != len(block):
        _locate_bad_line(lines, path, line_numbers, columns)
    return values.reshape(*line_numbers.shape, len(columns))


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(nan|inf|infinity)", re.IGNORECASE)


def _locate_bad_line(lines: list[str], path: str, line_numbers: np.ndarray, columns: tuple[int, ...]) -> None:
    """Slow path, only after the fast one failed: find and name the first malformed line."""
    for i in line_numbers.ravel():
        tokens = lines[i].split()
        if len(tokens) <= max(columns):
            raise SkeletonFileError(path, f"expected at least {max(columns) + 1} values, found {len(tokens)}", i + 1)
        for column in columns:
            if not _NUMBER.fullmatch(tokens[column]):
                raise SkeletonFileError(path, f"non-numeric value {tokens[column]!r}", i + 1)
    first = int(line_numbers.ravel()[0]) + 1
    raise SkeletonFileError(path, f"values from line {first} on could not be read as numbers", first)


def read_skeleton(path: str | Path, all_fields: bool = False) -> RawSkeleton:
    """Parse one `.skeleton` file. Raises SkeletonFileError naming the file and line of any defect.

    By default only x, y, z of each joint are converted (`joints` is (K, 25, 3));
    `all_fields=True` converts all 12 joint values (half the speed).
    """
    path = str(path)
    try:
        with open(path, encoding="ascii", errors="strict") as handle:
            lines = handle.read().splitlines()
    except UnicodeDecodeError as error:
        raise SkeletonFileError(path, f"not a text file (byte {error.start} is not ASCII)") from None
    except OSError as error:
        raise SkeletonFileError(path, f"cannot be read: {error.strerror}") from None
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise SkeletonFileError(path, "file is empty", 1)

    frame_count = _int_line(lines, 0, path, "the frame count")
    if frame_count < 0:
        raise SkeletonFileError(path, f"negative frame count {frame_count}", 1)
    frames, body_lines = [], []
    cursor = 1
    for frame_number in range(frame_count):
        body_count = _int_line(lines, cursor, path, f"the body count of frame {frame_number + 1}")
        if body_count < 0:
            raise SkeletonFileError(path, f"negative body count {body_count}", cursor + 1)
        cursor += 1
        for _ in range(body_count):
            joint_count = _int_line(lines, cursor + 1, path, "the joint count")
            if joint_count != NUM_JOINTS:
                raise SkeletonFileError(path, f"joint count is {joint_count}, expected {NUM_JOINTS}", cursor + 2)
            if cursor + LINES_PER_BODY > len(lines):
                raise SkeletonFileError(path, "file ends inside a body's joint block", len(lines))
            frames.append(frame_number)
            body_lines.append(cursor)
            cursor += LINES_PER_BODY
    if cursor != len(lines):
        raise SkeletonFileError(path, f"{len(lines) - cursor} unexpected lines after the last frame", cursor + 1)

    body_lines = np.asarray(body_lines, dtype=np.int64)
    info = _parse_columns(lines, path, body_lines, tuple(range(1, len(BODY_FIELDS))))
    joint_columns = tuple(range(len(JOINT_FIELDS) if all_fields else 3))
    joints = _parse_columns(lines, path, body_lines[:, None] + 2 + np.arange(NUM_JOINTS), joint_columns)
    if len(body_lines):
        # Only x, y, z are converted by default; a file cut inside its last line must still fail.
        last = int(body_lines[-1]) + LINES_PER_BODY - 1
        if len(lines[last].split()) != len(JOINT_FIELDS):
            raise SkeletonFileError(path, f"expected {len(JOINT_FIELDS)} values, found {len(lines[last].split())}",
                                    last + 1)
    bad = ~np.isfinite(joints[:, :, :3])
    if bad.any():
        body_frame, joint, _ = np.argwhere(bad)[0]
        raise SkeletonFileError(path, "NaN or infinite joint coordinate", int(body_lines[body_frame]) + 3 + int(joint))
    # Tracking IDs are 64-bit integers; as floats they would collide, so they are kept as text.
    id_of_line = [lines[i].split(maxsplit=1)[0] for i in body_lines]
    body_ids = list(dict.fromkeys(id_of_line))
    body_index = {body_id: k for k, body_id in enumerate(body_ids)}
    return RawSkeleton(
        path=path,
        frame_count=frame_count,
        body_ids=body_ids,
        frame=np.asarray(frames, dtype=np.int64),
        body=np.array([body_index[b] for b in id_of_line], dtype=np.int64),
        joints=joints.astype(np.float32),
        body_info=info.astype(np.float32),
        joint_lines=body_lines + 3,
    )
