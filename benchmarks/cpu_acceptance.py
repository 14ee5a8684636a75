"""Accept a CPU machine in one command: the project's speed and test-time targets for 2-core machines, measured.

    python benchmarks/cpu_acceptance.py [--threads 2] [--skip speed build times] [--quick]
                                        [--out cpu_acceptance.json] [--work DIR]

Each figure is one run on this machine, printed as a pass/fail table and
written to --out as JSON with the CPU's capability
(`torch.backends.cpu.get_cpu_capability()`) and its 2048^3 float32 product
ceiling, since the same code is several times slower on some machines than
on others (README, "Benchmarks"):

1. speed, at --threads: STAR-64's forward at least 25x ST-GCN's and
   STAR-128's at least 10x, each sparse STAR faster than its full-attention
   form, STAR-64 at 40% or more of the product ceiling (its analytic MACs
   over its latency), on bench_model.py's batch of 16 NTU-like clips; and
   STAR-64 training at least 15x ST-GCN's samples/s, through the trainer as
   bench_train.py measures it on its NTU-like set;
2. build: the fused kernels built in an empty extensions folder add at most
   60 s to a process that loads them, and a second process loads them from
   that folder in under a quarter of the first one's time;
3. times: the fast tier (`python -m pytest -m "not slow"`) under 4 minutes,
   the test command (`python -m pytest`) under 15 and the smoke workflow
   (`snakemake --cores 2 all --configfile workflow/config/smoke.yaml` in an
   empty folder) under 5, each a wall time that counts only if the command
   succeeds, and each with empty folders of its own for the fused kernels,
   inductor's compiled kernels and temporary files, as on a new machine or CI
   runner after `scripts/setup.sh` (which builds the fused kernels, untimed
   here: the build part times that). With --work, the tests' logs there list
   their 20 slowest tests, and the smoke's folder keeps Snakemake's time of
   each job (results/benchmarks): where a machine over a budget spent it.

`--quick` (CI) runs the speed part on 4 clips and one training step and
skips the rest: its figures are printed, not judged. It exits 1 if a judged
check fails.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from acceptance import finish, row, run_checks
from bench_model import matmul_ceiling, model_table
from bench_train import synthetic_store, throughput

from star import runtime
from star.data.synthetic import ntu_like_clips, random_samples

REPO = Path(__file__).resolve().parent.parent
FORWARD_OVER_ST_GCN = {"star-64": 25.0, "star-128": 10.0}  # forward latency speed-up, at least
SPARSE_AND_FULL = {"star-64": "star-64-full", "star-128": "star-128-full"}
STAR_64_OF_CEILING = 0.40  # achieved GFLOP/s from the analytic MACs over the product ceiling, at least
TRAINING_OVER_ST_GCN = 15.0  # STAR-64 training samples/s over ST-GCN's, at least
BUILD_ADDS_S = 60.0  # seconds a fresh build of the fused kernels may add, at most
LOAD = ("import sys, time; from star.network import fused; begun = time.perf_counter(); built = fused.available(); "
        "print(time.perf_counter() - begun); sys.exit(0 if built else 1)")  # a new process's build or cached load
SLOWEST = "--durations=20"  # the 20 slowest tests, listed in the log
COMMANDS = {  # name: (command run in the repository, or the smoke workflow's folder; budget in seconds)
    "fast tier": ([sys.executable, "-m", "pytest", "-m", "not slow", SLOWEST], 4 * 60),
    "test command": ([sys.executable, "-m", "pytest", SLOWEST], 15 * 60),
    "smoke workflow": ([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--cores", "2",
                        "all", "--configfile", str(REPO / "workflow/config/smoke.yaml")], 5 * 60),
}


def check_speed(threads: int, quick: bool, work: Path) -> list[dict]:
    clips, repeats, steps, batch_size = (4, 2, 1, 4) if quick else (16, 10, 4, 16)
    device = torch.device("cpu")
    frames, persons = ntu_like_clips(clips, 0)
    ceiling = matmul_ceiling(device, repeats)
    names = [*SPARSE_AND_FULL, *SPARSE_AND_FULL.values(), "st-gcn"]
    timed = model_table(random_samples(frames, persons, seed=0), names, device, repeats, ceiling, compile=False)
    latency = {name: result["latency_ms"] for name, result in timed.items()}
    rows = [row("speed", "product ceiling", None, f"{ceiling:.1f} GFLOP/s (2048^3 float32)", gflops=ceiling,
                comparison=True)]
    for name, target in FORWARD_OVER_ST_GCN.items():
        ratio = latency["st-gcn"] / latency[name]
        rows.append(row("speed", f"{name} forward over st-gcn", ratio >= target,
                        f"{ratio:.1f}x (target {target:g}x): {latency[name]:.1f} against {latency['st-gcn']:.1f} ms",
                        ratio=ratio, target=target, latency_ms=latency[name], st_gcn_ms=latency["st-gcn"]))
    for sparse, full in SPARSE_AND_FULL.items():
        rows.append(row("speed", f"{sparse} faster than {full}", latency[sparse] < latency[full],
                        f"{latency[sparse]:.1f} against {latency[full]:.1f} ms", sparse_ms=latency[sparse],
                        full_ms=latency[full]))
    share = timed["star-64"]["of_ceiling"]
    rows.append(row("speed", "star-64 share of the ceiling", share >= STAR_64_OF_CEILING,
                    f"{share:.1%} (target {STAR_64_OF_CEILING:.0%}) of {ceiling:.1f} GFLOP/s, "
                    f"{timed['star-64']['gmacs']:.2f} GMACs", share=share, target=STAR_64_OF_CEILING))
    store = synthetic_store(work / "train", "ntu-like")
    rates = {name: throughput(store, "ntu60/xsub", name, work / "train", steps, batch_size, device="cpu")
             for name in ("star-64", "st-gcn")}
    ratio = rates["star-64"][0] / rates["st-gcn"][0]
    rows.append(row("speed", "star-64 training over st-gcn", ratio >= TRAINING_OVER_ST_GCN,
                    f"{ratio:.1f}x (target {TRAINING_OVER_ST_GCN:g}x): {rates['star-64'][0]:.1f} against "
                    f"{rates['st-gcn'][0]:.1f} samples/s ({steps} x {batch_size} clips a pass)", ratio=ratio,
                    target=TRAINING_OVER_ST_GCN, star_64_samples_per_s=rates["star-64"][0],
                    st_gcn_samples_per_s=rates["st-gcn"][0]))
    if quick:  # figures of a batch too small to judge: printed as information, never a failure
        rows = [{**line, "passed": None, "comparison": True} for line in rows]
    return rows


def load_seconds(extensions: Path) -> tuple[float | None, str]:
    """Seconds a new process takes to make the fused kernels available from `extensions`, or None and why not."""
    done = subprocess.run([sys.executable, "-c", LOAD], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "TORCH_EXTENSIONS_DIR": str(extensions), "STAR_FUSED": "1"})
    if done.returncode != 0 or not done.stdout.split():
        return None, (done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}")[-500:]
    return float(done.stdout.split()[-1]), ""


def check_build(work: Path) -> list[dict]:
    extensions = Path(tempfile.mkdtemp(prefix="extensions-", dir=work))  # empty, even in a reused --work
    fresh, error = load_seconds(extensions)
    if fresh is None:
        return [row("build", "fused kernels from nothing", False, f"not built: {error}"),
                row("build", "fused kernels from the cache", None, "no build to load")]
    cached, error = load_seconds(extensions)
    if cached is None:
        return [row("build", "fused kernels from nothing", None, f"{fresh:.1f} s; nothing to compare with",
                    seconds=fresh),
                row("build", "fused kernels from the cache", False, f"not loaded: {error}")]
    added = fresh - cached
    return [row("build", "fused kernels from nothing", added <= BUILD_ADDS_S,
                f"{fresh:.1f} s, {added:.1f} s more than loading the build (target {BUILD_ADDS_S:g} s)",
                seconds=fresh, added_s=added, target=BUILD_ADDS_S),
            row("build", "fused kernels from the cache", cached < fresh / 4, f"{cached:.1f} s", seconds=cached)]


def check_times(work: Path) -> list[dict]:
    rows = []
    for name, (command, budget) in COMMANDS.items():
        smoke = name == "smoke workflow"
        folder = Path(tempfile.mkdtemp(prefix="smoke-", dir=work)) if smoke else REPO  # empty: nothing up to date
        log = work / f"{name.replace(' ', '-')}.log"
        caches = Path(tempfile.mkdtemp(prefix="caches-", dir=work))  # nothing built or compiled yet
        (caches / "tmp").mkdir()  # inductor's precompiled header lives under the temporary folder, not its cache
        env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(caches / "extensions"),
               "TORCHINDUCTOR_CACHE_DIR": str(caches / "inductor"), "TMPDIR": str(caches / "tmp")}
        # the fused kernels built as scripts/setup.sh builds them (untimed: the build part's check), unless declined
        built, error = load_seconds(caches / "extensions") if os.environ.get("STAR_FUSED") != "0" else (None, "")
        begun = time.perf_counter()
        with log.open("w") as output:
            done = subprocess.run([*command, *(["--directory", str(folder)] if smoke else [])], cwd=folder,
                                  stdout=output, stderr=subprocess.STDOUT, env=env)
        seconds = time.perf_counter() - begun
        tail = log.read_text().strip().splitlines()[-1:] or [""]
        summary = tail[0] if re.search(r"passed|failed|error", tail[0]) else f"exit {done.returncode}"
        if built is None:
            summary += f" (on the ATen forms: {error or 'STAR_FUSED=0'})"
        rows.append(row("times", name, done.returncode == 0 and seconds < budget,
                        f"{seconds / 60:.1f} min (target under {budget / 60:g}): {summary}", seconds=seconds,
                        target_s=budget, returncode=done.returncode, log=str(log)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads for the speed part")
    parser.add_argument("--skip", nargs="*", default=[], choices=["speed", "build", "times"])
    parser.add_argument("--quick", action="store_true", help="the speed part on 4 clips, not judged (CI)")
    parser.add_argument("--out", default="cpu_acceptance.json", metavar="FILE.json")
    parser.add_argument("--work", default=None, metavar="DIR", help="scratch folder and logs (default: temporary)")
    args = parser.parse_args()
    runtime.apply()  # as the star command does (star.runtime)
    torch.set_num_threads(args.threads)
    skip = ({"build", "times"} | set(args.skip)) if args.quick else set(args.skip)
    print(f"cpu {torch.backends.cpu.get_cpu_capability()}, {args.threads} threads, torch {torch.__version__}; "
          f"checking {', '.join(c for c in ('speed', 'build', 'times') if c not in skip)}", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.work or scratch).resolve()
        work.mkdir(parents=True, exist_ok=True)
        steps = [("speed", lambda: check_speed(args.threads, args.quick, work)),
                 ("build", lambda: check_build(work)),
                 ("times", lambda: check_times(work))]
        rows = run_checks([(check, run) for check, run in steps if check not in skip])
    finish(rows, args.out, started, format="star-cpu-acceptance-1", quick=args.quick,
           cpu_capability=torch.backends.cpu.get_cpu_capability(), threads=args.threads, torch=torch.__version__,
           skipped=sorted(skip))


if __name__ == "__main__":
    main()
