"""The profiling batch: a fixed, recorded draw of test clips that every model sees.

The paper profiled "with sample dataset": 16 clips, STAR on their true
lengths, ST-GCN and ST-TR padded to 300 frames x 2 persons (its ST-GCN GMACs
are 16 x the cost of one padded clip). The draw is a seeded choice without
replacement from the test side of a benchmark, sorted by clip number, so the
same (store, benchmark, count, seed) gives the same clips on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from star.data.batching import ClipDataset, ClipSample, CompactBatch, PaddedBatch, PaddedCollate, collate_compact
from star.data.store import CompactStore, StoreError
from star.defaults import PADDED_FRAMES, PADDED_PERSONS, PROFILE_CLIPS, PROFILE_SEED
from star.errors import InputError


@dataclass
class ProfilingBatch:
    """Clips and where they came from; `compact()` and `padded(fill)` give them in each layout."""

    samples: list[ClipSample]
    names: list[str]
    source: dict  # store, benchmark, split, seed; empty for synthetic batches
    padded_frames: int = PADDED_FRAMES  # frames per clip of the padded layout (the papers': 300)

    def compact(self) -> CompactBatch:
        return collate_compact(self.samples)

    def padded(self, fill: str = "repeat") -> PaddedBatch:
        return PaddedCollate(self.padded_frames, fill=fill)(self.samples)

    @property
    def num_clips(self) -> int:
        return len(self.samples)

    @property
    def rows(self) -> int:
        return sum(len(s.xyz) for s in self.samples)

    def describe(self) -> dict:
        """Everything a reader needs to know which clips were profiled and how big each layout is."""
        persons = [int(s.person_ids.max()) + 1 for s in self.samples]
        compact = self.compact()
        # what STAR's forward takes (the labels are the loader's); the host bounds are not device memory
        compact_bytes = sum(t.numel() * t.element_size() for t in (compact.x, compact.clip_offsets, compact.clip_ids,
                                                                   compact.steps, compact.person_ids,
                                                                   compact.positions))
        padded_shape = [len(self.samples), 3, self.padded_frames, 25, PADDED_PERSONS]
        return {
            **self.source,
            "clips": len(self.samples),
            "total_frames": sum(s.frames for s in self.samples),
            "total_persons": sum(persons),
            "two_person_clips": sum(p == 2 for p in persons),
            "rows": self.rows,
            "compact": {"shape": [self.rows, 25, 3], "bytes": compact_bytes},
            "padded": {"shape": padded_shape, "bytes": int(np.prod(padded_shape)) * 4},
            "clip_list": [{"name": n, "frames": s.frames, "persons": p, "rows": len(s.xyz), "label": s.label}
                          for n, s, p in zip(self.names, self.samples, persons, strict=True)],
        }


def draw_batch(store: CompactStore, benchmark: str, clips: int = PROFILE_CLIPS, seed: int = PROFILE_SEED,
               padded_frames: int = PADDED_FRAMES) -> ProfilingBatch:
    """`clips` test clips of `benchmark`, chosen with `seed`; a StoreError if the split is empty or too small."""
    if clips < 1:
        raise InputError(f"a profiling batch needs at least one clip, got --clips {clips}")
    if padded_frames < 1:
        raise InputError(f"the padded layout needs at least one frame, got --padded-frames {padded_frames}")
    test = store.split(benchmark, "test")
    if clips > len(test):
        raise StoreError(f"{store.path}: the test side of {benchmark} has {len(test)} clips, fewer than the "
                         f"{clips} asked for (--clips)")
    chosen = np.sort(np.random.default_rng(seed).choice(test, size=clips, replace=False))
    dataset = ClipDataset(store, chosen)
    return ProfilingBatch([dataset[i] for i in range(len(chosen))], [str(n) for n in store.clips["name"][chosen]],
                          {"store": str(store.path), "benchmark": benchmark, "split": "test", "seed": seed},
                          padded_frames)


def uniform_batch(clips: int, frames: int, persons: int = 1, padded_frames: int = PADDED_FRAMES) -> ProfilingBatch:
    """`clips` synthetic clips of exactly `frames` frames and `persons` persons (for the sweep: only sizes matter)."""
    rows = frames * persons
    xyz = np.random.default_rng(0).standard_normal((rows, 25, 3)).astype(np.float32)
    sample = ClipSample(xyz, np.repeat(np.arange(persons), frames), np.tile(np.arange(frames), persons), frames, 0)
    return ProfilingBatch([sample] * clips, [f"uniform-{frames}x{persons}"] * clips, {}, padded_frames)
