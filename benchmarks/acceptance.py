"""What the acceptance scripts share: a check's row, the checks run with a line printed for each, the JSON."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path


def row(check: str, subject: str, passed: bool | None, detail: str, **figures) -> dict:
    """One line of the report; passed None means skipped, with the reason in `detail`."""
    return {"check": check, "subject": subject, "passed": passed, "detail": detail, **figures}


def run_checks(steps: list[tuple[str, Callable[[], list[dict]]]]) -> list[dict]:
    """Each step's rows, printed as they come (pass, FAIL, skip, or info for a row kept for comparison)."""
    rows = []
    for check, run in steps:
        begun = time.perf_counter()
        new = run()
        for line in new:
            mark = "info" if line.get("comparison") else {True: "pass", False: "FAIL", None: "skip"}[line["passed"]]
            print(f"{mark:4s}  {check:11s} {line['subject']:34s} {line['detail']}", flush=True)
        rows += new
        print(f"      {check} took {time.perf_counter() - begun:.0f} s", flush=True)
    return rows


def finish(rows: list[dict], out: str, started: float, **fields) -> None:
    """Write `fields`, the time since `started`, the verdict and the rows to `out`; exit 1 if a check failed."""
    failed = [r for r in rows if r["passed"] is False]
    result = {**fields, "seconds": time.perf_counter() - started, "passed": not failed, "checks": rows}
    Path(out).write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(f"{len(rows) - len(failed)} of {len(rows)} checks passed, skipped or for information, {len(failed)} failed, "
          f"{result['seconds']:.0f} s; wrote {out}")
    if failed:
        sys.exit(1)
