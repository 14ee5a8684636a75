# Names, paths and checks shared by the rule files. Everything here runs when the workflow is parsed,
# so a bad model or benchmark name, or a missing raw folder, stops the run before any job starts. It
# imports only the standard library, PyYAML and the package's light modules (star.names, star.paper,
# star.io, star.workflow_checks): building the job graph never loads torch, pandas or matplotlib.
import re

from snakemake.exceptions import WorkflowError

import star.io
from star.names import BENCHMARKS, FIGURES, MODELS
from star.names import CLAIMS_TEMPLATE, REPORT_TEMPLATE, TABLE_TEMPLATE
from star.paper import PUBLISHED
from star.workflow_checks import ConfigError, check_config

STORE = "results/store"
MANIFEST = f"{STORE}/manifest.json"  # the store's last file: written when the store is whole
REPORT = "reports/index.html"
# the installed package's files that star table / report read, declared so that changing them reruns those jobs
PUBLISHED_FILE = str(PUBLISHED)
TABLE_TEMPLATE_FILE = str(TABLE_TEMPLATE)
CLAIMS_TEMPLATE_FILE = str(CLAIMS_TEMPLATE)
REPORT_TEMPLATE_FILE = config["report_template"] or str(REPORT_TEMPLATE)


DATA = config["data"]
try:  # names, data files and folders: star.workflow_checks
    check_config(config)
except ConfigError as error:
    raise WorkflowError(str(error)) from None


def run_metrics(benchmark, model, seed):
    return f"results/runs/{benchmark}/{model}/seed{seed}/metrics.json"


def evaluation_of(metrics):
    """star evaluate's JSON for a run: its checkpoint of the epoch the tables report (best or last) on the test side."""
    saved = "best" if config["accuracy"] == "best" else "last"
    return metrics.replace("metrics.json", f"evaluation/{saved}-test.json")


def runs_of(models, benchmarks=None):
    return [run_metrics(b, m, s) for b in benchmarks or config["benchmarks"] for m in models for s in config["seeds"]]


def profiles_of(models):
    return [f"results/profile/{m}.json" for m in dict.fromkeys(models)]


ABLATION = [config["ablation"]["sparse"], config["ablation"]["full"]]
CURVE_RUNS = runs_of(config["figures"]["curves_models"], [config["figures"]["curves_benchmark"]])
DESCRIBED_RUNS = runs_of(config["described"]["models"], config["described"]["benchmarks"])
PER_CLASS_RUNS = runs_of(config["models"], [config["figures"]["per_class_benchmark"]])
EVALUATIONS = [evaluation_of(run) for run in PER_CLASS_RUNS]
RUNS = sorted(set(runs_of(config["models"]) + runs_of(ABLATION) + DESCRIBED_RUNS + CURVE_RUNS + PER_CLASS_RUNS))
PROFILES = profiles_of(config["models"] + ABLATION + config["described"]["models"])
TABLE_INPUTS = {
    1: runs_of(config["models"]),
    2: profiles_of(config["models"]),
    3: profiles_of(config["models"]),
    4: runs_of(ABLATION),
    5: profiles_of(ABLATION),
}
# Snakemake's measurement of each train, profile and store job (wall and CPU time, peak memory): the report
# reads whatever the folder holds, so results made before the jobs had benchmark files need no rerun
JOB_BENCHMARKS = "results/benchmarks"
STORE_BENCHMARK = f"{JOB_BENCHMARKS}/store.tsv"
FIGURE_INPUTS = {
    "breakdown-macs": profiles_of(config["models"]),
    "breakdown-params": profiles_of(config["models"]),
    "breakdown-latency": profiles_of(config["models"]),
    "training-curves": CURVE_RUNS + [run.replace("metrics.json", "history.csv") for run in CURVE_RUNS],
    "storage": [MANIFEST],
    "latency-sweep": profiles_of(config["models"] + ABLATION),
    "accuracy-cost": ["results/tables/table1.csv", "results/tables/table2.csv"],
    "per-class": EVALUATIONS + [evaluation.replace(".json", "-confusion.csv") for evaluation in EVALUATIONS],
}
CLAIMS = "results/claims.csv"


def all_cores():
    """Every core Snakemake was given; 1 when it was given no --cores (--report, or a cluster profile,
    which sets each rule's threads itself)."""
    try:
        return workflow.cores
    except WorkflowError:
        return 1


with open(SCHEMA) as schema:  # the recipe fields a model's overrides may set: the schema's, less the settings above
    RECIPE_OVERRIDES = [key for key in yaml.safe_load(schema)["properties"]["training"]["properties"]["overrides"]
                        ["additionalProperties"]["properties"] if key not in config["training"]]


def flag(key, value):
    """`star train`'s flag for one setting: --key value, --key v1 v2 for a list, --key / --no-key for a boolean."""
    name = key.replace("_", "-")
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no-{name}"
    return f"--{name} " + (" ".join(map(str, value)) if isinstance(value, list) else str(value))


def training_options(model):
    """`star train` flags for `model`: the training settings with its overrides."""
    overrides = config["training"]["overrides"].get(model, {})
    settings = {**config["training"], **overrides}
    flags = [f"--recipe {settings['recipe']}", f"--accumulate {settings['accumulate']}",
             f"--padded-frames {settings['padded_frames']}", f"--device {settings['device']}",
             f"--workers {settings['workers']}"]
    flags += [flag(key, settings[key]) for key in ("epochs", "batch_size", "max_clips") if settings[key] is not None]
    flags += [flag(key, overrides[key]) for key in RECIPE_OVERRIDES if key in overrides]
    if settings["amp"]:
        flags.append("--amp")
    return " ".join(flags)


def profile_options():
    p = config["profiling"]
    flags = [f"--benchmark {p['benchmark']}", f"--clips {p['clips']}", f"--seed {p['seed']}",
             f"--repeats {p['repeats']}", f"--warmup {p['warmup']}", f"--profiler-runs {p['profiler_runs']}",
             f"--device {p['device']}", f"--padded-frames {p['padded_frames']}"]
    if p["sweep_frames"]:
        flags.append("--sweep-frames " + " ".join(map(str, p["sweep_frames"])))
        flags.append("--sweep-clips " + " ".join(map(str, p["sweep_clips"])))
    return " ".join(flags)


wildcard_constraints:
    dataset="ntu60|ntu120",
    benchmark="|".join(sorted({name.split("/")[1] for name in BENCHMARKS})),
    model="|".join(map(re.escape, MODELS)),
    seed=r"\d+",
    number="[1-5]",
    figure="|".join(FIGURES),
    checkpoint_name="best|last",
