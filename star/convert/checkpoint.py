"""`star convert`: a reference code's checkpoint into a run folder that `star evaluate` scores.

The folder holds `best.pt` in this suite's checkpoint format (epoch 0, the
converted weights, a run configuration naming the store and benchmark to
score on) and `converted.json`: the source file, its SHA-256, the reference
code and the model.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import torch

from star import registry
from star.convert import ConversionError, from_reference, layout
from star.data.splits import get_benchmark
from star.errors import existing_file
from star.formats import CHECKPOINT_FORMAT
from star.io import write_together
from star.training.config import run_config

WRAPPERS = ("state_dict", "model_state_dict", "model", "net")  # dict keys some scripts save the weights under


def read_reference(data: bytes) -> dict:
    """The state dict in a reference checkpoint's bytes (a bare state dict, or one under a usual wrapper key)."""
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:
        raise ConversionError(f"not a readable PyTorch checkpoint ({error})") from error
    for key in WRAPPERS:
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ConversionError("it holds no state dict (a mapping of names to tensors)")
    return loaded


def convert(model: str, checkpoint: str | Path, store: str | Path, benchmark: str, out: str | Path) -> dict:
    """Write the run folder `out` (new or empty) and return converted.json; ConversionError naming a misfit."""
    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConversionError(f"{out} is not empty: a converted run gets a folder of its own")
    reference_layout = layout(model)
    network = registry.build(model, get_benchmark(benchmark).num_classes)
    data = existing_file(checkpoint, "checkpoint").read_bytes()  # read once: the hash is of what was converted
    try:
        state = from_reference(reference_layout, network, read_reference(data))
    except ConversionError as error:
        raise ConversionError(f"{checkpoint}: {error}") from error
    config = run_config(store, benchmark, model, out)
    saved = {"format": CHECKPOINT_FORMAT, "config": config.as_dict(), "epoch": 0, "step": 0, "model": state,
             "metrics": {}}
    summary = {"format": "star-converted-1", "model": model, "code": reference_layout.code,
               "source": str(checkpoint), "sha256": hashlib.sha256(data).hexdigest(), "tensors": len(state)}
    out.mkdir(parents=True, exist_ok=True)
    write_together({out / "best.pt": lambda tmp: torch.save(saved, tmp),
                    out / "converted.json": lambda tmp: tmp.write_text(json.dumps(summary, indent=2))})
    return summary
