"""Configuration values as their schema types them: `snakemake --config` hands nested values over as strings.

`snakemake --config 'training={overrides: {star-64-code: {batch_size: 4}}}'`
gives the batch size as the string '4', which the schema would refuse; `typed`
converts every string the schema wants as an integer, a finite number, a
boolean or null (YAML's `null`, `~` or nothing), and leaves anything else
(and any string that does not read as one) to the schema validation that
follows, which names the key.
"""

from __future__ import annotations

import math

BOOLEANS = {"true": True, "false": False}
NULLS = ("null", "~", "")


def _as(text: str, types: list[str]):
    for kind in types:
        try:
            if kind == "integer":
                return int(text)
            if kind == "number" and math.isfinite(float(text)):  # nan and inf stay text, which the schema refuses
                return float(text)
        except ValueError:
            continue
        if kind == "boolean" and text.lower() in BOOLEANS:
            return BOOLEANS[text.lower()]
        if kind == "null" and text in NULLS:
            return None
    return text


def typed(value, schema: dict):
    """`value` with its strings converted where `schema` (a JSON schema of objects, arrays and scalars) wants
    integers, numbers or booleans."""
    if isinstance(value, dict):
        properties, extra = schema.get("properties", {}), schema.get("additionalProperties")
        return {key: typed(item, properties.get(key, extra if isinstance(extra, dict) else {}))
                for key, item in value.items()}
    if isinstance(value, list):
        return [typed(item, schema.get("items", {})) for item in value]
    if isinstance(value, str):
        types = schema.get("type", [])
        return _as(value, [types] if isinstance(types, str) else types)
    return value
