"""Writing result files whole or not at all: to a temporary name in the same folder, then renamed."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from star.errors import InputError, existing_file
from star.schemas import check


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file next to `path`, then rename it to `path`.

    A reader sees the old file or the new one, never a half-written one; if `write`
    fails (or the process is interrupted inside it) the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_together(writes: dict[Path, Callable[[Path], None]]) -> list[Path]:
    """Several files that belong together (a table's CSV and HTML, a figure's PNG and SVG), each written by
    write_atomic; if any fails, those already written are removed too, so none is left without the others."""
    done = []
    try:
        for path, write in writes.items():
            write_atomic(path, write)
            done.append(Path(path))
    except BaseException:
        for path in done:
            path.unlink(missing_ok=True)
        raise
    return done


def write_json(path: str | Path, data) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def write_result(path: str | Path, data: dict, kind: str) -> None:
    """A result file of `kind` (star.schemas), checked against its schema before anything is written."""
    write_json(path, check(data, kind, path))


def write_csv(path: str | Path, columns: Iterable[str], rows: Iterable[dict]) -> None:
    """Rows of dicts under `columns`; floats are written in full (repr), so reading them back is exact."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(columns))
            writer.writeheader()
            writer.writerows(rows)

    write_atomic(path, write)


def read_json(path: str | Path) -> dict:
    """A result file's contents; a missing file is a MissingInputError, a malformed one an InputError naming it."""
    try:
        data = json.loads(existing_file(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: cannot read it as JSON ({error})") from error
    if not isinstance(data, dict):
        raise InputError(f"{path}: holds a JSON {type(data).__name__}, not the object of a result file")
    return data


def read_result(path: str | Path, kind: str) -> dict:
    """A result file of `kind`; one that breaks its schema is a ResultFileError naming the file and the key."""
    return check(read_json(path), kind, path)
