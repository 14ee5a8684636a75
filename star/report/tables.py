"""The paper's Tables 1-5 built from result files, every reproduced number beside the published one.

Inputs are the files the workflow makes: a run's `metrics.json` (star train)
for the accuracy tables 1 and 4, a model's profile JSON (star profile) for the
efficiency tables 2, 3 and 5. Published numbers come from
`star/data/resources/paper_tables.yaml` (star.paper), never from this code.

A table is a grid of `Cell`s keyed by (row, column). Rows are model names
(Tables 1-3) or the paper's `star-sparse` / `star-full` (Tables 4-5, with the
model measured named in the cell); columns carry their unit in the name
(`latency_ms`, `params_m`, `gmacs`, a benchmark for top-1 percent). Table 3's
columns are `<quantity> #<rank>` and its cells name the module type too; the
difference to the paper is only given where both name the same type.

Choices the paper leaves open:
- Top-1 is the best epoch's test accuracy by default, as the three papers'
  code reports it; `accuracy="final"` takes the last epoch instead.
- Several seeds give the mean and the sample standard deviation.
- Published latency is CUDA time on the paper's GPU; the reproduced one is
  whatever device the profile ran on, named in the table's notes.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from star.data.splits import BENCHMARKS
from star.errors import StarError
from star.paper import paper_row, published
from star.schemas import check

ACCURACY_KEYS = {"best": "best_top1_pct", "final": "top1_pct"}
TITLES = {
    1: "Top-1 accuracy (%) on the four benchmarks",
    2: "Inference latency, parameters and GMACs on the profiling batch",
    3: "The three costliest module types per model",
    4: "Sparse against full spatial attention: top-1 accuracy (%)",
    5: "Sparse against full spatial attention: latency and GMACs",
}
PAPER_TABLES = {1: "table1_accuracy_top1", 2: "table2_efficiency", 4: "table4_sparse_vs_full_accuracy",
                5: "table5_sparse_vs_full_efficiency"}  # the grids of paper_tables.yaml (Table 3 is a ranking)
# Table 2/5 columns: the profile summary's key -> the published column it stands beside (same unit)
EFFICIENCY_COLUMNS = {"latency_ms": "cuda_time_ms", "params_m": "params_millions", "gmacs": "gmacs"}
QUANTITY_LABELS = {"latency_ms": "latency (ms)", "params_m": "parameters (millions)", "gmacs": "GMACs"}
RANK_WORDS = {1: "costliest", 2: "second", 3: "third"}
# Table 3: the profile's top3 key -> the column quantity and the divisor giving its unit
BREAKDOWN_QUANTITIES = {"macs": ("gmacs", 1e9), "params": ("params_m", 1e6), "latency_ms": ("latency_ms", 1.0)}
RANKS = 3


class TableError(StarError, ValueError):
    """Result files that cannot make the table asked for (named in the message)."""


@dataclass(frozen=True)
class Cell:
    reproduced: float | None
    published: float | None = None
    spread: float | None = None      # sample standard deviation over seeds, None for one value
    seeds: int = 1
    model: str | None = None         # the model measured, where the row is not its name
    category: str | None = None      # Table 3: the module type the reproduced value is for
    published_category: str | None = None

    @property
    def difference(self) -> float | None:
        if self.reproduced is None or self.published is None:
            return None
        if self.category is not None and _base(self.published_category) != self.category:
            return None
        return self.reproduced - self.published


@dataclass
class Table:
    number: int
    rows: list[str]
    columns: list[str]
    cells: dict[tuple[str, str], Cell]
    smoke: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return TITLES[self.number]

    def cell(self, row: str, column: str) -> Cell:
        return self.cells.get((row, column), Cell(None))

    def records(self) -> list[dict]:
        """One CSV row per cell (the long form: easy to filter, every number with its unit in `column`)."""
        out = []
        for row in self.rows:
            for column in self.columns:
                cell = self.cell(row, column)
                out.append({"table": self.number, "row": row, "column": column, "model": cell.model or row,
                            "reproduced": cell.reproduced, "spread": cell.spread, "seeds": cell.seeds,
                            "published": cell.published, "difference": cell.difference,
                            "category": cell.category, "published_category": cell.published_category,
                            "smoke": self.smoke})
        return out


RECORD_COLUMNS = ("table", "row", "column", "model", "reproduced", "spread", "seeds", "published", "difference",
                  "category", "published_category", "smoke")


def column_label(column: str) -> str:
    """A column as a reader names it: `gmacs #2` -> "GMACs, second", `ntu60/xsub` -> "NTU 60 X-sub"."""
    quantity, _, rank = column.partition(" #")
    if quantity in QUANTITY_LABELS:
        return QUANTITY_LABELS[quantity] + (f", {RANK_WORDS[int(rank)]}" if rank else "")
    if column in BENCHMARKS:
        dataset, criterion = column.split("/")
        return f"NTU {dataset.removeprefix('ntu')} X-{criterion.removeprefix('x')}"
    return column


def published_value(number: int, row: str, column: str) -> float | None:
    """The paper's number for a cell of Table 1, 2, 4 or 5 (an "as run" row takes its paper row's), or None."""
    paper = published()[PAPER_TABLES[number]]
    values = paper["rows"].get(paper_row(row))
    name = EFFICIENCY_COLUMNS.get(column, column)
    return values[paper["columns"].index(name)] if values and name in paper["columns"] else None


def _base(category: str | None) -> str | None:
    """The paper writes 'MatMul (attention)' where the profiler says 'MatMul'."""
    return None if category is None else category.split(" (")[0]


def _ordered(names: Iterable[str], first: Iterable[str]) -> list[str]:
    """The paper's order first, anything else after it in the order given."""
    names = list(dict.fromkeys(names))
    return [n for n in first if n in names] + [n for n in names if n not in first]


def _row_of(number: int, model: str) -> str:
    """Tables 1-3 have a row per model; Tables 4-5 the paper's star-sparse and star-full."""
    if number not in (4, 5):
        return model
    if not model.startswith("star-"):
        raise TableError(f"table {number} compares STAR's sparse and full attention, not {model!r}")
    return "star-full" if paper_row(model).endswith("-full") else "star-sparse"


def _check_inputs(number: int, items: list[dict], kind: str, what: str) -> None:
    """Each input is a result file of the kind the table is made from, following that kind's schema."""
    if not items:
        raise TableError(f"table {number} needs at least one of {what}")
    for item in items:
        check(item, kind, item.get("_path", f"an input of table {number}"))


def _unique(items: list[dict], key, what: str) -> dict:
    """Index result files by `key`, refusing two files for one place in the table."""
    out = {}
    for item in items:
        place = key(item)
        if place in out:
            raise TableError(f"two {what} for {place}: {out[place].get('_path')} and {item.get('_path')}")
        out[place] = item
    return out


def accuracy_table(number: int, runs: list[dict], accuracy: str = "best", smoke: bool = False) -> Table:
    """Table 1 (rows: models) or 4 (rows: star-sparse, star-full) from runs' metrics.json contents."""
    if accuracy not in ACCURACY_KEYS:
        raise TableError(f"accuracy must be one of {sorted(ACCURACY_KEYS)}, not {accuracy!r}")
    _check_inputs(number, runs, "run", "runs' metrics.json (star train)")
    key = ACCURACY_KEYS[accuracy]
    paper = published()[PAPER_TABLES[number]]
    _unique(runs, lambda r: (r["model"], r["benchmark"], r["seed"]), "runs")
    groups: dict[tuple[str, str], list[dict]] = {}
    models_of_row: dict[str, set[str]] = {}
    for run in runs:
        row = _row_of(number, run["model"])
        groups.setdefault((row, run["benchmark"]), []).append(run)
        models_of_row.setdefault(row, set()).add(run["model"])
    mixed = {row: sorted(models) for row, models in models_of_row.items() if len(models) > 1}
    if mixed:
        raise TableError(f"table {number} would put several models in one row: {mixed}")
    cells = {}
    for (row, benchmark), group in groups.items():
        values = [float(r[key]) for r in group]
        cells[row, benchmark] = Cell(
            reproduced=statistics.fmean(values),
            spread=statistics.stdev(values) if len(values) > 1 else None,
            seeds=len(values),
            published=published_value(number, row, benchmark),
            model=group[0]["model"])
    rows = _ordered((row for row, _ in groups), paper["rows"])
    columns = _ordered((b for _, b in groups), BENCHMARKS)
    epochs = sorted({r["epochs"] for r in runs})
    several = any(c.seeds > 1 for c in cells.values())
    notes = [f"Top-1 of the {'best' if accuracy == 'best' else 'last'} epoch on the test side; "
             f"{'mean ± sample standard deviation over seeds' if several else 'one seed'}; "
             f"{', '.join(map(str, epochs))} epochs."]
    return Table(number, rows, columns, cells, smoke, notes)


def _device_note(profiles: list[dict]) -> str:
    devices = sorted({f"{p['device_name']} ({p['device']}, torch {p['torch']})" for p in profiles})
    clips = sorted({p["batch"]["clips"] for p in profiles})
    return (f"Reproduced on {'; '.join(devices)}, batch of {', '.join(map(str, clips))} test clips; "
            "published latency is CUDA time on the paper's GPU.")


def efficiency_table(number: int, profiles: list[dict], smoke: bool = False) -> Table:
    """Table 2 (rows: models) or 5 (rows: star-sparse, star-full) from profile JSONs."""
    _check_inputs(number, profiles, "profile", "profile JSONs (star profile)")
    paper = published()[PAPER_TABLES[number]]
    by_row = _unique(profiles, lambda p: _row_of(number, p["model"]), "profiles")
    columns = [c for c in EFFICIENCY_COLUMNS if EFFICIENCY_COLUMNS[c] in paper["columns"]]
    cells = {}
    for row, profile in by_row.items():
        for column in columns:
            cells[row, column] = Cell(reproduced=float(profile["summary"][column]),
                                      published=published_value(number, row, column), model=profile["model"])
    return Table(number, _ordered(by_row, paper["rows"]), columns, cells, smoke, [_device_note(profiles)])


def breakdown_table(profiles: list[dict], smoke: bool = False) -> Table:
    """Table 3: for MACs, parameters and latency, the three costliest module types of each model."""
    _check_inputs(3, profiles, "profile", "profile JSONs (star profile)")
    paper = published()["table3_breakdown_top3"]
    by_model = _unique(profiles, lambda p: p["model"], "profiles")
    columns = [f"{quantity} #{rank}" for quantity, _ in BREAKDOWN_QUANTITIES.values() for rank in range(1, RANKS + 1)]
    cells = {}
    for model, profile in by_model.items():
        for key, (quantity, scale) in BREAKDOWN_QUANTITIES.items():
            ours = profile["top3"][key]
            theirs = paper.get(paper_row(model), {}).get(key, [])
            for rank in range(RANKS):
                category, value = ours[rank] if rank < len(ours) else (None, None)
                published_category, published_value = theirs[rank] if rank < len(theirs) else (None, None)
                cells[model, f"{quantity} #{rank + 1}"] = Cell(
                    reproduced=None if value is None else value / scale, category=category,
                    published=None if published_value is None else published_value / scale,
                    published_category=published_category)
    notes = [_device_note(profiles), "Differences are given where the paper names the same module type."]
    return Table(3, _ordered(by_model, paper), columns, cells, smoke, notes)


def build(number: int, results: list[dict], accuracy: str = "best", smoke: bool = False) -> Table:
    try:
        if number in (1, 4):
            return accuracy_table(number, results, accuracy, smoke)
        if number in (2, 5):
            return efficiency_table(number, results, smoke)
        if number == 3:
            return breakdown_table(results, smoke)
    except KeyError as error:  # a nested key of a result file (the top-level ones are checked with their file)
        files = ", ".join(str(r.get("_path", "?")) for r in results)
        raise TableError(f"table {number}: an input lacks the key {error} (inputs: {files})") from error
    raise TableError(f"there is no table {number}: the paper has tables 1-5")


def read_cells(csv_paths: Iterable[Path]) -> dict[tuple[int, str, str], dict]:
    """Every cell of the table CSVs `star table` wrote, keyed (table, row, column); an "as run" row
    (`star-64-code`) is found under its paper row (`star-64`) too."""
    cells = {}
    for path in csv_paths:
        try:
            frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
        except (OSError, ValueError) as error:
            raise TableError(f"{path}: cannot read it as a table CSV ({error})") from error
        missing = set(RECORD_COLUMNS) - set(frame.columns)
        if missing:
            raise TableError(f"{path}: not a table CSV of `star table` (no column {sorted(missing)})")
        for record in frame.to_dict("records"):
            record = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in record.items()}
            cells[int(record["table"]), str(record["row"]), str(record["column"])] = record
    for (table, row, column), record in list(cells.items()):
        cells.setdefault((table, paper_row(row), column), record)
    return cells
