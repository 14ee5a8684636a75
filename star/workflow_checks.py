"""What the workflow checks in its configuration when Snakemake reads it, before any job is planned.

A bad model name, a missing data file or folder, or data files that do not
serve the benchmarks asked for stop the run at once with a message naming the
configuration key (workflow/rules/common.smk calls `check_config` after the
schema validation). The module imports only the standard library and the
package's light modules, so building the job graph stays free of torch, and
the tests check each refusal in-process instead of starting Snakemake for it.
"""

from __future__ import annotations

import os
from pathlib import Path

from star.errors import InputError
from star.names import MODELS, NPZ_BENCHMARKS, PYSKL_CRITERIA, PYSKL_FILES

# what `star synth --format` writes for each preprocessed form: the names its toolkit gives its files
SYNTH_FILES = {"pyskl": list(PYSKL_FILES.values()), "npz": [f"{stem}.npz" for stem in NPZ_BENCHMARKS]}
PYSKL_DATASETS = {file: dataset for dataset, file in PYSKL_FILES.items()}


class ConfigError(InputError):
    """A configuration value the workflow cannot run with; the message names its key."""


def check_config(config: dict) -> None:
    """Every check below, on a configuration the schema has validated (its defaults filled in)."""
    check_names(config)
    check_data_source(config)


def check_names(config: dict) -> None:
    """Every model the configuration names is registered, and the ablation pairs a sparse model with a full one."""
    named = [("models", m) for m in config["models"]]
    named += [("figures.curves_models", m) for m in config["figures"]["curves_models"]]
    named += [("described.models", m) for m in config["described"]["models"]]
    named += [(f"ablation.{key}", config["ablation"][key]) for key in ("sparse", "full")]
    named += [(f"training.overrides.{m}", m) for m in config["training"]["overrides"]]
    for key, model in named:
        if model not in MODELS:
            raise ConfigError(f"config key {key}: unknown model {model!r}; registered models: {', '.join(MODELS)}")
    if "-full" not in config["ablation"]["full"] or "-full" in config["ablation"]["sparse"]:
        raise ConfigError(f"config key ablation: sparse must be a sparse model and full a -full model, "
                          f"not {config['ablation']['sparse']!r} and {config['ablation']['full']!r}")


def check_data_source(config: dict) -> None:
    """The data the configuration names exists (or is generated), in a form the benchmarks can come from."""
    data = config["data"]
    shortest, longest = data["synthetic_frames"]
    if data["synthetic"] and shortest > longest:
        raise ConfigError(f"config key data.synthetic_frames: [{shortest}, {longest}] is [shortest, longest], "
                          "the shortest first")
    if data["source"] != "raw":
        check_source_files(config)
    elif not data["synthetic"]:
        check_raw_dirs(config)


def check_source_files(config: dict) -> None:
    """Preprocessed files (pyskl pickles, CTR-GCN npz arrays) exist and split every benchmark asked for."""
    files, form = config["data"]["files"], config["data"]["source"]
    if config["data"]["synthetic"]:
        folders = {os.path.dirname(f) for f in files}
        if len(folders) != 1 or sorted(map(os.path.basename, files)) != sorted(SYNTH_FILES[form]):
            raise ConfigError(f"config key data.files: with data.synthetic, the {form} files are "
                              f"{', '.join(SYNTH_FILES[form])} in one folder (what `star synth --format {form}` "
                              f"writes), not {', '.join(files)}")
        return
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise ConfigError(f"{form} file(s) not found: {', '.join(missing)} (config key data.files). "
                          "README \"Data sources\" says where each form comes from.")
    if form == "npz":
        unnamed = [f for f in files if Path(f).stem not in NPZ_BENCHMARKS]
        if unnamed:
            raise ConfigError(f"config key data.files: {', '.join(unnamed)} not named as CTR-GCN names its "
                              f"arrays ({', '.join(f'{s}.npz' for s in NPZ_BENCHMARKS)}), so which benchmark "
                              "each splits is unknown; rename them")
        served = {NPZ_BENCHMARKS[Path(f).stem] for f in files}
    elif all(os.path.basename(f) in PYSKL_DATASETS for f in files):  # pyskl's names say the data set
        served = {f"{PYSKL_DATASETS[os.path.basename(f)]}/{c}" for f in files
                  for c in PYSKL_CRITERIA[PYSKL_DATASETS[os.path.basename(f)]]}
    else:
        return  # renamed pickles: their split lists, read by the import, say what they serve
    wanted = set(config["benchmarks"]) | set(config["described"]["benchmarks"]) | \
        {config["profiling"]["benchmark"], config["figures"]["curves_benchmark"]}
    if wanted - served:
        raise ConfigError(f"config key data.files: the {form} files split {', '.join(sorted(served))}, but the "
                          f"configuration asks for {', '.join(sorted(wanted - served))} too")


def check_raw_dirs(config: dict) -> None:
    """The raw NTU RGB+D folders exist; if not, where the licensed data comes from and how to run without it."""
    missing = [d for d in config["data"]["raw_dirs"] if not os.path.isdir(d)]
    if missing:
        raise ConfigError(
            f"raw NTU RGB+D folder(s) not found: {', '.join(missing)} (config key data.raw_dirs).\n"
            "NTU RGB+D is licensed: request the skeleton archives from the ROSE Lab "
            "(https://rose1.ntu.edu.sg/dataset/actionRecognition/), unpack nturgb+d_skeletons and "
            "nturgbd_skeletons_s018_to_s032, and set data.raw_dirs to those folders, e.g.\n"
            "  snakemake --cores 8 all --config 'data={raw_dirs: [/data/nturgb+d_skeletons, "
            "/data/nturgbd_skeletons_s018_to_s032]}'\n"
            "or edit workflow/config/config.yaml. To try the pipeline without the data set, run the smoke "
            "configuration:\n  snakemake --cores 2 all --configfile workflow/config/smoke.yaml")
