"""Structured (typed) configs: Hydra validates every override against these, so a typo such as
`eval.k_vaules` or a wrong type fails at start with one line, before any model loads."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from hydra.core.config_store import ConfigStore


class Truncation(StrEnum):
    chunk = "chunk"  # split long documents into overlapping windows that fit
    warn = "warn"  # let the model truncate, and report how much was lost
    error = "error"  # refuse to run, listing the worst offenders


class SourceKind(StrEnum):
    beir = "beir"
    hub = "hub"
    pairs = "pairs"


class HubAdapter(StrEnum):
    generic = "generic"  # corpus / queries / qrels configs of one HF dataset repo
    obliqa = "obliqa"  # RegNLP/ObliQA release schema


class OnError(StrEnum):
    fail = "fail"
    skip = "skip"


@dataclass
class HubSourceConfig:
    name: str | None = None  # e.g. RegNLP/ObliQA
    adapter: HubAdapter = HubAdapter.generic
    revision: str | None = None
    # generic adapter: configs (subsets) of the dataset repo holding each part
    corpus_config: str = "corpus"
    queries_config: str = "queries"
    qrels_config: str = "default"
    qrels_name: str | None = None  # qrels in a separate dataset repo (the BeIR/<name>-qrels layout)
    # split name in the hub release -> our split name (train/dev/test)
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "validation": "dev",
                                                            "dev": "dev", "test": "test"})
    # obliqa adapter: the passage files in the dataset repo, and DocumentID -> document title
    # (titles become "<title> | <PassageID>"; a missing one falls back to "Document <DocumentID>")
    passages_files: str = "StructuredRegulatoryDocuments/*.json"
    document_names: dict[str, str] = field(default_factory=dict)


@dataclass
class PairsSourceConfig:
    path: str | None = None  # jsonl / csv / parquet with query, positive[, negative]
    corpus_path: str | None = None  # optional extra corpus (BEIR corpus.jsonl layout)
    dev_fraction: float = 0.1
    test_fraction: float = 0.2


@dataclass
class DataConfig:
    name: str = "beir"
    source: SourceKind = SourceKind.beir
    path: str | None = None  # a BEIR directory; when set it overrides the domain's source
    hub: HubSourceConfig = field(default_factory=HubSourceConfig)
    pairs: PairsSourceConfig = field(default_factory=PairsSourceConfig)
    use_title: bool = True
    truncation: Truncation = Truncation.chunk
    chunk_overlap: int = 32  # tokens shared by consecutive windows
    on_error: OnError = OnError.fail  # fail | skip (skips are counted in the report)
    worst_offenders: int = 10  # listed in the audit when documents exceed the window


@dataclass
class ModelConfig:
    name: str = "minilm"
    hub_id: str = "sentence-transformers/all-MiniLM-L6-v2"
    path: str | None = None  # a local directory; wins over everything else
    packaged: str | None = None  # module whose get_model_path() ships weights (offline default)
    revision: str | None = None
    max_seq_length: int | None = None  # None: the model's own setting
    query_prompt: str = ""
    document_prompt: str = ""
    normalize: bool = True
    trust_remote_code: bool = False
    # what the selection guide needs (published facts about the model)
    context_window: int | None = None
    dims: int | None = None
    mrl: bool = False
    licence: str | None = None
    mteb_retrieval: float | None = None
    pooling: str | None = None


@dataclass
class BM25Config:
    enabled: bool = True
    k1: float = 1.2
    b: float = 0.75
    stopwords: str | None = "en"
    stemmer: str | None = None  # e.g. "english" (PyStemmer); None keeps plain lower-cased words


@dataclass
class EvalConfig:
    split: str = "test"
    k_values: list[int] = field(default_factory=lambda: [1, 5, 10, 100])
    primary_metric: str = "ndcg@10"
    batch_size: int = 64
    search_backend: str = "auto"  # auto | faiss | torch
    device: str = "auto"  # auto | cpu | cuda
    query_block: int = 4096  # queries searched per block: bounds memory
    cache_dtype: str = "float32"  # float16 halves the cache on very large corpora
    bootstrap_samples: int = 1000
    bootstrap_seed: int = 0
    bm25: BM25Config = field(default_factory=BM25Config)


@dataclass
class MiningConfig:
    """Read by the mining stage (issue 3)."""

    range_min: int = 0
    range_max: int = 50
    relative_margin: float = 0.05
    absolute_margin: float | None = None
    max_score: float | None = None
    num_negatives: int = 5
    sampling: str = "top"


@dataclass
class TrainingConfig:
    """Read by the finetune stage (issue 4)."""

    loss: str = "mnrl"
    learning_rate: float = 2e-5
    batch_size: int = 32
    epochs: int = 1
    warmup: float = 0.1
    max_steps: int = -1


@dataclass
class TrackingConfig:
    backend: str = "none"  # none | wandb
    project: str = "domain-embed"
    entity: str | None = None
    mode: str | None = None  # online | offline; None: WANDB_MODE decides
    tags: list[str] = field(default_factory=list)


@dataclass
class BudgetConfig:
    """How much of the problem a run takes on: `smoke` for a CPU check, `full` for real."""

    name: str = "full"
    max_queries: int | None = None  # per split
    max_corpus: int | None = None  # positives of kept queries are always kept
    max_seq_length: int | None = None  # caps model.max_seq_length when set


@dataclass
class RootConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    stages: list[str] = field(default_factory=lambda: ["audit", "baseline"])
    force: bool = False
    seed: int = 42
    cache_dir: str = "${oc.env:DOMAIN_EMBED_CACHE,${oc.env:HOME,.}/.cache/domain_embed}"
    verbose: bool = False
    run_dir: str = "${hydra:runtime.output_dir}"


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="schema", node=RootConfig)
