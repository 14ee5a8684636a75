"""Synthetic NTU RGB+D: real-format `.skeleton` files with motion a model can learn.

Every action class moves a class-specific group of joints along a class-specific
direction and rhythm; every clip varies that motion (amplitude, speed, phase),
its place and heading in front of the camera, its length and its sensor noise.
Two-person (mutual) classes put a second performer opposite the first, both
stepping towards each other. The files also carry what real NTU files carry and
preprocessing must cope with: a spurious body (a short flicker, a flat, wide,
furniture-like detection or a brief person-shaped ghost), frames with no body, a performer whose tracking
ID changes mid-clip, and a second person who enters a few frames late.
Everything is drawn from one seed, so the same seed writes the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from star.data.batching import ClipSample
from star.data.ntu import SampleName
from star.defaults import SYNTH_FRAMES, SYNTH_MIN_FRAMES
from star.errors import InputError
from star.skeleton import NUM_JOINTS

# Both NTU 60 (A050-A060) and NTU 120 (A106-A120) mutual actions.
MUTUAL_ACTIONS = frozenset(range(50, 61)) | frozenset(range(106, 121))

# A standing performer facing the camera, metres, +y up, joint order of star.skeleton.
_REST_POSE = np.array([
    [0.00, 0.00, 0.00], [0.00, 0.30, 0.00], [0.00, 0.58, 0.00], [0.00, 0.72, 0.02],
    [-0.18, 0.50, 0.00], [-0.24, 0.24, 0.00], [-0.27, 0.02, 0.02], [-0.28, -0.06, 0.03],
    [0.18, 0.50, 0.00], [0.24, 0.24, 0.00], [0.27, 0.02, 0.02], [0.28, -0.06, 0.03],
    [-0.09, -0.02, 0.00], [-0.10, -0.44, 0.02], [-0.10, -0.84, 0.00], [-0.10, -0.90, 0.08],
    [0.09, -0.02, 0.00], [0.10, -0.44, 0.02], [0.10, -0.84, 0.00], [0.10, -0.90, 0.08],
    [0.00, 0.52, 0.00], [-0.29, -0.13, 0.04], [-0.24, -0.05, 0.06], [0.29, -0.13, 0.04], [0.24, -0.05, 0.06],
])

# Moving joint groups, 0-based, root first: the farther down the chain, the larger the motion.
_GROUPS = (
    (4, 5, 6, 7, 21, 22),  # left arm
    (8, 9, 10, 11, 23, 24),  # right arm
    (12, 13, 14, 15),  # left leg
    (16, 17, 18, 19),  # right leg
    (2, 3),  # head
    (1, 20, 2, 3, 4, 8),  # upper body
)


@dataclass(frozen=True)
class SynthSpec:
    """What to generate: which actions, how many clips each, how long, from which seed."""

    actions: tuple[int, ...]
    clips_per_action: int
    min_frames: int = SYNTH_FRAMES[0]
    max_frames: int = SYNTH_FRAMES[1]
    median_frames: int | None = None  # None: lengths log-uniform over min..max; else log-normal around it
    seed: int = 0
    noise_m: float = 0.01
    spurious_bodies: bool = True

    def __post_init__(self):
        if not SYNTH_MIN_FRAMES <= self.min_frames <= self.max_frames:
            raise InputError(f"synthetic clip lengths {self.min_frames}-{self.max_frames}: the shortest must be at "
                             f"least {SYNTH_MIN_FRAMES} frames (a switched tracking ID keeps 12 either side) and "
                             "at most the longest")
        if self.median_frames is not None and not self.min_frames <= self.median_frames <= self.max_frames:
            raise InputError(f"synthetic median clip length {self.median_frames} is outside the lengths "
                             f"{self.min_frames}-{self.max_frames}")


# The tiny set: four NTU 60 single-person actions, two NTU 60 mutual ones, one NTU 120
# single and one NTU 120 mutual action; 24 clips each cover both sides of every benchmark.
TINY = SynthSpec(actions=(1, 8, 23, 43, 50, 58, 82, 106), clips_per_action=24)

# NTU-like clip lengths, the benchmarks' (benchmarks/): 32-300 frames, log-normal around a median of 70
# frames, and a second person in about one clip in five.
NTU_MEDIAN_FRAMES = 70
NTU_LENGTH_SIGMA = 0.45
NTU_TWO_PERSON_SHARE = 0.2

# The NTU-like set: four NTU 60 single-person actions and one mutual one (a second person in one clip in
# five), 64 clips each, so that the cross-subject test side has 80.
NTU_LIKE = SynthSpec(actions=(1, 8, 23, 43, 50), clips_per_action=64, median_frames=NTU_MEDIAN_FRAMES)


def _length(rng: np.random.Generator, spec: SynthSpec) -> int:
    """One clip's frame count: log-uniform over the spec's lengths, or log-normal around its median."""
    if spec.median_frames is None:
        drawn = np.exp(rng.uniform(np.log(spec.min_frames), np.log(spec.max_frames)))
    else:
        drawn = rng.lognormal(np.log(spec.median_frames), NTU_LENGTH_SIGMA)
    return int(np.clip(np.round(drawn), spec.min_frames, spec.max_frames))


def tiny_names(spec: SynthSpec = TINY) -> list[SampleName]:
    """Sample names covering both sides of every benchmark for each action.

    NTU 60 actions are set in setups 1-17 and NTU 120's new actions in 18-32, as
    in the real data. Cameras cycle 1-3, subjects cycle over three training and
    one test subject of the cross-subject lists, setups alternate even and odd.
    """
    names = []
    for action in spec.actions:
        new_in_120 = action > 60
        subjects = (45, 46, 47, 41) if new_in_120 else (1, 2, 4, 3)
        for k in range(spec.clips_per_action):
            setup = 18 + k % 15 if new_in_120 else 1 + k % 17
            names.append(SampleName(setup, 1 + k % 3, subjects[k % 4], 1 + (k // 12) % 2, action))
    if len(set(names)) != len(names):
        raise InputError("synthetic spec produces duplicate sample names; lower clips_per_action")
    return names


def _yaw(angle: float) -> np.ndarray:
    cos, sin = np.cos(angle), np.sin(angle)
    return np.array([[cos, 0.0, sin], [0.0, 1.0, 0.0], [-sin, 0.0, cos]])


def _action_motion(action: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-joint displacement amplitude (25, 3), cycles per clip (2,), phase offsets (2,) of an action."""
    rng = np.random.default_rng(10_000 + action)
    amplitude = np.zeros((NUM_JOINTS, 3))
    for component, group in enumerate((_GROUPS[action % len(_GROUPS)], _GROUPS[(action // 3) % len(_GROUPS)])):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        reach = np.linspace(0.3, 1.0, len(group))[:, None]
        amplitude[list(group)] += reach * direction * (0.25 if component == 0 else 0.12)
    cycles = np.array([1 + action % 3, 2 + action % 2], dtype=float)
    return amplitude, cycles, rng.uniform(0, 2 * np.pi, size=2)


def _performer(action: int, frames: int, rng: np.random.Generator, heading: float, place: np.ndarray,
               step: np.ndarray, noise_m: float) -> np.ndarray:
    """One performer's camera-space joints (frames, 25, 3)."""
    amplitude, cycles, phases = _action_motion(action)
    time = np.linspace(0.0, 1.0, frames)[:, None, None] * rng.uniform(0.8, 1.2)
    shift = rng.uniform(0, 2 * np.pi)
    wave = (np.sin(2 * np.pi * cycles[0] * time + phases[0] + shift)
            + 0.5 * np.sin(2 * np.pi * cycles[1] * time + phases[1] + shift))
    pose = _REST_POSE * rng.uniform(0.9, 1.1) + amplitude * wave * rng.uniform(0.8, 1.2)  # (frames, 25, 3)
    pose = pose @ _yaw(heading).T + place + step * time
    return pose + rng.normal(scale=noise_m, size=pose.shape)


def _furniture(frames: int, rng: np.random.Generator) -> np.ndarray:
    """A wide, flat, nearly still detection: what Kinect reports for a sofa or a table."""
    flat = np.stack([np.linspace(-0.8, 0.8, NUM_JOINTS), rng.uniform(-0.05, 0.05, NUM_JOINTS),
                     np.zeros(NUM_JOINTS)], axis=1) + np.array([rng.uniform(-1.0, 1.0), -0.5, 3.8])
    return flat + rng.normal(scale=0.003, size=(frames, NUM_JOINTS, 3))


@dataclass
class SynthBody:
    """One tracked body of a synthetic file; `role` is 'performer0', 'performer1', 'flicker', 'furniture'
    or 'ghost'."""

    body_id: str
    frames: np.ndarray  # (T,) frame numbers in the file
    xyz: np.ndarray  # (T, 25, 3) float32
    role: str


def synthesize(name: SampleName, rng: np.random.Generator, spec: SynthSpec = TINY) -> tuple[int, list[SynthBody]]:
    """One clip: its frame count (with any body-less frames) and its bodies."""
    length = _length(rng, spec)
    lead_in = int(rng.integers(1, 6)) if rng.random() < 0.3 else 0
    frame_count = lead_in + length + (int(rng.integers(0, 4)) if lead_in else 0)
    clip_frames = np.arange(lead_in, lead_in + length)
    next_id = iter(str(72057594037927936 + int(i)) for i in rng.choice(10**6, size=8, replace=False))
    heading = rng.uniform(-0.5, 0.5)
    place = np.array([rng.uniform(-0.5, 0.5), 0.1, rng.uniform(2.6, 3.4)])
    bodies = []
    if name.action in MUTUAL_ACTIONS:
        gap = np.array([0.45, 0.0, 0.0]) @ _yaw(heading).T
        toward = -gap * rng.uniform(0.2, 0.6)
        first = _performer(name.action, length, rng, heading, place - gap, -toward, spec.noise_m)
        second = _performer(name.action, length, rng, heading + np.pi, place + gap, toward, spec.noise_m)
        late = int(rng.integers(3, 11)) if rng.random() < 0.3 else 0
        bodies += [SynthBody(next(next_id), clip_frames, first, "performer0"),
                   SynthBody(next(next_id), clip_frames[late:], second[late:], "performer1")]
    else:
        first = _performer(name.action, length, rng, heading, place, np.zeros(3), spec.noise_m)
        if rng.random() < 0.15:
            # Both halves outlast the flicker filter, so preprocessing must join them back.
            switch = int(rng.integers(12, length - 12))
            bodies += [SynthBody(next(next_id), clip_frames[:switch], first[:switch], "performer0"),
                       SynthBody(next(next_id), clip_frames[switch:], first[switch:], "performer0")]
        else:
            bodies.append(SynthBody(next(next_id), clip_frames, first, "performer0"))
    spurious = rng.random() if spec.spurious_bodies else 1.0
    aside = place + np.array([1.2, 0.0, 0.5])
    if spurious < 0.08:
        start = int(rng.integers(0, length - 6))
        flicker = _performer(1, 6, rng, 0.0, aside, np.zeros(3), spec.noise_m)
        bodies.append(SynthBody(next(next_id), clip_frames[start:start + 6], flicker, "flicker"))
    elif spurious < 0.16:
        bodies.append(SynthBody(next(next_id), clip_frames, _furniture(length, rng), "furniture"))
    elif spurious < 0.24 and length >= 60:
        # A person-shaped detection, long enough to pass the flicker filter, seen in under a fifth of the clip.
        frames = int(rng.integers(11, length // 5))
        start = int(rng.integers(0, length - frames))
        ghost = _performer(1, frames, rng, 0.0, aside, np.zeros(3), 5 * spec.noise_m)
        bodies.append(SynthBody(next(next_id), clip_frames[start:start + frames], ghost, "ghost"))
    for body in bodies:
        body.xyz = body.xyz.astype(np.float32)
    return frame_count, bodies


def _joint_lines(xyz: np.ndarray) -> np.ndarray:
    """The 12 Kinect joint values of (K, 25, 3) positions: projections, a neutral orientation, 'tracked'."""
    depth = np.clip(xyz[..., 2:3], 0.5, None)
    projected = np.concatenate([256 + 365 * xyz[..., :1] / depth, 212 - 365 * xyz[..., 1:2] / depth,
                                960 + 1060 * xyz[..., :1] / depth, 540 - 1060 * xyz[..., 1:2] / depth], axis=-1)
    orientation = np.broadcast_to(np.array([1.0, 0.0, 0.0, 0.0]), xyz.shape[:-1] + (4,))
    state = np.full(xyz.shape[:-1] + (1,), 2.0)
    return np.concatenate([xyz, projected, orientation, state], axis=-1)


def format_skeleton(frame_count: int, bodies: list[SynthBody]) -> str:
    """The `.skeleton` text of a clip. Coordinates are float32 written with 9 significant digits,
    enough for the parser to read back exactly the float32 values given."""
    per_frame: list[list[tuple[str, np.ndarray]]] = [[] for _ in range(frame_count)]
    for body in bodies:
        values = _joint_lines(np.asarray(body.xyz, dtype=np.float32).astype(np.float64))
        for frame, joint_values in zip(body.frames, values, strict=True):
            per_frame[frame].append((body.body_id, joint_values))
    row_format = " ".join(["%.9g"] * 3 + ["%.6g"] * 8 + ["%d"])
    joints_format = "\n".join([row_format] * NUM_JOINTS)  # one body in one frame, formatted in one call
    out = [str(frame_count)]
    for frame_bodies in per_frame:
        out.append(str(len(frame_bodies)))
        for body_id, joint_values in frame_bodies:
            out += [f"{body_id} 0 1 1 1 1 0 0.01 -0.02 2", str(NUM_JOINTS),
                    joints_format % tuple(joint_values.ravel().tolist())]
    return "\n".join(out) + "\n"


def generate(out_dir: str | Path, spec: SynthSpec = TINY) -> list[Path]:
    """Write the spec's clips as `<name>.skeleton` into `out_dir`; returns the paths, in name order."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, name in enumerate(sorted(tiny_names(spec), key=str)):
        paths.append(write_skeleton(out_dir / f"{name}.skeleton", *synthesize(name, clip_rng(spec, index), spec)))
    return paths


def clip_rng(spec: SynthSpec, index: int) -> np.random.Generator:
    """The random stream of the index-th clip (in name order) of a spec."""
    return np.random.default_rng([spec.seed, index])


def write_skeleton(path: str | Path, frame_count: int, bodies: list[SynthBody]) -> Path:
    """Write one `.skeleton` file atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(format_skeleton(frame_count, bodies))
    tmp.replace(path)
    return path


def ntu_like_clips(count: int, seed: int) -> tuple[list[int], list[int]]:
    """Frame counts and person counts of `count` NTU-like clips (see NTU_MEDIAN_FRAMES), for random_samples."""
    rng = np.random.default_rng(seed)
    frames = np.clip(rng.lognormal(np.log(NTU_MEDIAN_FRAMES), NTU_LENGTH_SIGMA, count), *SYNTH_FRAMES).astype(int)
    persons = [2 if rng.random() < NTU_TWO_PERSON_SHARE else 1 for _ in range(count)]
    return frames.tolist(), persons


def random_samples(frames: list[int], persons: list[int], seed: int = 0, num_classes: int = 60) -> list[ClipSample]:
    """In-memory clips of the given lengths and person counts, joints a random walk: model tests and benchmarks."""
    rng = np.random.default_rng(seed)
    samples = []
    for length, count in zip(frames, persons, strict=True):
        walk = rng.normal(0, 0.02, (count, length, NUM_JOINTS, 3)).cumsum(axis=1)  # (M, T, V, 3)
        xyz = (walk + rng.normal(0, 0.3, (count, 1, NUM_JOINTS, 3))).astype(np.float32)
        samples.append(ClipSample(
            xyz=xyz.reshape(count * length, NUM_JOINTS, 3),
            person_ids=np.repeat(np.arange(count, dtype=np.int64), length),
            positions=np.tile(np.arange(length, dtype=np.int64), count),
            frames=length,
            label=int(rng.integers(num_classes)),
        ))
    return samples
