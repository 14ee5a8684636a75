"""Tables 1-5, the figures and the HTML report, from result files made up here (the smoke workflow test
in test_workflow.py makes them for real)."""

from __future__ import annotations

import base64
import html as html_text
import json
import math
import re
import statistics
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from html_page import Page

from star.cli import main
from star.formats import EVALUATION_FORMAT, FIDELITY_FORMAT, PROFILE_FORMAT, RUN_FORMAT, STORE_FORMAT
from star.io import write_together
from star.paper import published
from star.report import figures, per_class
from star.report.html import ReportError, number, render_report, signed, write_table
from star.report.tables import RECORD_COLUMNS, TableError, build
from star.schemas import ResultFileError

BENCHMARKS = published()["table1_accuracy_top1"]["columns"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(model: str, benchmark: str, seed: int, best: float, final: float | None = None) -> dict:
    """A run's metrics.json as star train writes it (its schema, star/schemas/run.schema.json, checks it)."""
    return {"format": RUN_FORMAT, "model": model, "benchmark": benchmark, "dataset": benchmark.split("/")[0],
            "seed": seed, "epochs": 3, "best_top1_pct": best, "top1_pct": best - 1 if final is None else final,
            "best_top5_pct": min(best + 20, 100), "top5_pct": min(best + 19, 100), "test_loss": 1.5,
            "best_epoch": 2, "params": 426_494, "params_m": 0.426494, "wall_s": 12.5, "train_clips": 16,
            "test_clips": 16, "world_size": 1, "replaced": None, "device": "cpu", "device_name": "test cpu",
            "torch": "2.13.0", "git_commit": "0123456789abcdef", "git_dirty": False,
            "config": {"store": "store", "benchmark": benchmark, "model": model, "seed": seed,
                       "recipe": {"optimizer": "adam", "lr": 0.001, "epochs": 3, "batch_size": 4}},
            "_path": f"{benchmark}/{model}/seed{seed}"}


def profile(model: str, latency_ms: float, gmacs: float, params: int) -> dict:
    """A profile JSON with the keys tables, figures and the report read; breakdowns scaled by `gmacs`."""
    macs = {"Linear": gmacs * 0.7e9, "MatMul": gmacs * 0.2e9, "Mul": gmacs * 0.08e9, "LayerNorm": gmacs * 0.02e9}
    parameters = {"Linear": params * 0.9, "LayerNorm": params * 0.06, "ContextPooling": params * 0.04}
    time_ms = {"Linear": latency_ms * 0.5, "Mul": latency_ms * 0.3, "MatMul": latency_ms * 0.2}
    ranked = lambda d: [[k, v] for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:3]]  # noqa: E731
    layout = "padded" if model.startswith("st-") else "compact"
    return {"format": PROFILE_FORMAT, "model": model, "layout": layout, "num_classes": 60, "device": "cpu",
            "device_name": "test cpu",
            "torch": "2.13.0", "threads": 2, "allocator": "keep", "git_commit": "0123456789abcdef", "git_dirty": True,
            "created": "2026-11-24T10:00:00+0000",
            "batch": {"clips": 4, "total_frames": 400, "benchmark": "ntu60/xsub", "seed": 0, "fed_as": layout},
            "summary": {"latency_ms": latency_ms, "params": params, "params_m": params / 1e6, "gmacs": gmacs,
                        "peak_memory_bytes": 2**24},
            "top3": {"macs": ranked(macs), "params": ranked(parameters), "latency_ms": ranked(time_ms)},
            "macs": {"fvcore": {"total": gmacs * 1e9, "by_category": macs}},
            "params": {"total": params, "by_category": parameters},
            "latency": {"median_ms": latency_ms, "by_category_ms": time_ms, "repeats": 3},
            "memory": {"peak_bytes": 2**24},
            "sweep": [{"clips": c, "frames": f, "latency_ms": latency_ms * c * f / 128, "gmacs": gmacs}
                      for c in (1, 4) for f in (32, 128)]}


def evaluation_files(folder, model: str, seed: int, confusion: np.ndarray, benchmark="ntu60/xsub"):
    names = [f"action {k}" for k in range(len(confusion))]
    rows = [{"class": k, "name": names[k], "clips": int(confusion[k].sum()), "correct": int(confusion[k, k]),
             "accuracy_pct": 100.0 * confusion[k, k] / confusion[k].sum() if confusion[k].sum() else None}
            for k in range(len(confusion))]
    path = folder / model / f"seed{seed}" / "best-test.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"format": EVALUATION_FORMAT, "model": model, "benchmark": benchmark,
                                "split": "test", "epoch": 3, "clips": int(confusion.sum()),
                                "top1_pct": 100.0 * np.trace(confusion) / confusion.sum(), "per_class": rows,
                                "config": {"seed": seed}}))
    lines = [",".join(["true", *names])] + [",".join([names[k], *map(str, confusion[k])]) for k in range(len(names))]
    per_class.confusion_path(path).write_text("\n".join(lines) + "\n")
    return path


PROFILES = {
    "st-gcn": profile("st-gcn", 2111.0, 274.2, 3_098_832),
    "st-tr": profile("st-tr", 4625.0, 449.4, 4_843_184),
    "star-64": profile("star-64", 346.0, 12.21, 426_494),
    "star-128": profile("star-128", 890.0, 47.5, 1_262_462),
    "star-64-full": profile("star-64-full", 409.0, 12.82, 426_494),
}


def test_table1_mean_and_spread_over_seeds_beside_the_published_number():
    runs = [run("star-64", "ntu60/xsub", seed, best) for seed, best in enumerate([70.0, 72.5, 76.0])]
    runs += [run("st-gcn", b, 0, 50.0 + i) for i, b in enumerate(BENCHMARKS)]
    table = build(1, runs)
    assert table.rows == ["st-gcn", "star-64"]  # the paper's order
    assert table.columns == BENCHMARKS
    cell = table.cell("star-64", "ntu60/xsub")
    assert cell.reproduced == statistics.fmean([70.0, 72.5, 76.0])
    assert cell.spread == statistics.stdev([70.0, 72.5, 76.0])
    assert cell.seeds == 3
    assert cell.published == published()["table1_accuracy_top1"]["rows"]["star-64"][0]
    assert cell.difference == cell.reproduced - cell.published
    single = table.cell("st-gcn", "ntu120/xset")
    assert (single.reproduced, single.spread, single.seeds) == (53.0, None, 1)
    assert single.published == published()["table1_accuracy_top1"]["rows"]["st-gcn"][3]
    assert table.cell("star-64", "ntu60/xview").reproduced is None  # not run: an empty cell, not a zero


def test_table1_final_accuracy_and_bad_runs():
    runs = [run("star-64", "ntu60/xsub", 0, best=80.0, final=75.0)]
    assert build(1, runs, accuracy="final").cell("star-64", "ntu60/xsub").reproduced == 75.0
    with pytest.raises(TableError, match="two runs for .*star-64"):
        build(1, runs + runs)
    with pytest.raises(TableError, match="accuracy must be one of"):
        build(1, runs, accuracy="median")
    with pytest.raises(TableError, match="several models in one row"):
        build(4, [run("star-64", "ntu60/xsub", 0, 80.0), run("star-128", "ntu60/xsub", 0, 81.0)])


def test_table4_rows_are_the_papers_sparse_and_full_with_the_model_named():
    table = build(4, [run("star-128", "ntu60/xsub", 0, 80.0), run("star-128-full", "ntu60/xsub", 0, 79.0)])
    assert table.rows == ["star-sparse", "star-full"]
    paper = published()["table4_sparse_vs_full_accuracy"]["rows"]
    assert table.cell("star-full", "ntu60/xsub").published == paper["star-full"][0]
    assert table.cell("star-full", "ntu60/xsub").model == "star-128-full"
    assert table.cell("star-sparse", "ntu60/xsub").model == "star-128"


@pytest.mark.parametrize("number", [2, 5])
def test_efficiency_tables_put_each_summary_beside_its_published_column(number):
    chosen = ["st-gcn", "st-tr", "star-64", "star-128"] if number == 2 else ["star-64", "star-64-full"]
    table = build(number, [PROFILES[m] for m in chosen], smoke=True)
    paper = published()["table2_efficiency" if number == 2 else "table5_sparse_vs_full_efficiency"]
    for model in chosen:
        row = model if number == 2 else ("star-full" if model.endswith("-full") else "star-sparse")
        latency = table.cell(row, "latency_ms")
        assert latency.reproduced == PROFILES[model]["summary"]["latency_ms"]
        assert latency.published == paper["rows"][row][paper["columns"].index("cuda_time_ms")]
        gmacs = table.cell(row, "gmacs")
        assert gmacs.published == paper["rows"][row][paper["columns"].index("gmacs")]
        assert gmacs.difference == PROFILES[model]["summary"]["gmacs"] - gmacs.published
    assert ("params_m" in table.columns) == (number == 2)
    assert "test cpu" in table.notes[0]
    assert all(record["smoke"] for record in table.records())


def test_table3_differences_only_where_the_module_types_agree():
    table = build(3, [PROFILES["st-gcn"], PROFILES["star-64"]])
    paper = published()["table3_breakdown_top3"]
    assert table.columns[:3] == ["gmacs #1", "gmacs #2", "gmacs #3"]
    first = table.cell("star-64", "params_m #1")  # Linear on both sides
    assert (first.category, first.published_category) == ("Linear", "Linear")
    assert first.reproduced == PROFILES["star-64"]["top3"]["params"][0][1] / 1e6
    assert first.difference == first.reproduced - paper["star-64"]["params"][0][1] / 1e6
    mismatched = table.cell("star-64", "gmacs #1")  # ours Linear, the paper's "MatMul (attention)"
    assert mismatched.published_category == "MatMul (attention)" and mismatched.difference is None
    assert mismatched.reproduced == PROFILES["star-64"]["top3"]["macs"][0][1] / 1e9
    assert mismatched.published == paper["star-64"]["macs"][0][1] / 1e9  # 24.4 GMACs
    mul = table.cell("star-64", "latency_ms #2")  # Mul on both sides, in milliseconds on both
    assert (mul.category, mul.published_category) == ("Mul", "Mul")
    assert mul.difference == PROFILES["star-64"]["top3"]["latency_ms"][1][1] - paper["star-64"]["latency_ms"][1][1]
    third = table.cell("star-64", "latency_ms #3")  # ours MatMul, the paper's Linear
    assert (third.category, third.published_category, third.difference) == ("MatMul", "Linear", None)
    assert table.cell("star-64", "params_m #3").published is None  # the paper lists two


def test_table_csv_round_trips_exactly_and_html_has_every_cell(tmp_path):
    table = build(2, [PROFILES[m] for m in ("st-gcn", "star-64")])
    csv_path, html_path = write_table(table, tmp_path / "table2.csv")
    frame = pd.read_csv(csv_path)
    assert tuple(frame.columns) == RECORD_COLUMNS
    for record, row in zip(table.records(), frame.to_dict("records"), strict=True):
        for key in ("reproduced", "published", "difference"):
            assert record[key] == row[key]
    html = html_path.read_text()
    assert html.count("<td>") == len(table.rows) * len(table.columns)
    assert "smoke" not in html


@pytest.mark.parametrize("name", list(figures.FIGURES))
def test_every_figure_is_written_as_png_and_svg(name, tmp_path):
    if name == "training-curves":
        inputs = []
        for model in ("star-64", "star-128"):
            folder = tmp_path / model
            folder.mkdir()
            (folder / "metrics.json").write_text(json.dumps(run(model, "ntu60/xsub", 0, 50.0)))
            pd.DataFrame({"epoch": [1, 2, 3], "train_top1_pct": [10, 30, 50], "test_top1_pct": [8, 20, 41]}).to_csv(
                folder / "history.csv", index=False)
            inputs.append(folder / "metrics.json")
    elif name == "storage":
        inputs = [tmp_path / "manifest.json"]
        inputs[0].write_text(json.dumps({
            "format": STORE_FORMAT, "created": "2026-12-02T09:00:00+0000", "source": ["raw"], "clips": 192,
            "tracks": 264, "two_person_clips": 72,
            "total_frames": 29619, "frames_shape": [29619, 25, 3], "frames_dtype": "<f4", "setups": [1, 18],
            "benchmarks": {"ntu60/xsub": {"train": 96, "test": 96}},
            "bytes": {"compact": 8_910_380, "padded_300x2": 34_560_000,
                      "compact_over_padded": 8_910_380 / 34_560_000}}))
    elif name == "accuracy-cost":
        runs = [run(model, benchmark, 0, 60.0 + i) for i, model in enumerate(("st-gcn", "star-64"))
                for benchmark in BENCHMARKS]
        inputs = [write_table(build(1, runs), tmp_path / "table1.csv")[0],
                  write_table(build(2, [PROFILES["st-gcn"], PROFILES["star-64"]]), tmp_path / "table2.csv")[0]]
    elif name == "per-class":
        counts = np.eye(60, dtype=np.int64) * 3 + 1
        inputs = [evaluation_files(tmp_path, model, 0, counts) for model in ("st-gcn", "star-64")]
    else:
        inputs = []
        for model in ("st-gcn", "star-64"):
            inputs.append(tmp_path / f"{model}.json")
            inputs[-1].write_text(json.dumps(PROFILES[model]))
    png = tmp_path / "out" / f"{name}.png"
    assert main(["figure", name, *map(str, inputs), "--out", str(png)]) == 0
    assert png.read_bytes().startswith(PNG_MAGIC) and png.stat().st_size > 10_000
    assert png.with_suffix(".svg").read_text().lstrip().startswith("<?xml")


def test_figure_bad_input_names_the_file_and_writes_nothing(tmp_path, capsys):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    out = tmp_path / "figures" / "breakdown-macs.png"
    assert main(["figure", "breakdown-macs", str(broken), "--out", str(out)]) == 2
    assert str(broken) in capsys.readouterr().err
    assert not out.parent.exists() or not any(out.parent.iterdir())
    with pytest.raises(figures.FigureError, match="sweep-frames"):
        figures.latency_sweep([{**PROFILES["star-64"], "sweep": []}])


def test_the_latency_sweep_names_the_padding_the_baselines_were_profiled_with():
    gcn = PROFILES["st-gcn"]
    padded = {**gcn, "batch": {**gcn["batch"], "padded": {"shape": [4, 3, 32, 25, 2], "bytes": 1}}}
    labels = {axis.get_xlabel() for axis in figures.latency_sweep([padded, PROFILES["star-64"]]).axes}
    assert labels == {"frames per clip (baselines always padded or cut to 32)"}
    labels = {axis.get_xlabel() for axis in figures.latency_sweep([PROFILES["star-64"]]).axes}
    assert labels == {"frames per clip"}


def test_table_command_refuses_bad_input_and_writes_nothing(tmp_path, capsys):
    profile_path = tmp_path / "star-64.json"
    profile_path.write_text(json.dumps(PROFILES["star-64"]))
    out = tmp_path / "tables" / "table1.csv"
    assert main(["table", "1", str(profile_path), "--out", str(out)]) == 2  # a profile is not a run
    assert f"{profile_path}: format 'star-profile-1', expected 'star-run-1'" in capsys.readouterr().err
    assert not out.exists() and not out.with_suffix(".html").exists()
    with pytest.raises(SystemExit):
        main(["table", "6", str(profile_path), "--out", str(out)])
    truncated = {**PROFILES["star-64"], "summary": {"latency_ms": 1.0}, "_path": "star-64.json"}
    with pytest.raises(ResultFileError, match="star-64.json: no key 'summary/params'"):
        build(2, [truncated])
    no_top3 = {key: value for key, value in PROFILES["star-64"].items() if key != "top3"}
    with pytest.raises(ResultFileError, match="star-64.json: no key 'top3'"):
        build(3, [{**no_top3, "_path": "star-64.json"}])
    with pytest.raises(ResultFileError, match=r"star-64.json: key 'summary/latency_ms': -1.0 is less than or equal"):
        build(2, [{**PROFILES["star-64"], "summary": {**PROFILES["star-64"]["summary"], "latency_ms": -1.0},
                   "_path": "star-64.json"}])
    with pytest.raises(TableError, match="compares STAR's sparse and full attention, not 'st-gcn'"):
        build(5, [PROFILES["st-gcn"]])


def test_report_embeds_every_table_and_figure_and_lists_the_papers_contradictions(tmp_path):
    runs = []
    for model in ("st-gcn", "st-tr", "star-64", "star-128", "star-64-full"):
        for benchmark in BENCHMARKS:
            path = tmp_path / "runs" / benchmark / model / "metrics.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(run(model, benchmark, 0, 60.0)))
            runs.append(path)
    profile_paths = []
    for model, data in PROFILES.items():
        profile_paths.append(tmp_path / f"{model}.json")
        profile_paths[-1].write_text(json.dumps(data))
    sparse_full = {"star-64", "star-64-full"}
    inputs = {1: [json.loads(p.read_text()) for p in runs if p.parent.name not in {"star-64-full"}],
              2: [PROFILES[m] for m in ("st-gcn", "st-tr", "star-64", "star-128")],
              3: [PROFILES[m] for m in ("st-gcn", "st-tr", "star-64", "star-128")],
              4: [json.loads(p.read_text()) for p in runs if p.parent.name in sparse_full],
              5: [PROFILES[m] for m in sparse_full]}
    tables = [write_table(build(n, data, smoke=True), tmp_path / f"table{n}.csv")[0] for n, data in inputs.items()]
    figure_paths = []
    for name in ("breakdown-macs", "latency-sweep"):
        figure_paths += figures.save(figures.draw(name, profile_paths[:2]), tmp_path / f"{name}.png")[:1]
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"smoke": True, "models": ["star-64"]}))
    html = render_report(tables=tables, figures=figure_paths, runs=runs, profiles=profile_paths, config=config)

    page = Page(html)
    assert {f"table{n}" for n in range(1, 6)} <= page.ids
    assert {"breakdown-macs", "latency-sweep"} <= page.ids
    assert len(page.images) == 2
    for source in page.images:
        assert base64.b64decode(source.removeprefix("data:image/png;base64,")).startswith(PNG_MAGIC)
    assert page.external == []  # opens offline
    text = " ".join(page.text)
    assert "Smoke run." in text
    for item in published()["inconsistencies"]:
        assert item["text"] in text
    # the tables above have every model and benchmark the paper's do, so every cell an inconsistency names exists
    assert "not reproduced in this run" not in text
    assert html.count('<td class="text">test cpu (cpu)</td>') == len(runs) + len(profile_paths)  # one row each


def test_numbers_are_formatted_without_losing_the_sign_or_inventing_values():
    assert number(None) == "–" and number(math.nan) == "–" and signed(None) == "–"
    assert number(259.66) == "259.7" and number(3_098_832.0) == "3,098,832"
    assert signed(-56.5) == "-56.5" and signed(0.25) == "+0.25" and signed(1679.5) == "+1,680"


def test_files_written_together_are_all_removed_when_one_fails(tmp_path):
    def half_then_fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_together({tmp_path / "table1.csv": lambda tmp: tmp.write_text("whole"),
                        tmp_path / "table1.html": half_then_fail})
    assert list(tmp_path.iterdir()) == []


def test_as_run_rows_stand_for_the_papers_rows_and_the_report_sets_both_forms_side_by_side(tmp_path):
    paper = published()["table1_accuracy_top1"]
    table = build(1, [run("star-64-code", "ntu60/xsub", 0, 70.0)])
    assert table.cells["star-64-code", "ntu60/xsub"].published == paper["rows"]["star-64"][0]
    assert build(4, [run("star-64-full-code", "ntu60/xsub", 0, 50.0)]).rows == ["star-full"]
    csv = write_table(table, tmp_path / "table1.csv")[0]
    runs = []
    for model in ("star-64-code", "star-64"):
        runs.append(tmp_path / model / "metrics.json")
        runs[-1].parent.mkdir()
        runs[-1].write_text(json.dumps(run(model, "ntu60/xsub", 0, 70.0 if model == "star-64" else 71.5)))
    profile_path = tmp_path / "star-64-code.json"
    profile_path.write_text(json.dumps(profile("star-64-code", 350.0, 12.3, 426_494)))
    point = {"described": "star-64", "as_run": "star-64-code", "code": "imj2185/STAR main", "point": "positions",
             "options": ["positions"], "paper": "each clip from 0", "as_run_does": "row numbers", "where": "x.py:1",
             "training_only": False, "max_logit_change": 0.0598, "largest_logit": 1.0}
    fidelity = tmp_path / "fidelity.json"
    fidelity.write_text(json.dumps({"format": FIDELITY_FORMAT, "clips": 4, "points": [point]}))
    html = render_report(tables=[csv], figures=[], runs=runs, profiles=[profile_path], fidelity=fidelity)
    page = Page(html)
    assert "fidelity" in page.ids
    assert {"positions", "each clip from 0", "row numbers", "imj2185/STAR main x.py:1", "0.0598", "as described",
            "as run", "71.5", "70", "not measured"} <= {t.strip() for t in page.text}
    fidelity.write_text(json.dumps({"format": "star-profile-1"}))
    with pytest.raises(ResultFileError, match="fidelity.json: format 'star-profile-1', expected 'star-fidelity-1'"):
        render_report(tables=[csv], figures=[], runs=runs, profiles=[profile_path], fidelity=fidelity)


def test_the_report_names_the_data_source_under_table1(tiny_store, tmp_path):
    from star.data.pyskl import import_pyskl, write_pyskl_files

    paths = write_pyskl_files(tiny_store, tmp_path / "pyskl")
    import_pyskl(paths, tmp_path / "store", progress=False)
    runs = [run("star-64", benchmark, 0, 60.0) for benchmark in BENCHMARKS]
    tables = [write_table(build(1, runs, smoke=True), tmp_path / "table1.csv")[0]]
    sources = {}
    older = {k: v for k, v in tiny_store.manifest.items() if not k.startswith("source_")}  # before imports existed
    (tmp_path / "older.json").write_text(json.dumps(older))
    for name, manifest in (("raw", tiny_store.path / "manifest.json"), ("older", tmp_path / "older.json"),
                           ("pyskl", tmp_path / "store/manifest.json")):
        html = render_report(tables=tables, figures=[], runs=[], profiles=[], manifest=manifest)
        after_table1 = html.split('id="table1"')[1]
        paragraph = after_table1[after_table1.index("Data source:"):].split("</p>")[0]
        sources[name] = " ".join(html_text.unescape(re.sub("<[^>]+>", "", paragraph)).split())
    raw_folder = tiny_store.manifest["source"][0]
    assert sources["raw"].startswith(f"Data source: raw NTU RGB+D .skeleton files in {raw_folder}")
    assert sources["older"] == sources["raw"]
    sha = json.loads((tmp_path / "store/manifest.json").read_text())["source_files"][0]["sha256"]
    assert sources["pyskl"].startswith(f"Data source: pyskl's annotation pickles {paths[0]} (SHA-256 {sha[:12]}")


def test_the_tables_the_report_and_the_command_line_import_no_torch():
    """Nor does `star` import torch or matplotlib before it knows the subcommand: every job pays for what it
    imports, and `star table` or `star report` need neither."""
    code = "import sys, star.report.tables, star.report.html, star.cli; star.cli.build_parser(); " \
           "print(sorted(m for m in ('torch', 'star.training', 'matplotlib') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout == "[]\n"


def test_the_run_table_marks_a_run_redone_after_its_settings_changed(tmp_path):
    paths = []
    for benchmark, replaced in (("ntu60/xsub", "replaced-20261202T060000Z"), ("ntu60/xview", None)):
        paths.append(tmp_path / benchmark.replace("/", "-") / "metrics.json")
        paths[-1].parent.mkdir()
        paths[-1].write_text(json.dumps({**run("star-64", benchmark, 0, 60.0), "replaced": replaced}))
    tables = [write_table(build(1, [json.loads(p.read_text()) for p in paths], smoke=True), tmp_path / "table1.csv")[0]]
    text = " ".join(" ".join(Page(render_report(tables=tables, figures=[], runs=paths, profiles=[])).text).split())
    assert text.count("redone: a run of other settings moved to") == 1 and "replaced-20261202T060000Z/" in text


def test_the_report_lists_each_job_as_snakemake_measured_it_and_refuses_another_file(tmp_path):
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    train = tmp_path / "results/benchmarks/train/ntu60/xsub/star-64/seed0.tsv"
    train.parent.mkdir(parents=True)
    train.write_text(header + "754.5\t0:12:34\t2048.25\t4000\t1900\t1950\t10\t20\t180.0\t1500.0\n")
    store = tmp_path / "results/benchmarks/store.tsv"
    store.write_text(header + "0.4\t0:00:00\t-\t-\t-\t-\t-\t-\t-\t0.3\n")  # too short for Snakemake to sample memory
    tables = [write_table(build(1, [run("star-64", "ntu60/xsub", 0, 60.0)], smoke=True), tmp_path / "table1.csv")[0]]
    page = Page(render_report(tables=tables, figures=[], runs=[], profiles=[], jobs=[train, store]))
    cells = [text.strip() for text in page.text if text.strip()]
    row = cells.index("train/ntu60/xsub/star-64/seed0")
    assert cells[row + 1:row + 4] == ["12.57", "2048", "25"]
    row = cells.index("store")
    assert cells[row + 1:row + 4] == ["0.006667", "–", "0.005"]
    with pytest.raises(ReportError, match=rf"{train}: not a Snakemake benchmark file"):
        train.write_text("wall\n1\n")
        render_report(tables=tables, figures=[], runs=[], profiles=[], jobs=[train])
