"""The paper's Figures 8-11 and two figures beyond it, drawn with matplotlib from result files.

Each figure is a function of loaded result files that returns a matplotlib
Figure; `draw` reads the files for a figure by name, `save` writes it as PNG
and SVG, each under a temporary name (neither is left if either fails).

- `breakdown-macs`, `breakdown-params`, `breakdown-latency` (Figures 8-10):
  per model, the costliest module types (fvcore's MACs, parameters, profiled
  time), the rest summed as "other".
- `training-curves` (Figure 11): train and test top-1 per epoch of each
  run's history.csv (one line per seed).
- `storage`: bytes of the compact store against the padded 300 x 2 layout of
  the same clips, from the store's manifest.
- `latency-sweep`: forward latency against clip length per model and batch
  size, from the profiles' sweep.
- `accuracy-cost`: top-1 against GMACs and against latency (log x), a panel
  per benchmark, from the Table 1 and Table 2 CSVs: each model's reproduced
  point joined to its published one, the Pareto front of each set drawn
  (`pareto_front`: the points no other costs no more and scores higher).
- `per-class`: per-class top-1 of each STAR model minus each baseline's on one
  benchmark, classes sorted, from `star evaluate`'s files (star.report.per_class).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from star.errors import StarError
from star.io import read_result, write_together
from star.names import FIGURES
from star.paper import paper_row
from star.report import per_class
from star.report.tables import column_label, published_value, read_cells

SHOWN_CATEGORIES = 6
SMOKE_MARK = "SMOKE RUN: not a reproduction"
FORMATS = ("png", "svg")


class FigureError(StarError, ValueError):
    """Result files that cannot make the figure asked for (named in the message)."""


@dataclass(frozen=True)
class BreakdownQuantity:
    label: str
    scale: float
    values: Callable[[dict], dict[str, float]]


BREAKDOWNS = {
    "macs": BreakdownQuantity("GMACs", 1e9, lambda p: p["macs"]["fvcore"]["by_category"]),
    "params": BreakdownQuantity("parameters (millions)", 1e6, lambda p: p["params"]["by_category"]),
    "latency": BreakdownQuantity("profiled time (ms)", 1.0, lambda p: p["latency"]["by_category_ms"]),
}


def _panels(count: int, width: float = 4.2, height: float = 3.2):
    # a bare Figure, not pyplot: no global figure registry to leak into, no GUI backend to pick
    figure = Figure(figsize=(width * count, height), layout="constrained")
    return figure, figure.subplots(1, count, squeeze=False)[0]


def breakdown(profiles: list[dict], quantity: str) -> Figure:
    spec = BREAKDOWNS[quantity]
    if not profiles:
        raise FigureError(f"breakdown-{quantity} needs at least one profile JSON")
    figure, axes = _panels(len(profiles))
    for axis, profile in zip(axes, profiles, strict=True):
        ranked = sorted(spec.values(profile).items(), key=lambda kv: -kv[1])
        shown = ranked[:SHOWN_CATEGORIES]
        rest = sum(value for _, value in ranked[SHOWN_CATEGORIES:])
        if rest > 0:
            shown.append(("other", rest))
        names = [name for name, _ in shown][::-1]
        values = [value / spec.scale for _, value in shown][::-1]
        bars = axis.barh(names, values, color="#4477aa")
        axis.bar_label(bars, labels=[f"{v:.3g}" for v in values], padding=2, fontsize=8)
        axis.set_title(profile["model"])
        axis.set_xlabel(spec.label)
        axis.margins(x=0.25)
    device = profiles[0]["device_name"]
    figure.suptitle(f"{spec.label} by module type, {profiles[0]['batch']['clips']} test clips ({device})")
    return figure


def training_curves(runs: list[tuple[dict, pd.DataFrame]]) -> Figure:
    """`runs`: each run's metrics.json and history.csv; one panel per model, a pair of lines per seed."""
    if not runs:
        raise FigureError("training-curves needs at least one run's metrics.json")
    models = list(dict.fromkeys(metrics["model"] for metrics, _ in runs))
    figure, axes = _panels(len(models), width=4.8)
    for axis, model in zip(axes, models, strict=True):
        model_runs = [(metrics, history) for metrics, history in runs if metrics["model"] == model]
        for metrics, history in model_runs:
            seed = metrics["seed"]
            axis.plot(history["epoch"], history["train_top1_pct"], color="#4477aa", label=f"train, seed {seed}")
            axis.plot(history["epoch"], history["test_top1_pct"], color="#ee6677", label=f"test, seed {seed}")
        axis.set_title(f"{model}, {', '.join(sorted({m['benchmark'] for m, _ in model_runs}))}")
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel("top-1 (%)")
        axis.set_ylim(0, 100)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return figure


def storage(manifest: dict) -> Figure:
    sizes = manifest["bytes"]
    figure, (axis,) = _panels(1, width=6.5, height=2.6)
    names = ["padded 300 x 2 (baselines)", "compact store (STAR)"]
    values = [sizes["padded_300x2"] / 1e6, sizes["compact"] / 1e6]
    bars = axis.barh(names, values, color=["#bbbbbb", "#4477aa"])
    axis.bar_label(bars, labels=[f"{v:,.1f} MB" for v in values], padding=2, fontsize=8)
    axis.set_xlabel("MB (10^6 bytes)")
    axis.margins(x=0.3)
    axis.set_title(f"{manifest['clips']:,} clips, {manifest['total_frames']:,} frames\n"
                   f"compact is {sizes['compact_over_padded']:.1%} of padded", fontsize=10)
    return figure


def latency_sweep(profiles: list[dict]) -> Figure:
    swept = [p for p in profiles if p.get("sweep")]
    if not swept:
        raise FigureError("latency-sweep needs profiles made with --sweep-frames")
    batch_sizes = sorted({point["clips"] for p in swept for point in p["sweep"]})
    # the baselines' padding: a profile's batch.padded.shape is (clips, 3, frames, 25, persons)
    padded = sorted({p["batch"]["padded"]["shape"][2] for p in swept
                     if p["layout"] == "padded" and "padded" in p["batch"]})
    padding = f" (baselines always padded or cut to {' or '.join(map(str, padded))})" if padded else ""
    label = "frames per clip" + padding
    figure, axes = _panels(len(batch_sizes))
    for axis, clips in zip(axes, batch_sizes, strict=True):
        for profile in swept:
            points = sorted((pt["frames"], pt["latency_ms"]) for pt in profile["sweep"] if pt["clips"] == clips)
            style = "-o" if profile["layout"] == "compact" else "--s"
            axis.plot([f for f, _ in points], [ms for _, ms in points], style, label=profile["model"], markersize=4)
        axis.set_title(f"{clips} clip{'s' if clips > 1 else ''} per batch")
        axis.set_xlabel(label)
        axis.set_ylabel("latency (ms)")
        axis.set_yscale("log")
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=8)
    figure.suptitle(f"Forward latency against clip length ({swept[0]['device_name']})")
    return figure


COSTS = {"gmacs": "GMACs (log)", "latency_ms": "latency (ms, log)"}


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (cost, top-1) points that no other point dominates, by cost: one dominates another when it costs no
    more and reaches a higher top-1, or costs less and reaches the same (a repeated point is kept once)."""
    front, best = [], -float("inf")
    for cost, top1 in sorted(points, key=lambda p: (p[0], -p[1])):
        if top1 > best:
            front.append((cost, top1))
            best = top1
    return front


def accuracy_cost(cells: dict) -> Figure:
    """`cells`: Tables 1 and 2 as tables.read_cells gives them."""
    models = list(dict.fromkeys(row for (table, row, _) in cells if table == 2 and row == paper_row(row)))
    benchmarks = list(dict.fromkeys(column for (table, _, column) in cells if table == 1))
    if not models or not benchmarks:
        raise FigureError("accuracy-cost needs the Table 1 and Table 2 CSVs (star table 1, star table 2)")
    figure = Figure(figsize=(9.6, 3.4 * len(benchmarks)), layout="constrained")
    axes = figure.subplots(len(benchmarks), len(COSTS), squeeze=False)
    colours = dict(zip(models, ("#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377", "#bbbbbb"),
                       strict=False))
    for row_axes, benchmark in zip(axes, benchmarks, strict=True):
        for axis, cost in zip(row_axes, COSTS, strict=True):
            sets = {"reproduced": [], "published": []}
            for model in models:
                accuracy, spent = cells.get((1, model, benchmark)), cells[2, model, cost]
                if accuracy is None:
                    continue
                ours = (spent["reproduced"], accuracy["reproduced"])  # None: not run on this benchmark
                theirs = (published_value(2, model, cost), published_value(1, model, benchmark))  # None: not published
                colour = colours.get(model, "#333333")
                if None not in ours:
                    axis.plot(*ours, "o", color=colour, label=spent["model"], markersize=7)
                    sets["reproduced"].append(ours)
                if None not in theirs:
                    axis.plot(*theirs, "o", markerfacecolor="none", color=colour, markersize=7)
                    sets["published"].append(theirs)
                if None not in ours + theirs:
                    axis.plot(*zip(ours, theirs, strict=True), "-", color=colour, alpha=0.4, linewidth=1)
            for name, style in (("reproduced", "-"), ("published", ":")):
                front = pareto_front(sets[name])
                if front:
                    axis.step(*zip(*front, strict=True), style, where="post", color="#555555", linewidth=1,
                              label=f"Pareto front, {name}")
            axis.set_xscale("log")
            axis.set_xlabel(COSTS[cost] + ("; paper: CUDA time" if cost == "latency_ms" else ""))
            axis.set_ylabel("top-1 (%)")
            axis.set_title(f"{column_label(benchmark)}: top-1 against {column_label(cost)}", fontsize=10)
            axis.grid(alpha=0.3, which="both")
    legend = {}  # label -> handle, over every panel: a model may be missing from some
    for axis in axes.flat:
        legend.update(zip(*reversed(axis.get_legend_handles_labels()), strict=True))
    figure.legend(legend.values(), legend.keys(), loc="outside lower center", ncols=min(len(legend), 4), fontsize=8)
    figure.suptitle("Accuracy against cost: filled reproduced, hollow published (the paper's tables), "
                    "a line joining each model's pair", fontsize=10)
    return figure


def per_class_differences(counts: list[per_class.ClassCounts]) -> Figure:
    models = [c for c in counts if c.is_star]
    baselines = [c for c in counts if not c.is_star]
    if not models or not baselines:
        raise FigureError(f"per-class compares STAR models with baselines; the evaluations are of "
                          f"{', '.join(c.model for c in counts)}")
    pairs = [(model, baseline, per_class.differences(model, baseline)) for model in models for baseline in baselines]
    rows = max(len(diffs) for _, _, diffs in pairs)
    figure = Figure(figsize=(4.6 * len(baselines), len(models) * (0.9 + 0.14 * max(rows, 4))), layout="constrained")
    axes = figure.subplots(len(models), len(baselines), squeeze=False)
    for (model, baseline, diffs), axis in zip(pairs, axes.flat, strict=True):
        names = [name for name, _ in diffs][::-1]
        values = [value for _, value in diffs][::-1]
        axis.barh(names, values, color=["#4477aa" if v >= 0 else "#ee6677" for v in values])
        axis.axvline(0, color="#333333", linewidth=0.8)
        axis.tick_params(axis="y", labelsize=6)
        axis.set_xlabel("top-1 difference (points)")
        seeds = f"{len(model.seeds)} / {len(baseline.seeds)} seeds"
        axis.set_title(f"{model.model} − {baseline.model} ({seeds})", fontsize=9)
        axis.grid(alpha=0.3, axis="x")
    side = counts[0].split
    figure.suptitle(f"Per-class top-1, STAR minus each baseline, {column_label(counts[0].benchmark)} {side} side "
                    f"(classes with {side} clips; best above)", fontsize=10)
    return figure


def _history(metrics_path: Path) -> pd.DataFrame:
    path = metrics_path.with_name("history.csv")
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as error:
        raise FigureError(f"{path}: cannot read the run's history ({error})") from error


def draw(name: str, inputs: list[str | Path], smoke: bool = False) -> Figure:
    """Figure `name` (a key of FIGURES) from its input files: profile JSONs, runs' metrics.json, a manifest,
    table CSVs (accuracy-cost) or evaluation JSONs (per-class); `smoke` marks it in its title."""
    inputs = [Path(p) for p in inputs]
    if name not in FIGURES:
        raise FigureError(f"no figure {name!r}; the figures are {', '.join(FIGURES)}")
    try:
        figure = _draw(name, inputs)
    except KeyError as error:
        raise FigureError(f"{name}: an input lacks the key {error} (inputs: {', '.join(map(str, inputs))})") from error
    if smoke:
        title = figure.get_suptitle()
        figure.suptitle(f"{title}\n{SMOKE_MARK}" if title else SMOKE_MARK, fontsize=10)
    return figure


def _draw(name: str, inputs: list[Path]) -> Figure:
    if name == "training-curves":
        return training_curves([(read_result(p, "run"), _history(p)) for p in inputs])
    if name == "accuracy-cost":
        return accuracy_cost(read_cells(inputs))
    if name == "per-class":
        return per_class_differences(per_class.read_evaluations(inputs))
    if name == "storage":
        if len(inputs) != 1:
            raise FigureError(f"storage takes the store's manifest.json alone, not {len(inputs)} files")
        return storage(read_result(inputs[0], "manifest"))
    profiles = [read_result(p, "profile") for p in inputs]
    if name == "latency-sweep":
        return latency_sweep(profiles)
    return breakdown(profiles, name.removeprefix("breakdown-"))


def save(figure: Figure, png: str | Path) -> list[Path]:
    """Write `png` and the SVG beside it; returns both paths."""
    png = Path(png)
    if png.suffix != ".png":
        raise FigureError(f"figure output must end in .png (the .svg is written beside it): {png}")
    # matplotlib picks the format from the name, so it is given explicitly for the temporary name
    return write_together({png.with_suffix(f".{fmt}"): lambda tmp, fmt=fmt: figure.savefig(tmp, format=fmt, dpi=120)
                           for fmt in FORMATS})

