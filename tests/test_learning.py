"""Proof that the trainer and the models learn: the tiny set's clips (26-40 frames), six NTU 60 classes.

Chance is 1/6 of the 36 test clips (17%); telling one-person from two-person
classes, all a model learns from the number of persons alone, gives 33%. Each
model trains with the trainer and a recipe suited to 108 training clips
(Adam at a fixed rate), the baselines on short padded clips (ST-GCN 8 frames,
ST-TR 16) to keep them to a minute or two on two CPU cores. ST-GCN, fed raw
coordinates, sits on a plateau near 33% (the persons' count) before it tells
the one-person classes apart, and how long depends on the machine's
arithmetic: at batch 8 it broke out after 17 epochs on an AMD EPYC and not
within 24 on an Intel Xeon (best 39%); at batch 4 on the Xeon it passed 55%
from epoch 24 on, best 81% in 30 epochs. Measured: STAR-64 100%, on shuffled
labels at best 25%, ST-TR 67% (the EPYC); ST-GCN as above.
"""

import shutil

import numpy as np
import pytest

from star.data.store import CompactStore
from star.training.config import run_config
from star.training.trainer import train

pytestmark = pytest.mark.slow

ADAM = {"optimizer": "adam", "lr": 1e-3, "schedule": "constant", "weight_decay": 0.0, "batch_size": 8}


def learn(store, out, model, epochs, batch_size=ADAM["batch_size"], **options):
    recipe = "code" if model.startswith("star") else "default"
    config = run_config(store.path, "ntu60/xsub", model, out, recipe=recipe,
                        overrides={**ADAM, "epochs": epochs, "batch_size": batch_size}, **options)
    return train(config, progress=False)


def test_star_64_learns(short_store, tmp_path):
    metrics = learn(short_store, tmp_path / "run", "star-64", epochs=8)
    assert metrics["top1_pct"] >= 75


def test_star_64_learns_nothing_from_shuffled_labels(short_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(short_store.path, store)
    clips = np.load(store / "clips.npy")
    train_side = short_store.split("ntu60/xsub", "train")
    clips["label"][train_side] = np.random.default_rng(0).permutation(clips["label"][train_side])
    np.save(store / "clips.npy", clips)
    metrics = learn(CompactStore(store), tmp_path / "run", "star-64", epochs=8)
    assert metrics["best_top1_pct"] <= 40


@pytest.mark.parametrize("model,epochs,frames,batch", [("st-gcn", 30, 8, 4), ("st-tr", 8, 16, 8)])
def test_baselines_learn(short_store, tmp_path, model, epochs, frames, batch):
    metrics = learn(short_store, tmp_path / "run", model, epochs=epochs, padded_frames=frames, batch_size=batch)
    assert metrics["best_top1_pct"] >= 55
