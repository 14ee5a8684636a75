"""What the importers of preprocessed NTU RGB+D share: from a padded person array to a clip, and into a store.

The field's toolkits ship NTU RGB+D already reduced to at most two persons per
clip (pyskl's annotation pickles, the padded arrays of the CTR-GCN family), so
an import does not rerun `star preprocess`'s body selection. It only undoes the
padding: in a (persons, frames, 25, 3) array a person is seen in a frame when
any of its 75 values is non-zero (exact zeros are how these formats say "no
one"). A person never seen is no person; the clip's timeline runs from the
first to the last frame in which anyone is seen; each person covers the span
from its own first to its last seen frame, holding inside it whatever the
source holds (the toolkits leave a body's lost frames as zeros).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from star.data.preprocess import Clip, Person
from star.data.store import CompactStore, StoreWriter
from star.errors import StarError
from star.skeleton import NUM_JOINTS


class SourceError(StarError, ValueError):
    """A source file that cannot be imported; the message names the file and the key or index."""

    def __init__(self, path: str | Path, message: str):
        super().__init__(f"{path}: {message}")


@dataclass
class ImportSummary:
    """What an import kept and dropped."""

    files: int = 0
    clips: int = 0
    two_person_clips: int = 0
    empty_persons: int = 0
    trimmed_frames: int = 0
    repeated_clips: int = 0
    ignored_splits: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"files": self.files, "clips": self.clips, "two_person_clips": self.two_person_clips,
                "empty_persons": self.empty_persons, "trimmed_frames": self.trimmed_frames,
                "repeated_clips": self.repeated_clips,
                "ignored_splits": self.ignored_splits}

    def lines(self) -> list[str]:
        out = [f"read {self.files} files: {self.clips} clips ({self.two_person_clips} with two persons)"]
        if self.empty_persons:
            out.append(f"dropped {self.empty_persons} all-zero person slots (no person)")
        if self.trimmed_frames:
            out.append(f"cut {self.trimmed_frames} padding frames in which no one is seen")
        if self.repeated_clips:
            out.append(f"found {self.repeated_clips} clips again in another file (stored once, in both benchmarks)")
        if self.ignored_splits:
            out.append(f"ignored split lists that name no NTU benchmark: {', '.join(self.ignored_splits)}")
        return out


def check_keypoints(path: str | Path, where: str, keypoint) -> np.ndarray:
    """A (persons, frames, 25, 3) floating array of at most two persons; a SourceError otherwise (its values are
    checked by clip_from_padded)."""
    if not isinstance(keypoint, np.ndarray) or keypoint.ndim != 4 or keypoint.shape[2:] != (NUM_JOINTS, 3) \
            or not 1 <= keypoint.shape[0] <= 2 or keypoint.shape[1] == 0:
        shape = keypoint.shape if isinstance(keypoint, np.ndarray) else type(keypoint).__name__
        raise SourceError(path, f"{where}: shape {shape}, expected (persons 1-2, frames, {NUM_JOINTS}, 3)")
    if keypoint.dtype.kind != "f":
        raise SourceError(path, f"{where}: dtype {keypoint.dtype}, expected floating point coordinates")
    return keypoint


def clip_from_padded(keypoint: np.ndarray, name, summary: ImportSummary, path: str | Path, where: str) -> Clip:
    """The clip in a checked (persons, frames, 25, 3) array, padding removed; a SourceError if a coordinate is
    not finite or no one is seen."""
    keypoint = keypoint.astype(np.float32, copy=False)  # exact from float16; float32 reductions are the fast ones
    if not np.isfinite(keypoint.sum()) and not np.isfinite(keypoint).all():  # the sum: one pass, no temporary
        raise SourceError(path, f"{where}: holds NaN or infinite coordinates")
    seen = keypoint.any(axis=(2, 3))  # (M, T): a person is seen where any coordinate is non-zero
    present = seen.any(axis=1)  # (M,)
    if not present.any():
        raise SourceError(path, f"{where}: every coordinate is zero, no person is seen in any frame")
    summary.empty_persons += int((~present).sum())
    frames = seen.shape[1]
    anyone = seen.any(axis=0)  # (T,)
    start, stop = int(anyone.argmax()), frames - int(anyone[::-1].argmax())
    summary.trimmed_frames += frames - (stop - start)
    persons = []
    for m in np.flatnonzero(present):
        first, last = int(seen[m].argmax()), frames - int(seen[m, ::-1].argmax())
        persons.append(Person(first - start, keypoint[m, first:last]))
    persons.sort(key=lambda person: person.first_frame)  # stable: the source's order among equal starts
    return Clip(name, stop - start, persons, raw_bodies=len(keypoint))


def padded_clip(store: CompactStore, clip: int, persons: int | None = None, frames: int | None = None,
                dtype=np.float32) -> np.ndarray:
    """The inverse of clip_from_padded: clip number `clip` of a store as (persons, frames, 25, 3), zeros where a
    person is not seen (default: its own persons and frames; more of either are padded)."""
    row = store.clips[clip]
    keypoint = np.zeros((persons or row["persons"], frames or row["frames"], NUM_JOINTS, 3), dtype)
    for track in store.clip_tracks(clip):
        start = track["first_frame"]
        keypoint[track["person"], start:start + track["length"]] = store.track_frames(track)
    return keypoint


def file_record(path: str | Path) -> dict:
    """Path, size and SHA-256 of a source file, for the manifest."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path), "bytes": Path(path).stat().st_size, "sha256": digest.hexdigest()}


def clip_identity(clip: Clip) -> bytes:
    """A digest of what a clip holds (label, persons, their starts and coordinates): the same clip met in two
    array files, which have no names to match it by, has the same identity."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(np.array([clip.name.label, clip.frames], np.int64).tobytes())
    for person in clip.persons:
        digest.update(np.int64(person.first_frame).tobytes())
        digest.update(np.ascontiguousarray(person.xyz).tobytes())
    return digest.digest()


def write_store(out: str | Path, source_format: str, paths: list[str | Path], benchmarks: list[str],
                clips: Iterable[tuple[Clip, dict[str, int], bytes | None]], summary: ImportSummary, total: int,
                progress: bool = True) -> ImportSummary:
    """Write imported (clip, membership, identity) triples as a store at `out`, atomically: a SourceError raised
    while the clips are produced leaves nothing behind. A clip whose identity (None: always new) was written
    before is not written again; its membership joins the earlier one's."""
    records = [file_record(path) for path in paths]
    written: dict[bytes, tuple[int, str]] = {}
    with StoreWriter(out, [str(p) for p in paths], source_format, records, benchmarks) as writer:
        for clip, membership, identity in tqdm(clips, total=total, desc="import", unit="clip", disable=not progress):
            if identity in written:
                index, first = written[identity]
                for benchmark, side in membership.items():
                    if writer.membership[index].setdefault(benchmark, side) != side:
                        raise SourceError(", ".join(map(str, paths)), f"{clip.name} holds the same clip as {first}, "
                                                                      f"on the other side of {benchmark}")
                summary.repeated_clips += 1
                continue
            if identity is not None:
                written[identity] = (len(writer.clips), str(clip.name))
            writer.add(clip, membership)
            summary.clips += 1
            summary.two_person_clips += len(clip.persons) == 2
        if summary.clips == 0:
            raise SourceError(", ".join(map(str, paths)), "no clip with a person in it")
        writer.summary = summary.as_dict()
    return summary
