"""What the composed config says: where a run writes (two data folders never collide, the same folder always
resumes in one place) and what it loads."""

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from domain_embed.config import register_configs


def _compose(*overrides: str):
    register_configs()
    with initialize_config_module("domain_embed.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def _run_dir(*overrides: str) -> str:
    return OmegaConf.select(_compose(*overrides), "hydra.run.dir")


def test_two_beir_folders_with_the_same_domain_get_two_run_directories(tmp_path):
    a, b = tmp_path / "a" / "corpus", tmp_path / "b" / "corpus"  # same folder name, different data
    dir_a = _run_dir("+domain=beir", f"data.path={a}")
    dir_b = _run_dir("+domain=beir", f"data.path={b}")
    assert dir_a != dir_b
    assert dir_a.startswith("outputs/corpus-") and dir_a.endswith("/minilm-full")
    assert _run_dir("+domain=beir", f"data.path={a}/") == dir_a  # the same folder, spelt differently
    assert _run_dir("+domain=legal") == "outputs/legal/minilm-full"  # a hub source keeps the domain name


def test_a_local_folder_makes_the_config_say_it_loads_the_folder(tmp_path):
    assert OmegaConf.select(_compose("+domain=legal", f"data.path={tmp_path}"), "data.source") == "beir"
    assert OmegaConf.select(_compose("+domain=legal"), "data.source") == "hub"


def test_the_smoke_budget_logs_the_loss_often_enough_for_a_curve():
    training = _compose("+domain=legal", "budget=smoke").training
    assert training.eval_steps % training.logging_steps == 0  # every dev evaluation has a loss point beside it
    assert training.eval_steps // training.logging_steps >= 4  # a smoke run (~18 steps) draws 8 or more points


def test_the_cpu_budget_keeps_every_query_and_passage_and_a_reranker_it_can_afford():
    cfg = _compose("+domain=legal", "budget=cpu")
    assert cfg.budget.name == "cpu"
    assert cfg.budget.max_queries is None and cfg.budget.max_corpus is None  # the full data, unlike smoke
    assert "rerank" in cfg.stages and cfg.rerank.first_stages == ["hybrid_tuned"]
    assert max(cfg.rerank.depths) <= 20 and cfg.rerank.max_train_queries is not None
    assert cfg.training.num_negatives <= cfg.mining.num_negatives
    # the reranker's lists: as deep as the depths it reorders, its negatives from them
    assert max(cfg.rerank.depths) <= cfg.rerank.list_depth and 8 <= cfg.rerank.num_negatives < cfg.rerank.list_depth
