"""What Hydra needs beside the schema: the schema stored as the primary config's `schema` default, and the `de.*`
resolvers that name run directories and attempt files. Kept apart from config.py, which holds only the typed
sections and their defaults."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from domain_embed.attempts import ATTEMPT_ID, attempt_file
from domain_embed.config import DataConfig, RootConfig, SourceKind


def data_key(name: str, path: str | None, source: str = SourceKind.beir.value, hub_name: str | None = None,
             pairs_path: str | None = None) -> str:
    """The data's part of the default run directory: the domain name for a hub source; for a folder (or a pairs
    file), its name and a short hash of its absolute path, so that two BEIR folders run with the same domain never
    share outputs. A hub dataset named without a domain (`data.name` still the schema's `beir`) is keyed by its repo,
    so a hub run and a pairs run never share `outputs/beir/`."""
    if path:
        return _folder_key(path)
    if source == SourceKind.pairs.value and pairs_path:
        return _folder_key(pairs_path)
    if source == SourceKind.hub.value and name == DataConfig.name and hub_name:
        return hub_name.rstrip("/").replace("/", "--").lower()
    return name


def _folder_key(path: str) -> str:
    """A folder's name and a short hash of its absolute path: two folders of one name never share a run directory."""
    folder = Path(path).expanduser().resolve()
    return f"{folder.name}-{hashlib.sha256(str(folder).encode()).hexdigest()[:8]}"


def model_name(name: str, own_hub_id: str, hub_id: str, path: str | None) -> str:
    """A model group's name, while it loads that group's model: `model.path` or another `model.hub_id` renames the
    run after what it loads (the folder's name and path hash, or the repo's name): bge-m3 is never filed as minilm."""
    if path:
        return _folder_key(path)
    return name if hub_id == own_hub_id else hub_id.rstrip("/").rsplit("/", 1)[-1].lower()


def job_dir() -> str:
    """The job's folder: Hydra's runtime.output_dir (the run directory, or <sweep dir>/<n> in a multirun). Hydra
    sets it only when a job starts, so `--cfg job --resolve` shows the run directory a single run would use."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    if OmegaConf.is_missing(hydra_cfg.runtime, "output_dir"):
        return os.path.abspath(hydra_cfg.run.dir)
    return hydra_cfg.runtime.output_dir


def source_for(path: str | None, source: str) -> str:
    """What a domain config loads: a local folder (data.path) wins over the domain's own source, and the
    resolved config (report.json, `--cfg job --resolve`) says so."""
    return SourceKind.beir.value if path else source


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="schema", node=RootConfig)
    for name, resolver in (("de.data_key", data_key), ("de.source", source_for), ("de.attempt_id", lambda: ATTEMPT_ID),
                           ("de.attempt_file", attempt_file), ("de.job_dir", job_dir),
                           ("de.model_name", model_name)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
