"""Command-line overrides checked against the typed config before Hydra sees them.

Hydra answers `training.lerning_rate=1e-5` with advice to append `+training.lerning_rate`, which here would only
fail later: a misspelt key gets one line naming the closest valid key instead.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path

from domain_embed.config import RootConfig

_CONF = Path(__file__).resolve().parent / "conf"
# conf/accelerate/*.yaml are files for `accelerate launch --config_file`, not a Hydra group: `+accelerate=x` fails
LAUNCHER_CONFIGS = "accelerate"


def _fields(cls: type) -> dict[str, typing.Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _known_paths(cls: type = RootConfig, prefix: str = "") -> dict[str, bool]:
    """Every dotted key of the schema -> whether anything may be nested under it (dicts, Any)."""
    paths: dict[str, bool] = {}
    for name, hint in _fields(cls).items():
        path = f"{prefix}{name}"
        if isinstance(hint, types.UnionType):  # `X | None`
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        if dataclasses.is_dataclass(hint):
            paths[path] = False
            paths.update(_known_paths(hint, path + "."))
        else:
            paths[path] = typing.get_origin(hint) is dict or hint is typing.Any
    return paths


def _groups() -> set[str]:
    """Config groups (`model=bge-small`, `hydra/launcher=slurm`): folders of the packaged config tree."""
    return {str(p.relative_to(_CONF)) for p in _CONF.rglob("*") if p.is_dir() and any(p.glob("*.yaml"))} - {
        LAUNCHER_CONFIGS}


def groups_help() -> str:
    """`--help`'s list of config groups and their options. Hydra's own list ($APP_CONFIG_GROUPS) shows every folder
    of the config tree, conf/accelerate included."""
    return "\n".join(f"{group}: {', '.join(sorted(p.stem for p in (_CONF / group).glob('*.yaml')))}"
                     for group in sorted(_groups()) if not group.startswith("hydra/"))


def check(args: list[str]) -> str | None:
    """The first override of a key the schema does not have, as one line with a suggestion; None if all are known.

    `+key=...` (adding), `~key` (deleting), Hydra's own keys and flags are left to Hydra."""
    known, groups = _known_paths(), _groups()
    for arg in args:
        if arg.lstrip("+~").split("=", 1)[0] == LAUNCHER_CONFIGS:
            return (f"{LAUNCHER_CONFIGS} is not a config group: conf/{LAUNCHER_CONFIGS}/*.yaml configure the launcher "
                    f"(accelerate launch --config_file conf/{LAUNCHER_CONFIGS}/multi_gpu.yaml -m train ...)")
        if arg.startswith(("-", "+", "~")) or "=" not in arg:
            continue
        key = arg.split("=", 1)[0].strip()
        if key.startswith("hydra.") or key in groups or key in known:
            continue
        if any(key.startswith(f"{p}.") for p, open_ended in known.items() if open_ended):
            continue
        close = difflib.get_close_matches(key, [*known, *groups], n=1, cutoff=0.6)
        hint = f": did you mean {close[0]}?" if close else " (python -m train --help lists the groups)"
        return f"unknown config key {key}{hint}"
    return None
