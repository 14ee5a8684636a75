"""The install paths stay honest: conda and pip name the same packages, CI runs the README's test command."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}
# conda-forge has no build of these for torch 2.13; scripts/setup.sh compiles them against the conda pytorch
SETUP_SH_ONLY = {"torch-scatter", "torch-sparse"}


def _split(requirement: str) -> tuple[str, str]:
    """A requirement's (lower-case name, version specifier with conda's `=x` as pip's `==x`)."""
    name, version = re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", requirement.strip().split("::")[-1]).groups()
    version = re.sub(r"^=(?!=)", "==", version.replace(" ", ""))
    return name.lower(), version


def test_environment_yml_names_the_packages_and_versions_of_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    requirements = [*project["dependencies"], *(r for extra in extras for r in extra)]
    pip = dict(_split(r) for r in requirements)
    dependencies = (ROOT / "environment.yml").read_text().split("\ndependencies:\n", 1)[1]
    conda = dict(_split(line) for line in re.findall(r"^  - ([^\n#]+)", dependencies, flags=re.MULTILINE))
    conda = {CONDA_NAMES.get(name, name): version for name, version in conda.items()
             if name not in ("python", "pip", "cxx-compiler")}
    assert conda.keys() == pip.keys() - SETUP_SH_ONLY
    # conda's `pytorch=2.13` is the minor release pip pins as >=2.13,<2.14
    assert conda.pop("torch") == "==2.13" and pip.pop("torch") == ">=2.13,<2.14"
    assert {name: pip[name] for name in conda} == conda
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert re.search(r"pip install --no-build-isolation -e \"\.\[[a-z,]*pyg", setup)
    assert all(name in str(project["optional-dependencies"]["pyg"]) for name in SETUP_SH_ONLY)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```(?:bash|sh)?\n(.*?)```", quickstart, flags=re.DOTALL)
    assert len(commands) == 2, "the Quickstart has two commands: the main job and the tests"
    test_command = commands[1].strip()
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_every_package_folder_is_installed_and_the_baselines_under_their_own_name():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    inits = (ROOT / "star").rglob("__init__.py")
    folders = {path.parent.relative_to(ROOT).as_posix().replace("/", ".") for path in inits}
    assert set(setuptools["packages"]) == folders | {"star_baselines"}
    assert setuptools["package-dir"] == {"star_baselines": "baselines"} and (ROOT / "baselines/__init__.py").is_file()
