"""Every notebook under notebooks/ runs top to bottom, headless, and is committed without outputs.

    pytest tests/test_notebooks.py                    # everything (the execution tests are marked `slow`)
    pytest tests/test_notebooks.py -m "not slow"      # only the fast "no committed outputs" checks
    pytest tests/test_notebooks.py -k 03_             # one notebook

Notebooks are found by glob, so a notebook added later is covered without touching this file. Numbered
notebooks run exactly as committed (their settings cell has `FULL = False`, the quick CPU setting); the
course exercises in notebooks/assignments/ are committed as the student version and run here with the model
answer filled in (`selfsup_lab.assignments.fill_solution`). Each runs in its own kernel (the `python3` kernel
of the interpreter running pytest) with a fresh temporary working directory and data directory.

Time limit: every notebook must finish within SELFSUP_NOTEBOOK_TIMEOUT seconds (default 600, a deadline for
the whole notebook, not per cell) — a guard against hangs, not a speed goal. Speed is reported, not asserted:
each notebook prints its wall-clock and kernel CPU seconds (`pytest -s`), and the README's notebook table
records measured quick-mode minutes.
"""
from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOK_TIMEOUT = float(os.environ.get("SELFSUP_NOTEBOOK_TIMEOUT", "600"))


def discover() -> list[Path]:
    return sorted(p for p in NOTEBOOK_DIR.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


NOTEBOOKS = discover()
IDS = [p.relative_to(NOTEBOOK_DIR).as_posix() for p in NOTEBOOKS]
DURATIONS: dict[str, float] = {}  # wall-clock seconds per notebook, filled by test_notebook_runs
KERNEL_CPU: dict[str, float] = {}  # CPU seconds of each notebook's kernel


def _prepare(path: Path):
    nb = nbformat.read(str(path), as_version=4)
    if path.parent.name == "assignments":
        from selfsup_lab.assignments import fill_solution

        nb = fill_solution(nb)
    return nb


def test_notebooks_are_found():
    assert NOTEBOOKS, f"no notebooks under {NOTEBOOK_DIR}"
    assert any(p.parent.name == "assignments" for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_committed_without_outputs(path):
    """Outputs (images, widget state) bloat the repository and hide diffs: clear them before committing
    (Jupyter: Edit → Clear Outputs of All Cells; or `jupyter nbconvert --clear-output --inplace NB.ipynb`)."""
    nb = nbformat.read(str(path), as_version=4)
    dirty = [f"cell {i + 1}" for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: outputs or execution counts committed in {', '.join(dirty)}"
    assert "widgets" not in nb.metadata, f"{path.name}: saved widget state in the notebook metadata"
    attachments = [f"cell {i + 1}" for i, c in enumerate(nb.cells) if c.get("attachments")]
    assert not attachments, f"{path.name}: pasted image attachments in {', '.join(attachments)}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs(path, tmp_path, monkeypatch):
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    nb = _prepare(path)
    work = tmp_path / "work"
    work.mkdir()
    # the kernel inherits this environment: keep downloads/caches and matplotlib's cache out of $HOME
    monkeypatch.setenv("SELFSUP_LAB_DATA", os.environ.get("SELFSUP_LAB_DATA", str(tmp_path / "data")))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))

    start = time.monotonic()
    cpu_start = resource.getrusage(resource.RUSAGE_CHILDREN)
    deadline = start + NOTEBOOK_TIMEOUT
    client = NotebookClient(
        nb,
        kernel_name="python3",  # jupyter_client runs it with this interpreter (sys.executable)
        timeout=int(NOTEBOOK_TIMEOUT),
        timeout_func=lambda cell: max(1, int(deadline - time.monotonic())),  # one deadline per notebook
        startup_timeout=120,
        resources={"metadata": {"path": str(work)}},
        allow_errors=False,
        record_timing=False,
    )
    try:
        client.execute()
    except CellTimeoutError as exc:  # its message previews the cell that was running
        pytest.fail(f"{path.name} did not finish within {NOTEBOOK_TIMEOUT:.0f} s; keep the quick setting "
                    f"(FULL = False) under a minute or two on a CPU.\n{exc}", pytrace=False)
    except DeadKernelError as exc:
        pytest.fail(f"{path.name}: the kernel died ({exc}) — out of memory?", pytrace=False)
    except CellExecutionError as exc:
        pytest.fail(f"{path.name} raised an error:\n{exc}", pytrace=False)
    finally:
        name = path.relative_to(NOTEBOOK_DIR).as_posix()
        DURATIONS[name] = time.monotonic() - start
        # the kernel is our child: its CPU time is counted once it has been shut down and reaped. On a busy
        # machine it says more about the notebook's real cost than the wall-clock time does.
        cpu_end = resource.getrusage(resource.RUSAGE_CHILDREN)
        KERNEL_CPU[name] = (cpu_end.ru_utime - cpu_start.ru_utime) + (cpu_end.ru_stime - cpu_start.ru_stime)
        print(f"{name}: {DURATIONS[name]:.1f} s wall, {KERNEL_CPU[name]:.1f} s kernel CPU")
