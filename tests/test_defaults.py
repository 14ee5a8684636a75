"""Every default the workflow's configuration spells out is the package's own: one source, checked."""

from pathlib import Path

import yaml

from star import defaults, names

REPO = Path(__file__).resolve().parent.parent
CONFIG = yaml.safe_load((REPO / "workflow/config/config.yaml").read_text())
SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())["properties"]

PROFILING = {"benchmark": defaults.PROFILE_BENCHMARK, "clips": defaults.PROFILE_CLIPS, "seed": defaults.PROFILE_SEED,
             "repeats": defaults.PROFILE_REPEATS, "warmup": defaults.PROFILE_WARMUP,
             "profiler_runs": defaults.PROFILER_RUNS}


def test_the_profiling_settings_of_the_config_and_its_schema_are_the_packages_defaults():
    schema = SCHEMA["profiling"]["properties"]
    for key, value in PROFILING.items():
        assert CONFIG["profiling"][key] == schema[key]["default"] == value, key


def test_every_benchmark_list_of_the_schema_is_the_packages():
    benchmark_lists = [SCHEMA["benchmarks"]["items"]["enum"], SCHEMA["benchmarks"]["default"],
                       SCHEMA["described"]["properties"]["benchmarks"]["items"]["enum"],
                       SCHEMA["described"]["properties"]["benchmarks"]["default"],
                       SCHEMA["profiling"]["properties"]["benchmark"]["enum"],
                       SCHEMA["figures"]["properties"]["curves_benchmark"]["enum"], CONFIG["benchmarks"]]
    assert all(listed == list(names.BENCHMARKS) for listed in benchmark_lists)
