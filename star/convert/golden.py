"""The fixed weights and clips of the golden comparisons against the reference codes.

`scripts/golden/` builds a registered model with `seeded_model`, copies its
weights into the reference network (`star.convert.to_reference`), runs both on
`golden_samples` and stores the reference's outputs in `tests/golden/`; the
tests rebuild the same model and clips from the seed alone, so a fixture holds
numbers, never weights. `star fidelity` measures on the same clips.

Normalisation layers start at the identity (scale 1, shift 0, mean 0,
variance 1) and edge-importance masks at one, which would hide a scale or
shift mapped onto the wrong tensor, or a mask transposed; `seeded_model` sets
them to other values.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from star import registry
from star.data.batching import ClipSample, CompactBatch, PaddedBatch, PaddedCollate, collate_compact

GOLDEN_SEED = 20260
# (frames, persons, first frame of the second person): one-person clips and a two-person clip whose
# second person enters late, so positions on the clip's clock and row numbers differ
GOLDEN_CLIPS = ((13, 1, 0), (9, 2, 3), (7, 1, 0), (11, 2, 0))
GOLDEN_PADDED_FRAMES = 16
TOLERANCE = 1e-5  # largest |difference| to the reference in float32, logits and probes alike


def golden_samples(seed: int = GOLDEN_SEED) -> list[ClipSample]:
    """Smooth random joint trajectories (metres) of the GOLDEN_CLIPS shapes, labels 0, 1, 2, ..."""
    rng = np.random.default_rng(seed)
    samples = []
    for label, (frames, persons, late) in enumerate(GOLDEN_CLIPS):
        xyz, person_ids, positions = [], [], []
        for person in range(persons):
            start = late if person else 0
            length = frames - start
            pose = rng.normal(0.0, 0.4, (1, 25, 3)) + np.array([0.0, 0.0, 3.0])
            drift = np.cumsum(rng.normal(0.0, 0.03, (length, 25, 3)), axis=0)
            xyz.append((pose + drift).astype(np.float32))
            person_ids.append(np.full(length, person, dtype=np.int64))
            positions.append(np.arange(start, frames, dtype=np.int64))
        samples.append(ClipSample(np.concatenate(xyz), np.concatenate(person_ids), np.concatenate(positions),
                                  frames, label))
    return samples


def golden_compact(seed: int = GOLDEN_SEED) -> CompactBatch:
    return collate_compact(golden_samples(seed))


def golden_padded(fill: str, seed: int = GOLDEN_SEED) -> PaddedBatch:
    return PaddedCollate(frames=GOLDEN_PADDED_FRAMES, fill=fill)(golden_samples(seed))


def golden_inputs(name: str, seed: int = GOLDEN_SEED) -> tuple:
    """The forward arguments of registered model `name` on the golden clips."""
    spec = registry.spec(name)
    batch = golden_compact(seed) if spec.layout == "compact" else golden_padded(spec.fill, seed)
    return registry.model_inputs(spec, batch)


NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@torch.no_grad()
def seeded_model(name: str, num_classes: int = 60, seed: int = GOLDEN_SEED) -> nn.Module:
    """Registered model `name` built under `seed`, its normalisation layers set to non-trivial values, in eval mode.

    Batch norms take their running statistics from the golden clips (one pass
    with every other layer in eval mode), the variance raised by one, so that
    activations keep a trained network's scale: with a random mean and
    variance, or a channel that is almost constant on these few clips (a ReLU
    output over padding) divided by its tiny deviation, they grow layer after
    layer (ST-TR's logits reached 3e4) until float32 rounding alone moves the
    logits by more than the golden tolerance. Then every normalisation's scale
    and shift and every edge-importance mask is drawn at random.
    """
    torch.manual_seed(seed)
    model = registry.build(name, num_classes).eval()
    batch_norms = {m: m.momentum for m in model.modules() if isinstance(m, BATCH_NORMS)}
    for module in batch_norms:
        module.reset_running_stats()
        module.momentum = None  # a cumulative average: after one pass, that pass's statistics
        module.train()
    if batch_norms:
        model(*golden_inputs(name, seed))
    for module, momentum in batch_norms.items():
        module.running_var += 1
        module.momentum = momentum
        module.eval()
    generator = torch.Generator().manual_seed(seed + 1)
    uniform = lambda t, low, high: t.copy_(torch.rand(t.shape, generator=generator) * (high - low) + low)  # noqa: E731
    for module in model.modules():
        if isinstance(module, NORMS) and module.weight is not None:
            uniform(module.weight, 0.5, 1.5)
            uniform(module.bias, -0.2, 0.2)
    for parameter_name, parameter in model.named_parameters():
        if parameter_name.endswith("edge_importance"):
            uniform(parameter, 0.5, 1.5)
    return model


@torch.no_grad()
def outputs_of(model: nn.Module, modules: dict[str, str], *inputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The logits of `model(*inputs)` and the outputs of `modules` (key -> module name), under their keys."""
    outputs = {}
    hooks = [model.get_submodule(module).register_forward_hook(
        lambda _m, _i, out, key=key: outputs.__setitem__(key, out)) for key, module in modules.items()]
    try:
        logits = model(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return logits, outputs


PROBE_VALUES = 2048


def probe(t: torch.Tensor) -> torch.Tensor:
    """What a fixture keeps of an intermediate output: the first and last sample, their first PROBE_VALUES values."""
    return t.detach().float().flatten(1)[[0, -1], :PROBE_VALUES]


def save_fixture(path, reference: str, logits: torch.Tensor, intermediates: dict[str, torch.Tensor],
                 reference_state: dict, **extra) -> None:
    """One golden fixture: the reference's logits, a `probe` of some intermediate outputs (under the name of our
    module giving the same output) and the reference's state-dict layout.

    `reference_state` is the reference network's own state dict: its key
    names and shapes are kept (not its values), so a test can check the
    converter's layout without the reference code.
    """
    import json

    arrays = {"logits": logits.detach().float().numpy(), "seed": np.array(GOLDEN_SEED),
              "reference": np.array(reference),
              "reference_shapes": np.array(json.dumps({k: list(v.shape) for k, v in reference_state.items()}))}
    arrays.update({f"module:{name}": probe(value).numpy() for name, value in intermediates.items()})
    arrays.update({key: np.asarray(value) for key, value in extra.items()})
    np.savez_compressed(path, **arrays)


def reference_checkout(description: str):
    """The golden scripts' command line: --reference (importable from then on), --commit (default: its HEAD), --out."""
    import argparse
    import subprocess
    import sys
    from pathlib import Path

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--reference", required=True, type=Path, help="checkout of the public reference code")
    parser.add_argument("--commit", help="its commit (default: read with git from the checkout)")
    parser.add_argument("--out", default=Path("tests/golden"), type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(args.reference.resolve()))
    if args.commit is None:
        args.commit = subprocess.run(["git", "-C", str(args.reference), "rev-parse", "HEAD"], capture_output=True,
                                     text=True, check=True).stdout.strip()
    args.out.mkdir(parents=True, exist_ok=True)
    return args
