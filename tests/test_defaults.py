"""Defaults live in one place, the dataclasses of domain_embed.config. The rule: every value the default
config composes to (config.yaml with each group's default file: training/default, mining/default,
eval/default, tracking/none, budget/full) equals the dataclass default, so code that builds a dataclass
gets the same recipe as `python -m train`; a default file may only repeat a dataclass default."""

from typing import Any

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from domain_embed.config import RootConfig
from domain_embed.hydra_setup import register_configs

# model files describe one checkpoint each (window, dims, licence); ModelConfig's defaults are not a recipe
_NOT_A_RECIPE = ("model",)


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        return {key: value for k, v in node.items() for key, value in _leaves(v, f"{prefix}{k}.").items()}
    return {prefix[:-1]: node}


def test_default_config_files_never_contradict_the_dataclasses():
    register_configs()
    with initialize_config_module("domain_embed.conf", version_base="1.3"):
        composed = _leaves(OmegaConf.to_container(compose("config"), resolve=False))
    dataclass = _leaves(OmegaConf.to_container(OmegaConf.structured(RootConfig), resolve=False))
    assert composed.keys() == dataclass.keys()
    differ = [f"{key}: conf/ says {composed[key]!r}, the dataclass {dataclass[key]!r}" for key in sorted(composed)
              if composed[key] != dataclass[key] and key.split(".")[0] not in _NOT_A_RECIPE]
    assert not differ, "\n".join(differ)


def test_every_recipe_composes_and_changes_only_training_or_mining():
    """conf/recipe files are the candidates of the dev table: each a change to the default recipe, nothing else."""
    from importlib.resources import files

    register_configs()
    names = sorted(p.name.removesuffix(".yaml") for p in files("domain_embed.conf").joinpath("recipe").iterdir()
                   if p.name.endswith(".yaml"))
    assert "default" in names and len(names) >= 7
    with initialize_config_module("domain_embed.conf", version_base="1.3"):
        base = _leaves(OmegaConf.to_container(compose("config"), resolve=False))
        for name in names:
            recipe = _leaves(OmegaConf.to_container(compose("config", [f"+recipe={name}"]), resolve=False))
            changed = {k.split(".")[0] for k in recipe if recipe[k] != base[k]}
            assert changed <= {"training", "mining"} and bool(changed) == (name != "default"), name
