"""The mine stage's rescorer compares the cross-encoder's raw logits with mining.rescorer_threshold, the
scale the threshold is documented in (a sigmoid would put every score above the default 0.0)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from domain_embed.context import RunContext
from domain_embed.pipeline import run_pipeline


def _cross_encoder(path: Path, tiny_model: Path) -> Path:
    """A random one-label BERT cross-encoder. Weights drawn wider than BERT's 0.02 make the pooled vector depend on
    the text, and a scaled-up head spreads the logits over several units (a negative bias keeps them all below 0)."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=64, num_labels=1,
                                                     initializer_range=0.2))
    with torch.no_grad():
        model.classifier.weight.mul_(30.0)
        model.classifier.bias.fill_(-15.0)
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(next(tiny_model.parent.rglob(name)), path / name)
    return path


def _logits(path: Path, pairs: list[tuple[str, str]]) -> np.ndarray:
    """The model's raw outputs, computed with plain transformers."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = BertForSequenceClassification.from_pretrained(path).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(pairs), 64):
            queries, docs = zip(*pairs[start:start + 64], strict=True)
            batch = tokenizer(list(queries), list(docs), padding=True, truncation=True, return_tensors="pt")
            out.append(model(**batch).logits[:, 0].numpy())
    return np.concatenate(out)


def test_the_threshold_drops_exactly_the_candidates_whose_logit_exceeds_it(make_config, tiny_beir, tiny_model,
                                                                         tmp_path):
    ce = _cross_encoder(tmp_path / "ce", tiny_model)
    run = tmp_path / "run"
    # every candidate of the window reaches the rescorer and, when it passes, the mined negatives
    args = ["+domain=beir", f"data.path={tiny_beir}", f"model.path={tiny_model}", f"cache_dir={tmp_path / 'cache'}",
            "stages=[audit,baseline,mine]", "mining.relative_margin=null", "mining.num_negatives=100",
            "mining.fill_random=false", f"mining.rescorer={ce}"]

    def mine(*extra: str) -> tuple[dict, dict[str, list[str]]]:
        run_pipeline(RunContext(make_config(run, *args, *extra), run))
        mined = [json.loads(line) for line in (run / "mine" / "mined.jsonl").open()]
        return json.loads((run / "mine" / "stats.json").read_text()), {q["query_id"]: q["negative_ids"] for q in mined}

    stats, candidates = mine()  # the default threshold, 0.0
    assert stats["dropped_by_rule"]["rescorer"] == 0 and stats["negatives_chosen"] == stats["kept_before_sampling"]
    ctx = RunContext(make_config(run, *args), run)
    pairs = [(q, d) for q, docs in candidates.items() for d in docs]
    logits = _logits(ce, [(ctx.data.queries[q], ctx.documents[ctx.data.doc_index(d)]) for q, d in pairs])
    assert len(pairs) > 500 and logits.max() < 0  # why the default kept them all

    middle = np.sort(logits)[len(logits) // 2 - 50:len(logits) // 2 + 50]
    gap = int(np.argmax(np.diff(middle)))
    assert middle[gap + 1] - middle[gap] > 1e-3  # wide enough that float noise cannot move a candidate across
    threshold = float(middle[gap] + middle[gap + 1]) / 2
    above = {pair for pair, logit in zip(pairs, logits, strict=True) if logit > threshold}
    stats, kept = mine(f"mining.rescorer_threshold={threshold}")
    assert stats["dropped_by_rule"]["rescorer"] == len(above) == pytest.approx(len(pairs) / 2, abs=50)
    assert kept == {q: [d for d in docs if (q, d) not in above] for q, docs in candidates.items()}
