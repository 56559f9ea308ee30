"""The evaluate stage scores the tuned model's vector formats from its cached vectors, and the report shows them."""

import json

from domain_embed.context import RunContext
from domain_embed.pipeline import run_pipeline


def test_evaluate_scores_vector_formats_without_a_corpus_encode_and_reports_them(make_config, tiny_beir, tiny_model,
                                                                                 tmp_path):
    run = tmp_path / "run"
    args = ["+domain=beir", f"data.path={tiny_beir}", f"model.path={tiny_model}", f"cache_dir={tmp_path / 'cache'}",
            "training.batch_size=4", "training.epochs=1", "training.matryoshka_dims=[16]", "eval.hybrid.enabled=false",
            "mining.rounds=1"]  # one round: the evaluate stage's one encode is then the tuned model's
    report = run_pipeline(RunContext(make_config(run, *args), run))
    rows = json.loads((run / "evaluate" / "formats.json").read_text())
    assert [(r["dims"], r["precision"], r["rescored"]) for r in rows] == [
        (d, p, p == "binary") for d in (32, 16) for p in ("float32", "int8", "binary")]
    per_doc = {(r["dims"], r["precision"]): r["bytes_per_document"] for r in rows}
    assert per_doc[32, "float32"] == 4 * per_doc[32, "int8"] == 32 * per_doc[32, "binary"] == 2 * per_doc[16, "float32"]
    assert rows[0]["ndcg@10"] == report["metrics"]["tuned"]["ndcg@10"]  # float32 at full dims: the tuned ranking
    assert report["formats"] == rows and "formats" not in report.get("not_run", {})
    assert json.loads((run / "evaluate" / "manifest.json").read_text())["cost"]["corpus_encodes"] == 1  # tuned only
    assert str(run / "plots" / "formats.png") in report["plots"] and (run / "plots" / "formats.png").exists()
    md = (run / "report.md").read_text()
    assert "## Vector formats" in md and "| 16 | binary (rescored) |" in md and "![formats](plots/formats.png)" in md

    off = run_pipeline(RunContext(make_config(run, *args, "eval.formats.enabled=false"), run))
    assert off["run"]["ran_now"] == ["evaluate", "rerank"] and "formats" not in off
    assert "## Vector formats\n\nNot run: `eval.formats.enabled` is false" in (run / "report.md").read_text()
