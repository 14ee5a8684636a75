"""The suite's own errors: what the `star` command reports as one line (exit 2) instead of a traceback.

So does an OSError about a named file (an output folder that cannot be
written, a full disk). Anything else that escapes a command (a numpy or torch
bug, a programming error in a model's configuration) keeps its traceback
(exit 1), so a job log shows where it came from.
"""

from __future__ import annotations

from pathlib import Path


class StarError(Exception):
    """Base of every error the suite raises about its input or its own state, with a message naming the cause."""


class InputError(StarError, ValueError):
    """A setting, name or file content the suite cannot use: an unknown benchmark, a bad flag value, bad JSON."""


class MissingInputError(StarError, FileNotFoundError):
    """An input file or folder that is not there."""


def existing_file(path: str | Path, what: str = "file") -> Path:
    """`path` as a Path if it is a file, else a MissingInputError naming it and what it should be."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: no such {what}")
    return path
