"""Which registered models run the same Python code, for the tests that need one model per code path (compiling
every model, or tracing it for the MAC counters, is slow; a model added to the registry gets its own path unless
its configuration says it shares one)."""

from dataclasses import fields

from star import registry

SIZES = ("num_classes", "width")  # configuration fields that size a model without choosing its code
PARTS = ("streams",)  # configuration fields that list which of its sub-networks a model builds


def _code(name: str) -> tuple[type, tuple, frozenset]:
    """A model's configuration without its SIZES, and the parts it builds."""
    config = registry.build(name, num_classes=2).config
    choices = tuple((f.name, getattr(config, f.name)) for f in fields(config) if f.name not in SIZES + PARTS)
    parts = frozenset((f.name, part) for f in fields(config) if f.name in PARTS for part in getattr(config, f.name))
    return type(config), choices, parts


def representatives() -> dict[str, str]:
    """Each model's code path, named by a registered model whose configuration differs from the model's at
    most in SIZES and which builds at least its parts (of those, the one building the most parts, the first
    registered of equals): the representative runs all the Python code the model runs (ST-TR's streams are
    summed, so each stream alone is a part of it; the fused kernels that eager inference takes at each width
    are tested in test_star_model.py)."""
    codes = {name: _code(name) for name in registry.names()}

    def covers(other: str, name: str) -> bool:
        return codes[other][:2] == codes[name][:2] and codes[other][2] >= codes[name][2]

    return {name: max((other for other in codes if covers(other, name)), key=lambda other: len(codes[other][2]))
            for name in codes}


def code_paths() -> list[str]:
    return list(dict.fromkeys(representatives().values()))
