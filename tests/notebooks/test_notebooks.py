"""Every notebook in notebooks/ runs top to bottom on the embedded default, and is committed clean.

Each notebook reads its store from ``APPSIM_STORE`` (its first code cell), so here it runs against
a fresh temporary store with the small simulated marketplace the notebook makes itself. The kernel
is this interpreter's (``python3`` resolves to ``sys.executable`` when ipykernel is installed in the
same environment), so the notebooks see exactly the code under test.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
CELL_TIMEOUT_SECONDS = 180
# What the notebooks read from the environment: set by the test, never inherited from the shell.
NOTEBOOK_ENV = ("APPSIM_STORE", "APPSIM_REGISTRY", "APPSIM_EXPERIMENTS")


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"quickstart.ipynb", "experiments.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_has_no_outputs(path: Path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    dirty = [i for i, cell in enumerate(notebook.cells)
             if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs or execution counts; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name in NOTEBOOK_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("APPSIM_STORE", str(tmp_path / "store"))
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT_SECONDS, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on the first failing cell
    assert all(cell.execution_count is not None for cell in notebook.cells if cell.cell_type == "code")
    assert (tmp_path / "store" / "registry.db").is_file()
