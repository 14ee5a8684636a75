"""The model registry: every model by name, with the batch layout it eats and its training recipe.

`build(name, num_classes)` returns the nn.Module; `names()` lists the models;
`spec(name)` says how to feed and train one. Every model returns logits
(B, num_classes); `model_inputs(spec, batch)` turns a batch of the model's
layout into its forward arguments, so trainers and profilers call every model
the same way: `model(*model_inputs(spec, batch))`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from star.data.batching import FILLS, CompactBatch, PaddedBatch
from star.errors import InputError
from star.network.segments import ClipSegments
from star.network.star import STAR, STAR_AS_RUN, STAR_RECIPES, STARConfig
from star.recipe import TrainingRecipe
from star_baselines.stgcn import STGCN, STGCN_RECIPES, STGCNConfig
from star_baselines.sttr import STTR, STTR_RECIPES, STTRConfig

LAYOUTS = ("compact", "padded")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    layout: str  # "compact" (star.data.batching.CompactBatch) or "padded" (PaddedBatch)
    constructor: Callable[[int], nn.Module]  # num_classes -> model
    recipes: dict[str, TrainingRecipe]  # training settings by name; "default" is the one used unless told
    description: str
    fill: str = "repeat"  # padded layout: how clips shorter than 300 frames are filled (star.data.batching)


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> None:
    if spec.layout not in LAYOUTS:
        raise ValueError(f"model {spec.name!r}: unknown layout {spec.layout!r}; choose one of {LAYOUTS}")
    if spec.fill not in FILLS:
        raise ValueError(f"model {spec.name!r}: unknown fill {spec.fill!r}; choose one of {FILLS}")
    if "default" not in spec.recipes:
        raise ValueError(f"model {spec.name!r}: its recipes need a 'default' entry")
    _REGISTRY[spec.name] = spec


def names() -> list[str]:
    return list(_REGISTRY)


def spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        raise InputError(f"unknown model {name!r}; registered: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def build(name: str, num_classes: int = 60) -> nn.Module:
    return spec(name).constructor(num_classes)


def model_inputs(model_spec: ModelSpec, batch: CompactBatch | PaddedBatch) -> tuple:
    """The forward arguments of a model of `model_spec` for a batch of its layout."""
    if model_spec.layout == "compact":
        if not isinstance(batch, CompactBatch):
            raise TypeError(f"model {model_spec.name!r} eats compact batches, got {type(batch).__name__}")
        segments = ClipSegments.of(batch.clip_offsets, batch.clip_ids, batch.steps, batch.bounds)
        return batch.x, batch.clip_offsets, batch.person_ids, batch.positions, segments
    if not isinstance(batch, PaddedBatch):
        raise TypeError(f"model {model_spec.name!r} eats padded batches, got {type(batch).__name__}")
    return (batch.x,)


def _star(width: int, spatial: str, as_run: bool) -> Callable[[int], nn.Module]:
    options = STAR_AS_RUN if as_run else {}
    return lambda num_classes: STAR(STARConfig(num_classes=num_classes, width=width, spatial=spatial, **options))


# "as described" by the paper, and "as run" by the authors' code (star.network.star says where they differ)
# each form trains by default as its source says: the paper's schedule, or what the code's main trains with
for _width in (64, 128):
    for _suffix, _as_run, _form, _recipe in (("", False, "as the paper describes it", "paper"),
                                             ("-code", True, "as the authors' code runs it", "code")):
        _recipes = {"default": STAR_RECIPES[_recipe], **STAR_RECIPES}
        register(ModelSpec(f"star-{_width}{_suffix}", "compact", _star(_width, "sparse", _as_run), _recipes,
                           f"STAR, width {_width}, sparse spatial attention on A + A^2 + A^3, {_form}"))
        _form = "with the as-run settings (the code has no full-attention model)" if _as_run else _form
        register(ModelSpec(f"star-{_width}-full{_suffix}", "compact", _star(_width, "full", _as_run), _recipes,
                           f"STAR, width {_width}, dense spatial attention over all 25 joints (ablation), {_form}"))


def _stgcn(partition: str) -> Callable[[int], nn.Module]:
    return lambda num_classes: STGCN(STGCNConfig(num_classes=num_classes, partition=partition))


for _name, _partition, _what in (("st-gcn", "paper", "the paper's spatial partition"),
                                 ("st-gcn-code", "reference", "the reference code's hop-capped partitions")):
    register(ModelSpec(_name, "padded", _stgcn(_partition), {"default": STGCN_RECIPES["paper"], **STGCN_RECIPES},
                       f"ST-GCN (Yan et al. 2018): ten graph-convolution units, 64-256 channels, {_what}",
                       fill="zero"))  # its NTU data generator leaves the frames after a clip's end at zero


def _sttr(streams: tuple[str, ...]) -> Callable[[int], nn.Module]:
    return lambda num_classes: STTR(STTRConfig(num_classes=num_classes, streams=streams))


_STTR_RECIPES = {"default": STTR_RECIPES["paper"], **STTR_RECIPES}
for _name, _streams, _what in (
    ("st-tr", ("spatial", "temporal"), "ST-TR (Plizzari et al. 2020): S-TR and T-TR streams, scores summed"),
    ("st-tr-s", ("spatial",), "ST-TR's S-TR stream alone: spatial self-attention from the 128-channel units"),
    ("st-tr-t", ("temporal",), "ST-TR's T-TR stream alone: temporal self-attention from the 128-channel units"),
):
    register(ModelSpec(_name, "padded", _sttr(_streams), _STTR_RECIPES, _what))  # its data repeats short clips
