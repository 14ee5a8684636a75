"""Checkpoints of the public reference codes, mapped tensor by tensor onto the registered models.

Each reference layout (`star.convert.layouts`) lists, for one registered
model, which tensor of the reference code's state dict becomes which of ours,
with the reorder or transpose it needs (`KeyMap`), which reference tensors
have no counterpart and why (`Dropped`), and which of ours the reference
rebuilds instead of storing (`Built`). The mapping runs both ways:
`from_reference` turns a reference state dict into ours, `to_reference` ours
into the reference's, and a reference state dict that does not fit (a key
missing, an extra key, a shape) is refused naming the first key and shapes
that do not fit.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from star.errors import StarError

Transform = Callable[[torch.Tensor], torch.Tensor]


def same(t: torch.Tensor) -> torch.Tensor:
    return t


def transpose(t: torch.Tensor) -> torch.Tensor:
    """A graph operator between the (K, in, out) convention of the reference codes and (K, out, in) here."""
    return t.transpose(-1, -2).contiguous()


def renamed(key: str, renames: tuple[tuple[str, str], ...]) -> str:
    """`key` with every (pattern, replacement) of `renames` applied in order (re.sub)."""
    for pattern, replacement in renames:
        key = re.sub(pattern, replacement, key)
    return key


class ConversionError(StarError, ValueError):
    """A reference state dict that does not fit the model's reference layout."""


@dataclass(frozen=True)
class KeyMap:
    """Reference tensor `reference` is our tensor `ours` after `to_ours`; `to_reference` is its inverse.

    Several of ours may come from one reference tensor (a graph the reference
    keeps once and every layer here keeps a copy of), and one of ours from
    several reference tensors (`reference` a tuple of keys: `to_ours` takes
    their tensors as a tuple, `to_reference` gives them back in that order).
    """

    reference: str | tuple[str, ...]
    ours: str
    to_ours: Transform = same
    to_reference: Transform = same
    fixed: bool = False  # a buffer the model builds itself (a graph): the checkpoint's must equal it

    @property
    def names(self) -> tuple[str, ...]:
        return self.reference if isinstance(self.reference, tuple) else (self.reference,)


@dataclass(frozen=True)
class Dropped:
    """A reference tensor with no counterpart here; `expected(model)`, when given, is what it must hold."""

    reference: str
    why: str
    expected: Callable[[nn.Module], torch.Tensor] | None = None


@dataclass(frozen=True)
class Built:
    """A tensor of ours the reference code does not store (it rebuilds it): the model's own value is kept."""

    ours: str
    why: str


@dataclass(frozen=True)
class ReferenceLayout:
    """A registered model's reference code and the map between the two state dicts."""

    model: str  # registered name
    code: str  # repository, branch and class of the reference network
    maps: Callable[[nn.Module], list[KeyMap | Dropped | Built]]  # our built model -> its key maps
    prefixes: tuple[str, ...] = field(default=("module.",))  # wrappers stripped from reference keys (DataParallel)


def _split(entries: list[KeyMap | Dropped | Built]) -> tuple[list[KeyMap], list[Dropped], list[Built]]:
    return tuple([e for e in entries if isinstance(e, kind)] for kind in (KeyMap, Dropped, Built))


def strip_prefixes(state: dict, prefixes: tuple[str, ...]) -> dict:
    """Remove a wrapper prefix shared by every key (a checkpoint saved from DataParallel or DDP)."""
    for prefix in prefixes:
        if state and all(key.startswith(prefix) for key in state):
            return {key[len(prefix):]: value for key, value in state.items()}
    return state


def from_reference(layout: ReferenceLayout, model: nn.Module, reference: dict) -> dict:
    """Our state dict for `model` from the reference state dict; ConversionError naming the first misfit."""
    reference = strip_prefixes(reference, layout.prefixes)
    maps, dropped, built = _split(layout.maps(model))
    own = model.state_dict()
    needed = list(dict.fromkeys(name for m in maps for name in m.names))
    mapped = set(needed) | {d.reference for d in dropped}
    missing = [name for name in needed if name not in reference]
    if missing:
        raise ConversionError(f"the checkpoint has no {missing[0]!r} ({len(missing)} of the {len(needed)} tensors "
                              f"{layout.code} needs are missing)")
    extra = sorted(set(reference) - mapped)
    if extra:
        raise ConversionError(f"the checkpoint has {extra[0]!r} ({len(extra)} keys in all), which {layout.code} "
                              f"does not have: a checkpoint of another model or configuration")
    state = {}
    for m in maps:
        found = tuple(reference[name] for name in m.names)
        shapes = ", ".join(str(tuple(t.shape)) for t in found)
        try:
            value = m.to_ours(found if isinstance(m.reference, tuple) else found[0])
        except RuntimeError as error:  # tensors that cannot be joined or reshaped as the layout says
            raise ConversionError(f"checkpoint tensor {m.reference!r} has shape {shapes}, which does not fit "
                                  f"{m.ours!r} {tuple(own[m.ours].shape)} of {layout.model} ({error})") from error
        if value.shape != own[m.ours].shape:
            raise ConversionError(f"checkpoint tensor {m.reference!r} has shape {shapes}, "
                                  f"which does not fit {m.ours!r} {tuple(own[m.ours].shape)} of {layout.model}")
        if m.fixed and not torch.allclose(value.to(own[m.ours].dtype), own[m.ours], atol=1e-6):
            raise ConversionError(f"checkpoint tensor {m.reference!r} is not the {m.ours!r} that {layout.model} "
                                  f"builds: a checkpoint of another graph")
        state[m.ours] = value.to(own[m.ours].dtype).clone()
    state.update({b.ours: own[b.ours].clone() for b in built})
    unmapped = sorted(set(own) - set(state))
    if unmapped:
        raise ConversionError(f"the layout of {layout.model} maps nothing onto {unmapped[0]!r}")
    for d in dropped:
        if d.expected is not None and d.reference in reference:
            expected, found = d.expected(model), reference[d.reference]
            if found.shape != expected.shape or not torch.allclose(found.float(), expected.float(), atol=1e-6):
                raise ConversionError(f"checkpoint tensor {d.reference!r} is not what {layout.model} uses ({d.why})")
    return state


def to_reference(layout: ReferenceLayout, model: nn.Module) -> dict:
    """The reference code's state dict holding `model`'s weights (Dropped tensors with an expected value too)."""
    maps, dropped, _ = _split(layout.maps(model))
    own = model.state_dict()
    state = {}
    for m in maps:
        value = m.to_reference(own[m.ours])
        state.update(zip(m.names, value if isinstance(m.reference, tuple) else (value,), strict=True))
    state = {name: value.clone() for name, value in state.items()}
    state.update({d.reference: d.expected(model).clone() for d in dropped if d.expected is not None})
    return state


LAYOUT_MODULES = ("star_code", "stgcn", "sttr")  # star.convert.<name>.layouts()


def layouts() -> dict[str, ReferenceLayout]:
    """Every registered model that a reference code's checkpoint converts into, by name."""
    import importlib

    modules = [importlib.import_module(f"star.convert.{name}") for name in LAYOUT_MODULES]
    return {layout.model: layout for module in modules for layout in module.layouts()}


def layout(name: str) -> ReferenceLayout:
    known = layouts()
    if name not in known:
        raise ConversionError(f"no reference checkpoint converts into {name!r}; models with a reference layout: "
                              f"{', '.join(known)}")
    return known[name]
