"""Shared fixtures: the tiny synthetic data set, generated once per test session."""

from __future__ import annotations

from dataclasses import replace

import pytest

from star import runtime
from star.data.preprocess import preprocess
from star.data.store import CompactStore
from star.data.synthetic import TINY, generate


def pytest_configure(config):
    """The test process allocates and treats subnormal floats as the `star` command does (star.runtime), so the
    in-process training and profiling tests run as fast as the commands they stand for."""
    runtime.apply()


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory):
    """Folder of the tiny set's raw .skeleton files (do not modify: shared by every test)."""
    folder = tmp_path_factory.mktemp("tiny_raw")
    generate(folder, TINY)
    return folder


@pytest.fixture(scope="session")
def tiny_store(tiny_raw, tmp_path_factory) -> CompactStore:
    """The tiny set preprocessed into a compact store."""
    out = tmp_path_factory.mktemp("stores") / "tiny"
    preprocess([tiny_raw], out, workers=1, progress=False)
    return CompactStore(out)


def _generated_store(tmp_path_factory, name: str, **spec) -> CompactStore:
    raw = tmp_path_factory.mktemp(f"{name}_raw")
    generate(raw, replace(TINY, **spec))
    out = tmp_path_factory.mktemp("stores") / name
    preprocess([raw], out, workers=1, progress=False)
    return CompactStore(out)


@pytest.fixture(scope="session")
def short_store(tmp_path_factory) -> CompactStore:
    """The tiny set with clips of 26-40 frames instead of 32-300: the same classes, cheaper to train on
    (the generator's shortest: a switched tracking ID keeps 12 frames either side)."""
    return _generated_store(tmp_path_factory, "short", min_frames=26, max_frames=40)


@pytest.fixture(scope="session")
def one_person_store(tmp_path_factory) -> CompactStore:
    """The short set's spec with only its four one-person actions (the same names and motions, other random
    draws): no class is told apart by how many persons it has."""
    return _generated_store(tmp_path_factory, "one_person", actions=(1, 8, 23, 43), min_frames=26, max_frames=40)
