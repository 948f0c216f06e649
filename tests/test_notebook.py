"""hpo in Jupyter: the example notebook run top to bottom with ``jupyter nbconvert --execute``,
and a kernel interrupted in the middle of ``hpo.tune``, which must live on with no worker left."""

from __future__ import annotations

import queue
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import BUILDER_MODULE, ROOT, missing, wait_for, write_npz
from test_api import _workers_of

NOTEBOOK = ROOT / "examples" / "notebook" / "tune.ipynb"


def _outputs(path: Path) -> list[Any]:
    import nbformat

    return [output for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"
            for output in cell.outputs]


@pytest.mark.slow
def test_the_example_notebook_runs_top_to_bottom(tmp_path: Path) -> None:
    shutil.copy(NOTEBOOK, tmp_path / "tune.ipynb")
    run = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                          "tune.ipynb", "--output", "executed.ipynb"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    if run.returncode != 0 and "No module named" in run.stderr:
        missing(f"jupyter nbconvert is not installed: {run.stderr.strip().splitlines()[-1]}")
    assert run.returncode == 0, run.stderr[-3000:]
    outputs = _outputs(tmp_path / "executed.ipynb")
    assert not [o for o in outputs if o.output_type == "error"]
    shown = [o["data"] for o in outputs if "data" in o]
    assert any("6 of 6 trials complete" in d.get("text/plain", "") for d in shown)
    assert any("text/html" in d and "val_accuracy" in d["text/html"] for d in shown)  # the table
    assert any("image/png" in d for d in shown)  # the plot
    assert (tmp_path / "notebook.db").is_file()


def _run_cell(client: Any, code: str, timeout: float) -> dict[str, Any]:
    """Execute ``code`` in the kernel; the reply's content and what it printed."""
    msg_id = client.execute(code)
    printed: list[str] = []
    error = None
    deadline = time.monotonic() + timeout
    while True:
        try:
            message = client.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no reply to {code[:60]!r} in {timeout:.0f} s") from None
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = message["msg_type"], message["content"]
        if kind == "stream":
            printed.append(content["text"])
        elif kind == "error":
            error = content["ename"]
        elif kind == "status" and content["execution_state"] == "idle":
            return {"printed": "".join(printed), "error": error}


@pytest.mark.slow
def test_interrupting_the_kernel_during_tune_stops_the_workers_and_the_kernel_lives_on(tmp_path: Path) -> None:
    try:
        from jupyter_client.manager import start_new_kernel
    except ImportError as exc:
        missing(f"jupyter_client is not installed: {exc}")
    write_npz(tmp_path / "shapes.npz")
    manager, client = start_new_kernel(kernel_name="python3", cwd=str(tmp_path))
    try:
        setup = _run_cell(client, f'''
import numpy as np, hpo
exec({BUILDER_MODULE!r})
shapes = np.load("shapes.npz")
''', timeout=120)
        assert setup["error"] is None, setup
        msg_id = client.execute('''
try:
    hpo.tune(build, (shapes["x_train"], shapes["y_train"]), test_data=(shapes["x_test"], shapes["y_test"]),
             space={"learning_rate": 0.01, "batch_size": 16, "epochs": 40, "family": ["mlp", "cnn"],
                    "mlp": {"units": [16]}, "cnn": {"filters": [4]}},
             trials=4, workers=2, storage="sqlite:///kernel.db", name="interrupted")
except KeyboardInterrupt:
    print("caught KeyboardInterrupt")
''')
        logs = tmp_path / "hpo-logs" / "interrupted"
        wait_for(lambda: logs.is_dir() and any("(seed" in p.read_text(errors="replace")
                                               for p in logs.glob("worker-*.log")), 180, "a trial to start")
        assert len(_workers_of("interrupted")) == 2
        manager.interrupt_kernel()  # Jupyter's "interrupt kernel"
        printed: list[str] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            message = client.get_iopub_msg(timeout=90)
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            if message["msg_type"] == "stream":
                printed.append(message["content"]["text"])
            if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
                break
        assert "caught KeyboardInterrupt" in "".join(printed)
        assert _workers_of("interrupted") == []
        assert manager.is_alive()
        after = _run_cell(client, "print(1 + 1)", timeout=30)  # the kernel lives on
        assert after == {"printed": "2\n", "error": None}
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
