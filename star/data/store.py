"""The compact store (the paper's Figure 2): every person track of every clip, concatenated.

A store is a folder:

- `frames.f32`: raw little-endian float32, shape (total_frames, 25, 3), the
  frames of every track one after another, nothing padded; memory-mapped.
- `tracks.npy`: one row per person track (clip, person, offset into frames,
  length, first_frame on the clip's timeline), sorted by clip then person.
- `clips.npy`: one row per clip (name, label, setup, camera, subject,
  replication, frames, persons, raw_bodies). For an imported clip raw_bodies
  is the person slots its source gives it; a clip imported from a source
  without sample names (padded arrays) is named after its array and row, and
  its setup, camera, subject and replication are 0.
- `splits.npy` (imported stores only): one row per clip, one int8 column per
  benchmark the source defines: 1 train, 0 test, -1 not in that benchmark.
  A store with it serves exactly those benchmarks with exactly the source's
  membership; a store without it splits by the official rules (splits.py).
- `manifest.json`: shapes, counts, bytes on disk and the bytes the padded
  300-frame x 2-person layout would take for the same clips, the source
  (`source_format`: raw, pyskl or npz; `source`: its paths; `source_files`:
  size and SHA-256 of each imported file), the preprocessing or import
  summary, and `content_sha256`: the digest of the frames and table files,
  which every run records (a store made again from other data is another run).

A store is written into a temporary folder and renamed into place when whole,
so a reader never sees a half-written one. An existing store at the same path
is moved aside just before and deleted just after; anything else at that path
(a folder of other files) is refused, never deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from star import __version__
from star.data.splits import BENCHMARKS, NTU60_LAST_SETUP, SIDES, check_side, get_benchmark
from star.defaults import PADDED_FRAMES, PADDED_PERSONS
from star.errors import StarError
from star.formats import STORE_FORMAT
from star.io import read_result
from star.schemas import ResultFileError, check
from star.skeleton import NUM_JOINTS

SPLITS_FILE = "splits.npy"
CLIP_DTYPE = np.dtype([
    ("name", "U20"), ("label", "i2"), ("setup", "i2"), ("camera", "i2"), ("subject", "i2"),
    ("replication", "i2"), ("frames", "i4"), ("persons", "i1"), ("raw_bodies", "i2"),
])
TRACK_DTYPE = np.dtype([("clip", "i4"), ("person", "i1"), ("offset", "i8"), ("length", "i4"), ("first_frame", "i4")])
FRAME_BYTES = NUM_JOINTS * 3 * 4


class StoreError(StarError, ValueError):
    """A store that is missing, incomplete or not what the caller needs."""


class StoreWriter:
    """Writes a store clip by clip into `<out>.tmp-<pid>` and renames it to `out` on a clean exit.

    `benchmarks`, for an imported store, names the benchmarks its source splits;
    each `add` then says the clip's side of each (`membership`, which the
    importer may extend until the store is finished).
    """

    def __init__(self, out: str | Path, source: list[str], source_format: str = "raw",
                 source_files: list[dict] | None = None, benchmarks: list[str] | None = None):
        self.out = Path(out)
        self.tmp = self.out.with_name(f"{self.out.name}.tmp-{os.getpid()}")
        self.source, self.source_format, self.source_files = source, source_format, source_files or []
        self.benchmarks = benchmarks
        self.summary: dict = {}
        self.clips: list[tuple] = []
        self.tracks: list[tuple] = []
        self.membership: list[dict[str, int]] = []
        self.total_frames = 0
        self.frames_digest = hashlib.sha256()

    def __enter__(self) -> StoreWriter:
        if self.out.exists() and not _is_replaceable(self.out):
            raise StoreError(f"refusing to replace {self.out}: it exists and is neither empty nor a data store")
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        self.frames_file = open(self.tmp / "frames.f32", "wb")
        return self

    def add(self, clip, membership: dict[str, int] | None = None) -> None:
        """Append a `preprocess.Clip`; for an imported store, its side of each benchmark (1 train, 0 test,
        missing: not in it)."""
        if self.benchmarks is not None:
            self.membership.append(dict(membership or {}))
        clip_index = len(self.clips)
        name = clip.name
        self.clips.append((str(name), name.label, name.setup, name.camera, name.subject, name.replication,
                           clip.frames, len(clip.persons), clip.raw_bodies))
        for person_index, person in enumerate(clip.persons):
            xyz = np.ascontiguousarray(person.xyz, dtype="<f4")
            self.tracks.append((clip_index, person_index, self.total_frames, len(xyz), person.first_frame))
            data = xyz.tobytes()
            self.frames_file.write(data)
            self.frames_digest.update(data)
            self.total_frames += len(xyz)

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.frames_file.close()
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        try:
            self._finish()
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise

    def _finish(self) -> None:
        clips = np.array(self.clips, dtype=CLIP_DTYPE)
        np.save(self.tmp / "clips.npy", clips)
        np.save(self.tmp / "tracks.npy", np.array(self.tracks, dtype=TRACK_DTYPE))
        splits = None
        if self.benchmarks is not None:
            names = sorted(self.benchmarks)  # not the sources' order: the same data make the same store
            rows = [tuple(sides.get(name, -1) for name in names) for sides in self.membership]
            splits = np.array(rows, dtype=[(name, "i1") for name in names])
            np.save(self.tmp / SPLITS_FILE, splits)
        manifest = {
            "format": STORE_FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "star_version": __version__,
            "source_format": self.source_format,
            "source": self.source,
            "source_files": self.source_files,
            "clips": len(clips),
            "tracks": len(self.tracks),
            "two_person_clips": int((clips["persons"] == 2).sum()),
            "total_frames": self.total_frames,
            "frames_shape": [self.total_frames, NUM_JOINTS, 3],
            "frames_dtype": "<f4",
            "setups": sorted(int(s) for s in np.unique(clips["setup"])),
            "bytes": _bytes(self.tmp, len(clips)),
            "benchmarks": _benchmark_counts(clips, splits),
            "summary": self.summary,
            "content_sha256": _content_digest(self.tmp, self.frames_digest.digest()),
        }
        check(manifest, "manifest", self.out / "manifest.json")
        (self.tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        old = self.out.with_name(f"{self.out.name}.old-{os.getpid()}")
        if self.out.exists():
            self.out.rename(old)
        self.tmp.rename(self.out)
        shutil.rmtree(old, ignore_errors=True)


def _content_digest(folder: Path, frames_sha256: bytes) -> str:
    """sha256 of what the store holds: the frames' digest, then each table file by name (not the manifest,
    whose creation time differs between two writes of the same data)."""
    digest = hashlib.sha256(frames_sha256)
    for path in sorted(folder.glob("*.npy")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _is_replaceable(path: Path) -> bool:
    """An empty folder, or a store (its manifest says so): never a folder of anything else."""
    if not path.is_dir():
        return False
    if not any(path.iterdir()):
        return True
    try:
        return json.loads((path / "manifest.json").read_text()).get("format") == STORE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _bytes(folder: Path, clip_count: int) -> dict:
    """Bytes on disk (frames and both tables; the manifest is not counted) against what the padded
    (300, 2, 25, 3) float32 layout needs for the same clips."""
    on_disk = {path.name: path.stat().st_size for path in sorted(folder.iterdir())}
    compact = sum(on_disk.values())
    padded = clip_count * PADDED_FRAMES * PADDED_PERSONS * FRAME_BYTES
    return {"files": on_disk, "frames": on_disk["frames.f32"], "compact": compact, "padded_300x2": padded,
            "compact_over_padded": compact / padded if padded else None}


def _benchmark_counts(clips: np.ndarray, splits: np.ndarray | None) -> dict:
    """Clips on each side of every benchmark the store serves."""
    if splits is not None:
        return {name: {"train": int((splits[name] == 1).sum()), "test": int((splits[name] == 0).sum())}
                for name in splits.dtype.names}
    return {name: {side: int(len(benchmark.indices(clips, side))) for side in SIDES}
            for name, benchmark in BENCHMARKS.items()}


class CompactStore:
    """Read access to a store: the clip table, the track index and the memory-mapped frames."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest_path = self.path / "manifest.json"
        if not manifest_path.is_file():
            raise StoreError(f"{self.path} is not a data store (no manifest.json); make one with "
                             f"`star preprocess --raw DIR --out {self.path}`")
        try:
            self.manifest = read_result(manifest_path, "manifest")
            self.clips = np.load(self.path / "clips.npy")
            self.tracks = np.load(self.path / "tracks.npy")
            splits_path = self.path / SPLITS_FILE
            self.splits = np.load(splits_path) if splits_path.is_file() else None
        except ResultFileError as error:
            raise StoreError(f"{error}; make the store again (star preprocess or star import)") from error
        except (OSError, ValueError) as error:
            raise StoreError(f"{self.path}: an incomplete or damaged store ({error}); make it again") from error
        self._track_start = np.searchsorted(self.tracks["clip"], np.arange(len(self.clips) + 1))
        # Rows (frames x persons) of each clip; every clip has at least one track.
        self.clip_rows = np.add.reduceat(self.tracks["length"].astype(np.int64), self._track_start[:-1]) \
            if len(self.clips) else np.zeros(0, np.int64)
        self._frames: np.ndarray | None = None

    @property
    def frames(self) -> np.ndarray:
        """All frames (total_frames, 25, 3) float32, memory-mapped on first use (so once per worker process)."""
        if self._frames is None:
            shape = tuple(self.manifest["frames_shape"])
            self._frames = np.memmap(self.path / "frames.f32", dtype=self.manifest["frames_dtype"], mode="r",
                                     shape=shape) if shape[0] else np.zeros(shape, np.float32)
        return self._frames

    def __getstate__(self) -> dict:
        # A memory map is not sent to worker processes; each maps the file itself.
        return {**self.__dict__, "_frames": None}

    def __len__(self) -> int:
        return len(self.clips)

    def clip_tracks(self, clip: int) -> np.ndarray:
        """The track rows of clip number `clip`, person 0 first."""
        return self.tracks[self._track_start[clip]:self._track_start[clip + 1]]

    def track_frames(self, track: np.void) -> np.ndarray:
        """The frames of one track row, (length, 25, 3)."""
        return self.frames[track["offset"]:track["offset"] + track["length"]]

    def split(self, benchmark: str, side: str) -> np.ndarray:
        """Clip numbers of one side of a benchmark; a StoreError if the store cannot serve it.

        An imported store splits as its source's lists do; any other by the official rules.
        """
        spec = get_benchmark(benchmark)
        if self.splits is not None:
            if benchmark not in self.splits.dtype.names:
                raise StoreError(f"{self.path} was imported from {self.manifest['source_format']} data that splits "
                                 f"only {', '.join(self.splits.dtype.names)}, so it cannot serve {benchmark}")
            indices = np.flatnonzero(self.splits[benchmark] == (1 if check_side(side) == "train" else 0))
        elif spec.dataset == "ntu120" and self.clips["setup"].max(initial=0) <= NTU60_LAST_SETUP:
            raise StoreError(f"{self.path} holds only NTU 60 setups (S001-S017), so it cannot serve {benchmark}; "
                             "preprocess the NTU 120 files (S001-S032) into it")
        else:
            indices = spec.indices(self.clips, side)
        if len(indices) == 0:
            raise StoreError(f"{self.path} has no clip on the {side} side of {benchmark}")
        return indices
