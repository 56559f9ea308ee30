"""Which device the models this package loads itself go to, under a launcher that shows each task only its own GPU
(SLURM --gpus-per-task, a per-rank CUDA_VISIBLE_DEVICES): LOCAL_RANK=3 with one GPU visible, CUDA faked."""

from types import SimpleNamespace

import pytest
import torch

from domain_embed import devices
from domain_embed.stages import mine
from domain_embed.stages import reranker as reranker_stage


@pytest.fixture
def one_gpu_per_task(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for name, value in {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "3", "CUDA_VISIBLE_DEVICES": "3"}.items():
        monkeypatch.setenv(name, value)


def test_auto_is_the_one_visible_gpu_not_cuda_local_rank(one_gpu_per_task):
    from sentence_transformers.util import get_device_name

    assert get_device_name() == "cuda:3"  # the libraries' own choice for device=None: no such GPU here
    assert devices.placement("auto") == devices.placement(None) == "cuda:0"
    assert devices.placement("cpu") == "cpu" and devices.placement("cuda:1") == "cuda:1"  # explicit settings kept


def test_without_a_gpu_the_library_chooses(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.placement("auto") is None


def test_the_reranker_and_the_mining_rescorer_load_on_the_visible_gpu(one_gpu_per_task, monkeypatch):
    ctx = SimpleNamespace(cfg=SimpleNamespace(device="auto", mining=SimpleNamespace(rescorer="a-cross-encoder"),
                                              model=SimpleNamespace(trust_remote_code=False)))
    assert reranker_stage._device(ctx) == "cuda:0"  # the reranker stage trains and scores there (rerank too)
    loaded = []

    class Loaded(Exception):
        pass

    def cross_encoder(name, device=None, **kwargs):
        loaded.append(device)
        raise Loaded

    monkeypatch.setattr("sentence_transformers.CrossEncoder", cross_encoder)
    with pytest.raises(Loaded):
        mine._rescorer(ctx, ["q1"])
    assert loaded == ["cuda:0"]
