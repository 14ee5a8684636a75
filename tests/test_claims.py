"""The verdicts on the paper's claims and the per-class evidence, from result files made up here: a run that
reproduces the paper's tables exactly, one where claims fail, one with figures missing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from html_page import Page
from test_report import BENCHMARKS, evaluation_files, profile, run

from star.cli import main
from star.paper import published
from star.report import claims, per_class
from star.report.figures import accuracy_cost, pareto_front
from star.report.html import render_report, write_table
from star.report.tables import build, read_cells

PAPER = published()
TABLE1, TABLE2 = PAPER["table1_accuracy_top1"]["rows"], PAPER["table2_efficiency"]["rows"]
TABLE4, TABLE5 = PAPER["table4_sparse_vs_full_accuracy"]["rows"], PAPER["table5_sparse_vs_full_efficiency"]["rows"]
ABLATION = {"star-sparse": "star-128-code", "star-full": "star-128-full-code"}  # as the paper config compares them
CUDA = {model: "cuda:0" for model in ("st-gcn", "st-tr", "star-64-code", "star-128", "star-128-code",
                                    "star-128-full-code")}


def paper_results(top1=None, latency=None, seeds=(0,)) -> tuple[dict, dict]:
    """Runs and profiles whose numbers are the paper's (the "as run" STAR models stand for its rows), with
    `top1[(row, benchmark)]` (one value per seed) and `latency[row]` put in their place."""
    top1, latency = top1 or {}, latency or {}
    models = {"st-gcn": "st-gcn", "st-tr": "st-tr", "star-64": "star-64-code", "star-128": "star-128"}
    runs = {1: [], 4: []}
    for number, rows, names in ((1, TABLE1, models), (4, TABLE4, ABLATION)):
        for row, values in rows.items():
            for benchmark, value in zip(BENCHMARKS, values, strict=True):
                for index, seed in enumerate(seeds):
                    best = top1.get((row, benchmark), [value] * len(seeds))[index]
                    runs[number].append(run(names[row], benchmark, seed, best))
    profiles = {2: [profile(models[row], latency.get(row, ms), gmacs, round(params_m * 1e6))
                    for row, (ms, params_m, gmacs) in TABLE2.items()],
                5: [profile(ABLATION[row], latency.get(row, ms), gmacs, 1_262_462)
                    for row, (ms, gmacs) in TABLE5.items()]}
    return runs, profiles


def cells_of(tmp_path, runs, profiles, smoke=False, skip=()) -> dict:
    paths = []
    for number, results in {**runs, **profiles}.items():
        results = [r for r in results if r["model"] not in skip]
        paths.append(write_table(build(number, results, smoke=smoke), tmp_path / f"table{number}.csv")[0])
    return read_cells(paths)


def verdicts(assessments) -> dict[str, str]:
    return {a.claim.key: a.verdict for a in assessments}


def test_a_run_that_reproduces_the_papers_tables_makes_every_claim_hold(tmp_path):
    assessments = claims.assess_all(cells_of(tmp_path, *paper_results()), CUDA)
    assert set(verdicts(assessments).values()) == {claims.HOLDS}
    speed = next(a for a in assessments if a.claim.key == "speed-up")
    # the paper's own figures, computed from its Table 2 as the claim pairs them: 3.9x and 18.4x
    star64 = TABLE2["star-64"][0]
    assert speed.span("published") == (TABLE2["st-gcn"][0] / star64, TABLE2["st-tr"][0] / star64)
    assert speed.span("reproduced") == pytest.approx(speed.span("published"), rel=1e-12)
    assert [c.measured_model for c in speed.comparisons] == ["star-64-code", "star-64-code"]
    behind = next(a for a in assessments if a.claim.key == "behind-st-tr")
    assert len(behind.comparisons) == 8  # two models x four benchmarks
    assert behind.span("published") == pytest.approx((-6.8, -3.6))  # Table 1's gaps, narrower than the 3.6-7.7 claimed
    assert behind.reason == "smallest star-64 − st-tr, NTU 60 X-sub: -6.8"
    # the paper's own 6.73 / 0.42 = 16.0x is beyond the 15x it claims, as it rounds: noted, not held against it
    size = next(a for a in assessments if a.claim.key == "model-size")
    assert size.reason == "smallest st-gcn / star-64: 7.38x; better than claimed: st-tr / star-64: 16x"


def test_the_paper_rounding_decides_a_figure_just_below_a_claimed_bound(tmp_path):
    """The paper's "4x" is its own 3.86: 3.5 meets it, 3.49 does not; its "7.7 percent" is met by 7.75."""
    star64 = TABLE2["star-64"][0]
    for ratio, verdict in ((3.5, claims.HOLDS), (3.49, claims.FAILS)):
        cells = cells_of(tmp_path, *paper_results(latency={"st-gcn": ratio * star64}))
        assert verdicts(claims.assess_all(cells, CUDA))["speed-up"] == verdict
    st_tr = TABLE1["st-tr"][0]
    for gap, verdict in ((7.75, claims.HOLDS), (7.76, claims.FAILS)):
        cells = cells_of(tmp_path, *paper_results(top1={("star-64", "ntu60/xsub"): [st_tr - gap]}))
        assert verdicts(claims.assess_all(cells, CUDA))["behind-st-tr"] == verdict


def test_one_figure_that_misses_its_bound_refutes_the_claim_and_is_named(tmp_path):
    below = {("star-64", "ntu120/xset"): [TABLE1["st-gcn"][3] - 2.0]}
    runs, profiles = paper_results(top1=below, latency={"st-tr": 2.0 * TABLE2["star-64"][0]})
    found = {a.claim.key: a for a in claims.assess_all(cells_of(tmp_path, runs, profiles), CUDA)}
    assert found["above-st-gcn"].verdict == claims.FAILS
    assert found["above-st-gcn"].reason == "star-64 − st-gcn, NTU 120 X-set: -2 (needs model − other (points) > 0)"
    assert found["speed-up"].verdict == claims.FAILS and found["speed-up"].reason.startswith("st-tr / star-64: 2x")
    assert found["model-size"].verdict == claims.HOLDS  # the others are untouched


def test_what_was_not_measured_here_says_why(tmp_path):
    runs, profiles = paper_results()
    cells = cells_of(tmp_path, runs, profiles, skip={"star-128"})
    found = {a.claim.key: a for a in claims.assess_all(cells, CUDA)}
    assert found["gmacs"].verdict == claims.NOT_MEASURED
    assert found["gmacs"].reason == "not made in this run: st-gcn / star-128; st-tr / star-128"
    assert found["gmacs"].span("published") is not None  # the paper's figure is shown all the same
    cpu = {model: "cpu" for model in CUDA}
    found = {a.claim.key: a for a in claims.assess_all(cells, cpu)}
    assert found["speed-up"].verdict == claims.NOT_MEASURED and "timed on cpu" in found["speed-up"].reason
    assert found["speed-up"].span("reproduced") is not None and found["model-size"].verdict == claims.HOLDS
    smoke = claims.assess_all(cells_of(tmp_path, runs, profiles, smoke=True), CUDA, {"st-gcn": 32, "st-tr": 300})
    assert {a.verdict for a in smoke if a.claim.measure == "top1"} == {claims.NOT_MEASURED}
    assert all(a.smoke for a in smoke)
    found = {a.claim.key: a for a in smoke}
    assert found["gmacs"].verdict == claims.NOT_MEASURED and found["model-size"].verdict == claims.HOLDS
    assert found["gmacs"].reason.startswith("profiled with padded frames st-gcn 32, not the papers' 300")


def test_top1_differences_carry_the_standard_error_over_seeds(tmp_path):
    ours, theirs = [82.0, 84.0, 83.0], [81.0, 83.0, 81.5]
    top1 = {("star-64", "ntu60/xsub"): ours, ("st-gcn", "ntu60/xsub"): theirs}
    cells = cells_of(tmp_path, *paper_results(top1=top1, seeds=(0, 1, 2)))
    above = next(a for a in claims.assess_all(cells, CUDA) if a.claim.key == "above-st-gcn")
    figure = next(c for c in above.comparisons if c.model == "star-64" and c.benchmark == "ntu60/xsub")
    assert figure.reproduced == pytest.approx(np.mean(ours) - np.mean(theirs))
    assert figure.spread == pytest.approx(math.sqrt(np.var(ours, ddof=1) / 3 + np.var(theirs, ddof=1) / 3))
    # 1.17 points above, closer to the bound (0) than two standard errors (1.67): the reason flags it
    assert "within two standard errors of the bound: star-64 − st-gcn, NTU 60 X-sub" in above.reason


def test_a_claim_the_rules_cannot_read_is_refused_naming_it():
    entry = dict(PAPER["claims"][0])
    with pytest.raises(claims.ClaimError, match="claim speed-up: give either range"):
        claims.Claim.from_yaml({**entry, "above": 1})
    with pytest.raises(claims.ClaimError, match="claim speed-up: measure 'speed'"):
        claims.Claim.from_yaml({**entry, "measure": "speed"})
    with pytest.raises(claims.ClaimError, match=r"claim speed-up: range must be .*\(not numbers: \['4', 18\]\)"):
        claims.Claim.from_yaml({**entry, "range": ["4", 18]})
    with pytest.raises(claims.ClaimError, match="claim speed-up: no key 'where'"):
        claims.Claim.from_yaml({k: v for k, v in entry.items() if k != "where"})


def test_the_claims_command_writes_csv_and_fragment_and_the_report_opens_with_them(tmp_path, capsys):
    runs, profiles = paper_results()
    cells_of(tmp_path, runs, profiles)
    profile_paths = []
    for result in profiles[2] + profiles[5]:
        profile_paths.append(tmp_path / f"{result['model']}.json")
        profile_paths[-1].write_text(json.dumps({**result, "device": "cuda:0"}))
    tables = [tmp_path / f"table{n}.csv" for n in (1, 2, 4, 5)]
    out = tmp_path / "claims.csv"
    assert main(["claims", *map(str, tables), "--profiles", *map(str, profile_paths), "--out", str(out)]) == 0
    assert "speed-up         holds" in capsys.readouterr().out
    rows = out.read_text().splitlines()
    assert len(rows) == 1 + sum(len(a.comparisons) for a in claims.assess_all(read_cells(tables), CUDA))
    page = Page(render_report(tables=tables, figures=[], runs=[], profiles=[], claims=out))
    assert {"claims", *(f"claim-{c.key}" for c in claims.claims())} <= page.ids
    text = [t.strip() for t in page.text]
    assert text.count(claims.HOLDS) == len(claims.claims())
    assert "NTU 60 X-sub" in text and "ntu60/xsub" not in text  # headers a reader reads; the CSV keeps the keys


def test_per_class_differences_and_confused_pairs_from_evaluation_files(tmp_path):
    rng = np.random.default_rng(0)
    star = [rng.integers(0, 4, (60, 60)) + np.diag(rng.integers(0, 30, 60)) for _ in range(2)]
    baseline = rng.integers(0, 4, (60, 60)) + np.diag(rng.integers(0, 20, 60))
    baseline[7] = 0  # a class without test clips for the baseline: left out of the differences
    paths = [evaluation_files(tmp_path, "star-64-code", seed, c) for seed, c in enumerate(star)]
    paths.append(evaluation_files(tmp_path, "st-gcn-code", 0, baseline))
    pooled, gcn = per_class.read_evaluations(paths)
    assert pooled.seeds == (0, 1) and (pooled.confusion == star[0] + star[1]).all()
    differences = per_class.differences(pooled, gcn)
    assert len(differences) == 59 and "action 7" not in dict(differences)
    both = star[0] + star[1]
    expected = 100 * both[3, 3] / both[3].sum() - 100 * baseline[3, 3] / baseline[3].sum()
    assert dict(differences)["action 3"] == pytest.approx(expected)
    assert [value for _, value in differences] == sorted((value for _, value in differences), reverse=True)
    pairs = per_class.confused_pairs(pooled)
    off = both + both.T
    np.fill_diagonal(off, 0)
    assert len(pairs) == 10 and pairs[0]["clips"] == off.max()
    first = (int(pairs[0]["class"].split()[1]), int(pairs[0]["other"].split()[1]))
    assert (pairs[0]["as_other"], pairs[0]["as_class"]) == (both[first], both[first[::-1]])
    assert [p["clips"] for p in pairs] == sorted((p["clips"] for p in pairs), reverse=True)

    html = render_report(tables=[], figures=[], runs=[], profiles=[], evaluations=paths)
    page = Page(html)
    assert "confusions" in page.ids and pairs[0]["class"] in page.text


def test_evaluation_files_that_disagree_or_mix_benchmarks_are_refused(tmp_path):
    confusion = np.eye(60, dtype=np.int64) * 2
    path = evaluation_files(tmp_path, "star-64", 0, confusion)
    csv = per_class.confusion_path(path)
    csv.write_text(csv.read_text().replace("action 5,", "action five,", 1))
    with pytest.raises(per_class.PerClassError, match=f"{csv}: not the confusion matrix of its evaluation JSON"):
        per_class.read_evaluations([path])
    other = evaluation_files(tmp_path / "x", "st-gcn", 0, confusion, benchmark="ntu60/xview")
    good = evaluation_files(tmp_path / "y", "star-64", 0, confusion)
    with pytest.raises(per_class.PerClassError, match="one benchmark and side"):
        per_class.read_evaluations([good, other])


def test_the_pareto_front_keeps_only_points_nothing_beats_on_both():
    points = [(10.0, 80.0), (5.0, 70.0), (20.0, 79.0), (5.0, 60.0), (1.0, 50.0), (30.0, 85.0)]
    assert pareto_front(points) == [(1.0, 50.0), (5.0, 70.0), (10.0, 80.0), (30.0, 85.0)]
    # a tie in top-1 keeps the cheaper point; a repeated point is kept once
    assert pareto_front([(2.0, 70.0), (1.0, 70.0), (1.0, 70.0), (3.0, 71.0)]) == [(1.0, 70.0), (3.0, 71.0)]


def test_accuracy_cost_draws_what_was_run_and_the_papers_points_where_a_model_was_not(tmp_path):
    runs = [run("st-gcn", benchmark, 0, 50.0) for benchmark in BENCHMARKS] + [run("star-64", "ntu60/xsub", 0, 60.0)]
    profiles = [profile(model, 100.0, 10.0, 1_000_000) for model in ("st-gcn", "star-64")]
    tables = [write_table(build(1, runs), tmp_path / "table1.csv")[0],
              write_table(build(2, profiles), tmp_path / "table2.csv")[0]]
    figure = accuracy_cost(read_cells(tables))
    assert [text.get_text() for text in figure.legends[0].get_texts()][:2] == ["st-gcn", "star-64"]
    xview = figure.axes[2]  # NTU 60 X-view against GMACs: star-64 has only its published (hollow) point
    hollow = [line for line in xview.get_lines() if line.get_markerfacecolor() == "none"]
    filled = [line for line in xview.get_lines() if line.get_marker() == "o" and line not in hollow]
    assert len(hollow) == 2 and len(filled) == 1
