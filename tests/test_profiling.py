"""Profiling: the three MAC counters agree where they should, the breakdowns attribute work correctly,
and `star profile` writes a complete profile of either layout or refuses bad input by name."""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import platform
import shutil
import subprocess
import sys

import pytest
import torch
from code_paths import code_paths
from torch import nn

from star import registry, runtime
from star.cli import main
from star.data.preprocess import preprocess
from star.data.splits import XSUB60_TRAIN_SUBJECTS, get_benchmark
from star.data.synthetic import random_samples
from star.network.star import kernel_forms
from star.paper import published
from star.profiling.batch import ProfilingBatch, draw_batch, uniform_batch
from star.profiling.counting import (
    _deepspeed_op,
    builtin_leaves,
    deepspeed_count,
    fvcore_count,
    op_category,
    parameter_counts,
)
from star.profiling.profile import count_macs, sweep
from star.profiling.timing import category_latency, forward_latency, peak_memory
from star.provenance import environment
from star.runtime import allocator, huge_pages_advised, keep_freed_memory
from star.skeleton import neighbourhood_mask

CPU = torch.device("cpu")


def _small_batch() -> ProfilingBatch:
    """Two short clips; the padded models get 16 frames instead of 300 (the counters' agreement does not depend
    on it)."""
    return ProfilingBatch(random_samples(frames=[9, 6], persons=[1, 2], seed=0), ["a", "b"], {}, padded_frames=16)


# once per code path (code_paths.py), and at width 128 too: 8 heads of 16 channels where width 64 has 8 of 8,
# so a closed form that swapped heads and channels would pass at 64
COUNTED = [*code_paths(), "star-128"]


@pytest.mark.parametrize("name", COUNTED)
def test_counters_agree_on_what_each_counts(name):
    """Linear and convolution layers: all three counters give the same MACs, module by module.

    Beyond them each counter's known gaps are accounted for exactly, so the
    tolerance is zero: DeepSpeed records einsum and element-wise products as
    FLOPs without MACs and does not see `*` at all, so its products are
    fvcore's minus the Mul category and the einsum calls; STAR's closed form
    leaves out only the positional encoding's angles (rows x width / 2, Vaswani's encoding).
    """
    spec = registry.spec(name)
    model = registry.build(name).eval()
    batch = _small_batch()
    assert batch.padded().x.shape[2] == 16  # what the padded models are fed
    counts = count_macs(model, spec, batch, CPU)
    fv, ds, an = counts["fvcore"], counts["deepspeed"], counts["analytic"]
    layers = [n for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    assert layers
    for layer in layers:
        assert fv.by_module[layer] == ds.by_module[layer] == an.by_module[layer], layer
    for category in ("Linear", "Conv2d"):
        assert fv.by_category.get(category) == ds.by_category.get(category) == an.by_category.get(category)
    assert fv.by_module[""] == fv.total
    missed_by_deepspeed = fv.by_category.get("Mul", 0) + fv.by_operator.get("einsum", 0)
    assert ds.products == fv.products - missed_by_deepspeed
    if spec.layout == "compact":
        assert fv.by_category["Mul"] > 0
        # Vaswani's angles are a product of two tensors (positions x frequencies); the code's phase is a power
        angles = batch.rows * model.config.width // 2 if model.config.positional_encoding == "vaswani" else 0
        assert fv.products - an.products == angles
        assert {k: v for k, v in fv.by_category.items() if k in ("MatMul", "Linear")} == \
               {k: v for k, v in an.by_category.items() if k in ("MatMul", "Linear")}
    assert parameter_counts(model)["total"] == sum(p.numel() for p in model.parameters())


def test_padded_counts_extend_exactly_to_the_batch():
    """Counts on one and two padded clips, extended to three, equal a direct count on three."""
    spec = registry.spec("st-gcn")
    model = registry.build("st-gcn").eval()
    batch = ProfilingBatch(random_samples(frames=[9, 6, 5], persons=[1, 2, 1], seed=0), ["a", "b", "c"], {},
                           padded_frames=16)
    extended = count_macs(model, spec, batch, CPU)["fvcore"]
    direct = fvcore_count(model, registry.model_inputs(spec, batch.padded()))
    assert (extended.total, extended.by_category, extended.by_module, extended.by_operator) == \
           (direct.total, direct.by_category, direct.by_module, direct.by_operator)
    assert direct.by_operator["mul"] == 10 * 3 * 25 * 25  # the adjacency x edge importance: once per forward


def test_stgcn_convolutions_match_the_papers_table3():
    """16 padded clips: the paper's 260.4 GMACs of Conv2d (ours count 16 x 16.2288 = 259.66, 0.3% below). The
    tables' counter, fvcore; the other two count every convolution as it does (test_counters_agree_...)."""
    paper = dict(published()["table3_breakdown_top3"]["st-gcn"]["macs"])["Conv2d"]
    model = registry.build("st-gcn").eval()
    counts = count_macs(model, registry.spec("st-gcn"), uniform_batch(16, 40), CPU, ("fvcore",))
    assert counts["fvcore"].by_category["Conv2d"] == pytest.approx(paper, rel=0.01)


def test_sparse_attention_is_counted_as_products_not_zero():
    """The sparse attention's element-wise products: 2 x edges x rows x width per layer, in the Mul category."""
    model = registry.build("star-64").eval()
    batch = _small_batch().compact()
    with kernel_forms(model, "aten"):  # as count_macs traces it: a fused kernel is one opaque operator
        fv = fvcore_count(model, registry.model_inputs(registry.spec("star-64"), batch))
    config, rows = model.config, len(batch.x)
    attention = config.layers * 2 * int(neighbourhood_mask(3).sum()) * rows * config.width
    other_products = config.layers * rows * 25 * config.width + 2 * rows * 25 * config.width + rows * config.width // 2
    assert fv.by_category["Mul"] == attention + other_products


def test_deepspeed_misses_einsum_and_says_so():
    model = registry.build("st-gcn").eval()
    x = registry.model_inputs(registry.spec("st-gcn"), _small_batch().padded())[0][:1]
    fv, ds = fvcore_count(model, (x,)), deepspeed_count(model, (x,))
    assert fv.by_operator["einsum"] > 0 and "einsum" not in ds.by_operator
    assert ds.missed == {"einsum": 2 * fv.by_operator["einsum"]}  # FLOPs: a MAC is two


def test_parameters_by_category_and_module():
    model = registry.build("star-64")
    params = parameter_counts(model)
    assert params["by_category"]["Linear"] == sum(m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
                                                  for m in model.modules() if isinstance(m, nn.Linear))
    reference = published()["reference_measurements"]["star"]["params_hidden64"]  # the authors' code, counted
    assert sum(params["by_category"].values()) == sum(params["by_module"].values()) == params["total"] == reference
    assert params["by_module"]["pooling"] == 64 * 64


def test_categories_of_operators_and_modules():
    assert op_category("aten::bmm") == "MatMul" and op_category("aten::einsum") == "MatMul"
    assert op_category("aten::index_add_") == "Sum" and op_category("aten::mul") == "Mul"
    assert op_category("aten::frobnicate") == "aten::frobnicate"
    assert _deepspeed_op(str(torch.bmm)) == "bmm"
    assert _deepspeed_op(str(nn.functional.linear)) == "linear"
    leaves = builtin_leaves(registry.build("star-64"))
    assert leaves["embedding"] == "Linear" and leaves["input_norm"] == "BatchNorm1d"
    assert "pooling" not in leaves  # a model's own module: its operators keep their own categories


class _LinearThenMatMul(nn.Module):
    def __init__(self, matmul: bool):
        super().__init__()
        self.linear, self.matmul = nn.Linear(64, 64), matmul

    def forward(self, x):
        y = self.linear(x)
        return y @ y.T if self.matmul else y


def test_latency_categories_follow_modules_then_operators():
    x = torch.randn(256, 64)
    for matmul in (True, False):
        model = _LinearThenMatMul(matmul)
        breakdown = category_latency(model, lambda m=model: m(x), CPU, runs=2)["by_category_ms"]
        assert "Linear" in breakdown  # the linear layer's addmm is charged to its module, not to MatMul
        assert ("MatMul" in breakdown) == matmul


def test_peak_memory_replays_allocations_and_frees():
    x = torch.randn(1000, 1000)

    def forward():
        a = x @ x  # 4 MB
        b = a * 2  # 4 MB: 8 MB live
        del a
        return (b + 1).sum()  # 4 MB: still 8 MB live

    peak = peak_memory(forward, CPU)["peak_bytes"]
    assert 8_000_000 <= peak < 8_000_000 + 1024


def test_forward_latency_runs_warmup_then_repeats():
    calls = []
    result = forward_latency(lambda: calls.append(1), CPU, repeats=5, warmup=2)
    assert len(calls) == 7 and len(result["times_ms"]) == 5
    assert result["min_ms"] <= result["median_ms"] <= result["max_ms"]
    with pytest.raises(ValueError, match="repeats >= 1"):
        forward_latency(lambda: None, CPU, repeats=0)


def test_profiling_batch_is_a_recorded_seeded_draw(tiny_store):
    batch = draw_batch(tiny_store, "ntu60/xsub", clips=5, seed=3)
    test_names = set(tiny_store.clips["name"][tiny_store.split("ntu60/xsub", "test")])
    assert set(batch.names) <= test_names and len(set(batch.names)) == 5
    assert draw_batch(tiny_store, "ntu60/xsub", clips=5, seed=3).names == batch.names
    assert draw_batch(tiny_store, "ntu60/xsub", clips=5, seed=4).names != batch.names
    described = batch.describe()
    assert described["total_frames"] == sum(c["frames"] for c in described["clip_list"])
    assert described["rows"] == len(batch.compact().x) == sum(c["rows"] for c in described["clip_list"])
    assert described["padded"]["bytes"] == batch.padded().x.numel() * 4 == 5 * 3 * 300 * 25 * 2 * 4
    assert described["compact"]["bytes"] == described["rows"] * 25 * 3 * 4 + (5 + 1) * 8 + 4 * described["rows"] * 8


@pytest.mark.parametrize("name,compiling", [("star-64-code", True), ("st-gcn-code", False)])
def test_star_profile_writes_a_models_json(tiny_store, tmp_path, monkeypatch, name, compiling):
    """The command's plumbing, once per layout and with --compile and without: every model's counts are checked
    above, and the smoke workflow profiles every model of the tables. torch.compile is recorded, not run
    (tests/test_models.py compiles one model per code path)."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model: compiled.append(model) or model)
    out = tmp_path / f"{name}.json"
    assert main(["profile", "--store", str(tiny_store.path), "--model", name, "--out", str(out), "--clips", "2",
                 "--repeats", "2", "--warmup", "1", "--profiler-runs", "1", "--threads", "2",
                 "--padded-frames", "32", *(["--compile"] if compiling else [])]) == 0
    result = json.loads(out.read_text())
    model = registry.build(name, get_benchmark("ntu60/xsub").num_classes)
    summary, macs = result["summary"], result["macs"]
    assert result["model"] == name and result["threads"] == 2 and result["device"] == "cpu"
    assert result["compiled"] is compiling and [type(m) for m in compiled] == ([type(model)] if compiling else [])
    assert result["allocator"] == allocator()
    assert summary["params"] == sum(p.numel() for p in model.parameters())
    assert summary["gmacs"] == macs["fvcore"]["total"] / 1e9 > 0
    assert set(macs) == {"fvcore", "deepspeed", "analytic"}
    assert result["top3"]["macs"] == [[k, v] for k, v in list(macs["fvcore"]["by_category"].items())[:3]]
    latency = result["latency"]
    assert len(latency["times_ms"]) == 2 and summary["latency_ms"] == latency["median_ms"]
    assert latency["profiled_total_ms"] == pytest.approx(sum(latency["by_category_ms"].values()))
    assert result["batch"]["clips"] == 2 and len(result["batch"]["clip_list"]) == 2
    assert result["batch"]["padded"]["shape"] == [2, 3, 32, 25, 2]
    fill = registry.spec(name).fill
    assert result["batch"]["fed_as"] == ("compact" if name.startswith("star") else
                                         f"padded to 32 frames x 2 persons, fill {fill}")
    assert result["memory"]["peak_bytes"] > result["memory"]["input_bytes"] > 0


def test_sweep_pads_the_baselines_and_not_star():
    star = sweep("star-64", frames=[8, 16], clips=[1, 2], num_classes=60, device=CPU, repeats=1, warmup=0)
    assert [(p["clips"], p["frames"], p["rows"]) for p in star] == [(1, 8, 8), (1, 16, 16), (2, 8, 16), (2, 16, 32)]
    assert star[0]["gmacs"] < star[1]["gmacs"] < star[3]["gmacs"]
    gcn = sweep("st-gcn", frames=[8, 16], clips=[1, 2], num_classes=60, device=CPU, repeats=1, warmup=0,
                padded_frames=32)
    assert gcn[0] == {**gcn[1], "frames": 8}  # padded to 32 frames whatever the length: measured once per batch size
    assert [p["rows"] for p in gcn] == [64, 64, 128, 128]
    assert gcn[2]["gmacs"] == pytest.approx(2 * gcn[0]["gmacs"], rel=1e-5)  # all but the once-per-pass adjacency
    # the model was fed 32 frames: half of it costs half (ST-GCN's convolutions are linear in the frames)
    half = sweep("st-gcn", frames=[8], clips=[1], num_classes=60, device=CPU, repeats=1, warmup=0, padded_frames=16)
    assert half[0]["gmacs"] == pytest.approx(gcn[0]["gmacs"] / 2, rel=1e-4)


def test_bad_input_is_named(tiny_store, tiny_raw, tmp_path, capsys):
    out = str(tmp_path / "p.json")
    assert main(["profile", "--store", str(tiny_store.path), "--model", "st-nope", "--out", out]) == 2
    assert "unknown model 'st-nope'" in capsys.readouterr().err
    assert main(["profile", "--store", str(tmp_path / "nowhere"), "--model", "star-64", "--out", out]) == 2
    assert "is not a data store" in capsys.readouterr().err
    assert main(["profile", "--store", str(tiny_store.path), "--model", "star-64", "--out", out,
                 "--clips", "1000"]) == 2
    assert "fewer than the 1000 asked for" in capsys.readouterr().err
    assert main(["profile", "--store", str(tiny_store.path), "--model", "st-gcn", "--out", out,
                 "--padded-frames", "0"]) == 2
    assert "the padded layout needs at least one frame, got --padded-frames 0" in capsys.readouterr().err
    # a store of training subjects only: the cross-subject test side is empty
    raw = tmp_path / "train_only"
    raw.mkdir()
    for path in sorted(tiny_raw.glob("*.skeleton")):
        if int(path.name[9:12]) in XSUB60_TRAIN_SUBJECTS:
            shutil.copy(path, raw)
    preprocess([raw], tmp_path / "store", workers=1, progress=False)
    assert main(["profile", "--store", str(tmp_path / "store"), "--model", "star-64", "--out", out]) == 2
    assert "has no clip on the test side of ntu60/xsub" in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()


def test_subnormal_floats_are_flushed_to_zero_unless_declined(monkeypatch):
    """Subnormal operands cost x86 CPUs a microcode assist each; the star command has them flushed to zero."""
    product = lambda: (torch.tensor([1e-30]) * 1e-10).item()  # noqa: E731 - 1e-40: subnormal in float32
    try:
        monkeypatch.setenv("STAR_FLUSH_DENORMALS", "0")
        assert runtime.flush_denormals()["denormals"] == "kept (STAR_FLUSH_DENORMALS=0)" == runtime.denormals()
        assert product() == pytest.approx(1e-40, rel=1e-3)
    finally:
        monkeypatch.delenv("STAR_FLUSH_DENORMALS")
        state = runtime.flush_denormals()["denormals"]  # as the test process runs (tests/conftest.py)
    if platform.machine() in ("x86_64", "AMD64", "aarch64", "arm64"):
        assert state == "flushed to zero" == environment(CPU)["denormals"]
        assert product() == 0.0


def _huge_pages_available() -> bool:
    """The kernel grants transparent huge pages where asked (its THP mode always or madvise)."""
    try:
        return "[never]" not in open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return False


# In its own process, which keeps what it frees: one 2.2 GB block (more than glibc's largest positive trim
# threshold, 2^31 - 1) allocated, written one byte every 64 KiB (one 4 KiB page in 16, or each 2 MB huge page where
# the kernel's THP mode is `always`) and freed, twice; prints the allocator setting, the huge-page setting declined
# (with what torch is told) and each round's page faults.
_REUSE = """
import ctypes, ctypes.util, json, os, resource, sys
from star.runtime import keep_freed_memory, use_huge_pages
setting = keep_freed_memory()["allocator"]
pages = use_huge_pages()["huge_pages"], os.environ.get("THP_MEM_ALLOC_ENABLE")
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
size, faults = 2_200_000_000, []
for _ in range(2):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    if not block:
        sys.exit("malloc of 2.2 GB returned NULL")
    for offset in range(0, size, 1 << 16):
        ctypes.memset(block + offset, 1, 1)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"allocator": setting, "huge_pages": pages, "faults": faults}))
"""


@pytest.mark.slow
def test_freed_memory_is_reused_however_large_the_block():
    """A freed block of more than 2 GiB stays the process's (a training step of STAR-128 on long clips frees
    that much): writing it again faults in next to no page, where the first round faulted in every one it wrote
    (counted in faults, not pages, so that huge pages do not change the measure; with STAR_KEEP_FREED_MEMORY=0
    both rounds fault alike). In the same process, STAR_HUGE_PAGES=0 keeps torch from advising them, and tells
    its children so."""
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("the setting is glibc's (mallopt)")
    done = subprocess.run([sys.executable, "-c", _REUSE], capture_output=True, text=True,
                          env={**os.environ, "STAR_KEEP_FREED_MEMORY": "1", "STAR_HUGE_PAGES": "0"})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    if _huge_pages_available():
        assert result["huge_pages"] == ["huge pages not requested (STAR_HUGE_PAGES=0)", "0"], result
    first, second = result["faults"]
    assert result["allocator"].startswith("glibc, freed memory kept"), result
    assert first > 0, "the first round faulted in no page: are page faults counted here?"
    assert second < first / 100, f"the second round faulted in {second} pages of the first's {first}: freed memory " \
                                 "went back to the kernel"


def test_allocator_setting_is_applied_and_can_be_declined(monkeypatch):
    monkeypatch.setenv("STAR_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory()["allocator"] == "glibc defaults (STAR_KEEP_FREED_MEMORY=0)"
    assert allocator().startswith("glibc defaults (STAR_KEEP_FREED_MEMORY=0)")
    monkeypatch.delenv("STAR_KEEP_FREED_MEMORY")
    if platform.libc_ver()[0] == "glibc":
        assert keep_freed_memory()["allocator"].startswith("glibc, freed memory kept")
        assert environment(CPU)["allocator"] == allocator()


def test_torch_advises_huge_pages_for_its_large_blocks():
    """The test process asked at its start (tests/conftest.py): torch advises huge pages for a block of 2 MB and
    more, which a fresh mapping of the process is not; declining is checked in its own process
    (test_freed_memory_is_reused_however_large_the_block)."""
    if os.environ.get("STAR_HUGE_PAGES") == "0" or not _huge_pages_available():
        pytest.skip("huge pages declined or not available to the test process")
    assert allocator().endswith("; torch's blocks of 2 MB and more advised to use huge pages")
    assert huge_pages_advised(torch.empty(3 << 20).data_ptr())  # 12 MB
    fresh = mmap.mmap(-1, 4 << 20)
    assert not huge_pages_advised(ctypes.addressof(ctypes.c_char.from_buffer(fresh)))
