"""train.ipynb executes top to bottom (nbclient) on a tiny setting and shows the table and the plots."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from ports import free_port_block

ROOT = Path(__file__).resolve().parents[1]


def test_notebook_is_clean_and_parametrized():
    nb = nbformat.read(ROOT / "train.ipynb", as_version=4)
    nbformat.validate(nb)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit it without outputs"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "GOSSIP_NOTEBOOK_SMOKE" in params[0].source


@pytest.mark.slow
def test_notebook_runs_a_four_peer_swarm(tmp_path, monkeypatch, data_root):
    base = free_port_block(8)  # one block: two separate blocks may overlap
    telemetry = base + 4
    monkeypatch.setenv("GOSSIP_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("GOSSIP_NOTEBOOK_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("GOSSIP_NOTEBOOK_OVERRIDES", f"topology.base_port={base} dashboard.telemetry_port={telemetry}")
    nb = nbformat.read(ROOT / "train.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "swarm of 4 x mnist_tiny" in text
    assert "[3/3] swarm-seed0" in text and "peer 3:" in text  # live progress of the 4 peers
    markdown = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert len(markdown) == 1 and "| swarm | mnist_tiny |" in markdown[0] and "| ensemble % |" in markdown[0]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 4
    tables = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert len(tables) == 2 and "bytes_sent" in tables[1]
    assert (tmp_path / "out" / "report.md").is_file()
