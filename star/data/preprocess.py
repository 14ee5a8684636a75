"""From a parsed `.skeleton` file to the persons of one clip, and from a raw folder to a store.

Body selection, in order (the action label is never looked at, so the number
of persons kept cannot leak the class):

1. A body-frame whose 25 joints are all exactly zero is a lost track: not observed.
2. Bodies are grouped into tracks by their Kinect tracking ID (a body listed
   twice in one frame keeps its first listing).
3. Denoising drops tracks observed in fewer than `MIN_TRACK_FRAMES` frames
   (flicker) and tracks that are wider than tall (x-spread above
   `SPREAD_RATIO` x y-spread) in more than `MAX_WIDE_FRACTION` of their frames
   (furniture, not a standing person). A filter that would drop every track is
   not applied.
4. Tracks are joined into persons, taken in order of motion (the sum over
   joints and x, y, z of the variance over time of the coordinate): a track
   joins the first person whose frames it does not overlap and whose spine
   base, where the two meet in time, is within `MAX_JOIN_DISTANCE_M` of the
   track's (a performer whose tracking ID changed mid-clip is joined back
   together, a bystander who appears after the performer left is not);
   otherwise it starts a new person.
5. Persons seen in fewer than `MIN_PERSON_SHARE` of the frames in which anyone
   is seen are dropped (brief ghost bodies, not partners), unless that would
   drop everyone (then the most-seen person stays); of the rest, the two with
   the most motion are kept.
6. The clip's timeline is the frames in which at least one kept person is seen;
   frames with no body are dropped. Each person covers its span of that
   timeline from its first to its last observed frame (`first_frame` says where
   it starts); frames inside the span where it was not seen hold its last seen
   pose.

So a clip keeps one person unless a second person-like body is tracked through
a good part of it, as in the mutual actions; nothing is padded. No rule of this
kind is perfect on NTU's noisy detections: every drop is counted by reason in
the store's manifest.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from star.data.ntu import ArraySample, RawSkeleton, SampleName, SkeletonFileError, parse_name, read_skeleton
from star.data.splits import missing_samples
from star.data.store import StoreWriter
from star.errors import InputError, MissingInputError
from star.skeleton import CENTER_JOINT

MIN_TRACK_FRAMES = 11
SPREAD_RATIO = 0.8
MAX_WIDE_FRACTION = 0.7
MAX_PERSONS = 2
MAX_JOIN_DISTANCE_M = 0.5
MIN_PERSON_SHARE = 0.25

NTU_HELP = (
    "NTU RGB+D is licensed and not downloaded by this project: request it from the ROSE Lab "
    "(https://rose1.ntu.edu.sg/dataset/actionRecognition/), unpack the skeleton archives "
    "(nturgb+d_skeletons/, and for NTU 120 also the S018-S032 archive) and pass those folders "
    "with --raw, or set `raw_dirs` in workflow/config/config.yaml."
)


@dataclass
class Person:
    """One kept person: joints (length, 25, 3) starting at `first_frame` of the clip's timeline."""

    first_frame: int
    xyz: np.ndarray


@dataclass
class Clip:
    """A preprocessed clip: its persons on a common timeline of `frames` frames."""

    name: SampleName | ArraySample
    frames: int
    persons: list[Person]
    raw_bodies: int
    dropped_tracks: Counter = field(default_factory=Counter)


def _is_wide(xyz: np.ndarray) -> np.ndarray:
    """Per frame of a track (T, 25, 3): is it wider in x than SPREAD_RATIO times its height in y?"""
    spread = xyz.max(axis=1) - xyz.min(axis=1)  # (T, 3)
    return spread[:, 0] > SPREAD_RATIO * spread[:, 1]


def _motion(xyz: np.ndarray) -> float:
    """Sum over joints and x, y, z of the variance over time of a track's coordinates (T, 25, 3)."""
    return float(xyz.var(axis=0).sum())


def _keep_unless_all(tracks: list, keep: list[bool]) -> list:
    return [t for t, k in zip(tracks, keep, strict=True) if k] if any(keep) else tracks


def _tracks(raw: RawSkeleton, dropped: Counter) -> list[tuple[np.ndarray, np.ndarray]]:
    """(frames, xyz) of every tracking ID's observed body-frames, in frame order."""
    observed = np.any(raw.xyz != 0, axis=(1, 2))
    tracks = []
    for body in np.unique(raw.body[observed]):
        rows = np.flatnonzero(observed & (raw.body == body))
        frames, first = np.unique(raw.frame[rows], return_index=True)
        dropped["duplicate"] += len(rows) - len(frames)
        tracks.append((frames, raw.xyz[rows[first]]))
    return tracks


def _slot_frames(slot: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """A slot's tracks merged in frame order: frames (T,), xyz (T, 25, 3)."""
    frames = np.concatenate([f for f, _ in slot])
    order = np.argsort(frames, kind="stable")
    return frames[order], np.concatenate([x for _, x in slot])[order]


def _can_join(slot: list[tuple[np.ndarray, np.ndarray]], frames: np.ndarray, xyz: np.ndarray) -> bool:
    """Does the track fit into the slot: no shared frame, and no jump of the spine base where they meet?"""
    slot_frames, slot_xyz = _slot_frames(slot)
    if np.intersect1d(slot_frames, frames).size:
        return False
    before = np.flatnonzero(slot_frames < frames[0])
    after = np.flatnonzero(slot_frames > frames[-1])
    meetings = ([(slot_xyz[before[-1]], xyz[0])] if before.size else []) + \
               ([(slot_xyz[after[0]], xyz[-1])] if after.size else [])
    return all(np.linalg.norm(a[CENTER_JOINT] - b[CENTER_JOINT]) <= MAX_JOIN_DISTANCE_M for a, b in meetings)


def select_persons(raw: RawSkeleton, name: SampleName) -> Clip:
    """Apply the body-selection rule of this module's docstring to one parsed file."""
    dropped = Counter()
    tracks = _tracks(raw, dropped)
    if not tracks:
        raise SkeletonFileError(raw.path, "no body is observed in any frame")
    kept = _keep_unless_all(tracks, [len(frames) >= MIN_TRACK_FRAMES for frames, _ in tracks])
    dropped["short"] += len(tracks) - len(kept)
    tracks = kept
    kept = _keep_unless_all(tracks, [_is_wide(xyz).mean() <= MAX_WIDE_FRACTION for _, xyz in tracks])
    dropped["wide"] += len(tracks) - len(kept)
    tracks = sorted(kept, key=lambda track: -_motion(track[1]))

    slots: list[list[tuple[np.ndarray, np.ndarray]]] = []
    for frames, xyz in tracks:
        joinable = [slot for slot in slots if _can_join(slot, frames, xyz)]
        if joinable:
            joinable[0].append((frames, xyz))
        else:
            slots.append([(frames, xyz)])
    merged = [_slot_frames(slot) for slot in slots]
    seen_by_anyone = len(np.unique(np.concatenate([frames for frames, _ in merged])))
    share = [len(frames) / seen_by_anyone for frames, _ in merged]
    lasting = [k for k in range(len(merged)) if share[k] >= MIN_PERSON_SHARE] or [int(np.argmax(share))]
    kept = sorted(lasting, key=lambda k: -_motion(merged[k][1]))[:MAX_PERSONS]
    for k in set(range(len(merged))) - set(kept):
        dropped["brief" if k not in lasting else "extra"] += len(slots[k])
    merged = [merged[k] for k in kept]

    timeline = np.unique(np.concatenate([frames for frames, _ in merged]))
    persons = []
    for frames, xyz in merged:
        steps = np.searchsorted(timeline, frames)
        first, last = steps.min(), steps.max()
        seen = np.zeros(last - first + 1, dtype=np.int64)
        seen[steps - first] = np.arange(len(steps)) + 1
        hold = np.maximum.accumulate(seen) - 1  # index of the last observed body-frame at each step
        persons.append(Person(int(first), xyz[hold].astype(np.float32)))
    persons.sort(key=lambda person: person.first_frame)
    return Clip(name, len(timeline), persons, len(raw.body_ids), +dropped)


def load_clip(path: str | Path) -> Clip:
    """Parse and select the persons of one raw file; raises SkeletonFileError."""
    name = parse_name(path)  # before parsing: a misnamed file fails fast
    return select_persons(read_skeleton(path), name)


def _load_or_error(path: Path) -> Clip | SkeletonFileError:
    try:
        return load_clip(path)
    except SkeletonFileError as error:
        return error


def find_raw_files(raw_dirs: list[str | Path]) -> list[Path]:
    """Every `*.skeleton` file of the raw folders, sorted by name; errors say how to get NTU RGB+D."""
    files: dict[str, Path] = {}
    for raw_dir in map(Path, raw_dirs):
        if not raw_dir.is_dir():
            raise MissingInputError(f"raw skeleton folder {raw_dir} does not exist. {NTU_HELP}")
        for path in raw_dir.glob("*.skeleton"):
            if path.name in files:
                raise InputError(f"{path.name} is in two raw folders: {files[path.name].parent} and {raw_dir}")
            files[path.name] = path
    if not files:
        raise MissingInputError(f"no .skeleton files in {', '.join(map(str, raw_dirs))}. {NTU_HELP}")
    return [files[name] for name in sorted(files)]


@dataclass
class Summary:
    """What preprocessing kept and dropped, and why."""

    files: int = 0
    clips: int = 0
    two_person_clips: int = 0
    officially_missing: list[str] = field(default_factory=list)
    bad_files: list[str] = field(default_factory=list)
    dropped_tracks: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {
            "files": self.files, "clips": self.clips, "two_person_clips": self.two_person_clips,
            "officially_missing": self.officially_missing, "bad_files": self.bad_files,
            "dropped_tracks": dict(self.dropped_tracks),
        }

    def lines(self) -> list[str]:
        out = [f"read {self.files} files: {self.clips} clips kept ({self.two_person_clips} with two persons)"]
        if self.officially_missing:
            out.append(f"dropped {len(self.officially_missing)} files on the official missing-skeleton list")
        if self.bad_files:
            out.append(f"skipped {len(self.bad_files)} bad files:")
            out += [f"  {error}" for error in self.bad_files]
        reasons = {  # in the order the rule applies them
            "duplicate": "body-frames listed twice in one frame",
            "short": f"body tracks shorter than {MIN_TRACK_FRAMES} frames",
            "wide": "body tracks wider than tall (not a person)",
            "brief": f"body tracks of persons seen in under {MIN_PERSON_SHARE:.0%} of the frames",
            "extra": "body tracks beyond two persons",
        }
        out += [f"dropped {self.dropped_tracks[r]} {text}" for r, text in reasons.items() if self.dropped_tracks[r]]
        return out


def preprocess(raw_dirs: list[str | Path], out: str | Path, workers: int = 1, skip_bad: bool = False,
               progress: bool = True) -> Summary:
    """Parse every raw file, select persons, and write the compact store `out` atomically.

    A bad file stops the run (nothing is written) unless `skip_bad`, which lists
    it in the summary instead. Files on the official NTU 120 missing-skeleton
    list (a superset of NTU 60's) are not parsed.
    """
    paths = find_raw_files(raw_dirs)
    summary = Summary(files=len(paths))
    missing = missing_samples("ntu120")
    usable = []
    for path in paths:
        (summary.officially_missing if path.stem in missing else usable).append(path)
    summary.officially_missing = [p.stem for p in summary.officially_missing]

    with StoreWriter(out, source=[str(d) for d in raw_dirs]) as writer:
        pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
        try:
            results = pool.imap(_load_or_error, usable, chunksize=8) if pool else map(_load_or_error, usable)
            for result in tqdm(results, total=len(usable), desc="preprocess", unit="file", disable=not progress):
                if isinstance(result, SkeletonFileError):
                    if not skip_bad:
                        raise result
                    summary.bad_files.append(str(result))
                    continue
                writer.add(result)
                summary.clips += 1
                summary.two_person_clips += len(result.persons) == 2
                summary.dropped_tracks.update(result.dropped_tracks)
        finally:
            if pool:
                pool.terminate()
        if summary.clips == 0:
            raise InputError(f"no usable clip in {', '.join(map(str, raw_dirs))}")
        writer.summary = summary.as_dict()
    return summary


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))
