"""scripts/recipe_table.sh: the recipes on dev, then the one ranked first (and only it) once on test."""

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_table_on_dev_then_its_winner_once_on_test_reusing_its_model(tiny_beir, tiny_model, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RECIPES": "rounds1,gist", "DOMAIN": "beir"}
    out = tmp_path / "table"
    proc = subprocess.run(["bash", str(REPO / "scripts" / "recipe_table.sh"), str(out), f"data.path={tiny_beir}",
                           f"model.path={tiny_model}", f"cache_dir={tmp_path / 'cache'}", "training.batch_size=4",
                           "training.eval_steps=2", "training.save_steps=2", "eval.hybrid.method=rrf"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "sweep" / "sweep_summary.json").read_text())
    jobs = summary["jobs"]
    assert len(jobs) == 2 and {j["eval_split"] for j in jobs} == {"dev"}
    assert jobs[0]["dev_ndcg@10"] >= jobs[1]["dev_ndcg@10"]
    winner, other = (json.loads((out / "sweep" / j["job"] / "report.json").read_text()) for j in jobs)
    assert f"chosen on dev: job {jobs[0]['job']}" in proc.stdout
    assert winner["eval"]["split"] == "test" and other["eval"]["split"] == "dev"  # only the winner saw test
    # its fine-tuned model reused, not retrained; the reranker trained now (a dev-evaluated job reranks nothing)
    assert winner["run"]["ran_now"] == ["baseline", "evaluate", "reranker", "rerank"]
