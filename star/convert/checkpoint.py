"""`star convert`: a reference code's checkpoint into a run folder that `star evaluate` scores.

The folder holds `best.pt` in this suite's checkpoint format (epoch 0, the
converted weights, a run configuration naming the store and benchmark to
score on) and `converted.json`: the source file, its SHA-256, the reference
code and the model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

import star.models as registry
from star.convert import ConversionError, from_reference, layout
from star.data.splits import get_benchmark
from star.io import write_atomic, write_json
from star.train import CHECKPOINT_FORMAT, run_config

WRAPPERS = ("state_dict", "model_state_dict", "model", "net")  # dict keys some scripts save the weights under


def read_reference(path: Path) -> dict:
    """The state dict in a reference checkpoint file (a bare state dict, or one under a usual wrapper key)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ConversionError(f"{path} is not a readable PyTorch checkpoint: {error}") from error
    for key in WRAPPERS:
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ConversionError(f"{path} holds no state dict (a mapping of names to tensors)")
    return data


def convert(model: str, checkpoint: str | Path, store: str | Path, benchmark: str, out: str | Path) -> dict:
    """Write the run folder `out`; returns converted.json's contents. ConversionError naming the misfit."""
    checkpoint, out = Path(checkpoint), Path(out)
    reference_layout = layout(model)
    network = registry.build(model, get_benchmark(benchmark).num_classes)
    try:
        state = from_reference(reference_layout, network, read_reference(checkpoint))
    except ConversionError as error:
        raise ConversionError(f"{checkpoint}: {error}") from error
    config = run_config(store, benchmark, model, out)
    out.mkdir(parents=True, exist_ok=True)
    saved = {"format": CHECKPOINT_FORMAT, "config": config.as_dict(), "epoch": 0, "step": 0, "model": state,
             "metrics": {}}
    write_atomic(out / "best.pt", lambda tmp: torch.save(saved, tmp))
    summary = {"format": "star-converted-1", "model": model, "code": reference_layout.code,
               "source": str(checkpoint), "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
               "tensors": len(state)}
    write_json(out / "converted.json", summary)
    return summary
