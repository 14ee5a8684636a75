"""Import speed: pyskl-format annotations already in memory (and CTR-GCN arrays on disk) into a compact store.

    python benchmarks/bench_import.py [--clips 20000] [--seed 0]

Makes NTU-like clips (32-300 frames, median 70, a second person in about one
in five, float16 as pyskl ships them), imports them with one process (the
importer uses one core) and prints clips/s for the pickle's content in memory,
for the same clips from a CTR-GCN .npz on disk, and what the first rate means
for NTU 120's 113,945 clips.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from star.data.ntu import SampleName
from star.data.padded_arrays import import_npz, write_npz
from star.data.pyskl import import_pyskl
from star.data.splits import XSUB60_TRAIN_SUBJECTS, XVIEW_TRAIN_CAMERAS
from star.data.store import CompactStore
from star.data.synthetic import NTU_LENGTH_SIGMA, NTU_MEDIAN_FRAMES, NTU_TWO_PERSON_SHARE
from star.defaults import SYNTH_FRAMES

NTU120_CLIPS = 113_945
FIRST_TEST_SUBJECT_CLIP = 60 * 3 * 2  # clip index 360 (0-based) is subject 3's first: 60 actions x 3 cameras
                                      # for each of subjects 1 and 2 before it


def ntu_like_content(clips: int, seed: int) -> dict:
    """A pyskl annotation pickle's content: NTU 60 sample names in index order, split by subject and camera."""
    rng = np.random.default_rng(seed)
    frames = np.clip(rng.lognormal(np.log(NTU_MEDIAN_FRAMES), NTU_LENGTH_SIGMA, clips), *SYNTH_FRAMES).astype(int)
    annotations = []
    split = {"xsub_train": [], "xsub_val": [], "xview_train": [], "xview_val": []}
    for index, length in enumerate(frames):  # actions, then cameras, then subjects: both sides of each split early
        rest, action = divmod(index, 60)
        rest, camera = divmod(rest, 3)
        rest, subject = divmod(rest, 40)
        setup, replication = divmod(rest, 2)
        name = str(SampleName(setup + 1, camera + 1, subject + 1, replication + 1, action + 1))
        persons = 2 if rng.random() < NTU_TWO_PERSON_SHARE else 1
        keypoint = rng.normal(0, 0.5, (persons, length, 25, 3)).astype(np.float16)
        annotations.append({"frame_dir": name, "label": action, "total_frames": int(length), "keypoint": keypoint})
        split["xsub_train" if subject + 1 in XSUB60_TRAIN_SUBJECTS else "xsub_val"].append(name)
        split["xview_train" if camera + 1 in XVIEW_TRAIN_CAMERAS else "xview_val"].append(name)
    return {"split": split, "annotations": annotations}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=20_000,
                        help=f"{FIRST_TEST_SUBJECT_CLIP + 1} to 244,800 (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not FIRST_TEST_SUBJECT_CLIP < args.clips <= 40 * 6120:
        raise SystemExit(f"--clips: {FIRST_TEST_SUBJECT_CLIP + 1} to 244,800 (NTU 60's 40 subjects x 6,120 names "
                         "each; the CTR-GCN file needs clips of a cross-subject test subject, the first at clip "
                         f"{FIRST_TEST_SUBJECT_CLIP + 1})")

    content = ntu_like_content(args.clips, args.seed)
    rows = sum(a["keypoint"].shape[0] * a["keypoint"].shape[1] for a in content["annotations"])
    print(f"{args.clips} clips, {rows / args.clips:.0f} person-frames each on average")
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "ntu60_3danno.pkl"
        source.write_bytes(b"")  # the manifest records the file; its content is already in memory
        start = time.perf_counter()
        import_pyskl([source], Path(tmp) / "store", progress=False, loaded=[content])
        elapsed = time.perf_counter() - start
        rate = args.clips / elapsed
        print(f"{'pyskl, content in memory':<28} {rate:9.0f} clips/s  (1 process, store written)")
        write_npz(CompactStore(Path(tmp) / "store"), Path(tmp) / "NTU60_CS.npz", "ntu60/xsub")
        start = time.perf_counter()
        import_npz([Path(tmp) / "NTU60_CS.npz"], Path(tmp) / "from_npz", progress=False)
        elapsed_npz = time.perf_counter() - start
        print(f"{'CTR-GCN .npz on disk':<28} {args.clips / elapsed_npz:9.0f} clips/s  (1 process, store written)")
    print(f"NTU 120 ({NTU120_CLIPS:,} clips) from pyskl's pickle at that rate: {NTU120_CLIPS / rate:.0f} s")


if __name__ == "__main__":
    main()
