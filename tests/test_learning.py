"""Proof that the trainer and the models learn: the tiny set's clips (26-40 frames), six NTU 60 classes
for STAR-64, the four one-person ones of them for the baselines.

Chance is 1/6 of the 36 test clips (17%); telling one-person from two-person
classes, all a model learns from the number of persons alone, gives 33%. Each
model trains with the trainer and a recipe suited to about a hundred training
clips (Adam at a fixed rate), the baselines on short padded clips (ST-GCN 4
frames, ST-TR 8) to keep each to well under a minute on two CPU cores.

Fed raw coordinates, the baselines sat on that 33% plateau for most of their
epochs before they told the one-person classes apart, and how long depended on
the seed and the machine's arithmetic: on an Intel Xeon, ST-GCN at batch 4 for
30 epochs on 8 frames reached 81%, 50% and 72% for seeds 0, 1 and 2, and ST-TR
at batch 8 for 8 epochs on 16 frames 67% (an AMD EPYC), 58% and 72%. So they
learn the four one-person actions alone (72 training clips, 24 test clips,
chance 25%), where nothing but motion tells the classes apart, to 60%: ST-GCN
in 24 epochs on 4 frames at batch 4 reached 92% (two threads), 79% and 92%
for seeds 0, 1 and 2 (one thread), each past 60% by epoch 19, so the test
gives it 28; ST-TR on 8 frames at batch 8 first passed 60% at epoch 8 for
seeds 0 to 4 at a rate of 2e-3 (two threads; 8 and 9 for seeds 0 and 1 on one),
against epochs 10, 10 and 12 for seeds 0 to 2 at 1e-3, so the test gives it 12
at 2e-3. STAR-64 reached 100% in 8 epochs, and 75% first at epochs 7, 5 and 5
for seeds 0 to 2; on shuffled labels at best 25%, 14% and 25%. Each test stops
at the first epoch that reaches its mark; the shuffled labels run all 8.
"""

import shutil

import numpy as np
import pytest

from star.data.store import CompactStore
from star.training.config import run_config
from star.training.trainer import Trainer

pytestmark = pytest.mark.slow

ADAM = {"optimizer": "adam", "lr": 1e-3, "schedule": "constant", "weight_decay": 0.0, "batch_size": 8}


def best_top1(store, out, model, epochs, stop_at=None, batch_size=ADAM["batch_size"], lr=ADAM["lr"],
              **options) -> float:
    """The best test top-1 (%) of a run trained epoch by epoch (the epochs `star train` runs, a checkpoint after
    each), ended early by the first epoch whose test top-1 reaches `stop_at`."""
    recipe = "code" if model.startswith("star") else "default"
    config = run_config(store.path, "ntu60/xsub", model, out, recipe=recipe,
                        overrides={**ADAM, "epochs": epochs, "batch_size": batch_size, "lr": lr}, **options)
    trainer = Trainer(config, progress=False)
    while trainer.epoch < epochs:
        trainer.run_epoch()
        if stop_at is not None and trainer.best["test_top1_pct"] >= stop_at:
            break
    return trainer.best["test_top1_pct"]


def test_star_64_learns(short_store, tmp_path):
    assert best_top1(short_store, tmp_path / "run", "star-64", epochs=8, stop_at=75) >= 75


def test_star_64_learns_nothing_from_shuffled_labels(short_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(short_store.path, store)
    clips = np.load(store / "clips.npy")
    train_side = short_store.split("ntu60/xsub", "train")
    clips["label"][train_side] = np.random.default_rng(0).permutation(clips["label"][train_side])
    np.save(store / "clips.npy", clips)
    assert best_top1(CompactStore(store), tmp_path / "run", "star-64", epochs=8) <= 40


@pytest.mark.parametrize("model,epochs,frames,batch,lr", [("st-gcn", 28, 4, 4, 1e-3), ("st-tr", 12, 8, 8, 2e-3)])
def test_baselines_learn(one_person_store, tmp_path, model, epochs, frames, batch, lr):
    assert best_top1(one_person_store, tmp_path / "run", model, epochs, stop_at=60, padded_frames=frames,
                     batch_size=batch, lr=lr) >= 60
