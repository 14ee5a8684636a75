"""Every default the workflow's configuration spells out is the package's own: one source, checked."""

from dataclasses import fields
from pathlib import Path

import yaml

from star import defaults, names
from star.cli import build_parser
from star.data.synthetic import TINY
from star.training.config import RunConfig

REPO = Path(__file__).resolve().parent.parent
CONFIG = yaml.safe_load((REPO / "workflow/config/config.yaml").read_text())
SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())["properties"]

PROFILING = {"benchmark": defaults.PROFILE_BENCHMARK, "clips": defaults.PROFILE_CLIPS, "seed": defaults.PROFILE_SEED,
             "repeats": defaults.PROFILE_REPEATS, "warmup": defaults.PROFILE_WARMUP,
             "profiler_runs": defaults.PROFILER_RUNS, "padded_frames": defaults.PADDED_FRAMES}


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


def test_the_synthetic_clip_lengths_of_the_cli_the_generator_and_the_config_are_the_packages_defaults():
    lengths = list(defaults.SYNTH_FRAMES)
    assert CONFIG["data"]["synthetic_frames"] == SCHEMA["data"]["properties"]["synthetic_frames"]["default"] == lengths
    assert _defaults_of("synth")["frames"] == lengths == [TINY.min_frames, TINY.max_frames]
    assert SCHEMA["data"]["properties"]["synthetic_frames"]["items"]["minimum"] == defaults.SYNTH_MIN_FRAMES


def _defaults_of(command: str) -> dict:
    """`star COMMAND`'s flag defaults, by destination."""
    subcommands = next(a for a in build_parser()._actions if a.dest == "command")
    return {action.dest: action.default for action in subcommands.choices[command]._actions}


def test_the_training_settings_of_the_cli_the_run_and_the_config_are_the_packages_defaults():
    run = {f.name: f.default for f in fields(RunConfig)}
    train = _defaults_of("train")
    schema = SCHEMA["training"]["properties"]
    settings = {"recipe": defaults.RECIPE, "accumulate": defaults.ACCUMULATE,
                "padded_frames": defaults.PADDED_FRAMES, "device": defaults.DEVICE, "amp": False, "max_clips": None}
    for key, value in settings.items():
        assert CONFIG["training"][key] == schema[key]["default"] == train[key] == value, key
        assert run["recipe_name" if key == "recipe" else key] == value, key
    assert train["seed"] == run["seed"] == defaults.SEED
    profile = _defaults_of("profile")
    assert profile["device"] == CONFIG["profiling"]["device"] == defaults.DEVICE
    assert all(profile[key] == value for key, value in PROFILING.items()), profile
