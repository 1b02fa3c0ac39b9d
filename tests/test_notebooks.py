"""Execute every notebook in notebooks/ on the tiny random model, as CI does, and fail on any cell error.

Each notebook runs in a fresh IPython kernel with ``HF_FINGERPRINT_NOTEBOOK_MODEL=tiny``, a private model cache and
temporary directory, and must finish within ``NOTEBOOK_TIMEOUT_S``. The committed files must hold no outputs, and
no executed output may show a trigger of any fingerprint set a notebook saved.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import ipykernel  # noqa: F401 - the kernel the notebooks run in (dev extra, via nbmake)
import nbclient
import nbformat

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
NOTEBOOK_TIMEOUT_S = 300
COLAB_LINK = "https://colab.research.google.com/github/hf-fingerprint/hf-fingerprint/blob/main/notebooks/{}"


def _ids(paths):
    return [p.stem for p in paths]


def test_there_are_notebooks():
    assert {"01_quickstart.ipynb", "02_fsft.ipynb", "03_hub_ownership.ipynb", "04_robustness.ipynb"} <= {
        p.name for p in NOTEBOOKS
    }


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_committed_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "clear the outputs before committing"
    assert COLAB_LINK.format(path.name) in nb.cells[0].source
    first = code[0].source
    assert '"google.colab" in sys.modules' in first, "the first code cell installs only under Colab"
    setup = code[1].source
    assert 'MODEL = os.environ.get("HF_FINGERPRINT_NOTEBOOK_MODEL", "smollm2-135m-instruct")' in setup
    assert 'torch.cuda.is_available()' in setup


@pytest.mark.timeout(NOTEBOOK_TIMEOUT_S + 120)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_on_the_tiny_model(path, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_FINGERPRINT_NOTEBOOK_MODEL", "tiny")
    monkeypatch.setenv("HF_FINGERPRINT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-hub-cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebooks' tempfile.mkdtemp() work folders land here
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))  # tiny models: 1 thread is fastest
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=NOTEBOOK_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}},
    )
    started = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as error:
        pytest.fail(f"{path.name}: a cell failed\n{error}")
    except nbclient.exceptions.CellTimeoutError as error:
        pytest.fail(f"{path.name}: a cell ran past {NOTEBOOK_TIMEOUT_S} s\n{error}")
    seconds = time.perf_counter() - started
    print(f"{path.name}: {seconds:.0f} s")
    assert seconds < NOTEBOOK_TIMEOUT_S, f"{path.name} took {seconds:.0f} s (limit {NOTEBOOK_TIMEOUT_S} s)"

    shown = "\n".join(_output_text(cell) for cell in nb.cells if cell.cell_type == "code")
    saved = sorted(tmp_path.rglob("fingerprints.json"))
    assert saved, "each notebook saves its fingerprint set (fingerprints.json) in its work folder"
    for fingerprint_file in saved:
        for pair in json.loads(fingerprint_file.read_text())["fingerprints"]:
            assert pair["trigger"] not in shown, f"{path.name} prints a trigger"


def _output_text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if "text" in output:
            parts.append(output["text"])
        for value in output.get("data", {}).values():
            parts.append(value if isinstance(value, str) else json.dumps(value))
        parts += output.get("traceback", [])
    return "\n".join(parts)
