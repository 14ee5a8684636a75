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

SHOWN_CATEGORIES = 6
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
    figure, axes = _panels(len(batch_sizes))
    for axis, clips in zip(axes, batch_sizes, strict=True):
        for profile in swept:
            points = sorted((pt["frames"], pt["latency_ms"]) for pt in profile["sweep"] if pt["clips"] == clips)
            style = "-o" if profile["layout"] == "compact" else "--s"
            axis.plot([f for f, _ in points], [ms for _, ms in points], style, label=profile["model"], markersize=4)
        axis.set_title(f"{clips} clip{'s' if clips > 1 else ''} per batch")
        axis.set_xlabel("frames per clip (baselines always padded to 300)")
        axis.set_ylabel("latency (ms)")
        axis.set_yscale("log")
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=8)
    figure.suptitle(f"Forward latency against clip length ({swept[0]['device_name']})")
    return figure


def _history(metrics_path: Path) -> pd.DataFrame:
    path = metrics_path.with_name("history.csv")
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as error:
        raise FigureError(f"{path}: cannot read the run's history ({error})") from error


def draw(name: str, inputs: list[str | Path]) -> Figure:
    """Figure `name` (a key of FIGURES) from its input files: profile JSONs, runs' metrics.json or a manifest."""
    inputs = [Path(p) for p in inputs]
    if name not in FIGURES:
        raise FigureError(f"no figure {name!r}; the figures are {', '.join(FIGURES)}")
    try:
        return _draw(name, inputs)
    except KeyError as error:
        raise FigureError(f"{name}: an input lacks the key {error} (inputs: {', '.join(map(str, inputs))})") from error


def _draw(name: str, inputs: list[Path]) -> Figure:
    if name == "training-curves":
        return training_curves([(read_result(p, "run"), _history(p)) for p in inputs])
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

