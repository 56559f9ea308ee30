"""What the stages of one run share: the typed config, the run directory, and lazily loaded heavy
objects (data, the base model) so a stage that is skipped never pays for them."""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path

from domain_embed.config import RootConfig
from domain_embed.data.chunking import Windows
from domain_embed.data.domain import DomainData
from domain_embed.retrieval.embed import Embedder
from domain_embed.rundir import RunDir, read_json

log = logging.getLogger(__name__)


class RunContext:
    def __init__(self, cfg: RootConfig, run_dir: str | Path):
        self.cfg = cfg
        self.run_dir = RunDir(run_dir)
        self.cache_dir = Path(cfg.cache_dir).expanduser()
        self.shared_dir = Path(cfg.shared_dir).expanduser() if cfg.shared_dir else None

    @cached_property
    def data(self) -> DomainData:
        from domain_embed.data.loader import load_domain_data

        data = load_domain_data(self.cfg.data)
        budget = self.cfg.budget
        sliced = data.sliced(budget.max_queries, budget.max_corpus, self.cfg.seed)
        log.info("data: %s: %d documents, %d queries, splits %s", sliced.source, len(sliced),
                 len(sliced.queries), {s: len(q) for s, q in sliced.qrels.items()})
        return sliced

    @cached_property
    def data_fingerprint(self) -> str:
        return self.data.fingerprint()

    @cached_property
    def documents(self) -> list[str]:
        return self.data.documents(self.cfg.data.use_title)

    @cached_property
    def embedder(self) -> Embedder:
        """The base model, shared by every stage of this process (loaded at most once)."""
        return self.make_embedder(self.cfg.model)

    def make_embedder(self, model_cfg) -> Embedder:
        ev = self.cfg.eval
        return Embedder(model_cfg, cache_dir=self.cache_dir, device=self.cfg.device, batch_size=ev.batch_size,
                        cache_dtype=ev.cache_dtype, max_batch_tokens=ev.max_batch_tokens, workers=ev.encode_workers,
                        shard_rows=ev.shard_rows, compile=ev.compile, attn_implementation=ev.attn_implementation)

    def windows(self) -> Windows:
        """The corpus view the audit decided on (whole documents, or windows in chunk mode)."""
        return Windows.from_dict(read_json(self.run_dir.stage_dir("audit") / "windows.json"))
