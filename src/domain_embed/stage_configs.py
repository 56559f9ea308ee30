"""The typed sections of the stages outside the core pipeline (audit..evaluate): `compare` (candidate models, served
ones included) and `reranker`/`rerank` (the cross-encoder). RootConfig (config.py) holds them as `compare` and
`rerank`."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


@dataclass
class ServedClientConfig:
    """How `compare` talks to a served candidate (`domain_embed.retrieval.served`): the openai client, bounded."""

    batch_size: int = 64  # texts per request
    max_batch_tokens: int = 100_000  # tokens per request (OpenAI allows 300k); estimated where no tokenizer is known
    concurrency: int = 4  # requests in flight at once
    max_retries: int = 5  # 408/409/429/5xx, timeouts, lost connections: exponential back-off, Retry-After honoured
    timeout_s: float = 60.0  # per request


@dataclass
class CompareConfig:
    """Stage `compare`: candidate models on the user's own data, the article's model-selection guide."""

    # conf/model names, local paths, hub ids, or served models: `openai:<model>[@dims,...]` or
    # `<http(s) base url>#<served model name>[@dims,...]` (one row per dims value; python -m train --help)
    models: list[str] = field(default_factory=list)
    domain_models: list[str] = field(default_factory=list)  # candidates trained on this domain (e.g. legal-bert)
    split: str = "dev"
    mrl_dims: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    chunk_sizes: list[int] = field(default_factory=list)  # extra chunk windows (tokens) to score per model
    max_queries: int | None = None
    throughput_sample: int = 256  # documents encoded uncached to time re-indexing
    # a fraction, as eval.adopt_min_recall_gain: 0.05 = 5 points. The best general model's Recall@10 this far below
    # BM25 or a domain model means a domain gap (fine-tune); within it, keep the general model
    gap_points: float = 0.05
    mrl_tolerance: float = 0.01  # a fraction of nDCG@10 (0.01 = 1 point): the smallest dims this close to full
    # served candidates: the corpus leaves this machine for any endpoint not on loopback (127.0.0.0/8, ::1,
    # localhost); such a candidate is refused, before any request, unless this is true
    allow_remote: bool = False
    api_key_env: str = "OPENAI_API_KEY"  # the environment variable holding the API key (the key is never in a config)
    # USD per 1M input tokens, by served model name, as read on prices_date (override or add: ++compare.prices.<m>=..)
    prices: dict[str, float] = field(default_factory=lambda: {"text-embedding-3-small": 0.02,
                                                              "text-embedding-3-large": 0.13,
                                                              "text-embedding-ada-002": 0.10})
    prices_date: str = "2025-06-01"
    client: ServedClientConfig = field(default_factory=ServedClientConfig)


class RerankLoss(StrEnum):
    lambdaloss = "lambdaloss"  # LambdaLoss, NDCG-Loss2++ weighting cut at 10: listwise, aimed at nDCG@10
    listnet = "listnet"  # ListNet: listwise, softmax cross-entropy over each list
    bce = "bce"  # pointwise BinaryCrossEntropyLoss on the lists' pairs (positives weighted by negatives per positive)


@dataclass
class RerankConfig:
    """Stages `reranker` (the cross-encoder, trained or given) and `rerank`: it re-scores each first stage's top
    documents and mixes its score with the first stage's. Which first stage, how deep and with what weight are chosen
    on the dev split by `eval.primary_metric`, never on the evaluated split. `depths`, `weights`, `first_stages` and
    `latency_queries` are how `rerank` uses it: they never retrain it."""

    model: str | None = None  # a cross-encoder (path or hub id) used as it is; None: train one in the run
    depths: list[int] = field(default_factory=lambda: [20, 50, 100])  # candidates re-scored per query, tried on dev
    # the cross-encoder's share of the final score (per-query min-max of both scores), tried on dev with each depth;
    # 0 (the first stage alone) is always tried, 1 is the cross-encoder alone
    weights: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])
    first_stages: list[str] = field(default_factory=lambda: ["bm25", "tuned", "hybrid_tuned"])
    max_length: int = 256  # tokens of (query, document window) together
    batch_size: int = 64  # pairs scored per forward pass
    latency_queries: int = 20  # queries re-ranked one at a time to measure ms per query
    # training (model=None): lists of the first stage `lists_from` (its top `list_depth` for each train query; the
    # dev check reads the same first stage's dev lists), labelled from the qrels
    lists_from: str = "hybrid_tuned"  # a first stage: bm25, baseline, tuned, hybrid_base or hybrid_tuned
    list_depth: int = 100  # N: a training list is drawn from the top N (at least the largest of `depths`)
    num_negatives: int = 15  # per training query, sampled (seeded) from its top N less its labelled positives
    init: str = "base"  # where the weights start: base | tuned (the run's fine-tuned model) | a cross-encoder's path
    loss: RerankLoss = RerankLoss.lambdaloss
    max_train_queries: int | None = None  # a seeded sample of the training queries; None: all
    epochs: float = 1.0
    max_steps: int = -1
    learning_rate: float = 1e-4
    train_batch_size: int = 16  # lists per step and rank (pairs under `loss=bce`)
    warmup: float = 0.1  # fraction of steps
    evaluations: int = 4  # dev evaluations (and checkpoints) in a run, evenly spaced, whatever its length
    save_total_limit: int = 2
    dev_eval_queries: int = 100  # dev queries whose first-stage lists are reranked at each evaluation
    resume: bool = False  # continue from the last checkpoint after a kill
    keep_checkpoints: bool = False
