"""The JSON Schemas of the result files the suite writes and reads, and the check both sides make.

One schema per kind, `<kind>.schema.json` beside this module: `run` (a run's
metrics.json), `profile` (star profile), `manifest` (a store's manifest.json),
`fidelity` (star fidelity), `evaluation` (star evaluate). Each names the keys its readers use and their types;
other keys (the environment, the per-module breakdowns) may be added freely.
Every file's format tag is `star-<name>-<version>`, its schema's `$id` (the manifest's is star-compact-1).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path

from star.errors import InputError

KINDS = ("run", "profile", "manifest", "fidelity", "evaluation")


class ResultFileError(InputError):
    """A result file that does not follow its schema (the message names the file and the key)."""


@cache
def schema(kind: str) -> dict:
    if kind not in KINDS:
        raise ValueError(f"no schema for {kind!r}; the kinds are {', '.join(KINDS)}")
    return json.loads(resources.files(__package__).joinpath(f"{kind}.schema.json").read_text())


def format_tag(kind: str) -> str:
    """The `format` value a file of this kind carries (the schema's `$id`)."""
    return schema(kind)["$id"]


def check(document: dict, kind: str, path: str | Path) -> dict:
    """`document` if it follows the `kind` schema, else a ResultFileError naming `path`, the key and the fault."""
    import jsonschema  # here, so that a format tag costs no jsonschema import

    validator = jsonschema.Draft202012Validator(schema(kind))
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is None:
        return document
    if document.get("format") != format_tag(kind):
        raise ResultFileError(f"{path}: format {document.get('format')!r}, expected {format_tag(kind)!r} "
                              f"({schema(kind)['title']}; one of another kind, or of an older star: make it again)")
    where = "/".join(str(part) for part in error.absolute_path)
    if error.validator == "required":
        missing = [key for key in error.validator_value if key not in error.instance]
        where = "/".join(filter(None, (where, missing[0])))
        raise ResultFileError(f"{path}: no key {where!r} (is the file complete?)")
    raise ResultFileError(f"{path}: key {where or '(top level)'!r}: {error.message}")
