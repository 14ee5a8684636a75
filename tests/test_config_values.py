from star.config_values import typed

SCHEMA = {"type": "object", "properties": {
    "seeds": {"type": "array", "items": {"type": "integer"}},
    "threads": {"type": ["integer", "null"]},
    "overrides": {"type": "object", "additionalProperties": {"type": "object", "properties": {
        "lr": {"type": "number"}, "amp": {"type": "boolean"}, "recipe": {"type": "string"}}}}}}


def test_strings_become_the_numbers_and_booleans_the_schema_wants_and_nothing_else():
    given = {"seeds": ["0", "1"], "threads": "4", "other": "5",
             "overrides": {"star-64": {"lr": "1e-3", "amp": "True", "recipe": "1"}, "st-tr": {"lr": "fast"}}}
    assert typed(given, SCHEMA) == {"seeds": [0, 1], "threads": 4, "other": "5",
                                    "overrides": {"star-64": {"lr": 0.001, "amp": True, "recipe": "1"},
                                                  "st-tr": {"lr": "fast"}}}
    assert typed({"threads": None, "seeds": [2]}, SCHEMA) == {"threads": None, "seeds": [2]}
    assert typed({"threads": "null"}, SCHEMA) == {"threads": None}
    assert typed({"overrides": {"m": {"lr": "nan"}, "n": {"lr": "inf"}}}, SCHEMA)["overrides"] == {
        "m": {"lr": "nan"}, "n": {"lr": "inf"}}  # left as text for the schema to refuse
