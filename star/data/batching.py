"""Batches from a compact store: compact ones for STAR, padded ones for the baselines.

A compact batch concatenates the tracks of its clips along the first axis: row
r is one person in one frame, `clip_ids[r]` says which clip of the batch it
belongs to, `positions[r]` its time step on its clip's timeline (both persons
of a clip share one clock; a track restarts at its `first_frame`, which is 0
unless the person entered late). The rows of a clip are contiguous, person 0
first, so `clip_offsets` (B + 1,) delimits each clip as one segment, and
`steps[r]` is the row's number within its clip. `bounds` is clip_offsets on
the host: moving a batch to a device leaves it there, so a model can size and
cut its work without reading the device back.

A padded batch is the (B, 3, 300, 25, 2) tensor ST-GCN-style code expects:
channel (x, y, z), frame, joint, person. It is built at load time, never
stored. Clips longer than 300 frames are cut to their first 300; shorter clips
are filled by repeating the clip from its start (`fill="repeat"`, the rule the
STAR paper's Figure 2 describes and ST-TR's preprocessing uses) or with zeros
(`fill="zero"`, ST-GCN's own NTU data). A missing second person is zeros, as
are frames of a person's span it does not cover.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from star.data.store import CompactStore
from star.defaults import PADDED_FRAMES, PADDED_PERSONS
from star.errors import InputError
from star.names import FILLS


@dataclass
class ClipSample:
    """One clip as it leaves the store: all its rows, person 0 first."""

    xyz: np.ndarray  # (rows, 25, 3) float32
    person_ids: np.ndarray  # (rows,) int64
    positions: np.ndarray  # (rows,) int64
    frames: int
    label: int


class _Tensors:
    """Moving a dataclass of tensors as a whole (device transfer, pinned memory for the loader)."""

    def to(self, device: torch.device | str, non_blocking: bool = False):
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self):
        return self._map(torch.Tensor.pin_memory)

    def _map(self, function):
        """A copy with `function` applied to every tensor field; host fields (plain values) stay as they are."""
        return type(self)(**{f.name: function(value) if isinstance(value := getattr(self, f.name), torch.Tensor)
                             else value for f in fields(self)})

    @property
    def num_clips(self) -> int:
        return len(self.labels)


@dataclass
class CompactBatch(_Tensors):
    """Clips concatenated along rows: x (N, 25, 3) with per-row clip, person and time step."""

    x: torch.Tensor  # (N, 25, 3) float32
    clip_ids: torch.Tensor  # (N,) int64, 0..B-1
    steps: torch.Tensor  # (N,) int64, the row's number within its clip, from 0
    person_ids: torch.Tensor  # (N,) int64, 0 or 1
    positions: torch.Tensor  # (N,) int64
    clip_offsets: torch.Tensor  # (B + 1,) int64, rows of clip b are clip_offsets[b]:clip_offsets[b+1]
    labels: torch.Tensor  # (B,) int64
    bounds: tuple[int, ...]  # clip_offsets on the host, where it stays when the batch moves to a device


@dataclass
class PaddedBatch(_Tensors):
    """Fixed-size clips: x (B, 3, T, 25, M), T = 300 frames and M = 2 persons by default."""

    x: torch.Tensor  # (B, 3, T, 25, M) float32
    labels: torch.Tensor  # (B,) int64


class ClipDataset(Dataset):
    """The clips `indices` of a store; item k is a ClipSample of clip indices[k]."""

    def __init__(self, store: CompactStore, indices: np.ndarray):
        self.store = store
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> ClipSample:
        clip = int(self.indices[item])
        tracks = self.store.clip_tracks(clip)
        xyz = np.concatenate([self.store.track_frames(t) for t in tracks])  # (rows, 25, 3), copied out of the map
        person_ids = np.repeat(tracks["person"].astype(np.int64), tracks["length"])
        positions = np.concatenate([t["first_frame"] + np.arange(t["length"]) for t in tracks])
        row = self.store.clips[clip]
        return ClipSample(xyz, person_ids, positions, int(row["frames"]), int(row["label"]))

    def rows(self) -> np.ndarray:
        """Rows (frames x persons) of every clip of the dataset: the cost of a clip in a compact batch."""
        return self.store.clip_rows[self.indices]


def collate_compact(samples: list[ClipSample]) -> CompactBatch:
    """Concatenate clips along rows."""
    rows = np.array([len(s.xyz) for s in samples])
    offsets = np.concatenate([[0], np.cumsum(rows)])
    return CompactBatch(
        x=torch.from_numpy(np.concatenate([s.xyz for s in samples])),
        clip_ids=torch.from_numpy(np.repeat(np.arange(len(samples)), rows)),
        steps=torch.from_numpy(np.arange(offsets[-1]) - np.repeat(offsets[:-1], rows)),
        person_ids=torch.from_numpy(np.concatenate([s.person_ids for s in samples])),
        positions=torch.from_numpy(np.concatenate([s.positions for s in samples])),
        clip_offsets=torch.from_numpy(offsets),
        labels=torch.tensor([s.label for s in samples], dtype=torch.int64),
        bounds=tuple(offsets.tolist()),
    )


def pad_clip(sample: ClipSample, frames: int = PADDED_FRAMES, persons: int = PADDED_PERSONS,
             fill: str = "repeat") -> np.ndarray:
    """One clip in the padded layout (3, frames, 25, persons); see the module docstring for the rules."""
    if fill not in FILLS:
        raise ValueError(f"unknown fill {fill!r}; choose one of {FILLS}")
    timeline = np.zeros((sample.frames, persons, 25, 3), dtype=np.float32)  # (T_clip, M, V, C)
    keep = sample.person_ids < persons
    timeline[sample.positions[keep], sample.person_ids[keep]] = sample.xyz[keep]
    if sample.frames >= frames:
        fixed = timeline[:frames]
    elif fill == "repeat":
        fixed = timeline[np.arange(frames) % sample.frames]
    else:
        fixed = np.concatenate([timeline, np.zeros((frames - sample.frames, persons, 25, 3), np.float32)])
    return np.ascontiguousarray(fixed.transpose(3, 0, 2, 1))  # (C, T, V, M)


class PaddedCollate:
    """Collate function making a PaddedBatch (picklable, for loader worker processes)."""

    def __init__(self, frames: int = PADDED_FRAMES, persons: int = PADDED_PERSONS, fill: str = "repeat"):
        if fill not in FILLS:
            raise ValueError(f"unknown fill {fill!r}; choose one of {FILLS}")
        self.frames, self.persons, self.fill = frames, persons, fill

    def __call__(self, samples: list[ClipSample]) -> PaddedBatch:
        x = np.stack([pad_clip(s, self.frames, self.persons, self.fill) for s in samples])
        return PaddedBatch(torch.from_numpy(x), torch.tensor([s.label for s in samples], dtype=torch.int64))


class ClipBatchSampler(Sampler[list[int]]):
    """Batches of dataset positions, reshuffled each epoch from (seed, epoch) alone.

    With `group_by_length`, the shuffled clips are cut into pools of
    `pool_batches` batches, each pool is sorted by clip cost (`lengths`) and cut
    into batches, and the batch order is shuffled: batches hold clips of similar
    length (less imbalance per batch) while every epoch still sees a new order.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, shuffle: bool = True, seed: int = 0,
                 group_by_length: bool = False, drop_last: bool = False, pool_batches: int = 50):
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        self.lengths = np.asarray(lengths)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.group_by_length, self.drop_last, self.pool_batches = group_by_length, drop_last, pool_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[np.ndarray]:
        """This epoch's batches, as arrays of dataset positions."""
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths)) if self.shuffle else np.arange(len(self.lengths))
        if self.group_by_length:
            pool = self.batch_size * self.pool_batches
            order = np.concatenate([chunk[np.argsort(self.lengths[chunk], kind="stable")]
                                    for chunk in np.split(order, range(pool, len(order), pool))])
        batches = np.split(order, range(self.batch_size, len(order), self.batch_size))
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches = batches[:-1]
        if self.group_by_length and self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self):
        return (batch.tolist() for batch in self.batches())

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)


class ShardedBatchSampler(Sampler[list[int]]):
    """One process's share of every batch of a ClipBatchSampler, cut into micro-batches.

    Process `rank` of `world` takes clips rank, rank + world, ... of each batch,
    so the shares of all processes make up the batch again and a batch means
    the same clips however many processes train; each share is then cut into
    at most `accumulate` micro-batches (gradient accumulation). `steps()` says
    which micro-batches make one optimiser step and how many clips the whole
    batch holds (the divisor of the summed loss). With `drop_short`, a batch
    with fewer clips than processes is skipped (training: every process must
    take part in every step); without it, empty shares are simply left out
    (evaluation).
    """

    def __init__(self, batches: ClipBatchSampler, rank: int = 0, world: int = 1, accumulate: int = 1,
                 drop_short: bool = False):
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not one of the {world} processes")
        if accumulate < 1:
            raise InputError(f"accumulate must be at least 1, got {accumulate}")
        self.batch_sampler = batches
        self.rank, self.world, self.accumulate, self.drop_short = rank, world, accumulate, drop_short

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)

    def steps(self) -> list[tuple[list[list[int]], int]]:
        """Per optimiser step: this process's micro-batches and the clips in the whole batch."""
        steps = []
        for batch in self.batch_sampler.batches():
            if self.drop_short and len(batch) < self.world:
                continue
            share = batch[self.rank::self.world]
            if len(share):
                parts = np.array_split(share, min(self.accumulate, len(share)))
                steps.append(([part.tolist() for part in parts], len(batch)))
        return steps

    def __iter__(self):
        return (part for parts, _ in self.steps() for part in parts)

    def __len__(self) -> int:
        return sum(len(parts) for parts, _ in self.steps())


def clip_loader(store: CompactStore, indices: np.ndarray, layout: str, batch_size: int, shuffle: bool = False,
                seed: int = 0, group_by_length: bool = False, workers: int = 0, fill: str = "repeat",
                drop_last: bool = False, frames: int = PADDED_FRAMES, rank: int = 0, world: int = 1,
                accumulate: int = 1, drop_short: bool = False, pin_memory: bool = False) -> DataLoader:
    """A DataLoader of CompactBatch (`layout="compact"`) or PaddedBatch (`layout="padded"`, `frames` long).

    Its `batch_sampler` is a ShardedBatchSampler (process `rank` of `world`, `accumulate` micro-batches
    per batch). The loader draws from its own generator, never from torch's global one, so loading
    cannot shift the random numbers dropout draws.
    """
    collates = {"compact": collate_compact, "padded": PaddedCollate(frames=frames, fill=fill)}
    if layout not in collates:
        raise ValueError(f"unknown batch layout {layout!r}; choose one of {sorted(collates)}")
    dataset = ClipDataset(store, indices)
    batches = ClipBatchSampler(dataset.rows(), batch_size, shuffle, seed, group_by_length, drop_last)
    sampler = ShardedBatchSampler(batches, rank, world, accumulate, drop_short)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collates[layout], num_workers=workers,
                      persistent_workers=workers > 0, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(seed))
