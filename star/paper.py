"""The STAR paper's published numbers, as transcribed into `star/data/resources/paper_tables.yaml`.

Reports put these beside the reproduced numbers, labelled as published; the
file also lists the paper's internal contradictions (`inconsistencies`) and
reference measurements of the public baseline code.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from pathlib import Path

import yaml


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads 260.4e9 (an exponent without a sign) as a string; the file means a number."""


_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))


PUBLISHED = Path(str(resources.files("star.data.resources").joinpath("paper_tables.yaml")))


@cache
def published() -> dict:
    return yaml.load(PUBLISHED.read_text(), _Loader)


AS_RUN_SUFFIX = "-code"


def paper_row(model: str) -> str:
    """The paper's name for a registered model: an "as run" variant (`star-64-code`) reproduces the paper's row."""
    return model.removesuffix(AS_RUN_SUFFIX)
