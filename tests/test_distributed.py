"""Two ranks on this CPU (gloo): rank-0-only writes, in-batch negatives gathered from every rank, and the
whole pipeline under `accelerate launch` (the reranker trained and scored by both ranks, as one process scores it);
plus the shipped launcher configs, and (with torch.cuda and the process group faked) what a GPU launch would join,
on which GPU."""

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from domain_embed import distributed
from domain_embed.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
STAGES = ["audit", "baseline", "mine", "triplets", "finetune", "evaluate", "reranker", "rerank"]

RANKS_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    import torch
    import torch.distributed as dist
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from domain_embed import distributed

    model_path, out = sys.argv[1], Path(sys.argv[2])
    result = {"before_init": [dist.is_initialized(), distributed.rank(), distributed.world_size()],
              "joined": distributed.init_process_group()}
    result.update(rank=distributed.rank(), world=distributed.world_size(), main=distributed.is_main())

    @distributed.main_only
    def write_once():
        with (out / "writes.txt").open("a") as f:
            f.write(f"rank {distributed.rank()}\\n")
        return {"written_by": distributed.rank()}

    @distributed.main_only
    def fail_on_main():
        raise ValueError("bad input on rank 0")

    result["returned"] = write_once()
    try:
        fail_on_main()
    except Exception as exc:
        result["error"] = f"{exc.__class__.__name__}: {exc}"

    # MNRL on B local (anchor, positive, negative) rows per rank; eval() so that no dropout makes the
    # gathered embeddings differ from the ones each rank computes for itself
    torch.manual_seed(0)
    model = SentenceTransformer(model_path, device="cpu").eval()
    loss = MultipleNegativesRankingLoss(model, gather_across_devices=True)
    calls, similarity = [], loss.similarity_fct
    loss.similarity_fct = lambda a, b: calls.append((a.detach(), b.detach())) or similarity(a, b)
    B, r = 3, distributed.rank()
    columns = [[f"rank {r} {kind} {i} about topic{r * B + i}" for i in range(B)]
               for kind in ("question", "answer", "distractor")]
    loss([model.tokenize(texts) for texts in columns], labels=None).backward()
    with torch.no_grad():
        local = [model(model.tokenize(texts))["sentence_embedding"].tolist() for texts in columns[1:]]
    everyone = [None] * distributed.world_size()
    dist.all_gather_object(everyone, local)
    anchors, candidates = calls[0]  # the query-to-document score matrix is the first similarity computed
    expected = torch.tensor([row for column in range(2) for rank_rows in everyone for row in rank_rows[column]])
    result.update(scores=[anchors.shape[0], candidates.shape[0]],
                  gathered_equal_local=bool(torch.allclose(candidates, expected, atol=1e-5)),
                  has_grad=any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters()))
    (out / f"rank{r}.json").write_text(json.dumps(result))
""")


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}  # two ranks share two cores
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tiny_model, tmp_path_factory):
    """One `torchrun --standalone --nproc_per_node 2` of RANKS_SCRIPT: (its folder, each rank's results)."""
    tmp = tmp_path_factory.mktemp("two-ranks")
    (tmp / "ranks.py").write_text(RANKS_SCRIPT)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(tmp / "ranks.py"), str(tiny_model), str(tmp)], env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(2)]


def test_rank_helpers_follow_the_launcher_and_main_only_runs_once(two_ranks):
    tmp, ranks = two_ranks
    # before the group exists the launcher's environment answers; joining needs no HF TrainingArguments
    assert [r["before_init"] for r in ranks] == [[False, 0, 2], [False, 1, 2]]
    assert [(r["joined"], r["rank"], r["world"], r["main"]) for r in ranks] == [(True, 0, 2, True), (True, 1, 2, False)]
    assert (tmp / "writes.txt").read_text() == "rank 0\n"
    assert [r["returned"] for r in ranks] == [{"written_by": 0}] * 2  # rank 0's result, on every rank
    # a failure on rank 0 stops the waiting rank too, with rank 0's message, instead of a hung barrier
    assert ranks[0]["error"] == "ValueError: bad input on rank 0"
    assert ranks[1]["error"] == "RankFailedError: rank 0 failed in fail_on_main: ValueError: bad input on rank 0"


def test_mnrl_scores_each_anchor_against_the_candidates_of_every_rank(two_ranks):
    _, ranks = two_ranks
    batch, world, columns = 3, 2, 2  # per-rank rows; ranks; positive + 1 hard negative
    for r in ranks:
        assert r["scores"] == [batch, batch * world * columns]
        assert r["gathered_equal_local"] and r["has_grad"]


def test_without_a_launcher_every_helper_is_a_no_op(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not distributed.init_process_group()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    distributed.barrier()

    @distributed.main_only
    def fails():
        raise KeyError("as is")

    with pytest.raises(KeyError, match="as is"):  # the original error, not a RankFailedError
        fails()


def _fake_gpus(monkeypatch, count: int) -> list[int]:
    """`count` visible GPUs; returns the devices that set_device is given."""
    chosen: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    return chosen


def _fake_join(monkeypatch, local_rank: int, visible: str | None = None) -> dict:
    """Rank 1 of a 2-process launch whose joining records init_process_group's arguments instead."""
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": str(local_rank),
                        "CUDA_VISIBLE_DEVICES": visible}.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    joined: dict = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: joined.update(kwargs))
    monkeypatch.setattr(dist, "get_backend", lambda group=None: joined["backend"])
    return joined


def test_only_the_gloo_waits_get_the_long_timeout(monkeypatch):
    """A hung NCCL collective must free the GPUs after the usual half hour, not hold them for TIMEOUT's hours."""
    _fake_gpus(monkeypatch, 8)
    joined = _fake_join(monkeypatch, local_rank=1)
    assert distributed.init_process_group()
    assert joined["backend"] == "nccl" and joined["timeout"] <= timedelta(minutes=30)
    waits: dict = {}
    monkeypatch.setattr(distributed, "_wait_group", [])
    monkeypatch.setattr(dist, "new_group", lambda **kwargs: waits.update(kwargs) or "gloo twin")
    assert distributed._group() == "gloo twin" and waits == {"backend": "gloo", "timeout": distributed.TIMEOUT}

    _fake_gpus(monkeypatch, 0)  # on CPUs the default gloo group carries the waits itself
    assert distributed.init_process_group() and joined == {"backend": "gloo", "timeout": distributed.TIMEOUT}


@pytest.mark.parametrize(("local_rank", "count", "visible", "device"), [
    (3, 1, "5", 0),  # SLURM or a k8s operator: each task sees only its own GPU
    (1, 4, None, 1),  # torchrun on a 4-GPU node
    (2, 4, "4,5,6,7", 2),  # the same on the node's other half
])
def test_each_rank_takes_its_gpu_among_the_visible_ones(monkeypatch, local_rank, count, visible, device):
    chosen = _fake_gpus(monkeypatch, count)
    _fake_join(monkeypatch, local_rank, visible)
    assert distributed.init_process_group() and chosen == [device]


def test_a_local_rank_beyond_the_visible_gpus_is_refused_with_what_was_seen(monkeypatch):
    _fake_gpus(monkeypatch, 2)
    joined = _fake_join(monkeypatch, local_rank=3, visible="0,1")
    with pytest.raises(ConfigError, match=r"LOCAL_RANK=3 .* 2 GPU\(s\) \(CUDA_VISIBLE_DEVICES=0,1\)"):
        distributed.init_process_group()
    assert not joined


def _rerank_outputs(run: Path) -> dict:
    """What the rerank stage decided and scored: dev choices, metrics and every ranking, dev's included."""
    out = {"choice": {k: v for k, v in json.loads((run / "rerank" / "choice.json").read_text()).items()
                      if k not in ("latency", "reranker")}}
    for folder in (run / "rerank", run / "rerank" / "dev"):
        metrics = json.loads((folder / "metrics.json").read_text())
        out[folder.name] = {k: v for k, v in metrics.items() if k != "backends"}  # the reranker's path, in its run
        for npz in folder.glob("ranking_*.npz"):
            with np.load(npz) as ranking:
                out[f"{folder.name}/{npz.name}"] = {k: ranking[k].tolist() for k in ("indices", "scores")}
    return out


def test_accelerate_launch_trains_on_two_ranks_and_reports_once(tiny_beir, tiny_model, tmp_path):
    run = tmp_path / "run"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(REPO / "conf" / "accelerate" / "multi_gpu.yaml"), "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port())]
    train = ["-m", "train", "+domain=beir", f"data.path={tiny_beir}", f"model.path={tiny_model}",
             f"cache_dir={tmp_path / 'cache'}", "training.batch_size=2", "training.epochs=2",
             "training.num_negatives=1",  # the tiny data has only 2 rows with 3 mined negatives: less than 2 x 2
             "training.eval_steps=1", "training.save_steps=1", "training.logging_steps=1",
             "training.warmup=0",  # no step at learning rate 0: each round's best checkpoint is a new model
             "rerank.train_batch_size=2", "rerank.max_length=64", "rerank.depths=[5,10]",
             "rerank.latency_queries=2", "rerank.batch_size=4"]  # blocks of 64 pairs: several for each rank
    proc = subprocess.run([*launch, *train, f"hydra.run.dir={run}", "verbose=true"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=300)  # a hang guard: a loaded 2-core machine: minutes
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    report = json.loads((run / "report.json").read_text())
    assert report["run"]["ran_now"] == STAGES
    assert set(report["metrics"]) == {"baseline", "bm25", "tuned", "hybrid_base", "hybrid_tuned", "rerank(bm25)",
                                      "rerank(tuned)", "rerank(hybrid_tuned)"}
    assert "ndcg@10" in report["gap_closed"]
    # the base, the round-1 and the final model, once each, not once per rank
    assert report["cost"]["corpus_encodes"] == 3
    # one DDP group: every step takes batch_size rows on each of the 2 ranks (drop_last); 2 lone copies
    # would each take ceil(rows / 2) steps an epoch
    training = report["training"]
    assert [r["global_step"] for r in training["rounds"]] == [2 * (r["train_rows"] // (2 * 2)) for r in
                                                             training["rounds"]] and training["global_step"] > 0
    # the reranker too: each rank takes half the lists, 2 a step (sentence-transformers drops an incomplete last
    # batch under DDP), and the dev check's cadence counts those steps
    reranker = report["rerank"]["reranker"]
    assert reranker["global_step"] == math.ceil(reranker["rows"]["queries"] / 2) // 2 > 1
    assert reranker["eval_steps"] == max(1, reranker["global_step"] // 4)
    assert report["rerank"]["latency"]["ranks"] == 2 and report["rerank"]["latency"]["ms_per_query"] > 0
    # rank 0 alone ran the audit; both ranks ran (rank 0 published) the corpus stages and trained
    assert {s: out.count(f"stage {s}: running") for s in STAGES} == {**dict.fromkeys(STAGES, 2), "audit": 1}
    assert not [p for p in run.rglob(".*") if ".tmp-" in p.name]
    assert out.count(f"report: {run / 'report.md'}") == 1  # the summary is said once, by rank 0
    # one process rescoring with the reranker the two ranks trained: the same choices, metrics and rankings, to the bit
    alone = tmp_path / "alone"
    shutil.copytree(run, alone, symlinks=True)
    proc = subprocess.run([sys.executable, *train, f"hydra.run.dir={alone}", "stages=[rerank]", "force=true"],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert json.loads((alone / "report.json").read_text())["run"]["ran_now"] == ["rerank"]
    assert _rerank_outputs(alone) == _rerank_outputs(run)


@pytest.mark.parametrize(("name", "kind", "machines"), [("single_gpu", "NO", 1), ("multi_gpu", "MULTI_GPU", 1),
                                                         ("multi_node", "MULTI_GPU", 2)])
def test_accelerate_configs_load_and_leave_precision_to_the_training_config(name, kind, machines):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(REPO / "conf" / "accelerate" / f"{name}.yaml"))
    assert (cfg.distributed_type.value, cfg.num_machines) == (kind, machines)
    assert cfg.mixed_precision == "no"  # else the launcher's setting overrides training.precision


@pytest.mark.parametrize(("launcher", "gpus"), [("slurm", 1), ("submitit_slurm", None)])  # ours; the plugin's own
def test_slurm_sweep_launcher_config_composes(launcher, gpus):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the 'sweep' extra is not installed")
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    from domain_embed.hydra_setup import register_configs

    register_configs()
    with initialize_config_module("domain_embed.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={launcher}", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node) == ("gpu", gpus, 1)
    assert type(instantiate(launcher)).__name__ == "SlurmLauncher"  # builds it; submits nothing


@pytest.mark.parametrize(("nodelist", "host"), [("node[01-04]", "node01"), ("gpu-a[3,5-7],gpu-b2", "gpu-a3"),
                                                ("n7,n8", "n7"), ("rack[1-2]-node[08-09]", "rack1-node08")])
def test_the_rendezvous_is_the_first_host_of_slurms_node_list(nodelist, host):
    assert distributed.first_host(nodelist) == host


def test_slurm_variables_become_the_launcher_variables_unless_a_launcher_set_them(monkeypatch):
    # from_slurm writes os.environ itself: on a copy, so that no RANK or WORLD_SIZE outlives the test (a later
    # in-process run would wait for ranks that never come)
    unset = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_STEP_NUM_TASKS",
             "SLURM_STEP_NODELIST", "SLURM_NODELIST")
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k not in unset})
    slurm = {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8", "SLURM_JOB_NODELIST": "gpu[12-15]",
             "SLURM_JOB_ID": "4242"}
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    assert distributed.from_slurm()
    assert {k: os.environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")} == {
        "RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "MASTER_ADDR": "gpu12", "MASTER_PORT": str(20000 + 4242)}
    assert (distributed.rank(), distributed.world_size(), distributed.local_rank()) == (5, 8, 1)
    monkeypatch.setenv("RANK", "0")  # torchrun or accelerate inside the allocation: theirs win
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert not distributed.from_slurm() and os.environ["RANK"] == "0"
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("SLURM_NTASKS", "1")  # one task: a plain run
    assert not distributed.from_slurm() and "RANK" not in os.environ


FAKE_SRUN = textwrap.dedent("""\
    #!/usr/bin/env bash
    # stands in for srun on this machine: SLURM_NTASKS copies of the command, each with its task's variables only
    while [[ $1 == --* ]]; do shift; done
    pids=()
    for ((r = 0; r < SLURM_NTASKS; r++)); do
      SLURM_PROCID=$r SLURM_LOCALID=$r "$@" > "task$r.log" 2>&1 &
      pids+=($!)
    done
    rc=0
    for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
    exit $rc
""")


def test_srun_tasks_given_only_slurm_variables_train_as_two_ranks_of_one_run(tiny_beir, tiny_model, tmp_path):
    """scripts/slurm_train.sbatch as sbatch runs it, its srun starting two tasks that know only SLURM's variables."""
    port = 0
    while not 20000 <= port < 60000:  # the port the job id maps to (20000 + id % 40000) must be free
        port = _free_port()
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text(FAKE_SRUN)
    (tmp_path / "bin" / "srun").chmod(0o755)
    run = tmp_path / "run"
    stages = ["audit", "baseline", "mine", "triplets", "finetune"]
    overrides = ["+domain=beir", f"data.path={tiny_beir}", f"model.path={tiny_model}",
                 f"cache_dir={tmp_path / 'cache'}", f"stages=[{','.join(stages)}]", "training.batch_size=2",
                 "training.epochs=2", "training.num_negatives=1", "training.eval_steps=1",
                 "training.logging_steps=1", "training.warmup=0", f"hydra.run.dir={run}",
                 "verbose=true"]  # the tasks' logs show every line, the rank each joined as included
    env = {k: v for k, v in _env().items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                        "MASTER_PORT") and not k.startswith("SLURM_")}
    env.update(PATH=f"{tmp_path / 'bin'}:{env['PATH']}", PYTHON=sys.executable, SLURM_SUBMIT_DIR=str(tmp_path),
               SLURM_NTASKS="2", SLURM_JOB_NODELIST="localhost", SLURM_JOB_ID=str(port - 20000))
    proc = subprocess.run(["bash", str(REPO / "scripts" / "slurm_train.sbatch"), *overrides], env=env,
                          capture_output=True, text=True, timeout=400)
    outs = [(tmp_path / f"task{r}.log").read_text() for r in range(2)]
    assert proc.returncode == 0, "\n".join(out[-3000:] for out in outs)
    assert "joined the process group: rank 1 of 2" in outs[1]
    report = json.loads((run / "report.json").read_text())
    # one DDP group: every step takes batch_size rows on each of the 2 ranks (drop_last)
    training = report["training"]
    assert [r["global_step"] for r in training["rounds"]] == [2 * (r["train_rows"] // (2 * 2)) for r in
                                                             training["rounds"]] and training["global_step"] > 0
    out = "".join(outs)
    assert {s: out.count(f"stage {s}: running") for s in stages} == {**dict.fromkeys(stages, 2), "audit": 1}
    assert out.count(f"report: {run / 'report.md'}") == 1  # reported once, by rank 0
