"""What a result was made with: device, versions and the source commit, recorded in every result file."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch

from star import __version__
from star.runtime import allocator, denormals

_SOURCE = Path(__file__).resolve().parent.parent


def git_state() -> dict:
    """The commit of the source tree and whether it has uncommitted changes (None outside a git checkout)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(_SOURCE), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def environment(device: torch.device) -> dict:
    return {
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "star_version": __version__,
        "allocator": allocator(),
        "denormals": denormals(),
        **git_state(),
    }
