"""Hybrid systems: settings chosen on the dev split only, and skipped (with a reason) when there is none."""

import numpy as np
import pytest

from domain_embed.config import EvalConfig, FusionMethod, HybridConfig
from domain_embed.data.domain import DomainData
from domain_embed.errors import ConfigError
from domain_embed.retrieval.evaluate import _score, evaluate_hybrid, fusion_options, hybrid_skipped, scored_splits
from domain_embed.retrieval.fusion import Fusion


def _data(qrels: dict) -> DomainData:
    return DomainData(corpus_ids=["d0", "d1", "d2"], corpus_titles=["", "", ""], corpus_texts=["a", "b", "c"],
                      queries={"qdev": "x", "qtest": "y"}, qrels=qrels, source="test")


def _systems(data: DomainData, cfg: EvalConfig, split: str):
    """Identical rankings on every split: dense prefers d0, BM25 prefers d2, both put d1 in the middle."""
    dense = _score("tuned", data, split, np.array([[0, 1, 2]]), np.array([[1.0, 0.5, 0.0]]), "torch", cfg.k_values)
    sparse = _score("bm25", data, split, np.array([[2, 1, 0]]), np.array([[10.0, 5.0, 1.0]]), "bm25s",
                    cfg.k_values)
    return dense, sparse


def test_alpha_is_chosen_on_dev_even_where_another_wins_on_test():
    # dev's positive is d0 (dense's favourite: a high alpha wins), test's is d2 (BM25's: a low alpha would win)
    data = _data({"dev": {"qdev": {"d0": 1}}, "test": {"qtest": {"d2": 1}}})
    cfg = EvalConfig(k_values=[1, 10], hybrid=HybridConfig(method=FusionMethod.convex, alpha_grid=[0.2, 0.8]))
    (dense_dev, sparse_dev), (dense_test, sparse_test) = _systems(data, cfg, "dev"), _systems(data, cfg, "test")
    fused, how = evaluate_hybrid("hybrid_tuned", {"dev": dense_dev, "test": dense_test},
                                 {"dev": sparse_dev, "test": sparse_test}, data, cfg)
    assert (how["method"], how["alpha"], how["dev_split"], how["dev_metric"]) == ("convex", 0.8, "dev", "ndcg@10")
    assert how["dev_value"] == 1.0 and [g["value"] for g in how["grid"]] == pytest.approx([0.5, 1.0])
    result = fused["test"]
    assert result.indices.tolist() == [[0, 1, 2] + [-1] * 7] and result.metrics.mean()["ndcg@10"] == pytest.approx(0.5)
    assert fused["dev"].metrics.mean()["ndcg@10"] == how["dev_value"]  # dev scored with the setting chosen there
    best_on_test, _ = evaluate_hybrid("hybrid_tuned", {"test": dense_test}, {"test": sparse_test}, data, cfg,
                                      Fusion("convex", alpha=0.2))
    assert best_on_test["test"].metrics.mean()["ndcg@10"] == 1.0  # so the test split would have picked 0.2


def test_a_fixed_fusion_needs_no_dev_split():
    data = _data({"test": {"qtest": {"d2": 1}}})
    cfg = EvalConfig(k_values=[1, 10], hybrid=HybridConfig(method=FusionMethod.rrf))
    assert scored_splits(cfg, data) == ["test"] and hybrid_skipped(cfg, data) is None
    dense, sparse = _systems(data, cfg, "test")
    fused, how = evaluate_hybrid("hybrid_base", {"test": dense}, {"test": sparse}, data, cfg)
    result = fused["test"]
    assert how["method"] == "rrf" and how["grid"] == [] and how["dev_split"] is None and how["dev_value"] is None
    # d0 and d2 tie on 1/61 + 1/63 (above d1's 2/62): the lower position first; -1 pads to max(k_values)
    assert result.indices.tolist() == [[0, 2, 1] + [-1] * 7]


@pytest.mark.parametrize(("qrels", "split", "hybrid", "reason"), [
    ({"test": {}}, "test", HybridConfig(), "no dev split"),
    ({"dev": {}, "test": {}}, "dev", HybridConfig(), "which is the evaluated split"),
    ({"dev": {}, "test": {}}, "test", HybridConfig(enabled=False), "eval.hybrid.enabled"),
])
def test_hybrid_is_skipped_with_a_reason(qrels, split, hybrid, reason):
    assert reason in hybrid_skipped(EvalConfig(split=split, hybrid=hybrid), _data(qrels))


@pytest.mark.parametrize(("qrels", "split", "splits"), [
    ({"dev": {}, "test": {}}, "test", ["test", "dev"]),  # dev scored too: the recommendation is chosen there
    ({"dev": {}, "test": {}}, "dev", ["dev"]),  # evaluated on dev: not scored twice
    ({"test": {}}, "test", ["test"]),
])
def test_every_system_is_scored_on_dev_too_where_there_is_one(qrels, split, splits):
    assert scored_splits(EvalConfig(split=split), _data(qrels)) == splits


def test_auto_tries_rrf_first_then_the_alpha_grid():
    options = fusion_options(HybridConfig(alpha_grid=[0.3, 0.6]))
    assert options == [Fusion("rrf", rrf_k=60), Fusion("convex", alpha=0.3), Fusion("convex", alpha=0.6)]
    assert fusion_options(HybridConfig(method=FusionMethod.convex, alpha=0.4)) == [Fusion("convex", alpha=0.4)]
    with pytest.raises(ConfigError, match="alpha"):
        fusion_options(HybridConfig(alpha_grid=[1.5]))


def test_baseline_without_dev_split_reports_why_no_hybrid_or_fuses_a_fixed_one(make_config, tiny_beir, tiny_model,
                                                                               tmp_path):
    import shutil

    from domain_embed.context import RunContext
    from domain_embed.pipeline import run_pipeline

    no_dev = tmp_path / "no-dev"
    shutil.copytree(tiny_beir, no_dev)
    (no_dev / "qrels" / "dev.tsv").unlink()
    args = ["+domain=beir", f"data.path={no_dev}", f"model.path={tiny_model}", f"cache_dir={tmp_path / 'cache'}",
            "stages=[audit,baseline]"]
    run = tmp_path / "run"
    report = run_pipeline(RunContext(make_config(run, *args), run))
    assert set(report["metrics"]) == {"baseline", "bm25"} and "hybrid" not in report
    assert "no dev split" in report["not_run"]["hybrid_base"]
    assert "- hybrid_base: not run: no dev split" in (run / "report.md").read_text()
    assert not (run / "baseline" / "dev").exists()  # nothing to score there
    rec = report["recommendation"]
    assert rec["split"] == "test" and rec["note"].startswith("the data has no dev split, so the recommendation is "
                                                             "chosen on the test split its figures come from")
    assert "Note: the data has no dev split" in (run / "report.md").read_text()
    fixed = run_pipeline(RunContext(make_config(run, *args, "eval.hybrid.method=rrf"), run))
    assert fixed["run"]["ran_now"] == ["baseline"] and fixed["hybrid"]["hybrid_base"]["method"] == "rrf"
    assert "hybrid_base-vs-bm25" in fixed["comparisons"] and "not_run" not in fixed
