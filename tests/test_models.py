"""Every registered model, checked the same way: add a model to the registry and it is tested here."""

import pytest
import torch
from code_paths import code_paths, representatives

from star import registry
from star.data.batching import PaddedCollate, collate_compact
from star.data.synthetic import random_samples
from star.device import compiled

CLASSES = 7


def example_batch(layout: str):
    samples = random_samples(frames=[5, 9, 3], persons=[1, 2, 1], seed=3, num_classes=CLASSES)
    if layout == "compact":
        return collate_compact(samples)
    return PaddedCollate(frames=24)(samples)


@pytest.mark.parametrize("name", registry.names())
def test_model_gives_finite_logits_and_a_gradient_to_every_parameter(name):
    torch.manual_seed(0)
    spec = registry.spec(name)
    model = registry.build(name, num_classes=CLASSES).train()
    batch = example_batch(spec.layout)
    logits = model(*registry.model_inputs(spec, batch))
    assert logits.shape == (batch.num_clips, CLASSES)
    assert torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, batch.labels).backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name}: {parameter_name} got no gradient"
        assert torch.isfinite(parameter.grad).all(), f"{name}: {parameter_name} has a non-finite gradient"
        assert parameter.grad.abs().sum() > 0, f"{name}: {parameter_name} has an all-zero gradient"


@pytest.mark.parametrize("name", registry.names())
def test_model_in_eval_mode_is_deterministic(name):
    torch.manual_seed(0)
    spec = registry.spec(name)
    model = registry.build(name, num_classes=CLASSES).eval()
    inputs = registry.model_inputs(spec, example_batch(spec.layout))
    with torch.no_grad():
        assert torch.equal(model(*inputs), model(*inputs))


@pytest.mark.parametrize("name", registry.names())
def test_model_refuses_the_other_layout(name):
    spec = registry.spec(name)
    other = "padded" if spec.layout == "compact" else "compact"
    with pytest.raises(TypeError, match="eats"):
        registry.model_inputs(spec, example_batch(other))


def test_registry_names_the_paper_models_and_refuses_unknown_ones():
    assert {"star-64", "star-128", "star-64-full", "star-128-full"} <= set(registry.names())
    with pytest.raises(ValueError, match="unknown model 'star-32'.*star-64"):
        registry.build("star-32")


def test_every_model_has_a_default_training_recipe():
    for name in registry.names():
        recipes = registry.spec(name).recipes
        assert recipes["default"].epochs > 0 and recipes["default"].batch_size > 0


@pytest.mark.parametrize("name", registry.names())
def test_model_runs_forward_and_backward_on_the_meta_device(name):
    """Device-clean without a GPU: a tensor made on a fixed device inside the model, or a host
    synchronisation (.item(), .tolist(), .cpu(), a boolean mask's data-dependent size), fails on meta."""
    spec = registry.spec(name)
    model = registry.build(name, num_classes=CLASSES).train().to("meta")
    batch = example_batch(spec.layout).to("meta")
    logits = model(*registry.model_inputs(spec, batch))
    assert logits.device.type == "meta" and logits.shape == (batch.num_clips, CLASSES)
    logits.sum().backward()
    assert all(p.grad is not None and p.grad.device.type == "meta" for p in model.parameters())


def test_only_other_widths_and_fewer_streams_share_a_code_path():
    shared = {name: path for name, path in representatives().items() if name != path}
    assert shared == {"star-128": "star-64", "star-128-full": "star-64-full", "star-128-code": "star-64-code",
                      "star-128-full-code": "star-64-full-code", "st-tr-s": "st-tr", "st-tr-t": "st-tr"}


INDUCTOR = ("star-64", "st-gcn")  # compiled by inductor: one model of each layout


def test_inductor_compiles_a_code_path_of_each_layout():
    layouts = {name: registry.spec(name).layout for name in registry.names()}
    assert set(INDUCTOR) <= set(code_paths()) and {layouts[name] for name in INDUCTOR} == set(layouts.values())


@pytest.mark.slow
@pytest.mark.parametrize("name", code_paths())
def test_compiled_model_gives_the_eager_outputs(name):
    """torch.compile on the CPU, once per code path (code_paths.py), in inference.

    Compiling, STAR's `auto` kernels take their launch-light forms (the fused
    operators have no fake-tensor kernels for dynamo to trace, and the CPU
    forms' loops would unroll), so the compiled graph checks those forms
    against the eager model's fused ones. The aot_eager backend checks, for
    every path, that dynamo traces the model and that the traced graph
    computes the eager outputs; inductor's code generation, the backend
    `star train --compile` uses (star.device.compiled), compiles INDUCTOR
    only: lowering ATen operators is torch's own to test, and compiling every
    path with it would be the slow tier's largest cost (benchmarks/HISTORY.md:
    Test and workflow times)."""
    torch._dynamo.reset()  # a fresh cache: past the recompile limit dynamo would run the model eagerly, unnoticed
    torch._dynamo.utils.counters.clear()
    torch.manual_seed(0)
    spec = registry.spec(name)
    model = registry.build(name, num_classes=CLASSES).eval()
    inputs = registry.model_inputs(spec, example_batch(spec.layout))
    with torch.no_grad():
        eager = model(*inputs)
        fast = (compiled(model, True) if name in INDUCTOR else torch.compile(model, backend="aot_eager"))(*inputs)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # something was compiled
    scale = max(1.0, float(eager.abs().max()))  # untrained logits run into the thousands
    torch.testing.assert_close(fast, eager, rtol=1e-4, atol=1e-4 * scale)
