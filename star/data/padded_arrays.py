"""The padded NTU RGB+D arrays of the CTR-GCN family (`NTU60_CS.npz`-style), in and out.

One `.npz` per benchmark holds `x_train` and `x_test`, (clips, 300, 150): per
frame two persons' 25 x 3 coordinates, zeros where a person is absent and after
a clip's end; and `y_train`, `y_test`, one-hot (clips, classes) or class
numbers (clips,). CTR-GCN's data/ntu*/seq_transformation.py writes them
centred on the first frame's spine middle and names them NTU60_CS, NTU60_CV,
NTU120_CSub and NTU120_CSet, which say the benchmark; any other name needs it
given. The arrays carry no sample names, so a clip is named after the array and
row it is first found in (`0:x_train[17]`, 0 the file's place in the import),
and the benchmark's sides are the arrays themselves. The four files hold the
same clips again and again (CTR-GCN cuts them from one array), so a clip met
again, identical in label and every coordinate, is stored once and joins the
later file's benchmark. An .npz whose x arrays are laid out (clips, 3, frames,
25, persons), as 2s-AGCN lays out its joints (its data_gen/ntu_gendata.py), is
read too; that project's own `.npy` + label-pickle files are not.

Uncompressed members (np.savez, as CTR-GCN writes them) are memory-mapped;
compressed ones are read whole into memory.
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from star.data.importing import (
    ImportSummary,
    SourceError,
    check_keypoints,
    clip_from_padded,
    clip_identity,
    padded_clip,
    write_store,
)
from star.data.ntu import ArraySample
from star.data.splits import BENCHMARKS
from star.data.store import PADDED_PERSONS as PERSONS
from star.data.store import CompactStore
from star.defaults import PADDED_FRAMES
from star.errors import InputError, existing_file
from star.io import write_atomic
from star.names import NPZ_BENCHMARKS
from star.skeleton import NUM_JOINTS

ARRAYS = {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")}


def benchmark_of(path: str | Path, given: str | None = None) -> str:
    """The benchmark an array file splits: `given`, or the one its CTR-GCN file name says."""
    if given is not None:
        return given
    stem = Path(path).stem
    if stem not in NPZ_BENCHMARKS:
        raise SourceError(path, f"which benchmark? The name is none of CTR-GCN's ({', '.join(NPZ_BENCHMARKS)}); "
                                "give it (--benchmark)")
    return NPZ_BENCHMARKS[stem]


def _persons_first(path: Path, key: str, x: np.ndarray) -> np.ndarray:
    """x as (clips, persons, frames, 25, 3), a view, from either layout."""
    if x.ndim == 3 and x.shape[2] == PERSONS * NUM_JOINTS * 3:
        return x.reshape(len(x), x.shape[1], PERSONS, NUM_JOINTS, 3).transpose(0, 2, 1, 3, 4)
    if x.ndim == 5 and x.shape[1] == 3 and x.shape[3] == NUM_JOINTS:
        return x.transpose(0, 4, 2, 3, 1)  # (N, C, T, V, M) -> (N, M, T, V, C)
    raise SourceError(path, f"{key}: shape {x.shape}, expected (clips, frames, {PERSONS * NUM_JOINTS * 3}) or "
                            f"(clips, 3, frames, {NUM_JOINTS}, persons)")


def _labels(path: Path, key: str, y: np.ndarray, clips: int, num_classes: int) -> np.ndarray:
    """Class numbers from one-hot rows or from numbers; each checked against the class count."""
    if y.ndim == 2 and y.shape[1] > 1:
        hot = y > 0
        rows = np.flatnonzero(hot.sum(axis=1) != 1)
        if len(rows):
            raise SourceError(path, f"{key}[{rows[0]}]: a one-hot row with {hot[rows[0]].sum()} positive entries")
        labels = hot.argmax(axis=1)
    elif y.dtype.kind in "iu" and (y.ndim == 1 or y.ndim == 2 and y.shape[1] == 1):
        labels = y.reshape(-1).astype(np.int64)
    else:
        raise SourceError(path, f"{key}: shape {y.shape} dtype {y.dtype}, expected one-hot (clips, classes) or "
                                "class numbers (clips,)")
    if len(labels) != clips:
        raise SourceError(path, f"{key} has {len(labels)} labels but its x array has {clips} clips")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise SourceError(path, f"{key}[{bad[0]}]: label {labels[bad[0]]} outside 0-{num_classes - 1}")
    return labels


def _member(path: Path, archive: zipfile.ZipFile, key: str) -> np.ndarray:
    """One array of an .npz, memory-mapped when stored uncompressed (np.savez), as the arrays run to gigabytes."""
    info = archive.getinfo(f"{key}.npy")
    with open(path, "rb") as handle:
        handle.seek(info.header_offset + 26)  # the local file header's name and extra-field lengths
        name_length, extra_length = struct.unpack("<HH", handle.read(4))
        handle.seek(info.header_offset + 30 + name_length + extra_length)
        version = np.lib.format.read_magic(handle) if info.compress_type == zipfile.ZIP_STORED else None
        if version in ((1, 0), (2, 0)):
            read_header = getattr(np.lib.format, f"read_array_header_{version[0]}_0")
            shape, fortran_order, dtype = read_header(handle)
            offset = handle.tell()
    if version not in ((1, 0), (2, 0)):  # compressed, or a header version without a public reader: read whole
        with archive.open(info) as member:
            return np.lib.format.read_array(member, allow_pickle=False)
    if dtype.hasobject:
        raise SourceError(path, f"{key}: an array of Python objects, expected numbers")
    if 0 in shape:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype, "r", offset, shape, "F" if fortran_order else "C")


def _read(path: Path) -> dict[str, np.ndarray]:
    """The four arrays of a CTR-GCN .npz; a SourceError naming a missing key or an unreadable file."""
    keys = [key for pair in ARRAYS.values() for key in pair]
    try:
        with zipfile.ZipFile(existing_file(path, ".npz file")) as archive:
            missing = [key for key in keys if f"{key}.npy" not in archive.namelist()]
            if missing:
                raise SourceError(path, f"key {missing[0]!r} missing (CTR-GCN's form holds {', '.join(keys)})")
            return {key: _member(path, archive, key) for key in keys}
    except (zipfile.BadZipFile, ValueError) as error:
        if isinstance(error, SourceError):
            raise
        raise SourceError(path, f"not a readable .npz ({error})") from error


def import_npz(paths: list[str | Path], out: str | Path, benchmark: str | None = None,
               progress: bool = True) -> ImportSummary:
    """Import padded array files into the store `out` (written whole or not at all); `benchmark` names the
    benchmark of a single file whose name does not say it."""
    paths = [Path(p) for p in paths]
    if benchmark is not None and len(paths) != 1:
        raise InputError(f"a given benchmark names the benchmark of one file, not of {len(paths)}")
    summary = ImportSummary(files=len(paths))
    sources, split_by = [], {}
    for number, path in enumerate(paths):
        name = benchmark_of(path, benchmark)
        if name not in BENCHMARKS:
            raise InputError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
        if name in split_by:
            raise SourceError(path, f"splits {name}, as {split_by[name]} does; import one file per benchmark")
        split_by[name] = path
        arrays = _read(path)
        for side, (x_key, y_key) in ARRAYS.items():
            x = _persons_first(path, x_key, arrays[x_key])
            labels = _labels(path, y_key, arrays[y_key], len(x), BENCHMARKS[name].num_classes)
            sources.append((number, path, name, side, x_key, x, labels))

    def clips() -> Iterator:
        for number, path, name, side, x_key, x, labels in sources:
            for row in range(len(x)):
                where = f"{x_key}[{row}]"
                keypoint = check_keypoints(path, where, x[row])
                sample = ArraySample(f"{number}:{where}", int(labels[row]))
                clip = clip_from_padded(keypoint, sample, summary, path, where)
                yield clip, {name: int(side == "train")}, clip_identity(clip)

    return write_store(out, "npz", paths, list(split_by), clips(), summary, sum(len(s[5]) for s in sources), progress)


def npz_arrays(store: CompactStore, benchmark: str) -> dict[str, np.ndarray]:
    """One benchmark of a store as CTR-GCN's arrays: (clips, frames, 150) float32 padded to 300 frames (or the
    longest clip), one-hot labels over the benchmark's classes."""
    arrays = {}
    classes = BENCHMARKS[benchmark].num_classes
    for side, (x_key, y_key) in ARRAYS.items():
        clips = store.split(benchmark, side)
        frames = max(PADDED_FRAMES, int(store.clips["frames"][clips].max()))
        x = np.stack([padded_clip(store, clip, PERSONS, frames) for clip in clips])  # (N, M, T, V, 3)
        arrays[x_key] = x.transpose(0, 2, 1, 3, 4).reshape(len(clips), frames, PERSONS * NUM_JOINTS * 3)
        arrays[y_key] = np.eye(classes, dtype=np.float64)[store.clips["label"][clips]]
    return arrays


def write_npz(store: CompactStore, path: str | Path, benchmark: str) -> Path:
    """Write `npz_arrays` as an .npz, atomically."""
    arrays = npz_arrays(store, benchmark)

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    write_atomic(path, save)
    return Path(path)


def write_npz_files(store: CompactStore, folder: str | Path) -> list[Path]:
    """CTR-GCN's four array files of a store, one per benchmark, under CTR-GCN's file names, into `folder`."""
    return [write_npz(store, Path(folder) / f"{stem}.npz", benchmark) for stem, benchmark in NPZ_BENCHMARKS.items()]
