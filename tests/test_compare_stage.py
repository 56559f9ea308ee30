"""Stage `compare`: candidates through the shared evaluator, unavailable ones reported, the guide applied."""

import json
import shutil

import pytest

import domain_embed.stages.compare  # noqa: F401  (registers the stage)
from domain_embed.context import RunContext
from domain_embed.errors import ConfigError
from domain_embed.pipeline import run_pipeline
from domain_embed.stage_configs import CompareConfig
from domain_embed.stages.compare import resolve_candidate

UNREACHABLE = "no-such-org/no-such-model"


@pytest.fixture
def short_tiny_model(tiny_model, tmp_path):
    """The tiny model with a 32-token window instead of 64: the long document overflows it more."""
    copy = tmp_path / "tiny-32"
    shutil.copytree(tiny_model, copy)
    tok = json.loads((copy / "tokenizer_config.json").read_text())
    (copy / "tokenizer_config.json").write_text(json.dumps({**tok, "model_max_length": 32}))
    return copy


def _compare(make_config, tmp_path, tiny_beir, tiny_model, compare, *overrides):
    run_dir = tmp_path / "run"
    cfg = make_config(run_dir, "+domain=beir", f"data.path={tiny_beir}", f"model.path={tiny_model}",
                      "eval.batch_size=16", f"cache_dir={tmp_path / 'cache'}", "stages=[compare]", *overrides)
    cfg.compare = compare
    report = run_pipeline(RunContext(cfg, run_dir))
    return report, json.loads((run_dir / "compare" / "compare.json").read_text())


def test_compare_ranks_loadable_candidates_and_reports_the_rest(make_config, tmp_path, tiny_beir, tiny_model,
                                                                short_tiny_model):
    models = [str(tiny_model), str(short_tiny_model), UNREACHABLE]
    compare = CompareConfig(models=models, domain_models=[str(short_tiny_model)], mrl_dims=[8, 16, 64],
                            chunk_sizes=[40], throughput_sample=20)
    report, out = _compare(make_config, tmp_path, tiny_beir, tiny_model, compare)

    assert report["run"]["ran_now"] == ["audit", "compare"]  # no baseline needed
    assert out["split"] == "dev" and out["n_queries"] == 10 and out["documents"] == 60
    assert [u["model"] for u in out["unavailable"]] == [UNREACHABLE]
    assert "cannot load model" in out["unavailable"][0]["reason"] and "\n" not in out["unavailable"][0]["reason"]
    rows = {r["model"]: r for r in out["rows"]}
    assert set(rows) == {str(tiny_model), str(short_tiny_model)}
    assert sorted(r["domain_rank"] for r in rows.values()) == [1, 2]
    base, short = rows[str(tiny_model)], rows[str(short_tiny_model)]
    assert (base["kind"], short["kind"]) == ("general", "domain")
    assert base["window"]["effective"] == 64 and short["window"]["effective"] == 32
    assert base["doc_tokens"]["over_limit"] == 1 and short["doc_tokens"]["over_limit"] >= 1
    assert short["windows"] > base["windows"] > 60  # each model chunked the corpus for its own window
    assert base["chunked"] and short["chunked"]
    for r in rows.values():
        assert 0 <= r["metrics"]["ndcg@10"] <= 1 and "mrr@10" in r["metrics"] and r["dims"] == 32
        assert [p["dims"] for p in r["mrl_curve"]] == [8, 16, 32]  # 64 > 32 dims is skipped; full added
        assert r["mrl_curve"][-1]["ndcg@10"] == pytest.approx(r["metrics"]["ndcg@10"])
        assert [c["size"] for c in r["chunk_sizes"]] == [40] and r["mrl_trained"] is None
        assert r["throughput"]["docs_per_s"] > 0 and r["throughput"]["documents"] == 20
        assert "this machine" in r["throughput"]["measured_on"]
        assert r["reindex"]["gb_per_million_docs"]["float32"]["32"] == pytest.approx(0.128)
    assert out["bm25"]["recall@10"] > 0.9
    rec = out["recommendation"]
    assert rec["model"] in rows and rec["lines"] and rec["action"] in ("fine-tune", "domain-model", "general")
    assert any("exceed its 32-token window" in line for line in rec["lines"])
    assert any(line.startswith(f"{UNREACHABLE} not evaluated: cannot load model") for line in rec["lines"])
    assert out["rank_correlation"]["spearman"] is None  # no candidate has a published MTEB score
    assert (tmp_path / "run" / "compare" / "quality_vs_dims.png").stat().st_size > 0
    assert report["compare"]["recommendation"] == rec  # report.json carries it, report.md renders it
    md = (tmp_path / "run" / "report.md").read_text()
    assert "## Choosing a model (dev split, 10 queries, 60 documents)" in md and f"| {base['domain_rank']} | " in md
    assert rec["lines"][0] in md and "compare/quality_vs_dims.png" in md

    again, _ = _compare(make_config, tmp_path, tiny_beir, tiny_model, compare)
    assert again["run"]["ran_now"] == []


def test_candidates_resolve_to_conf_path_or_hub(tiny_model):
    conf = resolve_candidate("bge-small")
    assert conf.source == "conf" and conf.model.hub_id == "BAAI/bge-small-en-v1.5" and conf.model.dims == 384
    assert resolve_candidate(str(tiny_model)).model.path == str(tiny_model)
    assert resolve_candidate("./missing-model").source == "path"
    hub = resolve_candidate(UNREACHABLE)
    assert hub.source == "hub" and hub.model.hub_id == UNREACHABLE and hub.model.packaged is None


def test_model_yaml_goes_through_the_typed_schema(tmp_path, monkeypatch):
    import domain_embed.stages.compare as compare

    for conf in compare.MODEL_CONFIGS.glob("*.yaml"):  # every packaged model config is valid
        assert resolve_candidate(conf.stem).model.name
    (tmp_path / "typo.yaml").write_text("name: typo\nhub_idd: org/model\n")
    (tmp_path / "wrong-type.yaml").write_text("name: wrong\ndims: many\n")
    monkeypatch.setattr(compare, "MODEL_CONFIGS", tmp_path)
    with pytest.raises(ConfigError, match=r"typo\.yaml: .*Key 'hub_idd' not in 'ModelConfig'"):
        resolve_candidate("typo")
    with pytest.raises(ConfigError, match=r"'many'.*key 'dims'"):
        resolve_candidate("wrong-type")


def test_an_empty_candidate_list_fails_before_any_work(make_config, tmp_path, tiny_beir, tiny_model):
    with pytest.raises(ConfigError, match=r"compare\.models is empty"):
        _compare(make_config, tmp_path, tiny_beir, tiny_model, CompareConfig())
    assert not (tmp_path / "run" / "compare").exists()


@pytest.mark.slow
def test_minilm_against_the_tiny_model_on_obliqa(shared_data, make_config, tmp_path, tiny_model):
    obliqa = shared_data / "legal" / "obliqa"
    compare = CompareConfig(models=["minilm", str(tiny_model), UNREACHABLE], throughput_sample=64)
    _, out = _compare(make_config, tmp_path, obliqa, tiny_model, compare, "budget.max_queries=50",
                      "budget.max_corpus=500")
    rows = {r["model"]: r for r in out["rows"]}
    assert set(rows) == {"minilm", str(tiny_model)} and out["n_queries"] == 50
    assert [u["model"] for u in out["unavailable"]] == [UNREACHABLE]
    minilm = rows["minilm"]
    assert minilm["domain_rank"] == 1 and minilm["metrics"]["ndcg@10"] > rows[str(tiny_model)]["metrics"]["ndcg@10"]
    assert minilm["mteb_retrieval"] == 41.95 and minilm["window"]["effective"] == 256 and minilm["dims"] == 384
    assert minilm["licence"] == "apache-2.0" and [p["dims"] for p in minilm["mrl_curve"]] == [64, 128, 256, 384]
    assert "minilm (not trained for MRL)" in out["recommendation"]["mrl"]["minilm"]["text"]
    assert out["recommendation"]["lines"][0] == out["recommendation"]["gap"]["reason"]
