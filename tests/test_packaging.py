"""The install paths stay honest: conda and pip name the same packages, CI runs the README's test command."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch", "pytorch-scatter": "torch-scatter", "pytorch-sparse": "torch-sparse"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_names_the_packages_of_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_names = {_name(r) for r in project["dependencies"]}
    pip_names |= {_name(r) for extra in project["optional-dependencies"].values() for r in extra}
    dependencies = (ROOT / "environment.yml").read_text().split("\ndependencies:\n", 1)[1]
    conda = re.findall(r"^  - ([A-Za-z0-9_.-]+)", dependencies, flags=re.MULTILINE)
    conda_names = {CONDA_NAMES.get(n.lower(), n.lower()) for n in conda} - {"python", "pip"}
    assert conda_names == pip_names


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```(?:bash|sh)?\n(.*?)```", quickstart, flags=re.DOTALL)
    assert len(commands) == 2, "the Quickstart has two commands: the main job and the tests"
    test_command = commands[1].strip()
    assert test_command in (ROOT / ".ci" / "run").read_text()
