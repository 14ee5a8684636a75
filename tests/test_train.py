import copy
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from star import registry
from star.cli import build_parser, main
from star.data.store import CompactStore, StoreError
from star.device import DeviceError, autocast, resolve_device
from star.recipe import TrainingRecipe
from star.training.checkpoint import config_differences, load_checkpoint
from star.training.config import RunError, run_config
from star.training.trainer import HISTORY_COLUMNS, TIMING_COLUMNS, Trainer, build_optimizer, train

REPO = Path(__file__).resolve().parent.parent
# a quick STAR-64 run: 8 clips a side, 2 steps an epoch
CLIPS, BATCH = 8, 4
STEPS = CLIPS // BATCH  # forward passes an epoch in training, and as many in evaluation
QUICK = {"recipe": "code", "overrides": {"epochs": 3, "batch_size": BATCH}, "max_clips": CLIPS}


def quick_config(store, out, model="star-64", **changes):
    settings = {**QUICK, **changes}
    settings["overrides"] = {**QUICK["overrides"], **changes.get("overrides", {})}
    return run_config(store.path, "ntu60/xsub", model, out, **settings)


def read_history(run: Path) -> list[dict]:
    with open(run / "history.csv", newline="") as file:
        return list(csv.DictReader(file))


def measured(history: list[dict]) -> list[dict]:
    """The history without its timing columns: what equal runs must reproduce exactly."""
    return [{key: value for key, value in row.items() if key not in TIMING_COLUMNS} for row in history]


ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # for a `star train` process


@contextmanager
def one_thread():
    """Runs compared bit for bit train on one CPU thread: with two, a busy machine changes how torch splits
    some of its work between them, and the last bits of the losses with it (two-threaded runs of these tests
    differed in the 8th digit under load; one-threaded ones never did)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference_run(short_store, tmp_path_factory) -> Path:
    """A finished quick run, uninterrupted, on one thread (the runs compared with it take one too)."""
    out = tmp_path_factory.mktemp("runs") / "reference"
    with one_thread():
        train(quick_config(short_store, out), progress=False)
    return out


def fail_on_call(monkeypatch, call: int, error: BaseException | None = None):
    """Make the call-th forward pass of the trainer raise `error`, or see NaN inputs if no error is given."""
    real = registry.model_inputs
    calls = [0]

    def inputs(spec, batch):
        calls[0] += 1
        args = real(spec, batch)
        if calls[0] == call:
            if error is not None:
                raise error
            return (args[0] * float("nan"), *args[1:])
        return args

    monkeypatch.setattr(registry, "model_inputs", inputs)


def test_noam_schedule_is_equation_8():
    recipe = TrainingRecipe(optimizer="adam", lr=1.0, schedule="noam", epochs=10, batch_size=8, warmup_epochs=2)
    rates = {t: recipe.learning_rate(t, steps_per_epoch=5, width=64) for t in (1, 9, 10, 11, 40)}
    # d^-0.5 min(t^-0.5, t w^-1.5) with d = 64, w = 2 epochs x 5 steps
    assert rates[1] == pytest.approx(0.125 * 10 ** -1.5)
    assert rates[10] == pytest.approx(0.125 * 10 ** -0.5)
    assert rates[40] == pytest.approx(0.125 * 40 ** -0.5)
    assert rates[9] < rates[10] > rates[11]
    with pytest.raises(ValueError, match="model width"):
        recipe.learning_rate(1, 5)


def test_step_schedule_counts_epochs_from_zero_like_the_baselines():
    recipe = TrainingRecipe(optimizer="sgd", lr=0.1, schedule="step", epochs=6, batch_size=8, milestones=(2, 4))
    rates = [recipe.learning_rate(step, steps_per_epoch=3) for step in range(1, 19)]
    assert rates == pytest.approx([0.1] * 6 + [0.01] * 6 + [0.001] * 6)


@pytest.mark.parametrize("change,message", [
    ({"lr": 0.0}, "lr must be positive"), ({"epochs": 0}, "epochs must be positive"),
    ({"schedule": "noam", "warmup_epochs": 0}, "needs warmup_epochs"), ({"milestones": (5, 2)}, "ascending"),
    ({"optimizer": "lamb"}, "unknown optimizer 'lamb'"), ({"label_smoothing": 1.0}, "label_smoothing"),
])
def test_bad_recipes_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        replace(registry.spec("star-64").recipes["paper"], **change)


def test_run_config_applies_overrides_to_the_named_recipe(tmp_path):
    config = run_config(tmp_path, "ntu60/xsub", "st-gcn", tmp_path / "run", overrides={"lr": 0.05, "epochs": 2})
    assert config.recipe == replace(registry.spec("st-gcn").recipes["default"], lr=0.05, epochs=2)
    assert config.fill == "zero" and run_config(tmp_path, "ntu60/xsub", "st-tr", tmp_path).fill == "repeat"
    with pytest.raises(ValueError, match="unknown recipe setting warmup; the settings are"):
        run_config(tmp_path, "ntu60/xsub", "star-64", tmp_path, overrides={"warmup": 3})
    with pytest.raises(ValueError, match="model 'star-64' has no recipe 'fast'; it has default, paper, code"):
        run_config(tmp_path, "ntu60/xsub", "star-64", tmp_path, recipe="fast")
    with pytest.raises(ValueError, match="unknown benchmark"):
        run_config(tmp_path, "ntu60/xsetup", "star-64", tmp_path)


def test_every_recipe_field_has_a_flag():
    args = build_parser().parse_args([
        "train", "--store", "s", "--benchmark", "ntu60/xsub", "--model", "star-64", "--out", "r",
        "--optimizer", "sgd", "--lr", "0.05", "--schedule", "step", "--epochs", "7", "--batch-size", "12",
        "--betas", "0.8", "0.9", "--eps", "1e-6", "--momentum", "0.9", "--no-nesterov", "--weight-decay", "0.001",
        "--warmup-epochs", "1.5", "--milestones", "3", "5", "--gamma", "0.5", "--label-smoothing", "0.1"])
    from star.cli import _recipe_overrides

    overrides = _recipe_overrides(args)
    assert overrides == {"optimizer": "sgd", "lr": 0.05, "schedule": "step", "epochs": 7, "batch_size": 12,
                         "betas": (0.8, 0.9), "eps": 1e-6, "momentum": 0.9, "nesterov": False,
                         "weight_decay": 0.001, "warmup_epochs": 1.5, "milestones": (3, 5), "gamma": 0.5,
                         "label_smoothing": 0.1}
    assert replace(registry.spec("star-64").recipes["default"], **overrides) == TrainingRecipe(**overrides)


def test_star_train_writes_every_result_file(short_store, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    compiled = []  # --compile's plumbing: torch.compile recorded, not run (tests/test_models.py compiles models)
    monkeypatch.setattr(torch, "compile", lambda model: compiled.append(model) or model)
    assert main(["train", "--store", str(short_store.path), "--benchmark", "ntu60/xsub", "--model", "star-64",
                 "--out", str(out), "--recipe", "code", "--epochs", "2", "--batch-size", str(BATCH),
                 "--max-clips", str(CLIPS), "--workers", "1", "--quiet", "--compile"]) == 0
    assert len(compiled) == 1 and type(compiled[0]).__name__ == "STAR"
    assert f"{out}: 2 epochs, test top-1" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "checkpoint.pt", "history.csv", "metrics.json"]
    history = read_history(out)
    assert list(history[0]) == list(HISTORY_COLUMNS) and [row["epoch"] for row in history] == ["1", "2"]
    metrics = json.loads((out / "metrics.json").read_text())
    top1 = [float(row["test_top1_pct"]) for row in history]
    assert metrics["top1_pct"] == top1[-1] and metrics["top5_pct"] == float(history[-1]["test_top5_pct"])
    assert metrics["best_epoch"] == int(np.argmax(top1)) + 1 and metrics["best_top1_pct"] == max(top1)
    assert metrics["params"] == 426_494 and metrics["epochs"] == 2 and metrics["world_size"] == 1
    assert metrics["train_clips"] == metrics["test_clips"] == CLIPS
    assert metrics["wall_s"] == pytest.approx(sum(float(row["epoch_s"]) for row in history))
    assert metrics["device"] == "cpu" and metrics["torch"] == torch.__version__
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert metrics["git_commit"] == (commit.stdout.strip() if commit.returncode == 0 else None)
    assert metrics["config"]["recipe"]["lr"] == 1e-3 and metrics["config"]["recipe"]["label_smoothing"] == 0.1
    assert metrics["config"]["max_clips"] == CLIPS and metrics["config"]["workers"] == 1
    assert metrics["config"]["compile"] is True
    assert 0 < float(history[0]["train_samples_per_s"]) and 0 < float(history[0]["test_samples_per_s"])
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 2
    assert load_checkpoint(out / "best.pt")["epoch"] == metrics["best_epoch"]


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_an_unfused_optimizers_state_resumes_fused(optimizer):
    """The trainer's optimizer is torch's fused one; a checkpoint's state written by the unfused one (before it
    was fused) loads as fused, and its next step is the unfused optimizer's next step to float rounding."""
    recipe = TrainingRecipe(optimizer=optimizer, lr=0.1, schedule="constant", epochs=1, batch_size=1, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(5, 3, generator=generator), torch.randn(3, generator=generator)]
    grads = [[torch.randn(w.shape, generator=generator) for w in weights] for _ in range(2)]
    unfused_weights = [w.clone().requires_grad_() for w in weights]
    options = {"momentum": 0.9} if optimizer == "sgd" else {}
    unfused = getattr(torch.optim, {"adam": "Adam", "sgd": "SGD"}[optimizer])(unfused_weights, lr=0.1, **options)
    for w, g in zip(unfused_weights, grads[0], strict=True):
        w.grad = g
    unfused.step()
    fused_weights = [w.detach().clone().requires_grad_() for w in unfused_weights]
    fused = build_optimizer(recipe, fused_weights)
    fused.load_state_dict(copy.deepcopy(unfused.state_dict()))  # as a checkpoint file gives it: tensors of its own
    assert [group["fused"] for group in fused.param_groups] == [True]
    for pair in ((unfused_weights, unfused), (fused_weights, fused)):
        for w, g in zip(pair[0], grads[1], strict=True):
            w.grad = g.clone()
        pair[1].step()
    for f, u in zip(fused_weights, unfused_weights, strict=True):
        torch.testing.assert_close(f, u, atol=1e-6, rtol=1e-6)
        assert not torch.equal(f, weights[0] if f.dim() == 2 else weights[1])  # it stepped


def test_devices_are_resolved_in_one_place():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'; choose one of auto, cpu, cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="--device cuda was asked for, but torch sees no CUDA device"):
            resolve_device("cuda")
    with autocast(torch.device("cpu"), True):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast(torch.device("cpu"), True, torch.float16):
        assert torch.get_autocast_dtype("cpu") == torch.float16


def test_the_same_seed_gives_the_same_history_and_another_seed_does_not(short_store, reference_run, tmp_path):
    with one_thread():
        train(quick_config(short_store, tmp_path / "again"), progress=False)
        train(quick_config(short_store, tmp_path / "other", seed=1, overrides={"epochs": 1}), progress=False)
    reference = measured(read_history(reference_run))
    assert measured(read_history(tmp_path / "again")) == reference
    other = read_history(tmp_path / "other")[0]  # its first epoch: both losses differ
    assert all(other[loss] != reference[0][loss] for loss in ("train_loss", "test_loss"))


def test_an_interrupted_run_resumes_to_the_same_numbers(short_store, reference_run, tmp_path, monkeypatch):
    out = tmp_path / "run"
    fail_on_call(monkeypatch, call=3 * STEPS, error=KeyboardInterrupt())  # epoch 2, batch 2 (the last)
    with pytest.raises(KeyboardInterrupt), one_thread():
        train(quick_config(short_store, out), progress=False)
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1 and len(read_history(out)) == 1
    assert not any(path.name.startswith(".") for path in out.iterdir())  # no temporary file left behind
    monkeypatch.undo()
    with one_thread():
        train(quick_config(short_store, out), progress=False)
    assert measured(read_history(out)) == measured(read_history(reference_run))
    resumed, reference = (load_checkpoint(run / "checkpoint.pt") for run in (out, reference_run))
    assert all(torch.equal(resumed["model"][key], value) for key, value in reference["model"].items())


@pytest.mark.slow  # a `star train` process of its own: its start, importing torch, costs more than its run
def test_a_killed_process_resumes_to_the_same_numbers(short_store, reference_run, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "star.cli", "train", "--store", str(short_store.path), "--benchmark",
               "ntu60/xsub", "--model", "star-64", "--out", str(out), "--recipe", "code", "--epochs", "3",
               "--batch-size", str(BATCH), "--max-clips", str(CLIPS), "--workers", "0", "--quiet"]
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL, env=ONE_THREAD)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)  # into the second epoch's training (an epoch takes about 0.3 s on one thread)
    process.kill()
    assert process.wait() == -9 and not (out / "metrics.json").exists()  # killed, not finished
    with one_thread():  # the same run resumed, in this process
        train(quick_config(short_store, out), progress=False)
    assert measured(read_history(out)) == measured(read_history(reference_run))


def test_a_finished_run_is_not_trained_again_and_can_be_extended(short_store, reference_run, tmp_path):
    """Extended call by call, a run ends with the numbers of one call for all its epochs."""
    out = tmp_path / "run"
    with one_thread():
        train(quick_config(short_store, out, overrides={"epochs": 1}), progress=False)
        stamps = [(out / name).stat().st_mtime_ns for name in ("checkpoint.pt", "metrics.json")]
        assert train(quick_config(short_store, out, overrides={"epochs": 1}), progress=False)["epochs"] == 1
        assert [(out / name).stat().st_mtime_ns for name in ("checkpoint.pt", "metrics.json")] == stamps
        train(quick_config(short_store, out, overrides={"epochs": 2}), progress=False)
        before = read_history(out)
        train(quick_config(short_store, out), progress=False)
    assert read_history(out)[:2] == before  # kept, timings and all: not trained again
    assert measured(read_history(out)) == measured(read_history(reference_run))
    resumed, reference = (load_checkpoint(run / "checkpoint.pt") for run in (out, reference_run))
    assert all(torch.equal(resumed["model"][key], value) for key, value in reference["model"].items())
    with pytest.raises(RunError, match="has 3 epochs done, more than the 1 asked for"):
        train(quick_config(short_store, out, overrides={"epochs": 1}), progress=False)


def test_a_checkpoint_of_another_run_is_refused(short_store, reference_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    with pytest.raises(RunError, match=r"belongs to another run \(seed: 0 there, 1 here\); use another --out"):
        train(quick_config(short_store, out, seed=1), progress=False)
    with pytest.raises(RunError, match="model: 'star-64' there, 'star-128' here"):
        train(quick_config(short_store, out, model="star-128"), progress=False)
    # where the store lives and how many loader processes run do not change the numbers
    moved = tmp_path / "moved-store"
    shutil.copytree(short_store.path, moved)
    assert train(quick_config(CompactStore(moved), out, workers=1), progress=False)["epochs"] == 3
    # but what the store holds does: one made again from other data is another run
    manifest = json.loads((moved / "manifest.json").read_text())
    made_again = {**manifest, "content_sha256": "0" * 64}
    (moved / "manifest.json").write_text(json.dumps(made_again))
    with pytest.raises(RunError, match=f"store_content: '{manifest['content_sha256']}' there, '0{{64}}' here"):
        train(quick_config(CompactStore(moved), out), progress=False)
    saved = load_checkpoint(out / "checkpoint.pt")["config"]  # runs made before stores recorded their content
    assert config_differences({k: v for k, v in saved.items() if k != "store_content"}, saved) == []
    assert config_differences({**saved, "store_content": None}, saved) == []
    assert config_differences({k: v for k, v in saved.items() if k != "amp"}, {**saved, "amp": True}) == [
        "amp: False there, True here"]  # a setting a checkpoint lacks ran at its default


def test_a_run_of_other_settings_is_set_aside_when_asked(short_store, reference_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    before = sorted(path.name for path in out.iterdir())
    trainer = Trainer(quick_config(short_store, out, seed=1), progress=False, replace_changed=True)
    trainer.resume()
    assert trainer.replaced.startswith("replaced-") and trainer.epoch == 0  # starts afresh
    assert [path.name for path in out.iterdir()] == [trainer.replaced]
    assert sorted(path.name for path in (out / trainer.replaced).iterdir()) == before


def test_a_diverged_loss_stops_the_run_and_keeps_the_last_good_epoch(short_store, tmp_path, monkeypatch):
    out = tmp_path / "run"
    fail_on_call(monkeypatch, call=3 * STEPS)  # epoch 2, batch 2 (the last)
    with pytest.raises(RunError, match=r"loss is not finite at epoch 2, batch 2 of 2; .*checkpoint.pt keeps epoch 1"):
        train(quick_config(short_store, out), progress=False)
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1 and len(read_history(out)) == 1
    assert not (out / "metrics.json").exists()


def test_a_missing_or_mismatched_store_says_what_to_do(short_store, tmp_path, capsys):
    assert main(["train", "--store", str(tmp_path / "nowhere"), "--benchmark", "ntu60/xsub", "--model", "star-64",
                 "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "is not a data store (no manifest.json); make one with `star preprocess" in capsys.readouterr().err
    store = tmp_path / "store"
    shutil.copytree(short_store.path, store)
    clips = np.load(store / "clips.npy")
    clips["label"][short_store.split("ntu60/xsub", "test")[0]] = 77
    np.save(store / "clips.npy", clips)
    with pytest.raises(StoreError, match="test side of ntu60/xsub holds label 77, but ntu60 has 60 classes"):
        train(quick_config(CompactStore(store), tmp_path / "run"), progress=False)
    assert not (tmp_path / "run").exists()


def test_a_damaged_checkpoint_is_refused(reference_run, short_store, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    (out / "checkpoint.pt").write_bytes((out / "checkpoint.pt").read_bytes()[:1000])
    with pytest.raises(RunError, match="checkpoint.pt is not a readable checkpoint"):
        train(quick_config(short_store, out), progress=False)


def test_evaluate_agrees_with_training_and_adds_up(reference_run, tmp_path, capsys):
    metrics = json.loads((reference_run / "metrics.json").read_text())
    assert main(["evaluate", "--run", str(reference_run), "--checkpoint", "last", "--out", str(tmp_path),
                 "--workers", "0"]) == 0
    assert f"(epoch 3) on ntu60/xsub test: top-1 {metrics['top1_pct']:.2f}%" in capsys.readouterr().out
    result = json.loads((tmp_path / "last-test.json").read_text())
    assert result["top1_pct"] == metrics["top1_pct"] and result["top5_pct"] == metrics["top5_pct"]
    assert result["loss"] == pytest.approx(metrics["test_loss"], rel=1e-6) and result["clips"] == CLIPS
    with open(tmp_path / "last-test-per-class.csv", newline="") as file:
        per_class = list(csv.DictReader(file))
    with open(tmp_path / "last-test-confusion.csv", newline="") as file:
        confusion = list(csv.reader(file))
    assert len(per_class) == 60 and per_class[0]["name"] == "drink water" and confusion[0][1] == "drink water"
    counts = np.array([row[1:] for row in confusion[1:]], dtype=np.int64)  # (60, 60)
    assert counts.shape == (60, 60) and counts.sum() == CLIPS
    assert [int(row["clips"]) for row in per_class] == counts.sum(1).tolist()
    assert [int(row["correct"]) for row in per_class] == np.diag(counts).tolist()
    assert 100 * np.trace(counts) / CLIPS == pytest.approx(result["top1_pct"])
    assert main(["evaluate", "--run", str(reference_run), "--out", str(tmp_path), "--workers", "0"]) == 0
    best = json.loads((tmp_path / "best-test.json").read_text())
    assert best["epoch"] == metrics["best_epoch"] and best["top1_pct"] == metrics["best_top1_pct"]


def test_a_checkpoint_that_does_not_fit_the_model_is_refused(reference_run, tmp_path):
    checkpoint = load_checkpoint(reference_run / "best.pt")
    checkpoint["model"]["head.extra"] = torch.zeros(1)
    checkpoint["model"].pop(next(iter(checkpoint["model"])))
    torch.save(checkpoint, tmp_path / "odd.pt")
    from star.evaluate import evaluate

    with pytest.raises(RunError, match=r"odd.pt does not fit model 'star-64' as registered now \(missing: .*"
                                       r"unexpected: head.extra\)"):
        evaluate(reference_run, str(tmp_path / "odd.pt"), out=tmp_path)


def test_progress_lines_without_a_terminal(short_store, tmp_path, capsys):
    train(quick_config(short_store, tmp_path / "run", overrides={"epochs": 1}), progress=True, log_every_s=0)
    err = capsys.readouterr().err
    assert "epoch 1/1: batch 1/2, loss" in err and "samples/s" in err
    assert "epoch 1/1: train loss" in err and "test loss" in err


@pytest.mark.parametrize("model", ["star-64", "st-gcn"])
def test_mixed_precision_trains_in_bfloat16_on_the_cpu(short_store, tmp_path, model):
    losses = {}
    for amp in (False, True):
        config = quick_config(short_store, tmp_path / f"amp-{amp}", model=model, recipe="default", amp=amp,
                              padded_frames=16, overrides={"epochs": 1, "lr": 1e-3, "optimizer": "adam",
                                                           "schedule": "constant"})
        train(config, progress=False)
        losses[amp] = float(read_history(tmp_path / f"amp-{amp}")[0]["train_loss"])
    assert np.isfinite(losses[True]) and losses[True] != losses[False]  # same seed: only the precision differs
    assert losses[True] == pytest.approx(losses[False], rel=0.05)


@pytest.mark.slow  # three processes of their own (torchrun and two trainers), each importing torch
def test_two_processes_train_one_run(short_store, tmp_path):
    """torchrun, gloo, 2 processes: one set of files, evaluation over every test clip."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                    "-m", "star.cli", "train", "--store", str(short_store.path), "--benchmark", "ntu60/xsub",
                    "--model", "star-64", "--out", str(out), "--recipe", "code", "--epochs", "2",
                    "--batch-size", str(BATCH), "--max-clips", str(CLIPS), "--workers", "0", "--device", "cpu",
                    "--quiet"],
                   check=True, env=env, capture_output=True)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and len(read_history(out)) == 2 and metrics["test_clips"] == CLIPS
    assert main(["evaluate", "--run", str(out), "--checkpoint", "last", "--out", str(tmp_path), "--workers", "0"]) == 0
    single = json.loads((tmp_path / "last-test.json").read_text())
    assert single["clips"] == CLIPS and single["top1_pct"] == metrics["top1_pct"]
    assert single["loss"] == pytest.approx(metrics["test_loss"], rel=1e-5)
