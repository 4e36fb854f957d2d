"""pyproject.toml and environment.yml must list the same dependencies."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONDA_TO_PYPI = {"pytorch": "torch"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def pyproject_requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        names |= {_name(r) for r in extra}
    return names


def environment_requirements() -> set[str]:
    """Package names under ``dependencies:`` (conda and its pip section), less python/pip/-e ."""
    text = (ROOT / "environment.yml").read_text()
    names = set()
    for line in text.split("dependencies:", 1)[1].splitlines():
        item = re.match(r"^\s+- (.+)$", line)
        if not item or item.group(1).startswith("-e") or item.group(1).startswith("pip:"):
            continue
        name = _name(item.group(1))
        if name not in ("python", "pip"):
            names.add(CONDA_TO_PYPI.get(name, name))
    return names


def test_dependency_lists_agree():
    assert pyproject_requirements() == environment_requirements()


def test_environment_installs_the_project():
    assert "- -e ." in (ROOT / "environment.yml").read_text()
