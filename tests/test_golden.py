"""Every "as run" model against its public reference code, through the fixtures of scripts/golden/.

Each fixture holds the reference network's outputs on the golden clips with
our seeded weights copied in (`star.convert.golden`); here the same model is
rebuilt from the seed alone and must give those outputs to 1e-5 in float32,
and the converter must produce exactly the reference's state-dict layout.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from star.convert import from_reference, layout, to_reference
from star.convert.golden import TOLERANCE, golden_inputs, outputs_of, probe, seeded_model
from star.fidelity import STAR_POINTS
from star.network import fused
from star.network.sparse_attention import SpatialAttention
from star.network.star import STAR, STARConfig

GOLDEN = Path(__file__).parent / "golden"
FIXTURES = sorted(GOLDEN.glob("*.npz"))


def fixture(name: str) -> dict:
    with np.load(GOLDEN / f"{name}.npz") as data:
        return {key: data[key] for key in data.files}


def test_every_reference_code_has_its_fixtures():
    """One per runnable reference network (the code's full-attention STAR is commented out: its layouts have none)."""
    from star.convert import layouts

    assert {path.stem for path in FIXTURES} == {"star-64-code", "star-128-code", "st-gcn-code", "st-tr-s", "st-tr-t"}
    assert {path.stem for path in FIXTURES} <= set(layouts())


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_model_gives_the_reference_outputs(path):
    data = fixture(path.stem)
    modules = [key.removeprefix("module:") for key in data if key.startswith("module:")]
    assert modules, "a fixture records intermediate outputs"
    logits, recorded = outputs_of(seeded_model(path.stem), {m: m for m in modules}, *golden_inputs(path.stem))
    np.testing.assert_allclose(logits.numpy(), data["logits"], rtol=0, atol=TOLERANCE)
    for name in modules:
        np.testing.assert_allclose(probe(recorded[name]).numpy(), data[f"module:{name}"], rtol=0, atol=TOLERANCE,
                                   err_msg=name)


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_converter_writes_the_reference_layout_and_reads_it_back(path):
    model = seeded_model(path.stem)
    reference = to_reference(layout(path.stem), model)
    shapes = json.loads(str(fixture(path.stem)["reference_shapes"]))
    assert {key: list(value.shape) for key, value in reference.items()} == shapes
    back = from_reference(layout(path.stem), model, {f"module.{k}": v for k, v in reference.items()})  # DDP prefix
    own = model.state_dict()
    assert back.keys() == own.keys()
    for key in own:
        torch.testing.assert_close(back[key], own[key], rtol=0, atol=0)


# --- STAR: training behaviour, and every point of the code needed ------------------------------------------------

STAR_CODE = [p.stem for p in FIXTURES if p.stem.startswith("star-")]


def _zero_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(module, SpatialAttention):
            module.attention_dropout = 0.0


@pytest.mark.parametrize("name", STAR_CODE)
def test_star_code_trains_as_the_code_does(name, monkeypatch):
    """Train mode: batch statistics give the code's logits, and the same dropouts act, in order, at the same rates
    (an Add & Norm's dropout is that of its Dropout module, or on the CPU the rate its fused kernel is given)."""
    data = fixture(name)
    model = seeded_model(name).train()
    rates = []
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.register_forward_hook(lambda m, _i, _o: rates.append(m.p))
        if isinstance(module, SpatialAttention):
            module.register_forward_hook(lambda m, _i, _o: rates.append(m.attention_dropout))
    add_norm = fused.add_norm
    monkeypatch.setattr(fused, "add_norm", lambda x, y, norm, p: (rates.append(p), add_norm(x, y, norm, p))[1])
    model(*golden_inputs(name))
    assert rates == data["dropout_rates"].tolist()  # the same dropouts, in the same order
    model = seeded_model(name).train()
    _zero_dropout(model)
    with torch.no_grad():
        logits = model(*golden_inputs(name))
    np.testing.assert_allclose(logits.numpy(), data["train_logits"], rtol=0, atol=TOLERANCE)


EVAL_POINTS = [p for p in STAR_POINTS if not p.training_only and p.options != ("linear_eps",)]


@pytest.mark.parametrize("point", EVAL_POINTS, ids=lambda p: p.name)
def test_each_point_of_the_code_is_needed(point):
    """Switching any one point back to the paper's form moves star-64-code's logits off the code's."""
    model = seeded_model("star-64-code")
    described = STARConfig()
    switched = STAR(replace(model.config, **{o: getattr(described, o) for o in point.options}))
    switched.load_state_dict(model.state_dict())
    with torch.no_grad():
        logits = switched.eval()(*golden_inputs("star-64-code"))
    assert np.abs(logits.numpy() - fixture("star-64-code")["logits"]).max() > 100 * TOLERANCE


# --- star convert: a reference checkpoint into a run that star evaluate scores --------------------------------------

def test_convert_then_evaluate_a_reference_checkpoint(tiny_store, tmp_path, capsys):
    from star.cli import main

    # STAR's code: scoring its compact batches costs a fraction of a padded baseline's 300 frames per clip
    model = seeded_model("star-64-code")
    checkpoint = tmp_path / "star.ntu-xsub.pt"
    torch.save(to_reference(layout("star-64-code"), model), checkpoint)  # the reference code's layout
    run = tmp_path / "run"
    assert main(["convert", "--model", "star-64-code", "--checkpoint", str(checkpoint), "--store",
                 str(tiny_store.path), "--benchmark", "ntu60/xsub", "--out", str(run)]) == 0
    converted = torch.load(run / "best.pt", weights_only=True)["model"]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(converted[key], value, rtol=0, atol=0)
    assert json.loads((run / "converted.json").read_text())["source"] == str(checkpoint)
    assert main(["evaluate", "--run", str(run), "--workers", "0"]) == 0
    assert "on ntu60/xsub test: top-1" in capsys.readouterr().out
    clips = len(tiny_store.split("ntu60/xsub", "test"))
    assert json.loads((run / "evaluation" / "best-test.json").read_text())["clips"] == clips


def test_convert_refuses_a_checkpoint_that_does_not_fit(tiny_store, tmp_path, capsys):
    from star.cli import main

    def refused(state: dict) -> str:
        checkpoint = tmp_path / "bad.pt"
        torch.save(state, checkpoint)
        assert main(["convert", "--model", "st-gcn-code", "--checkpoint", str(checkpoint), "--store",
                     str(tiny_store.path), "--benchmark", "ntu60/xsub", "--out", str(tmp_path / "run")]) == 2
        return capsys.readouterr().err

    good = to_reference(layout("st-gcn-code"), seeded_model("st-gcn-code"))
    assert "no 'data_bn.weight'" in refused({k: v for k, v in good.items() if k != "data_bn.weight"})
    assert "'fcn.weight' has shape (120, 256, 1, 1)" in refused({**good, "fcn.weight": torch.zeros(120, 256, 1, 1)})
    paper_graph = to_reference(layout("st-gcn-code"), seeded_model("st-gcn"))  # the paper's partitions
    assert "'A' is not the 'units.0.gcn.partitions'" in refused(paper_graph)
    assert "'extra'" in refused({**good, "extra": torch.zeros(1)})
    assert "holds no state dict" in refused({"weights": [1, 2]})
    assert not (tmp_path / "run").exists()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text("{}")
    assert "is not empty" in refused(good)
    # the model zoo's layout itself converts, tensor for tensor (scoring it is the STAR checkpoint's test above)
    torch.save(good, tmp_path / "good.pt")
    assert main(["convert", "--model", "st-gcn-code", "--checkpoint", str(tmp_path / "good.pt"), "--store",
                 str(tiny_store.path), "--benchmark", "ntu60/xsub", "--out", str(tmp_path / "zoo")]) == 0
    converted = torch.load(tmp_path / "zoo" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(converted[key], value) for key, value in seeded_model("st-gcn-code").state_dict().items())
