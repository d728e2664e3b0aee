"""environment.yml and pyproject.toml list the same dependencies (conda cannot run here, so we compare)."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# conda-forge names that differ from PyPI's
CONDA_TO_PYPI = {"pytorch": "torch"}


def _name_and_spec(requirement: str) -> tuple[str, str]:
    m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(.*)", requirement)
    return m.group(1).lower().replace("_", "-"), m.group(2).replace(" ", "")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
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
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["selfsup-lab"] == "selfsup_lab.cli:main"
