"""The result files' schemas: valid JSON Schemas, one tag style, and a refusal that names the file and the key
(the smoke workflow test checks every file a real run writes against them)."""

import re

import jsonschema
import pytest

from star import formats
from star.schemas import KINDS, ResultFileError, check, schema


@pytest.mark.parametrize("kind", KINDS)
def test_each_schema_is_valid_and_its_format_is_its_id(kind):
    jsonschema.Draft202012Validator.check_schema(schema(kind))
    assert schema(kind)["properties"]["format"] == {"const": schema(kind)["$id"]}
    assert set(schema(kind)["required"]) <= set(schema(kind)["properties"])


def test_every_format_tag_has_one_style():
    tags = {name: value for name, value in vars(formats).items() if name.endswith("_FORMAT")}
    assert len(tags) == 6 and all(re.fullmatch(r"star-[a-z]+-\d+", tag) for tag in tags.values()), tags


def test_a_file_breaking_its_schema_is_refused_naming_the_file_and_the_key():
    fidelity = {"format": formats.FIDELITY_FORMAT, "clips": 4, "points": [
        {"described": "star-64", "as_run": "star-64-code", "code": "c", "point": "p", "paper": "x",
         "as_run_does": "y", "where": "f.py:1", "training_only": False, "max_logit_change": 0.1}]}
    assert check(fidelity, "fidelity", "f.json") is fidelity
    with pytest.raises(ResultFileError, match=r"^f.json: no key 'points/0/where' \(is the file complete\?\)$"):
        check({**fidelity, "points": [{k: v for k, v in fidelity["points"][0].items() if k != "where"}]},
              "fidelity", "f.json")
    with pytest.raises(ResultFileError, match=r"^f.json: key 'clips': 0 is less than the minimum of 1$"):
        check({**fidelity, "clips": 0}, "fidelity", "f.json")
    with pytest.raises(ResultFileError, match=r"^f.json: format 'star-run-1', expected 'star-fidelity-1'"):
        check({**fidelity, "format": formats.RUN_FORMAT}, "fidelity", "f.json")
