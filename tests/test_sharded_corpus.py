"""Every rank encodes and searches its share of the corpus (issue #14): a sharded encode resumes shard by shard and
assembles the very cache entry one process writes; a sharded search returns the single-process ranking to the bit;
and a 2-rank pipeline on a real ObliQA slice writes the same vectors, rankings, metrics and mined negatives as one
process, with each corpus encode counted once."""

import itertools
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_distributed import _env, _free_port

from domain_embed.config import ModelConfig
from domain_embed.retrieval.embed import Embedder
from domain_embed.retrieval.shards import shard_bounds

REPO = Path(__file__).resolve().parents[1]
TEXTS = [f"passage {i}: the firm shall notify the regulator " + "of a change in controllers " * (i % 7)
         for i in range(1000)]  # 4 shards of 256 rows

# run once alone (`python ranks.py`) and once under `torchrun --nproc_per_node 2`: the same calls, compared
RANKS_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path

    import numpy as np

    from domain_embed import distributed
    from domain_embed.config import ModelConfig, SearchConfig
    from domain_embed.retrieval.embed import Embedder
    from domain_embed.retrieval.search import search, search_documents

    model, cache, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    texts = json.loads(Path(sys.argv[4]).read_text())
    distributed.init_process_group()
    me, result = distributed.rank(), {}

    def embedder():
        return Embedder(ModelConfig(name="tiny", path=model), cache_dir=cache, device="cpu", show_progress=False)

    dying = os.environ.get("DIE_ON_RANK")
    if dying is not None:  # that rank dies after its first shard; the other finishes its own shards
        first = embedder()
        compute = first._compute

        def die_after_one(*args):
            if me == int(dying) and first.stats.seconds > 0:
                raise RuntimeError("rank died mid-encode")
            return compute(*args)

        first._compute = die_after_one
        try:
            first.encode_documents(texts)
        except Exception as exc:
            result["died"] = f"{exc.__class__.__name__}: {exc}"
        result["shards_left"] = sorted(p.name for p in cache.glob("embeddings/*.shards-*/*"))
    emb = embedder()
    emb.encode_documents(texts)
    emb.encode_queries(texts[:40])
    result["stats"] = vars(emb.stats)

    rng = np.random.default_rng(0)  # doc 0 owns 900 windows: its queries name few documents and are searched again
    windows = rng.standard_normal((1000, 16)).astype(np.float32)
    parents = np.concatenate([np.zeros(900, dtype=np.int64), np.arange(1, 101)])
    queries = windows[:37] + 0.1 * rng.standard_normal((37, 16)).astype(np.float32)
    cfg = SearchConfig(backend="torch", device="cpu", query_block=8)
    docs = search_documents(queries, windows, parents, 101, 20, cfg)
    flat = search(queries, windows, 50, cfg)
    np.savez(out / f"rank{me}.npz", doc_scores=docs.scores, doc_indices=docs.indices, scores=flat.scores,
             indices=flat.indices)
    (out / f"rank{me}.json").write_text(json.dumps(result))
""")


class Killed(BaseException):
    """What a kill looks like to the code it interrupts: no `except Exception` stops it."""


def _embedder(model: Path, cache: Path) -> Embedder:
    return Embedder(ModelConfig(name="tiny", path=str(model)), cache_dir=cache, device="cpu", show_progress=False)


def _entries(cache: Path) -> dict[str, tuple[bytes, dict]]:
    """Each cache entry's vector bytes and meta (but its creation time); no shard folder may be left over."""
    found = {}
    for entry in sorted((cache / "embeddings").iterdir()):
        meta = json.loads((entry / "meta.json").read_text())
        meta.pop("created")
        found[entry.name] = ((entry / "embeddings.npy").read_bytes(), meta)
    return found


def test_shards_depend_on_the_text_count_alone_and_cover_it():
    assert shard_bounds(0, 256) == []
    assert shard_bounds(1000, 256) == [(0, 256), (256, 512), (512, 768), (768, 1000)]
    for n in (1, 255, 256, 257, 262_144, 262_145, 100_000_000):
        bounds = shard_bounds(n, 256)
        assert bounds[0][0] == 0 and bounds[-1][1] == n and len(bounds) <= 1024
        assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    assert shard_bounds(100_000_000, 256)[0] == (0, 97_792)  # 1,023 shards of 150 MB each at 384 dims (fp32)
    assert shard_bounds(100_000_000, 32_768)[0] == (0, 98_304)  # the GPU's shard size: the same at most 1,024


def test_a_killed_encode_resumes_at_its_first_unfinished_shard(tiny_model, tmp_path, monkeypatch):
    whole = _embedder(tiny_model, tmp_path / "whole")
    whole.encode_documents(TEXTS)
    assert (whole.stats.corpus_encodes, whole.stats.shards_encoded, whole.stats.texts_encoded) == (1, 4, 1000)

    killed, calls = _embedder(tiny_model, tmp_path / "cache"), []
    compute = killed._compute

    def die_in_third_shard(*args):
        calls.append(args)
        if len(calls) == 3:
            raise Killed  # the third shard is never published
        return compute(*args)

    monkeypatch.setattr(killed, "_compute", die_in_third_shard)
    with pytest.raises(Killed):
        killed.encode_documents(TEXTS)
    (shards,) = (tmp_path / "cache" / "embeddings").iterdir()
    assert sorted(p.name for p in shards.iterdir()) == ["0-256", "256-512"]  # no half-written shard either

    resumed = _embedder(tiny_model, tmp_path / "cache")
    resumed.encode_documents(TEXTS)
    assert (resumed.stats.corpus_encodes, resumed.stats.shards_encoded, resumed.stats.texts_encoded) == (1, 2, 488)
    assert _entries(tmp_path / "cache") == _entries(tmp_path / "whole")  # and the shards are gone


CONCURRENT_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    import numpy as np

    from domain_embed.config import ModelConfig
    from domain_embed.retrieval.embed import Embedder

    model, cache, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    emb = Embedder(ModelConfig(name="tiny", path=model), cache_dir=cache, device="cpu", show_progress=False,
                   shard_rows=8)
    np.save(out, emb.encode_documents(json.loads(Path(sys.argv[4]).read_text())))
    print(json.dumps(vars(emb.stats)))
""")


def test_two_jobs_encoding_the_same_key_at_once_both_get_the_entry(tiny_model, tmp_path):
    """Two independent processes, one cache, the same texts, 125 small shards: without the key's lock the first to
    assemble deletes the shard folder while the second still publishes and reads shards in it."""
    (tmp_path / "job.py").write_text(CONCURRENT_SCRIPT)
    (tmp_path / "texts.json").write_text(json.dumps(TEXTS))
    jobs = [subprocess.Popen([sys.executable, str(tmp_path / "job.py"), str(tiny_model), str(tmp_path / "cache"),
                              str(tmp_path / f"job{i}.npy"), str(tmp_path / "texts.json")], env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [job.communicate(timeout=300)[0] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    stats = [json.loads(o.strip().splitlines()[-1]) for o in outputs]
    assert sorted(s["corpus_encodes"] for s in stats) == [0, 1]  # one encoded, the other waited and hit the entry
    first, second = (np.load(tmp_path / f"job{i}.npy") for i in range(2))
    assert first.tobytes() == second.tobytes()
    direct = _embedder(tiny_model, None).model.encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(first, direct, atol=1e-6)
    assert [p.name for p in (tmp_path / "cache" / "embeddings").iterdir()] == [next(iter(_entries(tmp_path / "cache")))]


@pytest.fixture(scope="module")
def ranks(tiny_model, tmp_path_factory):
    """RANKS_SCRIPT alone (on one thread, and on two) and on 2 gloo ranks of one thread each whose rank 1 dies in its
    first encode before the rerun: (folder, results of the single process, results of each rank)."""
    tmp = tmp_path_factory.mktemp("sharded")
    (tmp / "ranks.py").write_text(RANKS_SCRIPT)
    (tmp / "texts.json").write_text(json.dumps(TEXTS))
    runs = {"single": [sys.executable], "two": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                "--nproc_per_node", "2"], "threads": [sys.executable]}
    envs = {"single": _env(), "two": {**_env(), "DIE_ON_RANK": "1"}, "threads": {**_env(), "OMP_NUM_THREADS": "2"}}
    procs = {}
    for name, launch in runs.items():
        (tmp / name).mkdir()
        procs[name] = subprocess.Popen([*launch, str(tmp / "ranks.py"), str(tiny_model), str(tmp / name / "cache"),
                                        str(tmp / name), str(tmp / "texts.json")], env=envs[name],
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for proc in procs.values():
        output, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, output[-3000:]
    load = lambda name, r: (json.loads((tmp / name / f"rank{r}.json").read_text()),  # noqa: E731
                            dict(np.load(tmp / name / f"rank{r}.npz")))
    return tmp, load("single", 0), [load("two", r) for r in range(2)]


def test_two_ranks_resume_only_the_unfinished_shards_and_write_the_single_process_entry(ranks):
    tmp, (single, _), two = ranks
    (first, _), (second, _) = two
    assert first["died"] == "RankFailedError: rank 1 failed: RuntimeError: rank died mid-encode"
    assert second["died"] == "RuntimeError: rank died mid-encode"
    # rank 0 finished its shards 0-256, 256-512; rank 1 published 512-768 and died in 768-1000
    assert first["shards_left"] == second["shards_left"] == ["0-256", "256-512", "512-768"]
    # only the unfinished shard, on rank 1, and the one shard of queries (also rank 1's: rank 0 assembles)
    assert [r["stats"]["shards_encoded"] for r in (first, second)] == [0, 2]
    assert [r["stats"]["corpus_encodes"] for r in (first, second)] == [1, 0]  # one encode, counted on rank 0
    assert single["stats"]["shards_encoded"] == 5 and single["stats"]["corpus_encodes"] == 1
    assert _entries(tmp / "two" / "cache") == _entries(tmp / "single" / "cache")


def test_two_threads_write_the_vectors_and_rankings_of_one_thread_per_rank(ranks):
    """Byte identity holds at equal thread counts; across thread counts the kernels sum in another order, so the
    vectors agree to float32 rounding and the searches rank alike."""
    tmp, _, two = ranks
    threads, cache = _entries(tmp / "threads" / "cache"), tmp / "two" / "cache" / "embeddings"
    for name, (_, meta) in _entries(tmp / "two" / "cache").items():
        mine = np.load(tmp / "threads" / "cache" / "embeddings" / name / "embeddings.npy")
        np.testing.assert_allclose(mine, np.load(cache / name / "embeddings.npy"), atol=1e-6)
        assert threads[name][1] == meta
    alone = dict(np.load(tmp / "threads" / "rank0.npz"))
    for _, arrays in two:
        for name in ("doc_indices", "indices"):
            assert np.array_equal(arrays[name], alone[name]), name


def test_each_rank_searches_a_share_and_every_rank_returns_the_single_process_result(ranks):
    _, (_, alone), two = ranks
    for _, arrays in two:
        assert arrays.keys() == alone.keys()
        for name, values in arrays.items():
            assert values.tobytes() == alone[name].tobytes(), name


def test_two_ranks_on_obliqa_write_the_single_process_outputs_and_count_each_encode_once(
        shared_data, tiny_model, tmp_path):
    """`accelerate launch` on 2 gloo ranks against one process, each with its own cache: audit to triplets on a
    slice of ObliQA, searched in blocks of 8 queries so that both ranks search."""
    stages = ["audit", "baseline", "mine", "triplets"]
    common = ["-m", "train", "+domain=beir", f"data.path={shared_data / 'legal' / 'obliqa'}",
              f"model.path={tiny_model}", "budget.max_corpus=300", "budget.max_queries=24",
              "eval.search.query_block=8", "mining.search.query_block=8", f"stages=[{','.join(stages)}]",
              "verbose=true"]  # every line on the console: the ranks' stage lines are counted below
    launch = {"two": [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                      str(REPO / "conf" / "accelerate" / "multi_gpu.yaml"), "--multi_gpu", "--num_processes", "2",
                      "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                      "--main_process_port", str(_free_port())],
              "one": [sys.executable]}
    procs = {name: subprocess.Popen([*cmd, *common, f"cache_dir={tmp_path / name / 'cache'}",
                                     f"hydra.run.dir={tmp_path / name / 'run'}"], cwd=tmp_path, env=_env(),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name, cmd in launch.items()}
    out = {name: proc.communicate(timeout=240)[0] for name, proc in procs.items()}
    for name, proc in procs.items():
        assert proc.returncode == 0, out[name][-4000:]
    one, two = tmp_path / "one", tmp_path / "two"
    report = json.loads((two / "run" / "report.json").read_text())
    assert report["run"]["ran_now"] == stages
    assert report["cost"]["corpus_encodes"] == 1  # the baseline's, shared by 2 ranks; mine and triplets hit the cache
    # the corpus stages ran on both ranks (rank 1 into a scratch folder), the audit on rank 0 alone
    assert {s: out["two"].count(f"stage {s}: running") for s in stages} == {"audit": 1, "baseline": 2, "mine": 2,
                                                                          "triplets": 2}
    shares = re.findall(r"encoded \d+ corpus texts \((\d+) of (\d+) shards\)", out["two"])
    assert len(shares) == 2 and sum(int(mine) for mine, _ in shares) == int(shares[0][1]) > 1  # both ranks encoded
    assert _entries(two / "cache") == _entries(one / "cache")
    for name in ("baseline/metrics.json", "baseline/per_query.json", "mine/mined.jsonl", "mine/stats.json",
                 "triplets/mining_meta.json"):
        assert (two / "run" / name).read_bytes() == (one / "run" / name).read_bytes(), name
    for ranking in (one / "run" / "baseline").glob("ranking_*.npz"):
        mine, theirs = np.load(ranking), np.load(two / "run" / "baseline" / ranking.name)
        assert all(mine[a].tobytes() == theirs[a].tobytes() for a in ("indices", "scores")), ranking.name
    assert not list((two / "cache").rglob("*.shards*")) and not [p for p in two.rglob(".*") if ".tmp-" in p.name]
