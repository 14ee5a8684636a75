"""Tables and claims as CSV + HTML fragments, and the one-file HTML report (`reports/index.html`).

The report embeds everything it shows (figures as base64 PNG, styles inline)
so it opens offline in any browser: the verdicts on the paper's claims and the
five tables from their fragments (`star claims`, `star table`), the figures,
each model's most confused class pairs (from `star evaluate`'s files), where
the paper contradicts itself beside the reproduced cells that bear on it
(`inconsistencies` in the published-numbers file), and what was run: the
configuration, every run and profile with its device, commit, date and run
time, and the versions of the packages that made the report.
"""

from __future__ import annotations

import base64
import csv
import datetime
import json
import math
import statistics
from importlib import metadata
from pathlib import Path

import jinja2
import pandas as pd

from star.errors import StarError, existing_file
from star.io import read_json, read_result, write_atomic, write_together
from star.names import CLAIMS_TEMPLATE, FIGURES, REPORT_TEMPLATE, TEMPLATES
from star.paper import published
from star.report import per_class
from star.report.claims import MEASURE_LABELS, Assessment
from star.report.claims import RECORD_COLUMNS as CLAIM_COLUMNS
from star.report.tables import RECORD_COLUMNS, Table, column_label, read_cells

PACKAGES = ("star-repro", "torch", "numpy", "snakemake", "pandas", "matplotlib", "jinja2", "fvcore", "deepspeed")


PUBLISHED_SOURCE = "star/data/resources/paper_tables.yaml"


class ReportError(StarError, ValueError):
    """Inputs the report cannot use (named in the message)."""


def _missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def number(value: float | None) -> str:
    """Four significant digits; whole numbers with thousands separators from 10,000 on."""
    if _missing(value):
        return "–"
    return f"{value:,.0f}" if abs(value) >= 10_000 else f"{value:.4g}"


def signed(value: float | None) -> str:
    """A difference: three significant digits and its sign; whole numbers with separators from 1,000 on."""
    if _missing(value):
        return "–"
    return f"{value:+,.0f}" if abs(value) >= 1_000 else f"{value:+.3g}"


def _environment(loader: jinja2.BaseLoader) -> jinja2.Environment:
    env = jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    env.globals.update(number=number, signed=signed, label=column_label)
    return env


def table_fragment(table: Table) -> str:
    return _environment(jinja2.FileSystemLoader(TEMPLATES)).get_template("table.html.j2").render(table=table)


def write_table(table: Table, csv_path: str | Path) -> tuple[Path, Path]:
    """`tableN.csv` (one row per cell) and `tableN.html` (the fragment the report embeds) beside it."""
    csv_path = Path(csv_path)
    if csv_path.suffix != ".csv":
        raise ReportError(f"table output must end in .csv (the .html is written beside it): {csv_path}")
    html_path = csv_path.with_suffix(".html")
    frame = pd.DataFrame(table.records(), columns=list(RECORD_COLUMNS))
    fragment = table_fragment(table)
    write_together({csv_path: lambda tmp: frame.to_csv(tmp, index=False),
                    html_path: lambda tmp: tmp.write_text(fragment)})
    return csv_path, html_path


def claims_fragment(assessments: list[Assessment]) -> str:
    return _environment(jinja2.FileSystemLoader(TEMPLATES)).get_template(CLAIMS_TEMPLATE.name).render(
        assessments=assessments, smoke=any(a.smoke for a in assessments), measures=MEASURE_LABELS,
        published_source=PUBLISHED_SOURCE)


def write_claims(assessments: list[Assessment], csv_path: str | Path) -> tuple[Path, Path]:
    """`claims.csv` (one row per figure of each claim, with its claim's verdict) and `claims.html` beside it."""
    csv_path = Path(csv_path)
    if csv_path.suffix != ".csv":
        raise ReportError(f"claims output must end in .csv (the .html is written beside it): {csv_path}")
    frame = pd.DataFrame([record for a in assessments for record in a.records()], columns=list(CLAIM_COLUMNS))
    fragment = claims_fragment(assessments)
    write_together({csv_path: lambda tmp: frame.to_csv(tmp, index=False),
                    csv_path.with_suffix(".html"): lambda tmp: tmp.write_text(fragment)})
    return csv_path, csv_path.with_suffix(".html")


def _fragment(csv_path: Path, command: str) -> str:
    fragment = csv_path.with_suffix(".html")
    try:
        return fragment.read_text()
    except OSError as error:
        raise ReportError(f"{fragment}: cannot read it ({error.strerror}); `{command}` writes it beside "
                          f"{csv_path.name}") from error


def _confusions(evaluations: list[Path]) -> list[dict]:
    """Each model's most confused class pairs, from star evaluate's files (seeds pooled)."""
    if not evaluations:
        return []
    return [{"model": counts.model, "benchmark": counts.benchmark, "split": counts.split, "seeds": counts.seeds,
             "clips": int(counts.clips.sum()), "pairs": per_class.confused_pairs(counts)}
            for counts in per_class.read_evaluations(evaluations)]


def _inconsistencies(cells: dict) -> list[dict]:
    """Each contradiction of the paper with the reproduced cells it names (None where not reproduced)."""
    return [{"text": item["text"],
             "cells": [{"where": f"Table {t}, {row}, {column}", "record": cells.get((t, row, column))}
                       for t, row, column in item["cells"]]}
            for item in published()["inconsistencies"]]


def _figure(path: Path) -> dict:
    if path.suffix != ".png":
        raise ReportError(f"{path}: figures are embedded as PNG")
    try:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError as error:
        raise ReportError(f"{path}: cannot read the figure ({error})") from error
    return {"name": path.stem, "title": FIGURES.get(path.stem, path.stem), "png_base64": data}


def _versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _run_row(path: Path) -> dict:
    run = read_result(path, "run")
    finished = datetime.datetime.fromtimestamp(path.stat().st_mtime).astimezone()
    return {**run, "path": str(path), "finished": finished.strftime("%Y-%m-%d %H:%M")}


JOB_COLUMNS = ("s", "max_rss", "cpu_time")  # of a Snakemake benchmark file: wall s, peak resident MB, CPU s


def _measured(text: str) -> float | None:
    """A benchmark file's value; Snakemake writes '-' or 'NA' where it measured nothing (a job too short)."""
    try:
        return float(text)
    except ValueError:
        return None


def _job_row(path: Path) -> dict:
    """One job as Snakemake's `benchmark:` file measured it, named by its path under a `benchmarks` folder."""
    try:
        with open(existing_file(path, "benchmark file"), newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ReportError(f"{path}: cannot read it as a Snakemake benchmark file ({error})") from error
    if not rows or not set(JOB_COLUMNS) <= rows[0].keys():
        raise ReportError(f"{path}: not a Snakemake benchmark file (a tab-separated row with {', '.join(JOB_COLUMNS)})")
    run = rows[0]  # a repeat() benchmark writes a row per repeat: the first is the job's own run
    parts = path.with_suffix("").parts
    folders = [index for index, part in enumerate(parts[:-1]) if part == "benchmarks"]
    job = "/".join(parts[folders[-1] + 1:]) if folders else path.stem  # the last: the repository has one too
    wall_s, cpu_s = _measured(run["s"]), _measured(run["cpu_time"])
    return {"job": job, "wall_min": None if wall_s is None else wall_s / 60, "max_rss_mb": _measured(run["max_rss"]),
            "cpu_min": None if cpu_s is None else cpu_s / 60}


def _fidelity(path: Path | None, runs: list[dict], profiles: list[dict]) -> dict | None:
    """`star fidelity`'s points, and each (as described, as run) pair's size, cost, speed and top-1 where measured."""
    if path is None:
        return None
    data = read_result(Path(path), "fidelity")
    profile_of = {p["model"]: p["summary"] for p in profiles}
    seeds: dict[tuple[str, str], list[float]] = {}
    for r in runs:
        seeds.setdefault((r["model"], r["benchmark"]), []).append(r["best_top1_pct"])
    top1 = {place: statistics.fmean(values) for place, values in seeds.items()}  # mean over seeds, as Table 1
    benchmarks = sorted({r["benchmark"] for r in runs})
    variants = []
    for described, as_run in dict.fromkeys((p["described"], p["as_run"]) for p in data["points"]):
        for model, form in ((described, "as described"), (as_run, "as run")):
            summary = profile_of.get(model, {})
            variants.append({"model": model, "form": form, "params_m": summary.get("params_m"),
                             "gmacs": summary.get("gmacs"), "latency_ms": summary.get("latency_ms"),
                             "top1": [top1.get((model, b)) for b in benchmarks]})
    return {"points": data["points"], "variants": variants, "benchmarks": benchmarks}


def render_report(tables: list[Path], figures: list[Path], runs: list[Path], profiles: list[Path],
                  manifest: Path | None = None, config: Path | None = None, fidelity: Path | None = None,
                  jobs: list[Path] = (), claims: Path | None = None, evaluations: list[Path] = (),
                  template: Path = REPORT_TEMPLATE) -> str:
    tables, figures = [existing_file(p, "table CSV") for p in tables], [existing_file(p, "figure") for p in figures]
    fragments = [{"table": path.stem, "html": _fragment(path, "star table")}
                 for path in sorted(tables, key=lambda p: p.stem)]
    cells = read_cells(tables)
    run_rows = sorted((_run_row(Path(p)) for p in runs), key=lambda r: (r["benchmark"], r["model"], r["seed"]))
    profile_rows = [read_result(Path(p), "profile") for p in profiles]
    template = Path(template)
    env = _environment(jinja2.FileSystemLoader(template.parent))
    try:
        return env.get_template(template.name).render(
            generated=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            smoke=any(record["smoke"] for record in cells.values()),
            tables=fragments,
            figures=[_figure(p) for p in figures],
            inconsistencies=_inconsistencies(cells),
            confusions=_confusions([existing_file(p, "evaluation JSON") for p in evaluations]),
            fidelity=_fidelity(fidelity, run_rows, profile_rows),
            runs=run_rows,
            total_run_hours=sum(r["wall_s"] for r in run_rows) / 3600,
            profiles=profile_rows,
            jobs=sorted((_job_row(Path(p)) for p in jobs), key=lambda row: row["job"]),
            manifest=read_result(Path(manifest), "manifest") if manifest else None,
            config=json.dumps(read_json(Path(config)), indent=2) if config else None,
            versions=_versions(),
            claims=_fragment(existing_file(Path(claims), "claims CSV"), "star claims") if claims else None,
            published_source=PUBLISHED_SOURCE,
        )
    except jinja2.TemplateError as error:
        raise ReportError(f"{template}: {error} (a run, profile or manifest without what the report shows?)") from error


def write_report(out: str | Path, **inputs) -> Path:
    html = render_report(**inputs)
    write_atomic(Path(out), lambda tmp: tmp.write_text(html))
    return Path(out)
