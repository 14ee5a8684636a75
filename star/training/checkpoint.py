"""Checkpoints: written whole or not at all, read back checked (format, keys, shapes), compared with a run."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import torch
from torch import nn

from star.errors import existing_file
from star.formats import CHECKPOINT_FORMAT
from star.io import write_atomic
from star.training.config import EXECUTION_FIELDS, RunConfig, RunError


def load_checkpoint(path: str | Path) -> dict:
    path = existing_file(path, "checkpoint")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise RunError(f"{path} is not a readable checkpoint: {error}") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise RunError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
    return checkpoint


def load_model_state(model: nn.Module, state: dict, source: Path, model_name: str) -> None:
    """Load a state dict, or a RunError naming what does not fit (keys or shapes)."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    reshaped = [f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}"
                for key in sorted(set(own) & set(state)) if state[key].shape != own[key].shape]
    if missing or unexpected or reshaped:
        problems = [f"{label}: {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}"
                    for label, items in (("missing", missing), ("unexpected", unexpected), ("shapes", reshaped))
                    if items]
        raise RunError(f"{source} does not fit model {model_name!r} as registered now ({'; '.join(problems)})")
    model.load_state_dict(state)


def save_checkpoint(data: dict, path: Path) -> None:
    write_atomic(path, lambda tmp: torch.save(data, tmp))


def config_differences(saved: dict, asked: dict) -> list[str]:
    """Settings that change a run's numbers and differ between a checkpoint's run and this one.

    A setting the checkpoint does not record ran at its default (the run predates it). An unknown store
    content (None: a store made before stores recorded it) is no difference, so such runs resume as before.
    """
    saved = {**{f.name: f.default for f in fields(RunConfig)}, **saved,
             "recipe": {**saved["recipe"], "epochs": None}}
    asked = {**asked, "recipe": {**asked["recipe"], "epochs": None}}
    unknown = {"store_content"} if None in (saved["store_content"], asked.get("store_content")) else set()
    return [f"{key}: {saved[key]!r} there, {asked[key]!r} here" for key in asked
            if key not in EXECUTION_FIELDS and key not in unknown and saved[key] != asked[key]]
