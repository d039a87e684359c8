"""The overview notebook as a real notebook: a jupytext pairing executed by nbclient
against a scored warehouse, showing Account names and amounts in their currency (issue 17:
it showed minor units and ids, and opening it needed jupytext, which was not installed)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import duckdb
import pytest

from churn.job.scoring import score
from test_score import AS_OF, _settings, _world

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "churn_overview.py"


@pytest.mark.slow
def test_the_overview_notebook_executes_with_names_and_formatted_amounts(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jupytext
    import nbformat
    from nbclient import NotebookClient

    _world(con)
    con.execute("UPDATE core_customers SET name = 'Customer ' || upper(customer_id)")
    score(_settings(tmp_path), con, as_of=AS_OF)
    con.close()
    notebook = jupytext.read(NOTEBOOK)
    assert notebook.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    monkeypatch.setenv("CHURN_DB", str(db_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [
        str(NOTEBOOK.parents[1] / "src"), os.environ.get("PYTHONPATH")])))  # fmt: skip
    # The kernel over Unix sockets, not TCP: jupyter_client picks TCP ports by binding and
    # releasing them, which a suite running beside this one could take in between.
    from jupyter_client.manager import KernelManager

    sockets = Path(tempfile.mkdtemp(prefix="churn-kernel-"))  # short: a socket path's limit
    try:
        km = KernelManager(kernel_name="python3", transport="ipc", ip=str(sockets / "k"))
        # timeout: per cell, a guard against a hang, not a speed check
        NotebookClient(notebook, km=km, timeout=600, kernel_name="python3").execute()
    finally:
        shutil.rmtree(sockets, ignore_errors=True)
    nbformat.validate(notebook)
    text = "\n".join(
        str(output.get("text", "")) + str(output.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    assert not any(
        output.get("output_type") == "error"
        for cell in notebook.cells
        for output in cell.get("outputs", [])
    )
    assert "Customer C1" in text and "Failed" in text
    assert "$10" in text, "amounts in their currency, not minor units"
    assert "mrr_minor" not in text and "at_risk_minor" not in text
