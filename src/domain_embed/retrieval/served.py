"""Embedding models behind an OpenAI-compatible `POST /v1/embeddings` (OpenAI, vLLM, SGLang, TEI, Infinity, ollama),
encoded through the official `openai` client, so that `compare` scores them with the same evaluator as a local model.

A candidate is written `openai:<model>[@d1,d2,...]` or `<http(s) base url>#<served model name>[@d1,d2,...]`; each
`@` dimension is sent as the API's `dimensions` and is a candidate of its own.

Requests are bounded by texts and by tokens and run `concurrency` at a time; the client retries 408/409/429/5xx,
timeouts and lost connections with exponential back-off, honouring Retry-After (up to 2 minutes). Every answer is
cached on disk as soon as it arrives, keyed by endpoint, model, dimensions (and the weights, where the served name is a
local folder) and the hash of each text sent, so a killed or repeated compare sends only what is missing. The API key
is read from an environment variable and kept only inside the client; error messages never quote it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from tqdm.auto import tqdm

from domain_embed import distributed
from domain_embed.errors import ConfigError, DomainEmbedError
from domain_embed.rundir import atomic_write_json, publish_dir
from domain_embed.stage_configs import ServedClientConfig

log = logging.getLogger(__name__)

OPENAI_BASE_URL = "https://api.openai.com/v1"
OPENAI_MAX_TOKENS = 8191  # OpenAI's embedding models take at most this many tokens per text (a longer one is refused)
_SPEC = re.compile(r"^(?P<body>.+?)(?:@(?P<dims>\d+(?:,\d+)*))?$")
_CHARS_PER_TOKEN = 3  # token estimate where no tokenizer is known: conservative for English (OpenAI says ~4)
_NO_KEY = "no-key"  # sent to a loopback server when the key variable is unset: such servers usually need none


class ServedError(DomainEmbedError):
    """An endpoint answered, but not with usable embeddings (refused key, unknown model, malformed response, wrong
    dimension): that candidate is unavailable, the others go on."""


class ServedUnreachable(DomainEmbedError):
    """An endpoint stopped answering (connection lost, timeouts, 429/5xx after every retry): the stage stops, and
    a rerun sends only the texts whose vectors are not cached yet."""


def is_served(entry: str) -> bool:
    return entry.startswith(("openai:", "http://", "https://"))


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost: the only hosts a corpus may go to without `compare.allow_remote`."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServedSpec:
    entry: str  # as written in compare.models
    base_url: str
    model: str  # the name the server knows the model by
    dims: tuple[int, ...] = ()  # requested `dimensions`; empty: the server's own

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).hostname or ""

    @property
    def remote(self) -> bool:
        return not is_loopback(self.host)

    @property
    def is_openai(self) -> bool:
        return self.base_url == OPENAI_BASE_URL

    def label(self, dims: int | None) -> str:
        """The row name: the entry itself, or one row per requested dimension."""
        if dims is None:
            return self.entry
        return f"{self.entry.rsplit('@', 1)[0]}@{dims}"


def parse_spec(entry: str) -> ServedSpec:
    match = _SPEC.match(entry.strip())
    body, dims = match["body"], tuple(int(d) for d in match["dims"].split(",")) if match["dims"] else ()
    if any(d < 1 for d in dims):
        raise ConfigError(f"compare.models: '{entry}': dimensions must be positive integers")
    if body.startswith("openai:"):
        base, model = OPENAI_BASE_URL, body.removeprefix("openai:")
    else:
        base, _, model = body.partition("#")
        parts = urlsplit(base)
        if not parts.hostname or parts.scheme not in ("http", "https"):
            raise ConfigError(f"compare.models: '{entry}': expected <http(s)://host[:port]/path>#<model>[@dims,...]")
    if not model:
        raise ConfigError(f"compare.models: '{entry}': no model name (openai:<model> or <url>#<model>)")
    return ServedSpec(entry, base.rstrip("/"), model, tuple(dict.fromkeys(dims)))


def check_egress(specs: list[ServedSpec], allow_remote: bool) -> None:
    """Refuses, before any request, a candidate that would send the corpus off this machine without consent."""
    remote = [s for s in specs if s.remote]
    if remote and not allow_remote:
        hosts = ", ".join(f"'{s.entry}' ({s.host})" for s in remote)
        raise ConfigError(f"compare.models: {hosts} would send the corpus off this machine: set "
                          "compare.allow_remote=true to allow it (the report lists who received it)")


def api_key(env: str, spec: ServedSpec) -> str:
    """The key from the environment variable `env`; a loopback server may need none, a remote one must have it."""
    key = os.environ.get(env, "")
    if not key and spec.remote:
        raise ServedError(f"{spec.base_url} ({spec.model}): no API key: set the environment variable {env} "
                          "(compare.api_key_env names it)")
    return key or _NO_KEY


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def tiktoken_counter(model: str) -> tuple[Callable[[list[str]], np.ndarray] | None, str]:
    """OpenAI models' token counter, or None and why: tiktoken fetches its encoding from the internet unless cached."""
    try:
        import tiktoken

        enc = tiktoken.encoding_for_model(model)
    except Exception as exc:  # not installed, unknown model, or the encoding file is not available offline
        return None, f"unknown (tiktoken's encoding not available offline: {exc.__class__.__name__})"
    return (lambda texts: np.array([len(t) for t in enc.encode_ordinary_batch(texts)], dtype=np.int64),
            f"tiktoken {enc.name}")


@dataclass
class ServedStats:
    requests: int = 0
    texts_sent: int = 0
    cache_hits: int = 0  # texts whose vector came from the cache
    tokens_billed: float = 0.0  # `usage` of this process's requests
    requests_without_usage: int = 0
    seconds: float = 0.0  # wall time of the requests
    sent: dict[str, int] = field(default_factory=dict)  # texts sent, by what (corpus, queries, documents)
    wall: dict[str, float] = field(default_factory=dict)


class ServedEmbedder:
    """The `encode_documents` / `encode_queries` of `retrieval.embed.Embedder`, through an embeddings endpoint."""

    def __init__(self, spec: ServedSpec, dims: int | None, client: ServedClientConfig, *, api_key: str,
                 cache_dir: str | Path | None, query_prompt: str = "", document_prompt: str = "",
                 normalize: bool = True, expected_dim: int | None = None,
                 count_tokens: Callable[[list[str]], np.ndarray] | None = None, weights: str | None = None):
        self.spec, self.dims, self.cfg = spec, dims, client
        self._key = api_key
        self.query_prompt, self.document_prompt, self.normalize = query_prompt, document_prompt, normalize
        self.count_tokens = count_tokens
        self.location = f"{spec.base_url}#{spec.model}"
        self._dim = dims or expected_dim
        parts = [spec.base_url, spec.model, str(dims), weights or ""]
        key = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]
        self.cache = Path(cache_dir) / "served" / key if cache_dir else None
        self._vectors: dict[str, tuple[np.ndarray, float]] | None = None
        self.stats = ServedStats()

    def __repr__(self) -> str:  # never the key
        return f"ServedEmbedder({self.location}, dims={self.dims})"

    @cached_property
    def client(self):
        try:
            import openai
        except ImportError as exc:
            raise ConfigError("served candidates need the openai client: pip install 'domain-embed[served]'") from exc
        return openai.OpenAI(base_url=self.spec.base_url, api_key=self._key, timeout=self.cfg.timeout_s,
                             max_retries=self.cfg.max_retries)

    @property
    def dim(self) -> int:
        if self._dim is None:
            raise RuntimeError("the served dimension is known after the first answer")
        return self._dim

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, self.query_prompt, "queries")

    def encode_documents(self, texts: list[str], *, is_corpus: bool = True) -> np.ndarray:
        return self._encode(texts, self.document_prompt, "corpus" if is_corpus else "documents")

    def tokens(self, texts: list[str], *, prompt: str | None = None) -> float | None:
        """Tokens the server reported for these (cached) texts: each request's `usage` shared among its texts, so a
        sum over every text sent is exact. None where a server reported no usage."""
        prompt = self.document_prompt if prompt is None else prompt
        total = sum(self._cached()[text_hash(prompt + t)][1] for t in dict.fromkeys(texts))
        return None if math.isnan(total) else round(total, 2)

    def _cached(self) -> dict[str, tuple[np.ndarray, float]]:
        """Text hash -> (vector, tokens), read once from every request folder already in the cache."""
        if self._vectors is None:
            self._vectors = {}
            for folder in sorted(self.cache.glob("batches/[!.]*")) if self.cache else []:
                rows = json.loads((folder / "rows.json").read_text())
                vectors = np.load(folder / "vectors.npy")
                self._dim = self._dim or vectors.shape[1]  # every answer was checked against one dimension
                self._vectors.update(zip(rows["hashes"], zip(vectors, rows["tokens"], strict=True), strict=True))
        return self._vectors

    def _encode(self, texts: list[str], prompt: str, what: str) -> np.ndarray:
        """Under a launcher rank 0 alone sends what is missing (one bill, not one per rank); the others then read
        the vectors from the cache they share, and raise rank 0's error as their own."""
        sent = [prompt + t for t in texts]
        hashes = [text_hash(s) for s in sent]
        n_sent, failure = distributed.main_only(self._fetch)(sent, hashes, what)
        if not distributed.is_main() and n_sent:
            self._vectors = None  # rank 0 added to the cache on disk
        if failure is not None:
            raise {c.__name__: c for c in (ServedError, ServedUnreachable)}[failure[0]](failure[1])
        cached = self._cached()
        return np.stack([cached[h][0] for h in hashes]) if hashes else np.empty((0, self._dim or 0), np.float32)

    def _fetch(self, sent: list[str], hashes: list[str], what: str) -> tuple[int, tuple[str, str] | None]:
        """Sends the texts not cached yet; returns how many, and the failure as (type name, message)."""
        cached = self._cached()
        todo = {h: s for h, s in zip(hashes, sent, strict=True) if h not in cached}
        self.stats.cache_hits += len(sent) - len(todo)
        if not todo:
            return 0, None
        t0 = time.perf_counter()
        try:
            self._send(list(todo.values()), list(todo), what)
        except (ServedError, ServedUnreachable) as exc:
            return len(todo), (exc.__class__.__name__, str(exc))
        finally:
            self.stats.wall[what] = self.stats.wall.get(what, 0.0) + time.perf_counter() - t0
        self.stats.sent[what] = self.stats.sent.get(what, 0) + len(todo)
        return len(todo), None

    def _batches(self, texts: list[str]) -> list[slice]:
        """Consecutive runs of at most `batch_size` texts and `max_batch_tokens` tokens (a longer text goes alone)."""
        counts = (self.count_tokens(texts) if self.count_tokens
                  else np.array([len(t) // _CHARS_PER_TOKEN + 1 for t in texts]))
        out, start, tokens = [], 0, 0
        for i, n in enumerate(counts):
            if i > start and (i - start >= self.cfg.batch_size or tokens + n > self.cfg.max_batch_tokens):
                out.append(slice(start, i))
                start, tokens = i, 0
            tokens += int(n)
        if start < len(texts):
            out.append(slice(start, len(texts)))
        return out

    def _send(self, texts: list[str], hashes: list[str], what: str) -> None:
        """Every batch once, `concurrency` at a time; each answer is cached as it arrives. On the first failure the
        batches not started are dropped (those in flight finish and are cached), then the failure is raised."""
        batches = self._batches(texts)
        bar = tqdm(total=len(texts), desc=f"embed {what} via {self.location}", unit="text",
                   disable=len(batches) < 2)
        failure = None
        with ThreadPoolExecutor(max_workers=max(1, self.cfg.concurrency)) as pool:
            futures = [pool.submit(self._request, texts[b], hashes[b]) for b in batches]
            for f in as_completed(futures):
                if f.cancelled():
                    continue
                if (exc := f.exception()) is not None:
                    failure = failure or exc
                    for other in futures:
                        other.cancel()
                    continue
                bar.update(f.result())
        bar.close()
        if failure is not None:
            cached = self._cached()
            have = sum(h in cached for h in hashes)
            if isinstance(failure, ServedUnreachable):
                raise ServedUnreachable(f"{failure}; {have} of {len(texts)} {what} texts sent now are cached, a "
                                        f"rerun sends only the other {len(texts) - have}") from failure
            raise failure
        log.info("%s: %d %s texts in %d requests (concurrency %d)", self.location, len(texts), what, len(batches),
                 self.cfg.concurrency)

    def _request(self, texts: list[str], hashes: list[str]) -> int:
        t0 = time.perf_counter()
        extra = {"dimensions": self.dims} if self.dims else {}
        try:
            resp = self.client.embeddings.create(input=texts, model=self.spec.model, encoding_format="float", **extra)
        except Exception as exc:
            raise self._failure(exc) from None
        vectors = self._vectors_of(resp, len(texts))
        if self.normalize:
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        usage = getattr(resp, "usage", None)
        billed = getattr(usage, "prompt_tokens", None) if usage is not None else None
        billed = float(billed) if isinstance(billed, int | float) else math.nan
        weights = np.array([len(t) + 1 for t in texts], dtype=np.float64)
        tokens = (billed * weights / weights.sum()).tolist()
        folder = self.cache / "batches" / text_hash("\x1e".join(hashes))[:32] if self.cache else None
        with publish_dir(folder) if folder else nullcontext() as tmp:
            if tmp is not None:
                np.save(tmp / "vectors.npy", vectors)
                (tmp / "rows.json").write_text(json.dumps({"hashes": hashes, "tokens": tokens}))
        if self.cache is not None and not (self.cache / "meta.json").exists():
            atomic_write_json(self.cache / "meta.json", {"endpoint": self.spec.base_url, "model": self.spec.model,
                                                         "dimensions": self.dims, "dim": self._dim})
        self._cached().update(zip(hashes, zip(vectors, tokens, strict=True), strict=True))  # GIL: one dict update
        self.stats.requests += 1
        self.stats.texts_sent += len(texts)
        if math.isnan(billed):
            self.stats.requests_without_usage += 1
        else:
            self.stats.tokens_billed += billed
        self.stats.seconds += time.perf_counter() - t0
        return len(texts)

    def _vectors_of(self, resp, n: int) -> np.ndarray:
        """The answer's vectors in input order, checked: one per text, finite, of the expected dimension."""
        data = getattr(resp, "data", None)
        try:
            rows = sorted(data, key=lambda d: d.index)
            vectors = np.asarray([d.embedding for d in rows], dtype=np.float32)
        except (TypeError, ValueError, AttributeError) as exc:
            raise ServedError(f"{self.location}: malformed response (no list of float embeddings: "
                              f"{exc.__class__.__name__})") from None
        if vectors.ndim != 2 or len(vectors) != n:
            raise ServedError(f"{self.location}: malformed response ({len(vectors)} embeddings for {n} texts)")
        if self._dim is None:
            self._dim = vectors.shape[1]
        if vectors.shape[1] != self._dim:
            asked = f"dimensions={self.dims}" if self.dims else "its dimension"
            raise ServedError(f"{self.location}: returned {vectors.shape[1]}-dimensional vectors, expected "
                              f"{self._dim} ({asked})")
        if not np.isfinite(vectors).all():
            raise ServedError(f"{self.location}: returned non-finite values")
        return vectors

    def _failure(self, exc: Exception) -> DomainEmbedError:
        """One line naming the endpoint; never the key, and no server text for a refused key (it may echo it)."""
        import openai

        where = f"{self.location}"
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            return ServedError(f"{where}: refused the API key (HTTP {exc.status_code}); check the variable that "
                               "compare.api_key_env names")
        if isinstance(exc, openai.APIConnectionError | openai.RateLimitError | openai.InternalServerError):
            status = getattr(exc, "status_code", None)
            what = f"HTTP {status}" if status else exc.__class__.__name__
            return ServedUnreachable(f"{where}: no usable answer after {self.cfg.max_retries} retries ({what})")
        if isinstance(exc, openai.APIStatusError):
            return ServedError(f"{where}: HTTP {exc.status_code}: {self._scrub(exc.message)}")
        return ServedError(f"{where}: malformed response ({exc.__class__.__name__}: {self._scrub(str(exc))})")

    def _scrub(self, text: str) -> str:
        line = (text or "").splitlines()[0] if text else ""
        return line.replace(self._key, "***")[:200] if self._key else line[:200]

