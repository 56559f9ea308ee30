"""The one entry point stages use to get data: the config says where it is; this returns the checked
contract."""

from __future__ import annotations

from domain_embed.config import DataConfig, OnError, SourceKind
from domain_embed.data.beir import load_beir
from domain_embed.data.domain import DomainData, SkipLog
from domain_embed.data.hub import load_hub
from domain_embed.data.pairs import load_pairs
from domain_embed.errors import ConfigError


def load_domain_data(cfg: DataConfig) -> DomainData:
    """`cfg.path` (a BEIR directory) wins over `cfg.source`, so any domain can be pointed at local data."""
    skips = SkipLog(allow=OnError(cfg.on_error) is OnError.skip)
    if cfg.path:
        return load_beir(cfg.path, skips)
    source = SourceKind(cfg.source)
    if source is SourceKind.hub:
        return load_hub(cfg.hub, skips)
    if source is SourceKind.pairs:
        return load_pairs(cfg.pairs, skips)
    raise ConfigError("data.source=beir needs data.path (a BEIR directory)")
