"""pyskl / mmaction2 NTU RGB+D 3D annotation pickles (`ntu60_3danno.pkl`, `ntu120_3danno.pkl`), in and out.

A pickle holds a dict: `split`, lists of sample names per split (`xsub_train`,
`xsub_val`, then `xview_*` for NTU 60 or `xset_*` for NTU 120), and
`annotations`, one dict per clip with `frame_dir` (the sample name), `label`
(action - 1), `total_frames` and `keypoint` (persons, frames, 25, 3); pyskl's
own files hold float16 coordinates (its tools/data/ntu_preproc.py), written
already denoised: at most two persons, frames without a body left out, a
second person zero where it is not seen.

Several pickles may go into one store (NTU 60's clips are NTU 120's setups
S001-S017): a clip in two of them must hold the same coordinates in both, and
each benchmark takes its membership from the pickle that lists it. Unpickling
runs whatever code the file names, as it does in pyskl: import only pickles
you trust.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from numbers import Integral
from pathlib import Path

import numpy as np

from star.data.importing import ImportSummary, SourceError, check_keypoints, clip_from_padded, padded_clip, write_store
from star.data.ntu import SampleName, SkeletonFileError, parse_name
from star.data.splits import BENCHMARKS, NTU60_LAST_SETUP
from star.data.store import CompactStore
from star.errors import existing_file
from star.io import write_atomic
from star.names import PYSKL_CRITERIA, PYSKL_FILES

ANNOTATION_KEYS = ("frame_dir", "label", "keypoint")
# a split list's name: criterion and side; the data set decides which benchmark the criterion is
SIDE_OF_LIST = {"train": 1, "val": 0}


def load_pyskl(path: str | Path) -> dict:
    """The unpickled content of an annotation pickle; a SourceError if it is not a pickle of a dict."""
    try:
        with open(existing_file(path, "pyskl pickle"), "rb") as handle:
            data = pickle.load(handle)
    except (OSError, MemoryError):
        raise
    except Exception as error:  # unpickling raises whatever the bytes make it raise
        raise SourceError(path, f"not a readable pickle ({type(error).__name__}: {error})") from error
    return data


def _dataset(path: str | Path, data) -> str:
    """Check the top level (`split` and `annotations`) and say which data set the pickle splits: NTU 120 if
    it has xset lists, NTU 60 if xview lists, otherwise (xsub alone) NTU 120 if a clip is not in NTU 60."""
    if not isinstance(data, dict) or not {"split", "annotations"} <= data.keys():
        keys = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise SourceError(path, f"expected a dict with keys 'split' and 'annotations' (pyskl's format), got {keys}")
    if not isinstance(data["split"], dict) or not isinstance(data["annotations"], list):
        raise SourceError(path, "'split' must be a dict of name lists and 'annotations' a list of dicts")
    for key, listed in data["split"].items():
        if not isinstance(listed, list) or not all(isinstance(text, str) for text in listed):
            raise SourceError(path, f"split[{key!r}]: expected a list of sample names")
    criteria = {str(key).partition("_")[0] for key in data["split"]}
    if {"xset", "xview"} <= criteria:
        raise SourceError(path, "'split' has both xview lists (NTU 60) and xset lists (NTU 120); which data set?")
    if criteria & {"xset", "xview"}:
        return "ntu120" if "xset" in criteria else "ntu60"
    for annotation in data["annotations"]:
        try:
            name = parse_name(str(annotation["frame_dir"]))
        except (SkeletonFileError, KeyError, TypeError):
            continue  # _check_annotation names the annotation
        if name.setup > NTU60_LAST_SETUP or name.action > BENCHMARKS["ntu60/xsub"].num_classes:
            return "ntu120"
    return "ntu60"


def _check_annotation(path: Path, index: int, annotation, num_classes: int) -> SampleName:
    where = f"annotations[{index}]"
    if not isinstance(annotation, dict) or not set(ANNOTATION_KEYS) <= annotation.keys():
        raise SourceError(path, f"{where}: expected a dict with keys {', '.join(ANNOTATION_KEYS)}")
    try:
        name = parse_name(str(annotation["frame_dir"]))
    except SkeletonFileError as error:
        raise SourceError(path, f"{where}: frame_dir {annotation['frame_dir']!r} is not an NTU sample name "
                                f"(SsssCcccPpppRrrrAaaa)") from error
    label = annotation["label"]
    if not isinstance(label, Integral) or isinstance(label, bool) or not 0 <= label < num_classes:
        raise SourceError(path, f"{where} ({name}): label {label!r} outside 0-{num_classes - 1}")
    if label != name.label:
        raise SourceError(path, f"{where} ({name}): label {label} but the name says action {name.action} "
                                f"(label {name.label})")
    keypoint = check_keypoints(path, f"{where} ({name}) keypoint", annotation["keypoint"])
    total = annotation.get("total_frames", keypoint.shape[1])
    if total != keypoint.shape[1]:
        raise SourceError(path, f"{where} ({name}): total_frames {total} but keypoint has {keypoint.shape[1]} frames")
    return name


def import_pyskl(paths: list[str | Path], out: str | Path, progress: bool = True,
                 loaded: list[dict] | None = None) -> ImportSummary:
    """Import annotation pickles into the store `out` (written whole or not at all).

    `loaded`: the pickles' content already in memory (one per path), as the import benchmark times it.
    """
    paths = [Path(p) for p in paths]
    summary = ImportSummary(files=len(paths))
    found: dict[str, tuple[SampleName, Path, int, np.ndarray]] = {}  # by name: the first annotation of each
    membership: dict[str, dict[str, int]] = {}
    benchmarks: dict[str, int] = {}  # each benchmark and the number of the pickle whose lists define it
    for number, (path, data) in enumerate(zip(paths, loaded or map(load_pyskl, paths), strict=True)):
        dataset = _dataset(path, data)
        names = set()
        for index, annotation in enumerate(data["annotations"]):
            name = _check_annotation(path, index, annotation, BENCHMARKS[f"{dataset}/xsub"].num_classes)
            text, keypoint = str(name), annotation["keypoint"]
            if text in names:
                raise SourceError(path, f"annotations[{index}]: {name} is annotated twice")
            names.add(text)
            if text not in found:
                found[text] = (name, path, index, keypoint)
            elif not np.array_equal(found[text][3], keypoint):
                raise SourceError(path, f"annotations[{index}]: {name} differs from its annotation in {found[text][1]}")
        for key, listed in data["split"].items():
            criterion, _, side = str(key).partition("_")
            if criterion not in PYSKL_CRITERIA[dataset] or side not in SIDE_OF_LIST:
                summary.ignored_splits.append(f"{path.name}: {key}")
                continue
            benchmark = f"{dataset}/{criterion}"
            if benchmarks.setdefault(benchmark, number) != number:
                raise SourceError(path, f"split[{key!r}]: {benchmark} is split by {paths[benchmarks[benchmark]]} "
                                        "too; import one pickle per data set")
            for position, text in enumerate(listed):
                if text not in names:
                    raise SourceError(path, f"split[{key!r}][{position}]: {text!r} has no annotation in this file")
                sides = membership.setdefault(text, {})
                if sides.setdefault(benchmark, SIDE_OF_LIST[side]) != SIDE_OF_LIST[side]:
                    raise SourceError(path, f"split[{key!r}][{position}]: {text} is on both sides of {benchmark}")
    if not benchmarks:
        raise SourceError(", ".join(map(str, paths)), "no split list names an NTU benchmark (xsub, xview, xset)")

    def clips() -> Iterator:
        for text in sorted(found):
            name, path, index, keypoint = found[text]
            clip = clip_from_padded(keypoint, name, summary, path, f"annotations[{index}] ({text})")
            yield clip, membership.get(text, {}), None

    return write_store(out, "pyskl", paths, list(benchmarks), clips(), summary, len(found), progress)


def pyskl_content(store: CompactStore, dataset: str, dtype=np.float32) -> dict:
    """A store's clips of `dataset` ('ntu60' or 'ntu120') as pyskl's annotation pickle holds them, with the
    store's split of each benchmark of that data set as the split lists."""
    split, members = {}, set()
    for criterion in PYSKL_CRITERIA[dataset]:
        for side, value in SIDE_OF_LIST.items():
            clips = store.split(f"{dataset}/{criterion}", "train" if value else "test")
            split[f"{criterion}_{side}"] = [str(name) for name in store.clips["name"][clips]]
            members.update(clips.tolist())
    annotations = []
    for clip in sorted(members):
        keypoint = padded_clip(store, clip, dtype=dtype)
        row = store.clips[clip]
        annotations.append({"frame_dir": str(row["name"]), "label": int(row["label"]),
                            "total_frames": keypoint.shape[1], "keypoint": keypoint})
    return {"split": split, "annotations": annotations}


def write_pyskl(store: CompactStore, path: str | Path, dataset: str, dtype=np.float32) -> Path:
    """Write `pyskl_content` as a pickle, atomically."""
    content = pyskl_content(store, dataset, dtype)

    def dump(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            pickle.dump(content, handle, protocol=pickle.HIGHEST_PROTOCOL)

    write_atomic(path, dump)
    return Path(path)



def write_pyskl_files(store: CompactStore, folder: str | Path) -> list[Path]:
    """Both of pyskl's pickles of a store (NTU 60 and NTU 120), under pyskl's file names, into `folder`."""
    return [write_pyskl(store, Path(folder) / file, dataset) for dataset, file in PYSKL_FILES.items()]
