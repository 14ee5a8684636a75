"""Parameters and multiply-accumulates, by module category and by named module, from three counters.

Categories are the paper's (Table 3, Figures 8-10): work done inside a
leaf module of a built-in torch.nn type, or of a subclass of one, belongs to
that type (Linear, Conv2d, BatchNorm2d, LayerNorm, ReLU, ...); work done by operators written into a
model's own forward belongs to the operator's kind (MatMul for matmul, bmm,
mm, einsum; Mul for element-wise products; ...). So ST-GCN's graph
aggregation (an einsum in its own module) is MatMul, and STAR's sparse
attention (element-wise products summed over each neighbourhood) is Mul.

One multiply-accumulate counts as one, in every counter:

1. `fvcore_count`: fvcore's FlopCountAnalysis on a JIT trace, plus handles
   for the element-wise products fvcore ignores or does not know: `aten::mul`
   of two tensors counts one MAC per output element (the sum that follows is
   the accumulate half; a product with a constant counts nothing),
   `aten::linalg_vecdot` and `aten::addcmul` one per product (the sparse
   attention's scores and aggregation). Segment sums (`index_add_`,
   `segment_reduce`) and plain sums count nothing: they add, never multiply.
   fvcore also counts normalisations (1 per element for batch norm in eval
   mode, 5 for layer norm); those appear as their module's category and are
   not products (`PRODUCTS`).
2. `deepspeed_count`: DeepSpeed's flops profiler, which patches torch
   functions for the duration of a forward pass. Its MACs cover F.linear,
   convolutions and torch.matmul/mm/bmm/addmm and `@`; it records einsum and
   element-wise products as FLOPs with zero MACs and does not see `*` at all,
   so ST-GCN's graph aggregation and STAR's sparse attention are missing
   from its MAC count. `missed` in its result holds the FLOPs it recorded for them.
3. `analytic_count`: textbook formulas per built-in Linear and Conv module
   (output elements x inputs per output), plus, for models that have one,
   the model's closed-form `analytic_macs` (STAR) for what happens between
   modules.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

MAT_MUL_OPS = ("matmul", "mm", "bmm", "addmm", "baddbmm", "einsum")
# operator name (without "aten::" and trailing "_") -> the paper's category
OP_CATEGORIES = {
    **dict.fromkeys(MAT_MUL_OPS, "MatMul"),
    "linear": "Linear",
    "mul": "Mul", "addcmul": "Mul", "linalg_vecdot": "Mul",
    "conv": "Conv", "_convolution": "Conv", "convolution": "Conv", "conv2d": "Conv",
    "batch_norm": "BatchNorm", "layer_norm": "LayerNorm", "softmax": "Softmax",
    "add": "Add", "sub": "Add", "div": "Div",
    "index": "Gather", "index_select": "Gather", "gather": "Gather", "select": "Gather",
    "sum": "Sum", "index_add": "Sum", "segment_reduce": "Sum",
    "copy": "Copy", "clone": "Copy", "contiguous": "Copy", "cat": "Cat", "stack": "Cat",
    "reshape": "Reshape",  # costs time only when it copies: a permuted tensor made contiguous
    # STAR's fused CPU kernels (star.network.fused), in the categories of the products they compute
    "star_fused::sparse_attention_forward": "Mul", "star_fused::linear_attention_forward": "MatMul",
    "star_fused::add_norm_forward": "LayerNorm",  # Add & Norm: the residual sum and its layer norm in one pass
    # the tile products of nn.Linear layers (projections and feed-forward layers, and in training the input's
    # gradient), and in inference a layer's Add & Norm, feed-forward and Add & Norm, mostly its products
    "star_fused::linear_forward": "Linear", "star_fused::encoder_tails_forward": "Linear",
}
PRODUCTS = ("Linear", "Conv1d", "Conv2d", "Conv", "MatMul", "Mul")


def op_category(op: str) -> str:
    """The category of an operator outside any built-in leaf module, e.g. "aten::bmm" -> "MatMul"."""
    name = op.removeprefix("aten::").rstrip("_")
    return OP_CATEGORIES.get(name, f"aten::{name}")


def builtin_type(module: nn.Module) -> str | None:
    """The torch.nn type a module is or extends (Linear for a subclass of nn.Linear), None for nn.Module itself."""
    for kind in type(module).__mro__:
        if kind.__module__.startswith("torch.nn.") and kind is not nn.Module:
            return kind.__name__
    return None


def builtin_leaves(model: nn.Module) -> dict[str, str]:
    """Named leaf modules (no children) of a built-in torch.nn type -> that type's name."""
    return {name: builtin_type(m) for name, m in model.named_modules()
            if next(m.children(), None) is None and builtin_type(m)}


def parameter_counts(model: nn.Module) -> dict:
    """Trainable parameters: total, per category and per named module (each parameter once, where it is held)."""
    leaves = builtin_leaves(model)
    by_module, by_category = {}, Counter()
    for name, module in model.named_modules():
        own = sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad)
        if own:
            by_module[name] = own
            # a custom module's own parameters (ST-GCN's edge importance, STAR's pooling W) keep its type name
            by_category[leaves.get(name, type(module).__name__)] += own
    return {"total": sum(by_module.values()), "by_category": dict(by_category.most_common()), "by_module": by_module}


@dataclass
class MacCount:
    """One counter's multiply-accumulates on one batch."""

    counter: str
    total: int
    by_category: dict[str, int]
    by_module: dict[str, int]  # per named module, its own and its children's ("" is the whole model)
    by_operator: dict[str, int] = field(default_factory=dict)  # per operator the counter keys its counts by
    products: int = 0  # the total over PRODUCTS categories: what the three counters can be compared on
    skipped: dict[str, int] = field(default_factory=dict)  # operators the counter saw and did not count
    # operator -> FLOPs the counter recorded for products it gave no MACs (DeepSpeed: einsum, torch.mul)
    missed: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        # fvcore's einsum handle returns floats; every count is a whole number of MACs
        self.total = round(self.total)
        self.by_category = {k: round(v) for k, v in Counter(self.by_category).most_common()}
        self.by_module = {k: round(v) for k, v in self.by_module.items()}
        self.by_operator = {k: round(v) for k, v in Counter(self.by_operator).most_common() if v}
        self.products = sum(v for k, v in self.by_category.items() if k in PRODUCTS)

    def as_dict(self) -> dict:
        return asdict(self)


def _hierarchical(own: dict[str, int]) -> dict[str, int]:
    """Per-module own counts -> each module's count including its descendants ("" is the root)."""
    totals = Counter()
    for name, count in own.items():
        parts = name.split(".") if name else []
        for depth in range(len(parts) + 1):
            totals[".".join(parts[:depth])] += count
    return {name: count for name, count in totals.items() if count}


def _categorise(leaves: dict[str, str], by_operator: dict[str, int],
                by_module_operator: dict[str, dict[str, int]]) -> Counter:
    """Per-category counts: a built-in leaf module's whole count under its type, the rest by operator."""
    by_category, inside = Counter(), Counter()
    for name, kind in leaves.items():
        ops = by_module_operator.get(name, {})
        by_category[kind] += sum(ops.values())
        inside.update(ops)
    for op, count in by_operator.items():
        if count - inside[op]:
            by_category[op_category(op)] += count - inside[op]
    return +by_category


# --- 1. fvcore ---------------------------------------------------------------------------------------------------

def _tensor_product_macs(inputs, outputs) -> int:
    """aten::mul: one MAC per output element when both factors are tensors with more than one element."""
    from fvcore.nn.jit_handles import get_shape

    shapes = [get_shape(v) for v in inputs[:2]]
    if any(s is None or math.prod(s) <= 1 for s in shapes):
        return 0
    return _products(*inputs[:2])


def _products(a, b) -> int:
    """Element-wise products of two traced tensors, broadcast."""
    from fvcore.nn.jit_handles import get_shape

    return math.prod(torch.broadcast_shapes(tuple(get_shape(a)), tuple(get_shape(b))))


def _dot_product_macs(inputs, outputs) -> int:
    """aten::linalg_vecdot(x, y, dim): one MAC per product summed."""
    return _products(inputs[0], inputs[1])


def _multiply_add_macs(inputs, outputs) -> int:
    """aten::addcmul(x, a, b): x + a * b, one MAC per product added."""
    return _products(inputs[1], inputs[2])


class _HostArguments(nn.Module):
    """`model` with its non-tensor arguments bound, so a JIT trace sees tensors alone (fvcore traces).

    Its one child is `model`, so every module name the trace reports starts with "model"; `own_name` strips it.
    """

    def __init__(self, model: nn.Module, inputs: tuple):
        super().__init__()
        self.model, self.inputs = model, inputs
        self.tensors = tuple(i for i in inputs if isinstance(i, torch.Tensor))

    def forward(self, *tensors):
        given = iter(tensors)
        return self.model(*(next(given) if isinstance(i, torch.Tensor) else i for i in self.inputs))

    @staticmethod
    def own_name(name: str) -> str | None:
        """The model's name for a module of the wrapper (None for the wrapper itself)."""
        return None if name == "" else "" if name == "model" else name.removeprefix("model.")


def fvcore_count(model: nn.Module, inputs: tuple) -> MacCount:
    from fvcore.nn import FlopCountAnalysis

    bound = _HostArguments(model, inputs)
    analysis = FlopCountAnalysis(bound, bound.tensors)
    analysis.set_op_handle("aten::mul", _tensor_product_macs, "aten::linalg_vecdot", _dot_product_macs,
                           "aten::addcmul", _multiply_add_macs, "aten::addcmul_", _multiply_add_macs)
    # additions only: the multiply of each MAC they finish is counted at aten::mul
    analysis.set_op_handle("aten::index_add_", None, "aten::index_add", None, "aten::segment_reduce", None,
                           "aten::sum", None)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    with torch.no_grad():
        by_operator = dict(analysis.by_operator())
        by_module_operator = {bound.own_name(name): dict(ops)
                              for name, ops in analysis.by_module_and_operator().items() if name}
        by_module = {bound.own_name(name): count for name, count in analysis.by_module().items() if count and name}
        skipped = dict(analysis.unsupported_ops())
    by_category = _categorise(builtin_leaves(model), by_operator, by_module_operator)
    return MacCount("fvcore", sum(by_operator.values()), by_category, by_module, by_operator, skipped=skipped)


# --- 2. DeepSpeed ------------------------------------------------------------------------------------------------

def _deepspeed_op(function_text: str) -> str:
    """DeepSpeed keys each patched call by the function's repr, e.g. "<built-in method bmm of type object ...>"."""
    match = re.search(r"(?:method|function|wrapper) '?(?:\w+\.)*(\w+)", function_text)
    return match.group(1).strip("_") if match else function_text


def deepspeed_count(model: nn.Module, inputs: tuple) -> MacCount:
    # DeepSpeed picks an accelerator on import and warns when it falls back to the CPU
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
    from deepspeed.profiling.flops_profiler import profiler as ds

    own_ops: dict[str, Counter] = {}  # module -> operator -> MACs of calls made directly in its forward
    own_flops: dict[str, Counter] = {}

    def capture(name: str):
        # registered before DeepSpeed's hooks, so it runs before DeepSpeed pops this module's call list
        def hook(module, args, output):
            if ds.module_mac_count:
                ops = own_ops.setdefault(name, Counter())
                for function, macs in ds.module_mac_count[-1]:
                    ops[_deepspeed_op(str(function()))] += macs
                flops = own_flops.setdefault(name, Counter())
                for function, count in ds.module_flop_count[-1]:
                    flops[_deepspeed_op(str(function()))] += count
        return hook

    handles = [m.register_forward_hook(capture(name)) for name, m in model.named_modules()]
    profiler = ds.FlopsProfiler(model)
    try:
        profiler.start_profile()
        with torch.no_grad():
            model(*inputs)
        total = profiler.get_total_macs()
    finally:
        profiler.end_profile()
        for handle in handles:
            handle.remove()
    by_operator, by_module_operator = Counter(), {}
    for name, ops in own_ops.items():
        by_operator.update(ops)
        by_module_operator[name] = ops
    by_category = _categorise(builtin_leaves(model), by_operator, by_module_operator)
    own = {name: sum(ops.values()) for name, ops in own_ops.items()}
    missed = Counter()
    for name, flops in own_flops.items():
        for op, count in flops.items():
            if op in ("einsum", "mul") and not own_ops.get(name, {}).get(op):
                missed[op] += count
    return MacCount("deepspeed", int(total), by_category, _hierarchical(own), dict(by_operator), missed=dict(missed))


# --- 3. analytic -------------------------------------------------------------------------------------------------

def _textbook_macs(module: nn.Module, output: torch.Tensor) -> int:
    """Output elements x the inputs each one sums over."""
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return output.numel() * module.in_channels // module.groups * math.prod(module.kernel_size)


def analytic_count(model: nn.Module, inputs: tuple, rows: int | None = None, clips: int | None = None) -> MacCount:
    """Textbook counts of every built-in Linear and Conv module, plus the model's `analytic_macs(rows, clips)`.

    With a closed form (STAR) its components give the categories and the
    total; the textbook hooks still give the per-module figures. Without one
    (the baselines) only Linear and convolution layers are counted.
    """
    own: dict[str, int] = {}
    by_category = Counter()

    def count(name: str):
        def hook(module, args, output):
            macs = _textbook_macs(module, output)
            own[name] = own.get(name, 0) + macs
            by_category[builtin_type(module)] += macs
        return hook

    layers = (nn.Linear, nn.Conv1d, nn.Conv2d)
    handles = [m.register_forward_hook(count(name)) for name, m in model.named_modules() if isinstance(m, layers)]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    components = {}  # the closed form's components, kept as its `by_operator`
    if hasattr(model, "analytic_macs"):
        components = model.analytic_macs(rows, clips)
        categories = model.mac_categories()
        by_category = Counter()
        for component, macs in components.items():
            by_category[categories[component]] += macs
    return MacCount("analytic", sum(by_category.values()), by_category, _hierarchical(own), components)
