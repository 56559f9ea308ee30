"""notebooks/01_domain_gap.ipynb runs top to bottom on a real (tiny) run and shows what it promises."""

from pathlib import Path

import pytest

from domain_embed.context import RunContext
from domain_embed.pipeline import run_pipeline

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "01_domain_gap.ipynb"


def _outputs(nb) -> tuple[str, list[dict]]:
    """All text the notebook printed or displayed (plain, markdown and HTML), and its output records."""
    records = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    text = "".join(o.get("text", "") + "".join(str(o.get("data", {}).get(kind, ""))
                                               for kind in ("text/plain", "text/markdown", "text/html"))
                   for o in records)
    return text, records


def test_domain_gap_notebook_shows_tables_plots_and_per_query_wins(make_config, tiny_beir, tiny_model, tmp_path,
                                                                   monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    run = tmp_path / "run"
    cfg = make_config(run, "+domain=beir", f"data.path={tiny_beir}", f"model.path={tiny_model}",
                      f"cache_dir={tmp_path / 'cache'}", "training.batch_size=4", "training.epochs=2",
                      "training.eval_steps=2", "training.save_steps=2", "training.learning_rate=1e-3")
    report = run_pipeline(RunContext(cfg, run))
    monkeypatch.setenv("REPORT_JSON", str(run / "report.json"))  # the kernel inherits the environment

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    text, records = _outputs(nb)
    assert not [o for o in records if o["output_type"] == "error"]
    assert str(run) in text and "tuned" in text and "bm25" in text  # the before/after table
    assert "it decides nothing alone" in text and "tuned - baseline" in text  # the gap closed, reported
    assert "Recommendation:" in text and "Best without fine-tuning:" in text  # the two questions, one answer
    images = [o for o in records if "image/png" in o.get("data", {})]
    assert len(images) == len(report["plots"]) >= 3
    assert "per query, tuned vs baseline on 10 queries" in text
    wins_losses = text[text.index("Top 10 wins"):]
    assert "what does topic2" in wins_losses  # query texts from the data, not only ids
