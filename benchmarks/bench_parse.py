"""Parsing speed: synthetic NTU-size files through the parser, the body selection and `preprocess`.

    python benchmarks/bench_parse.py [--files 300] [--frames 100] [--workers 2]

Prints files/s and MB/s per worker for parsing alone and for parsing plus body
selection, then the whole `preprocess` (store written) with --workers processes,
and what that rate means for the 114,480 files of NTU 120 on 8 cores.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from star.data.ntu import read_skeleton
from star.data.preprocess import default_workers, load_clip, preprocess
from star.data.synthetic import TINY, generate

NTU120_FILES = 114_480


def _rate(label: str, function, paths: list[Path], megabytes: float, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for path in paths:
            function(path)
        best = min(best, time.perf_counter() - start)
    print(f"{label:<34} {len(paths) / best:9.1f} files/s {megabytes / best:8.1f} MB/s  (1 worker, best of {repeats})")
    return len(paths) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--frames", type=int, default=100, help="frames per file (NTU: 32-300, about 85 on average)")
    parser.add_argument("--workers", type=int, default=default_workers())
    args = parser.parse_args()

    spec = replace(TINY, actions=(1,), clips_per_action=args.files, min_frames=args.frames, max_frames=args.frames,
                   spurious_bodies=False)
    with tempfile.TemporaryDirectory() as tmp:
        paths = generate(Path(tmp) / "raw", spec)
        megabytes = sum(p.stat().st_size for p in paths) / 1e6
        print(f"{len(paths)} one-person files of {args.frames} frames, {megabytes / len(paths):.2f} MB each")
        _rate("parse (x, y, z)", read_skeleton, paths, megabytes)
        _rate("parse (all 12 joint fields)", lambda p: read_skeleton(p, all_fields=True), paths, megabytes)
        per_worker = _rate("parse + body selection", load_clip, paths, megabytes)
        start = time.perf_counter()
        preprocess([Path(tmp) / "raw"], Path(tmp) / "store", workers=args.workers, progress=False)
        elapsed = time.perf_counter() - start
        print(f"{'preprocess, store written':<34} {len(paths) / elapsed:9.1f} files/s {megabytes / elapsed:8.1f} MB/s"
              f"  ({args.workers} workers, one run)")
    print(f"NTU 120 ({NTU120_FILES} files) at the per-worker rate on 8 workers: "
          f"{NTU120_FILES / (8 * per_worker) / 60:.1f} min")


if __name__ == "__main__":
    main()
