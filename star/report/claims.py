"""The paper's claims, each with the paper's own figure, the reproduced one and a verdict.

The claims are transcribed in `paper_tables.yaml` (`claims`): the paper's words,
where it says them, the measure, the models and what they are set against, and
the bound. The rules that judge them are written once, here:

- A claim compares every pair of its models and the models they are set against
  (and, for top-1, every benchmark): a cost (latency, params, gmacs) as the
  ratio other / model, how many times faster, smaller or cheaper the model is;
  top-1 as the difference model - other, in points. Rows are the paper's; an
  "as run" model (`star-64-code`) stands for its paper row, as in the tables.
- The reproduced figures come from the table CSVs (`star table`), so a ratio
  is of the same profiling batch on the same device; the paper's figures are
  computed the same way from its published tables.
- `range: [low, high]` (the paper's own figures) is met when every figure
  reaches `low` less half a unit of its last written digit: its "4x" is its
  own 333.89 / 86.54 = 3.86, and -7.7 is met by -7.75 (YAML keeps no trailing
  zero: 3.60 counts as 3.6). A figure beyond `high` still meets it (better
  than claimed), and the reason says so. `above: b` is met when every figure
  is greater than b; `reading` marks a bound that is this suite's reading of
  the paper's words.
- Verdict: "does not hold" as soon as one measured figure misses the bound (one
  counter-example refutes a claim about every pair); "holds" when every figure
  is measured and meets it; otherwise "not measured here", with the reason:
  figures this run did not make, latency timed on another device type than
  CUDA (the paper's CUDA time), top-1 from a smoke run, GMACs or latency of a
  baseline profiled on other than the papers' 300 padded frames.
- Top-1 differences carry the standard error of a difference of two means over
  seeds, sqrt(s1^2/n1 + s2^2/n2), where both sides have several seeds; the
  reason says when the deciding figure lies within two standard errors of the bound.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from star.data.splits import BENCHMARKS
from star.defaults import PADDED_FRAMES
from star.errors import StarError
from star.paper import published
from star.report.tables import column_label, published_value

HOLDS, FAILS, NOT_MEASURED = "holds", "does not hold", "not measured here"
# measure -> the tables' column (None: one column per benchmark)
COLUMNS = {"latency": "latency_ms", "params": "params_m", "gmacs": "gmacs", "top1": None}
MEASURE_LABELS = {"latency": "latency ratio", "params": "parameter ratio", "gmacs": "GMAC ratio",
                  "top1": "top-1 difference"}
ABLATION_ROWS = ("star-sparse", "star-full")
RECORD_COLUMNS = ("claim", "verdict", "reason", "measure", "model", "other", "benchmark", "reproduced", "spread",
                  "published", "measured_model", "measured_other", "smoke")


class ClaimError(StarError, ValueError):
    """A claim of paper_tables.yaml that the rules cannot read (named in the message)."""


@dataclass(frozen=True)
class Claim:
    key: str
    text: str
    where: str
    measure: str
    models: tuple[str, ...]
    against: tuple[str, ...]
    bound: float
    strict: bool         # `above`: greater than the bound; `range`: at least its low end, as the paper rounds it
    better_above: float | None  # `range`'s high end as the paper rounds it: a figure beyond is better than claimed
    claimed: str         # the bound as the paper writes it (or as this suite reads the paper), for the reader

    @classmethod
    def from_yaml(cls, entry: dict) -> Claim:
        key = entry.get("key", "?")
        if entry.get("measure") not in COLUMNS:
            raise ClaimError(f"claim {key}: measure {entry.get('measure')!r} is not one of {', '.join(COLUMNS)}")
        if ("range" in entry) == ("above" in entry):
            raise ClaimError(f"claim {key}: give either range: [low, high] or above: bound")
        unit = " points" if entry["measure"] == "top1" else "x"
        try:
            if "range" in entry:
                low, high = entry["range"]
                if not all(isinstance(end, int | float) for end in (low, high)):
                    raise TypeError(f"not numbers: {entry['range']}")
                claimed = f"{_written(low)} to {_written(high)}{unit}"
                bound, strict, better_above = low - _half_unit(low), False, high + _half_unit(high)
            else:
                bound, strict, better_above = float(entry["above"]), True, None
                claimed = f"above {_written(bound)}{unit}"
                if "reading" in entry:
                    claimed = f"{claimed}: {entry['reading']}"
            return cls(key, entry["text"], entry["where"], entry["measure"], tuple(entry["models"]),
                       tuple(entry["against"]), bound, strict, better_above, claimed)
        except KeyError as error:
            raise ClaimError(f"claim {key}: no key {error}") from error
        except (TypeError, ValueError) as error:
            raise ClaimError(f"claim {key}: range must be [low, high] and above a number ({error})") from error

    @property
    def ratio(self) -> bool:
        return self.measure != "top1"

    @property
    def rule(self) -> str:
        figure = "other / model" if self.ratio else "model − other (points)"
        return f"every {figure} {'>' if self.strict else '≥'} {_written(self.bound)}"

    def meets(self, value: float) -> bool:
        return value > self.bound if self.strict else value >= self.bound


def _written(value: float) -> str:
    return f"{value:g}"


def _half_unit(value: float) -> float:
    """Half a unit of the last digit written: 4 -> 0.5, -7.7 -> 0.05, 1e-05 -> 5e-06 (YAML keeps 4 an int)."""
    exponent = 0 if isinstance(value, int) else min(Decimal(repr(value)).as_tuple().exponent, 0)
    return 0.5 * 10.0 ** exponent


def claims() -> list[Claim]:
    return [Claim.from_yaml(entry) for entry in published()["claims"]]


@dataclass(frozen=True)
class Comparison:
    """One figure of a claim: `model` against `other` (paper rows), on one benchmark for top-1."""
    model: str
    other: str
    benchmark: str | None
    reproduced: float | None
    published: float | None
    spread: float | None = None        # standard error over seeds (top-1 with several seeds on both sides)
    measured_model: str | None = None  # the models the table measured for the two rows
    measured_other: str | None = None

    @property
    def label(self) -> str:
        if self.benchmark is None:
            return f"{self.other} / {self.model}"
        return f"{self.model} − {self.other}, {column_label(self.benchmark)}"


@dataclass(frozen=True)
class Assessment:
    claim: Claim
    comparisons: list[Comparison]
    verdict: str
    reason: str
    smoke: bool
    device: str | None  # where the latencies were timed (latency claims)

    def span(self, attribute: str) -> tuple[float, float] | None:
        values = [getattr(c, attribute) for c in self.comparisons if getattr(c, attribute) is not None]
        return (min(values), max(values)) if values else None

    def records(self) -> list[dict]:
        return [{"claim": self.claim.key, "verdict": self.verdict, "reason": self.reason,
                 "measure": self.claim.measure, "model": c.model, "other": c.other, "benchmark": c.benchmark,
                 "reproduced": c.reproduced, "spread": c.spread, "published": c.published,
                 "measured_model": c.measured_model, "measured_other": c.measured_other, "smoke": self.smoke}
                for c in self.comparisons]


def _table(claim: Claim) -> int:
    ablation = set(claim.models + claim.against) & set(ABLATION_ROWS)
    if ablation and set(claim.models + claim.against) - set(ABLATION_ROWS):
        raise ClaimError(f"claim {claim.key}: star-sparse and star-full are compared only with each other")
    if claim.ratio:
        return 5 if ablation else 2
    return 4 if ablation else 1


def _standard_error(a: dict, b: dict) -> float | None:
    if a["spread"] is None or b["spread"] is None:
        return None
    return math.sqrt(a["spread"] ** 2 / a["seeds"] + b["spread"] ** 2 / b["seeds"])


def _compare(claim: Claim, cells: dict, model: str, other: str, benchmark: str | None) -> Comparison:
    number = _table(claim)
    column = COLUMNS[claim.measure] or benchmark
    ours, theirs = cells.get((number, model, column)), cells.get((number, other, column))
    paper_model, paper_other = published_value(number, model, column), published_value(number, other, column)
    published_figure = None
    if paper_model is not None and paper_other is not None:
        published_figure = paper_other / paper_model if claim.ratio else paper_model - paper_other
    if ours is None or theirs is None or ours["reproduced"] is None or theirs["reproduced"] is None:
        return Comparison(model, other, benchmark, None, published_figure,
                          measured_model=ours and ours["model"], measured_other=theirs and theirs["model"])
    if claim.ratio:
        figure, spread = theirs["reproduced"] / ours["reproduced"], None
    else:
        figure, spread = ours["reproduced"] - theirs["reproduced"], _standard_error(ours, theirs)
    return Comparison(model, other, benchmark, figure, published_figure, spread, ours["model"], theirs["model"])


def _show(claim: Claim, comparison: Comparison) -> str:
    value = comparison.reproduced
    return f"{comparison.label}: {value:.3g}x" if claim.ratio else f"{comparison.label}: {value:+.3g}"


def assess(claim: Claim, cells: dict, devices: dict[str, str], smoke: bool = False,
           padding: dict[str, int] | None = None) -> Assessment:
    """`cells`: the table CSVs' cells (tables.read_cells); `devices`: model -> the device its profile ran on;
    `padding`: padded model -> the frames per clip its profile fed it."""
    benchmarks = list(BENCHMARKS) if claim.measure == "top1" else [None]
    comparisons = [_compare(claim, cells, model, other, benchmark)
                   for model in claim.models for other in claim.against for benchmark in benchmarks]
    measured = [c for c in comparisons if c.reproduced is not None]
    # the device type: a GPU profile names its device cuda:0
    timed_on = sorted({devices.get(name, "an unknown device").split(":")[0] for c in measured
                       for name in (c.measured_model, c.measured_other)}) if claim.measure == "latency" else []
    device = ", ".join(timed_on) or None

    def judged(verdict: str, reason: str) -> Assessment:
        return Assessment(claim, comparisons, verdict, reason, smoke, device)

    if claim.measure == "top1" and smoke:
        return judged(NOT_MEASURED, "smoke run: top-1 after a few epochs on the tiny generated set")
    padding = padding or {}
    short = sorted({f"{name} {padding[name]}" for c in measured for name in (c.measured_model, c.measured_other)
                    if padding.get(name, PADDED_FRAMES) != PADDED_FRAMES})  # baselines profiled on short padding
    if claim.measure in ("gmacs", "latency") and short:
        return judged(NOT_MEASURED, f"profiled with padded frames {', '.join(short)}, not the papers' "
                                    f"{PADDED_FRAMES}: their cost is not the one the paper compares")
    if claim.measure == "latency" and measured and timed_on != ["cuda"]:
        return judged(NOT_MEASURED, f"latency timed on {' and '.join(timed_on)}; the claim is CUDA time on the "
                                    "paper's GPU (the ratio beside it is this device's)")
    missing = [c.label for c in comparisons if c.reproduced is None]
    failing = [c for c in measured if not claim.meets(c.reproduced)]
    if failing:
        reason = f"{'; '.join(_show(claim, c) for c in failing)} (needs {claim.rule.removeprefix('every ')})"
        return judged(FAILS, reason + _close_call(claim, failing))
    if missing:
        return judged(NOT_MEASURED, f"not made in this run: {'; '.join(missing)}")
    smallest = min(measured, key=lambda c: c.reproduced)
    beyond = [c for c in measured if claim.better_above is not None and c.reproduced > claim.better_above]
    better = f"; better than claimed: {'; '.join(_show(claim, c) for c in beyond)}" if beyond else ""
    return judged(HOLDS, f"smallest {_show(claim, smallest)}" + better + _close_call(claim, measured))


def _close_call(claim: Claim, comparisons: Iterable[Comparison]) -> str:
    close = [c.label for c in comparisons if c.spread is not None and abs(c.reproduced - claim.bound) < 2 * c.spread]
    return f"; within two standard errors of the bound: {'; '.join(close)}" if close else ""


def assess_all(cells: dict, devices: dict[str, str], padding: dict[str, int] | None = None) -> list[Assessment]:
    """Every claim, from the table CSVs' cells (a smoke run's cells say so), the profiles' devices and the
    padded models' frames per clip."""
    smoke = any(record["smoke"] for record in cells.values())
    return [assess(claim, cells, devices, smoke, padding) for claim in claims()]
