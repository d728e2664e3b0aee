"""environment.yml and pyproject.toml list the same dependencies (conda cannot run here, so we compare), and
.ci/minimum-versions.txt pins each of their floors."""
import re
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (the dev extra installs tomli there)
    import tomli as tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# conda-forge names that differ from PyPI's
CONDA_TO_PYPI = {"pytorch": "torch"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name_and_spec(requirement: str) -> tuple[str, str]:
    m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(.*)", requirement)
    return m.group(1).lower().replace("_", "-"), m.group(2).replace(" ", "")


def test_environment_yml_matches_pyproject():
    project = _pyproject()
    pip_deps = dict(_name_and_spec(r) for r in project["dependencies"])
    conda_deps = {}
    text = (ROOT / "environment.yml").read_text()
    for line in text.split("dependencies:", 1)[1].splitlines():
        m = re.match(r"^  - ([^\s:#]+)\s*$", line)
        if m and m.group(1) not in ("pip",):
            name, spec = _name_and_spec(m.group(1))
            if name != "python":
                conda_deps[CONDA_TO_PYPI.get(name, name)] = spec
    assert conda_deps == pip_deps


def test_console_script_is_declared():
    project = _pyproject()
    assert project["scripts"]["selfsup-lab"] == "selfsup_lab.cli:main"


def test_the_minimum_versions_file_pins_each_declared_floor():
    """.ci/minimum-versions.txt is how the floors were checked (every test passing on them): it must pin every
    dependency pyproject.toml declares, at a version that release of the floor names (torch>=2.3 → 2.3.x)."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    project = _pyproject()
    declared = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    pins = {}
    for line in (ROOT / ".ci" / "minimum-versions.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower()] = Version(version.strip())
    for requirement in declared:
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue  # e.g. tomli, for Python < 3.11 only
        floor = next(Version(s.version) for s in requirement.specifier if s.operator == ">=")
        pinned = pins.get(requirement.name.lower())
        assert pinned is not None, f"{requirement.name} has no pin in .ci/minimum-versions.txt"
        assert pinned in requirement.specifier, f"{requirement.name}=={pinned} is below its floor {floor}"
        assert pinned.release[:len(floor.release)] == floor.release, (
            f"{requirement.name}=={pinned} is not the floor {floor}: the check ran on a newer release than declared")
