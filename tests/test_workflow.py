"""The Snakemake workflow: what it plans for the paper's configuration and for single targets, what it refuses
before any job runs, and (slow) the whole smoke configuration end to end."""

from __future__ import annotations

import copy
import csv
import io
import json
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from browser import find_browser, load
from html_page import Page
from snakemake.cli import parse_config
from snakemake.exceptions import WorkflowError
from snakemake.utils import update_config, validate

from star.config_values import typed
from star.names import FIGURES as FIGURE_TITLES
from star.recipe import TrainingRecipe
from star.report.claims import claims
from star.schemas import check
from star.training.checkpoint import load_checkpoint
from star.workflow_checks import ConfigError, check_config

REPO = Path(__file__).resolve().parent.parent
SNAKEFILE = REPO / "Snakefile"
PAPER = yaml.safe_load((REPO / "workflow/config/config.yaml").read_text())
SCHEMA_FILE = REPO / "workflow/schemas/config.schema.yaml"
SCHEMA = yaml.safe_load(SCHEMA_FILE.read_text())
SMOKE = REPO / "workflow/config/smoke.yaml"
SMOKE_CONFIG = yaml.safe_load(SMOKE.read_text())
FIGURES = list(FIGURE_TITLES)


def snakemake(workdir: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(workdir), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=workdir)


def planned(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Jobs per rule from a dry run's "Job stats" table."""
    assert result.returncode == 0, result.stdout + result.stderr
    stats = (result.stdout + result.stderr).split("Job stats:")[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.MULTILINE) if m[1] != "total"}


@pytest.fixture
def ntu_folders(tmp_path) -> Path:
    """The paper configuration's raw folders, present (and empty: a dry run reads no file)."""
    for folder in PAPER["data"]["raw_dirs"]:
        (tmp_path / folder).mkdir(parents=True)
    return tmp_path


def test_paper_config_plans_every_training_job_without_importing_torch(ntu_folders):
    command = [sys.executable, "-X", "importtime", "-m", "snakemake", "--snakefile", str(SNAKEFILE), "-n",
               "--cores", "8", "all"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ntu_folders)
    jobs = planned(result)
    models = set(PAPER["models"]) | set(PAPER["ablation"].values()) | set(PAPER["described"]["models"])
    assert all(m.endswith("-code") for m in PAPER["ablation"].values()) and "star-64-code" in PAPER["models"]
    assert PAPER["described"]["benchmarks"] == PAPER["benchmarks"]
    runs = len(PAPER["benchmarks"]) * len(models) * len(PAPER["seeds"])
    evaluations = len(PAPER["models"]) * len(PAPER["seeds"])  # on one benchmark, for the per-class evidence
    assert jobs == {"preprocess": 1, "train": runs, "profile": len(models), "table": 5, "figure": len(FIGURES),
                    "evaluate": evaluations, "claims": 1, "fidelity": 1, "resolved_config": 1, "report": 1, "all": 1}
    # building the job graph imports neither torch nor the training code
    imported = {line.split("|")[2].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert {"star.names", "star.workflow_checks", "snakemake"} <= imported  # the measurement saw the workflow's
    assert not imported & {"torch", "pandas", "matplotlib", "star.registry", "star.training", "star.report.html"}


def test_one_table_plans_only_what_it_needs(ntu_folders):
    assert planned(snakemake(ntu_folders, "-n", "--cores", "8", "results/tables/table2.csv")) == {
        "preprocess": 1, "profile": len(PAPER["models"]), "table": 1}
    jobs = planned(snakemake(ntu_folders, "-n", "--cores", "8", "table4"))
    assert jobs == {"preprocess": 1, "train": len(PAPER["benchmarks"]) * 2, "table": 1, "table4": 1}


def test_every_recipe_field_can_be_overridden_per_model_from_the_command_line(ntu_folders):
    settable = SCHEMA["properties"]["training"]["properties"]["overrides"]["additionalProperties"]["properties"]
    assert {f.name for f in fields(TrainingRecipe)} | {"recipe", "accumulate", "padded_frames", "amp"} == set(settable)
    overrides = "training={overrides: {star-64-code: {batch_size: 4, lr: 1e-3, nesterov: false, betas: [0.8, 0.99]}}}"
    run = "results/runs/ntu60/xsub/star-64-code/seed0/metrics.json"
    result = snakemake(ntu_folders, "-n", "-p", "--cores", "8", run, "--config", overrides)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    command = next(line for line in result.stdout.splitlines() if "star train" in line)
    assert "--batch-size 4 --lr 0.001 --betas 0.8 0.99 --no-nesterov" in command
    assert "'fast' is not of type 'number'" in _refused(ntu_folders, "training={overrides: {star-64-code: {lr: fast}}}")


def _refused(workdir: Path, *config: str) -> str:
    """Snakemake's output for a dry run of `all` with `config` given as --config, which must stop before planning."""
    result = snakemake(workdir, "-n", "--cores", "1", "all", *(("--config", *config) if config else ()))
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Job stats" not in output  # nothing was planned, let alone run
    return output


def prepared(*config: str) -> dict:
    """The paper configuration with `config` given as --config (Snakemake's parsing: nested values as strings),
    made ready as the Snakefile and common.smk make it before planning: typed, validated against the schema
    (defaults filled in) and checked."""
    merged = copy.deepcopy(PAPER)
    update_config(merged, parse_config(config))
    merged.update(typed(merged, SCHEMA))
    validate(merged, str(SCHEMA_FILE))
    check_config(merged)
    return merged


def test_the_paper_config_is_accepted_as_it_is_and_with_numbers_given_as_text(ntu_folders, monkeypatch):
    monkeypatch.chdir(ntu_folders)  # its raw folders are there
    prepared()  # accepted as it is: no refusal
    config = prepared("seeds=[3]", "training={overrides: {star-64: {lr: 1e-3, amp: true}}}")
    assert config["seeds"] == [3] and config["training"]["overrides"]["star-64"] == {"lr": 0.001, "amp": True}


BAD_CONFIGS = [  # --config, and what the refusal says
    ("accuracy=worst", ["accuracy", "'worst' is not one of ['best', 'final']"]),
    ("seeds=[-1]", ["seeds", "minimum"]),
    ("models=[star-64,star-256]", ["config key models: unknown model 'star-256'", "star-128-full"]),
    ("training={overrides: {star-512: {lr: 0.1}}}", ["config key training.overrides.star-512: unknown"]),
    ("benchmarks=[ntu60/xsub,ntu90/xsub]", ["'ntu90/xsub' is not one of"]),
    ("ablation={sparse: star-64-full, full: star-64}", ["config key ablation: sparse must be a sparse"]),
    ("data={synthetic: true, synthetic_frames: [40, 26]}",
     ["config key data.synthetic_frames: [40, 26] is [shortest, longest]"]),
    ("data={source: npz, files: []}", ["should be non-empty", "files"]),
]


@pytest.mark.parametrize("config,messages", BAD_CONFIGS, ids=[config for config, _ in BAD_CONFIGS])
def test_bad_config_is_refused_naming_the_key_and_what_is_allowed(ntu_folders, monkeypatch, config, messages):
    monkeypatch.chdir(ntu_folders)  # its raw folders are there: only `config` is wrong
    with pytest.raises((WorkflowError, ConfigError)) as refused:
        prepared(config)
    assert all(message in str(refused.value) for message in messages), str(refused.value)


def test_missing_or_unnamed_source_files_are_refused_naming_the_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refusals = {
        "pyskl file(s) not found: mine/ntu60_3danno.pkl (config key data.files)": ("pyskl", "mine/ntu60_3danno.pkl"),
        "config key data.files: xsub.npz not named as CTR-GCN names its arrays": ("npz", "xsub.npz"),
        "the npz files split ntu60/xsub, but the configuration asks for ntu120/xset": ("npz", "NTU60_CS.npz"),
        "the pyskl files split ntu60/xsub, ntu60/xview, but the configuration asks for ntu120/xset":
            ("pyskl", "ntu60_3danno.pkl"),
    }
    for name in ("NTU60_CS.npz", "xsub.npz", "ntu60_3danno.pkl", "ntu120_3danno.pkl"):
        (tmp_path / name).touch()
    for message, (source, file) in refusals.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            prepared(f"data={{source: {source}, files: [{file}]}}")
    prepared("data={source: pyskl, files: [ntu60_3danno.pkl, ntu120_3danno.pkl]}")  # accepted: every benchmark


def test_a_refused_config_stops_snakemake_before_planning_with_how_to_get_the_data(tmp_path):
    """The checks run where Snakemake reads the configuration (the schema's refusals: the overrides test above)."""
    output = _refused(tmp_path)
    assert PAPER["data"]["raw_dirs"][0] in output and "data.raw_dirs" in output
    assert "rose1.ntu.edu.sg" in output and "smoke.yaml" in output


@pytest.mark.slow
def test_the_pyskl_smoke_configuration_imports_the_generated_pickles(tmp_path):
    smoke = ("--configfile", str(SMOKE), str(SMOKE.with_name("smoke-pyskl.yaml")))
    assert planned(snakemake(tmp_path, "-n", "--cores", "2", "table1", *smoke))["import_store"] == 1
    result = snakemake(tmp_path, "--cores", "2", "results/store/manifest.json", *smoke)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = json.loads((tmp_path / "results/store/manifest.json").read_text())
    assert manifest["source_format"] == "pyskl" and manifest["clips"] == 192
    assert [Path(f["path"]).name for f in manifest["source_files"]] == ["ntu60_3danno.pkl", "ntu120_3danno.pkl"]
    assert set(manifest["benchmarks"]) == {"ntu60/xsub", "ntu60/xview", "ntu120/xsub", "ntu120/xset"}


@pytest.mark.slow
def test_smoke_workflow_end_to_end(tmp_path):
    """The README's first command in a temporary folder: every table, figure and the report, Snakemake's own
    report, then only the report reruns when only its template changes."""
    # the report template is a copy, so the test can change it without touching the repository
    template = tmp_path / "report.html.j2"
    template.write_bytes((REPO / "star/report/templates/report.html.j2").read_bytes())
    smoke = ("--configfile", str(SMOKE), "--config", f"report_template={template}")
    result = snakemake(tmp_path, "--cores", "2", "all", *smoke, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    for number in range(1, 6):
        lines = (tmp_path / f"results/tables/table{number}.csv").read_text().splitlines()
        assert len(lines) > 2 and all(line.endswith(",True") for line in lines[1:])  # every cell marked smoke
        assert "smoke run: not a reproduction" in (tmp_path / f"results/tables/table{number}.html").read_text()
    for name in FIGURES:
        assert (tmp_path / f"results/figures/{name}.png").stat().st_size > 10_000
        assert (tmp_path / f"results/figures/{name}.svg").stat().st_size > 10_000
    page = Page((tmp_path / "reports/index.html").read_text())
    assert {f"table{n}" for n in range(1, 6)} | set(FIGURES) <= page.ids
    assert len(page.images) == len(FIGURES) and all(src.startswith("data:image/png;base64,") for src in page.images)
    # the claims open the report, every one judged (a smoke run measures no accuracy claim); each model's most
    # confused pairs from its evaluation on the per-class benchmark
    assert {"claims", "confusions"} | {f"claim-{claim.key}" for claim in claims()} <= page.ids
    verdicts = (tmp_path / "results/claims.csv").read_text()
    assert "top1,star-64,st-gcn,ntu60/xsub" in verdicts and ",not measured here,smoke run" in verdicts
    # its baselines were profiled on 32 padded frames, so their GMACs are not the paper's either
    gmacs = [row for row in csv.DictReader(io.StringIO(verdicts)) if row["claim"] == "gmacs"]
    assert gmacs and all(row["verdict"] == "not measured here" for row in gmacs)
    assert gmacs[0]["reason"].startswith("profiled with padded frames st-gcn-code 32, st-tr 32")
    report_html = (tmp_path / "reports/index.html").read_text()
    confusions = Page(report_html.split('id="confusions"')[1].split('id="inconsistencies"')[0])
    headings = [text.strip() for text in confusions.text if text.strip().endswith("(smoke)")]
    assert headings == [f"{model} (smoke)" for model in SMOKE_CONFIG["models"]]  # one table of pairs per model
    assert "clips either way" in confusions.text
    # opened offline in headless Chromium: every image decodes, no script error, no request fails
    browser = find_browser()
    assert browser, "no Chromium: scripts/setup.sh installs Debian's chromium-headless-shell"
    loaded = load(tmp_path / "reports/index.html", browser)
    assert (loaded.errors, loaded.failed, loaded.broken_images) == ([], [], [])
    assert loaded.images == len(FIGURES) and loaded.screenshot.startswith(b"\x89PNG")
    assert len(loaded.screenshot) > 100_000  # the report's first screen drawn (a page of one line of text: 12 kB)
    # Tables 1-5 from the models as their code runs them; the fidelity section filled from star fidelity
    table1 = (tmp_path / "results/tables/table1.csv").read_text()
    assert "star-64-code" in table1 and "st-gcn-code" in table1 and ",star-64," not in table1
    fidelity = json.loads((tmp_path / "results/fidelity.json").read_text())
    assert "fidelity" in page.ids and {p["point"] for p in fidelity["points"]} <= set(page.text)
    assert "as described" in page.text  # a row of the as-described model beside the as-run ones
    # every train, profile and store job measured by Snakemake, and listed in the report
    measured = {path.relative_to(tmp_path / "results/benchmarks").with_suffix("").as_posix()
                for path in (tmp_path / "results/benchmarks").rglob("*.tsv")}
    assert "store" in measured and "train/ntu60/xsub/star-64-code/seed0" in measured and "profile/st-tr" in measured
    assert measured <= set(page.text)
    # every result file the run wrote follows its schema (star.schemas)
    for kind, pattern in (("run", "results/runs/**/metrics.json"), ("profile", "results/profile/*.json"),
                          ("manifest", "results/store/manifest.json"), ("fidelity", "results/fidelity.json"),
                          ("evaluation", "results/runs/**/evaluation/best-test.json")):
        paths = list(tmp_path.glob(pattern))
        assert paths and all(check(json.loads(path.read_text()), kind, path) for path in paths)

    result = snakemake(tmp_path, *smoke, "--report", "reports/snakemake.html")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    snakemake_report = (tmp_path / "reports/snakemake.html").read_text()
    assert len(snakemake_report) > 100_000  # Snakemake's report, figures inside
    assert all(path in snakemake_report for path in ("results/claims.html", "results/figures/accuracy-cost.png",
                                                      "results/figures/per-class.png"))

    # Snakemake reruns a job whose input's content changed (a touched file with the same checksum is no change)
    template.write_text(template.read_text() + "<!-- changed -->\n")
    assert planned(snakemake(tmp_path, "-n", "--cores", "2", "all", *smoke)) == {"report": 1, "all": 1}

    # an edited configuration retrains the run it changes from scratch, the old run set aside beside it
    edited = yaml.safe_load(SMOKE.read_text())
    edited["training"]["overrides"] = {"star-64-code": {"lr": 0.000123}}
    (tmp_path / "edited.yaml").write_text(yaml.safe_dump(edited))
    target = "results/runs/ntu60/xsub/star-64-code/seed0/metrics.json"
    run = (tmp_path / target).parent
    result = snakemake(tmp_path, "--cores", "2", target, "--configfile",
                       str(tmp_path / "edited.yaml"), "--config", f"report_template={template}", timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["config"]["recipe"]["lr"] == 0.000123 and metrics["replaced"].startswith("replaced-")
    assert load_checkpoint(run / metrics["replaced"] / "checkpoint.pt")["config"]["recipe"]["lr"] != 0.000123
    assert load_checkpoint(run / "checkpoint.pt")["config"]["recipe"]["lr"] == 0.000123
