"""The default run directory: two data folders never collide, the same folder always resumes in one place."""

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from domain_embed.config import register_configs


def _run_dir(*overrides: str) -> str:
    register_configs()
    with initialize_config_module("domain_embed.conf", version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    return OmegaConf.select(cfg, "hydra.run.dir")


def test_two_beir_folders_with_the_same_domain_get_two_run_directories(tmp_path):
    a, b = tmp_path / "a" / "corpus", tmp_path / "b" / "corpus"  # same folder name, different data
    dir_a = _run_dir("+domain=beir", f"data.path={a}")
    dir_b = _run_dir("+domain=beir", f"data.path={b}")
    assert dir_a != dir_b
    assert dir_a.startswith("outputs/corpus-") and dir_a.endswith("/minilm-full")
    assert _run_dir("+domain=beir", f"data.path={a}/") == dir_a  # the same folder, spelt differently
    assert _run_dir("+domain=legal") == "outputs/legal/minilm-full"  # a hub source keeps the domain name
