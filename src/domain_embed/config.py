"""Structured (typed) configs: Hydra validates every override against these, so a typo such as
`eval.k_vaules` or a wrong type fails at start with one line, before any model loads."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from domain_embed.stage_configs import CompareConfig, RerankConfig


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
    # a seeded sample of the labelled training queries that fine-tuning learns from (dev and test untouched); samples
    # are nested (a smaller one is inside a larger one), so a label-budget sweep moves by data alone. None: all
    max_train_queries: int | None = None


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
    # auto | fp32 | bf16 | fp16; auto = the GPU's native half type (bf16 on Ampere+, fp16 before) on CUDA, fp32 on CPU
    encode_dtype: str = "auto"
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
class SearchConfig:
    """How top-k search runs. Evaluation keeps `index=flat` (exact); mining may use IVF at scale."""

    backend: str = "auto"  # auto | faiss | torch
    device: str = "auto"  # auto | cpu | cuda
    index: str = "flat"  # flat (exact) | ivf
    nlist: int = 4096  # IVF cells
    nprobe: int = 32  # IVF cells visited per query
    pq_m: int | None = None  # IVF-PQ sub-quantizers; None keeps full vectors (IVF-Flat)
    train_size: int = 262144  # vectors sampled to train the IVF quantizer
    fp16: bool = False  # float16 index/corpus (half the memory), FAISS GPU or torch; the backend label says "fp16"
    query_block: int = 4096  # queries searched per block: bounds memory
    allow_cpu_fallback: bool = False  # a GPU request that cannot be met is an error unless true


@dataclass
class OodConfig:
    """Forgetting check: base vs tuned on another domain's test split (a slice keeps it cheap)."""

    path: str | None = None  # a BEIR directory of another domain; None skips the check
    split: str = "test"
    max_queries: int | None = 300
    max_corpus: int | None = 3000


class FusionMethod(StrEnum):
    auto = "auto"  # rrf or convex, whichever scores best on the dev split
    rrf = "rrf"
    convex = "convex"


@dataclass
class HybridConfig:
    """BM25 + dense fusion (systems hybrid_base and hybrid_tuned). What is left open (the method under `auto`, the
    convex `alpha` when None) is chosen on the dev split by `eval.primary_metric`, never on the evaluated split."""

    enabled: bool = True
    method: FusionMethod = FusionMethod.auto
    rrf_k: int = 60
    alpha: float | None = None  # convex weight on the dense side; None: the best of alpha_grid on dev
    alpha_grid: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    depth: int = 100  # each system's top-depth documents are fused


@dataclass
class FormatsConfig:
    """The cost of each vector format for the tuned model, from its cached vectors: quality against bytes per
    document (sentence-transformers' `quantize_embeddings`)."""

    enabled: bool = True
    precisions: list[str] = field(default_factory=lambda: ["float32", "int8", "binary"])
    dims: list[int] = field(default_factory=list)  # empty: the model's full dimension and training.matryoshka_dims
    rescore_depth: int = 100  # binary: the top-k by Hamming distance are re-scored with the fp32 query


# EvalConfig fields only the report reads, kept out of the evaluate stage's key (an older run resumes unchanged)
EVAL_REPORT_ONLY = ("cost_order", "rerank_min_gain")


@dataclass
class EvalConfig:
    split: str = "test"
    k_values: list[int] = field(default_factory=lambda: [1, 5, 10, 100])
    primary_metric: str = "ndcg@10"
    batch_size: int = 64  # texts per batch where the model is called directly (compare's throughput)
    # the encode path (`Embedder`); each `auto` is settled per device in devices.encode_settings
    max_batch_tokens: int | str = "auto"  # tokens per forward pass, padding included (texts sorted by length)
    encode_workers: int | str = "auto"  # processes tokenizing ahead of the model (0: in series, the CPU default)
    shard_rows: int | str = "auto"  # rows per published cache shard: what a killed encode can lose
    compile: bool | str = "auto"  # torch.compile the encoder, sequences padded up to length buckets
    attn_implementation: str = "auto"  # auto: flash_attention_2 (unpadded) on a GPU where installed, else default
    search: SearchConfig = field(default_factory=SearchConfig)
    cache_dtype: str = "float32"  # float16 halves the cache on very large corpora
    bootstrap_samples: int = 1000
    bootstrap_seed: int = 0
    bm25: BM25Config = field(default_factory=BM25Config)
    ood: OodConfig = field(default_factory=OodConfig)
    hybrid: HybridConfig = field(default_factory=HybridConfig)
    formats: FormatsConfig = field(default_factory=FormatsConfig)
    adopt_min_recall_gain: float = 0.05  # the article: adopt when Recall gains > 5 points and the CI excludes 0
    decision_metric: str = "recall@10"
    # the report's last word only (never a stage key): systems cheapest first, a reranked one not named here right
    # after its first stage; every system without fine-tuning before every fine-tuned one (training, hosting a custom
    # model, retraining on drift and re-indexing cost a team more than a BM25 index beside a stock model)
    cost_order: list[str] = field(default_factory=lambda: ["bm25", "baseline", "hybrid_base", "tuned",
                                                           "hybrid_tuned"])
    # a reranked system must beat its first stage on primary_metric by more than this (0.01 = 1 point), CI excluding 0
    rerank_min_gain: float = 0.01


@dataclass
class MiningConfig:
    """Hard-negative mining rules; every rule is counted in triplets/mining_meta.json. The defaults are the
    default recipe (conf/mining/default.yaml explains it and repeats none of them)."""

    range_min: int = 0  # skip the first ranks (likely unlabelled positives)
    range_max: int = 100  # look no deeper than this rank
    relative_margin: float | None = 0.05  # keep negatives scoring below (1 - m) x lowest positive score
    absolute_margin: float | None = None  # keep negatives scoring below lowest positive score - m
    max_score: float | None = None  # drop candidates scoring above this
    num_negatives: int = 5  # per (query, positive) pair
    sampling: str = "top"  # top | random (within the window, after the rules)
    # when fewer than num_negatives survive the window (the positive ranks deep, so every close
    # candidate beats it), fill from random corpus documents that pass the same rules
    fill_random: bool = True
    exclude_same_text: bool = True  # drop candidates whose normalised text equals a positive's
    splits: list[str] = field(default_factory=lambda: ["train", "dev"])  # queries mined
    dev_split: str = "dev"  # triplets of this split form the training-time dev set
    min_triplets: int = 500  # below this the report warns (the article's minimum viable size)
    rescorer: str | None = None  # a cross-encoder (hub id or path) to drop likely false negatives
    rescorer_threshold: float = 0.0  # drop candidates whose cross-encoder logit (raw, no sigmoid) is above this
    rescorer_batch_size: int = 32
    search: SearchConfig = field(default_factory=SearchConfig)
    # where candidates come from: dense (the model's own ranking) and/or bm25 (lexical look-alikes the dense model
    # may rank low); with both, the kept candidates of each source alternate, and each source's picks are counted
    sources: list[str] = field(default_factory=lambda: ["dense"])
    # training rounds: round r > 1 re-mines with the model of round r - 1 (same rules, one corpus encode, counted)
    # and trains that model again on the new negatives (2: chosen on ObliQA dev, see conf/mining/default.yaml)
    rounds: int = 2


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | None = None  # None: PEFT's default for the architecture


@dataclass
class TrainingConfig:
    """Maps onto SentenceTransformerTrainingArguments and the chosen loss. The defaults are the default recipe,
    chosen on dev (conf/training/default.yaml says how); that file repeats none of them."""

    loss: str = "mnrl"  # mnrl | cached_mnrl | triplet | gist
    num_negatives: int = 3  # hard-negative columns fed to the loss (<= mining.num_negatives)
    mini_batch_size: int = 16  # cached_mnrl (GradCache) mini-batch
    triplet_margin: float = 5.0  # triplet loss (euclidean) margin, as in sentence-transformers
    matryoshka_dims: list[int] = field(default_factory=list)  # non-empty: wrap the loss in MatryoshkaLoss
    gather_across_devices: bool = True  # in-batch negatives from every rank
    learning_rate: float = 5e-5
    batch_size: int = 32  # per device
    gradient_accumulation_steps: int = 1
    epochs: float = 1.0
    max_steps: int = -1
    warmup: float = 0.1  # fraction of steps (transformers 5 takes a fractional warmup_steps)
    weight_decay: float = 0.01
    scheduler: str = "linear"
    precision: str = "auto"  # auto (bf16 where supported, else fp16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    gradient_checkpointing: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)
    logging_steps: int = 10
    eval_steps: int = 50
    # resume checkpoints (with optimizer state): every save_steps steps (None: none by steps), every
    # checkpoint_minutes of wall time (None: none by time), and at the end; an evaluation that beats every earlier one
    # is always checkpointed, so the best model is kept whatever the cadence
    save_steps: int | None = None
    checkpoint_minutes: float | None = 10.0
    save_total_limit: int = 2
    early_stopping_patience: int | None = None  # evaluations without dev nDCG@10 improvement
    dev_corpus_size: int = 2000  # dev positives + their mined negatives + a random sample
    dev_max_queries: int | None = None  # a seeded sample of the dev queries evaluated during training; None: all
    dataloader_workers: int | None = None  # None: 0 on CPU, up to 4 persistent workers on CUDA (devices.py)
    torch_compile: bool = False  # torch.compile the model (minutes of compiling first; worth it for long runs)
    resume: bool = False  # continue from the last checkpoint (optimizer, scheduler, RNG, data position)
    keep_checkpoints: bool = False  # false: the checkpoints go once the stage has published its model


@dataclass
class TrackingConfig:
    backend: str = "none"  # none | wandb
    project: str = "domain-embed"
    entity: str | None = None
    mode: str | None = None  # online | offline; None: WANDB_MODE decides
    tags: list[str] = field(default_factory=list)
    group: str | None = None  # W&B group; None: in a multirun the sweep directory (every job and its summary)
    name: str | None = None  # W&B run name; None: in a multirun the job's swept overrides, else the run directory


@dataclass
class BudgetConfig:
    """How much of the problem a run takes on: `smoke` for a CPU check, `full` for real, `cpu` for the full data on a
    small CPU (conf/budget/cpu.yaml: a cheaper recipe and reranker, the same data)."""

    name: str = "full"
    max_queries: int | None = None  # per split
    max_corpus: int | None = None  # positives of kept queries are always kept


@dataclass
class RootConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    rerank: RerankConfig = field(default_factory=RerankConfig)
    stages: list[str] = field(default_factory=lambda: ["audit", "baseline", "mine", "triplets", "finetune",
                                                       "evaluate", "reranker", "rerank"])
    force: bool = False
    seed: int = 42
    device: str = "auto"  # where models encode and train: auto | cpu | cuda
    cache_dir: str = "${oc.env:DOMAIN_EMBED_CACHE,${oc.env:HOME,.}/.cache/domain_embed}"
    verbose: bool = False
    run_dir: str = "${de.job_dir:}"
    # where sweep jobs share audit/baseline/mine/triplets/reranker outputs; a multirun defaults it to <sweep dir>/shared
    shared_dir: str | None = None
