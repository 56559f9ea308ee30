"""Air-gapped install bundle: everything a GPU box without internet needs to run domain-embed.

    python scripts/offline_bundle.py --out DIR [--python-version 3.12] [--platform manylinux_2_28_x86_64]
        [--have FREEZE.txt] [--extras wandb,sweep] [--model minilm]
        [--data ../shared/data/legal/obliqa --max-corpus 3000]

DIR gets: `wheels/` (the package's own wheel and every runtime dependency the target lacks, for the target's
Python and platform), `model/` (the model's weights in fp16 safetensors with its tokenizer: half the bytes;
install.sh expands them to fp32), `data/` (an optional BEIR slice), `scripts/` (the GPU check, so it runs
without the repository), `install.sh` (scripts/bundle_install.sh) and `manifest.json` (every file's size and
sha256, and why each wheel is there). `--have` is the target's `pip freeze`: a package it lists is never
carried and never replaced (a version that does not satisfy the package is an error here, not a surprise
there); a bare name means "present, version unknown" and is trusted. torch is never carried: the
target's CUDA build stays. `--extras` carries the package's extras too (wandb for tracking, sweep for the Optuna and
SLURM launchers, gpu for FAISS GPU), and install.sh installs the package with them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from email.parser import HeaderParser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
NEVER_CARRIED = {"torch"}  # the target's own (CUDA) build; a bundle that replaced it would break the GPU
# the check runs from the bundle alone: gpu_check, a command over the package (domain_embed.gpu_check)
CHECK_SCRIPTS = ("gpu_check.py", "gpu_check.sh")
MAX_CANDIDATES = 8  # older releases tried when the newest needs a version the target does not have
_MANYLINUX = re.compile(r"^manylinux_2_(\d+)_(\w+)$")
_LEGACY = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}


class BundleError(Exception):
    """The bundle cannot be built as asked (a conflict with the target, a missing model or data set)."""


@dataclass
class Target:
    python_version: str | None  # None: this interpreter
    platform: str | None  # None: this machine
    have: dict[str, str | None]  # canonical name -> version (None: present, version unknown)

    def platforms(self) -> list[str]:
        """pip matches --platform tags exactly: a manylinux_2_28 box also runs every older manylinux wheel."""
        if self.platform is None:
            return []
        m = _MANYLINUX.match(self.platform)
        if not m:
            return [self.platform]
        glibc, arch = int(m.group(1)), m.group(2)
        tags = [f"manylinux_2_{n}_{arch}" for n in range(glibc, 4, -1)]
        return tags + [f"{legacy}_{arch}" for legacy, n in _LEGACY.items() if n <= glibc]

    def marker_env(self) -> dict[str, str]:
        version = self.python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
        tag = _MANYLINUX.match(self.platform or "")
        machine = tag.group(2) if tag else platform.machine()
        return {"python_version": version, "python_full_version": f"{version}.0", "os_name": "posix",
                "sys_platform": "linux", "platform_system": "Linux", "platform_machine": machine,
                "implementation_name": "cpython", "platform_python_implementation": "CPython",
                "platform_release": "", "platform_version": "", "implementation_version": f"{version}.0"}


def parse_have(path: Path | None) -> dict[str, str | None]:
    """`pip freeze` lines: name==version; `name @ url` and bare names count as present, version unknown."""
    if path is None:
        return {}
    have: dict[str, str | None] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:(==|@)\s*(\S+))?", line)
        if not match:
            raise BundleError(f"{path}:{number}: cannot read '{raw}' (expected name==version, as pip freeze writes)")
        name, op, value = match.groups()
        have[canonicalize_name(name)] = value.split("+")[0] if op == "==" else None
    return have


def wheel_metadata(wheel: Path) -> tuple[str, str, list[str]]:
    """Name, version and Requires-Dist lines of a wheel, read from its METADATA."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        headers = HeaderParser().parsestr(zf.read(meta).decode("utf-8"))
    return headers["Name"], headers["Version"], headers.get_all("Requires-Dist") or []


@dataclass
class Resolution:
    carried: dict[str, dict] = field(default_factory=dict)  # canonical name -> {file, version, needed_by, spec}
    kept: dict[str, str] = field(default_factory=dict)  # on the target already: name -> version or "unknown"




def resolve(roots: list[tuple[str, str]], target: Target, wheels: Path, download) -> Resolution:
    """Walks the requirement graph from `roots` ((requirement, who needs it)), carrying what the target lacks.

    Each carried package is the newest release whose own requirements the target's pinned versions satisfy
    (up to MAX_CANDIDATES older releases are tried), so a bundle never asks the target to replace anything."""
    env = target.marker_env()
    res = Resolution()
    queue = list(roots)
    while queue:
        text, needed_by = queue.pop(0)
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name in target.have:
            found = target.have[name]
            if found is not None and not req.specifier.contains(Version(found), prereleases=True):
                raise BundleError(f"{needed_by} needs {req} but the target has {req.name}=={found}, which a bundle "
                                  f"never replaces: update it on the target first, or build against another version")
            res.kept[name] = found or "unknown"
            continue
        if name in NEVER_CARRIED:
            raise BundleError(f"the target has no {req.name} ({needed_by} needs {req}): install its own CUDA build "
                              "first and list it in --have; a bundle never carries it")
        if name in res.carried:
            carried = res.carried[name]
            if not req.specifier.contains(Version(carried["version"]), prereleases=True):
                raise BundleError(f"{needed_by} needs {req} but {carried['needed_by']} needed "
                                  f"{req.name}=={carried['version']}")
            continue
        wheel, version, requires = _best_candidate(req, needed_by, target, env, wheels, download)
        res.carried[name] = {"file": wheel.name, "version": version, "needed_by": needed_by, "spec": str(req)}
        for dep in requires:
            dep_req = Requirement(dep)
            if dep_req.marker is None or any(dep_req.marker.evaluate({**env, "extra": e})
                                             for e in (req.extras or {""})):
                dep_req.marker = None
                queue.append((str(dep_req), f"{req.name} {version}"))
    return res


def _best_candidate(req: Requirement, needed_by: str, target: Target, env: dict, wheels: Path, download):
    """Downloads the newest wheel of `req` whose requirements do not conflict with the target's versions."""
    excluded: list[str] = []
    for _ in range(MAX_CANDIDATES):
        spec = ",".join([str(req.specifier), *excluded]).strip(",")
        wheel = download(f"{req.name}{spec}", wheels)
        _, version, requires = wheel_metadata(wheel)
        conflict = _conflict_with_target(requires, target, env)
        if conflict is None:
            return wheel, version, requires
        wheel.unlink()
        excluded.append(f"!={version}")
    raise BundleError(f"no release of {req} (needed by {needed_by}) among the newest {MAX_CANDIDATES} works with "
                      f"the target's versions: {conflict}")


def _conflict_with_target(requires: list[str], target: Target, env: dict) -> str | None:
    for dep in requires:
        req = Requirement(dep)
        if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
            continue
        found = target.have.get(canonicalize_name(req.name))
        if found is not None and not req.specifier.contains(Version(found), prereleases=True):
            return f"it needs {req}, the target has {req.name}=={found}"
    return None


def pip_downloader(target: Target):
    """`pip download --no-deps` of one requirement for the target's Python and platform (binary wheels only)."""
    def download(requirement: str, folder: Path) -> Path:
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", tmp,
                   requirement]
            if target.python_version:
                cmd += ["--python-version", target.python_version, "--implementation", "cp"]
            for tag in target.platforms():
                cmd += ["--platform", tag]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            from_sdist = proc.returncode != 0  # some pure-Python packages ship only an sdist (antlr4 4.9)
            if from_sdist:
                proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp,
                                       requirement], capture_output=True, text=True)
            built = list(Path(tmp).glob("*.whl"))
            if proc.returncode != 0 or not built:
                raise BundleError(f"pip download {requirement}: {proc.stderr.strip().splitlines()[-1]}")
            if from_sdist and not built[0].name.endswith("-none-any.whl"):
                raise BundleError(f"{requirement} has no wheel for the target, and its sdist builds a wheel for "
                                  f"this machine only ({built[0].name})")
            return Path(shutil.move(built[0], folder / built[0].name))
    return download


def build_package_wheel(wheels: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(wheels), str(REPO)], check=True, capture_output=True)
    return next(wheels.glob("domain_embed-*.whl"))


def model_source(name: str) -> Path:
    """A conf/model name (its packaged weights) or a local sentence-transformers directory."""
    path = Path(name)
    if path.is_dir():
        return path
    import importlib

    from omegaconf import OmegaConf

    yaml = REPO / "conf" / "model" / f"{name}.yaml"
    if not yaml.exists():
        raise BundleError(f"--model {name}: neither a directory nor a conf/model name")
    packaged = OmegaConf.load(yaml).get("packaged")
    if not packaged:
        raise BundleError(f"--model {name}: no packaged weights (conf/model/{name}.yaml); pass a local directory")
    try:
        return Path(importlib.import_module(packaged).get_model_path())
    except ImportError as exc:
        raise BundleError(f"--model {name}: install its weights package first ({packaged})") from exc


def copy_model_fp16(source: Path, dest: Path) -> None:
    """Every file of the sentence-transformers directory, with float weights stored as fp16 safetensors.
    Other weight formats (pytorch_model.bin, ONNX, OpenVINO) are left out: the safetensors are enough."""
    from safetensors.torch import load_file, save_file

    weights = sorted(source.rglob("*.safetensors"))
    if not weights:
        raise BundleError(f"{source}: no .safetensors weights to bundle")
    skip = {".bin", ".onnx", ".h5", ".msgpack", ".ot"}
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        rel = file.relative_to(source)
        if file.suffix in skip or {"onnx", "openvino"} & set(rel.parts):
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        if file.suffix == ".safetensors":
            tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(file).items()}
            save_file({k: v.contiguous() for k, v in tensors.items()}, dest / rel, metadata={"format": "pt"})
        else:
            shutil.copy2(file, dest / rel)


def write_data_slice(source: Path, dest: Path, max_corpus: int | None, seed: int) -> dict:
    """A BEIR folder: every split's queries kept whose positives fit in `max_corpus` documents (the package's
    own slicing), written in the same layout."""
    from domain_embed.config import DataConfig
    from domain_embed.data.loader import load_domain_data

    data = load_domain_data(DataConfig(path=str(source)))
    if max_corpus is not None:
        data = _fit(data, max_corpus, seed)
    (dest / "qrels").mkdir(parents=True)
    with (dest / "corpus.jsonl").open("w", encoding="utf-8") as f:
        for doc_id, title, text in zip(data.corpus_ids, data.corpus_titles, data.corpus_texts, strict=True):
            f.write(json.dumps({"_id": doc_id, "title": title, "text": text}, ensure_ascii=False) + "\n")
    with (dest / "queries.jsonl").open("w", encoding="utf-8") as f:
        for qid, text in sorted(data.queries.items()):
            f.write(json.dumps({"_id": qid, "text": text}, ensure_ascii=False) + "\n")
    for split, qrels in data.qrels.items():
        rows = [f"{q}\t{d}\t{s}\n" for q in sorted(qrels) for d, s in sorted(qrels[q].items())]
        (dest / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(rows), encoding="utf-8")
    return {"source": str(source), "documents": len(data), "queries": {s: len(q) for s, q in data.qrels.items()},
            "max_corpus": max_corpus, "seed": seed}


def _fit(data, max_corpus: int, seed: int):
    """The largest per-split query count whose positives leave room in `max_corpus` (at least a fifth of it for
    distractors, so retrieval stays a search and not a lookup)."""
    lo, hi = 1, max(len(q) for q in data.qrels.values())
    while lo < hi:
        mid = (lo + hi + 1) // 2
        positives = len({d for q in data.sliced(mid, None, seed).qrels.values() for rel in q.values() for d in rel})
        lo, hi = (mid, hi) if positives <= 0.8 * max_corpus else (lo, mid - 1)
    return data.sliced(lo, max_corpus, seed)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def package_requirements(requires: list[str], env: dict, extras: list[str]) -> list[str]:
    """The package's requirements on the target: the core ones and those of each requested extra (an unknown
    extra is an error here, not a missing module there)."""
    known = {m.group(1) for r in requires if (m := re.search(r"""extra\s*==\s*["']([\w-]+)["']""", r))}
    if unknown := sorted(set(extras) - known):
        raise BundleError(f"unknown extra(s) {', '.join(unknown)}: the package has {', '.join(sorted(known))}")
    return [r for r in requires if Requirement(r).marker is None
            or any(Requirement(r).marker.evaluate({**env, "extra": e}) for e in ("", *extras))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="the bundle folder (must not exist yet)")
    ap.add_argument("--python-version", help="the target's Python, e.g. 3.12 (default: this interpreter's)")
    ap.add_argument("--platform", help="the target's wheel platform, e.g. manylinux_2_28_x86_64 (default: this "
                                       "machine's)")
    ap.add_argument("--have", type=Path, help="the target's `pip freeze`: what it has is never carried")
    ap.add_argument("--extras", default="", help="the package's extras to carry, comma-separated (e.g. wandb,sweep)")
    ap.add_argument("--model", default="minilm", help="a conf/model name with packaged weights, or a local "
                                                      "sentence-transformers directory")
    ap.add_argument("--data", type=Path, help="a BEIR folder to carry")
    ap.add_argument("--max-corpus", type=int, help="with --data: at most this many documents (a slice)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.out.exists():
        print(f"error: {args.out} exists: a bundle is built into a new folder", file=sys.stderr)
        return 2
    try:
        return build(args)
    except BundleError as exc:
        shutil.rmtree(args.out, ignore_errors=True)
        print(f"error: {exc}", file=sys.stderr)
        return 2


def build(args: argparse.Namespace) -> int:
    target = Target(args.python_version, args.platform, parse_have(args.have))
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    wheels = tmp / "wheels"
    wheels.mkdir(parents=True)
    package = build_package_wheel(wheels)
    _, version, requires = wheel_metadata(package)
    env = target.marker_env()
    extras = [e for e in args.extras.split(",") if e]
    roots = [(r, f"domain-embed {version}") for r in package_requirements(requires, env, extras)]
    resolution = resolve(roots, target, wheels, pip_downloader(target))
    copy_model_fp16(model_source(args.model), tmp / "model")
    data = write_data_slice(args.data, tmp / "data", args.max_corpus, args.seed) if args.data else None
    (tmp / "scripts").mkdir()
    for name in CHECK_SCRIPTS:
        shutil.copy2(REPO / "scripts" / name, tmp / "scripts" / name)
    shutil.copy2(REPO / "scripts" / "bundle_install.sh", tmp / "install.sh")
    files = {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(tmp.rglob("*")) if p.is_file()}
    total = sum(f["bytes"] for f in files.values())
    manifest = {"package": f"domain-embed {version}", "python_version": args.python_version or "this interpreter",
                "platform": args.platform or "this machine", "have": str(args.have) if args.have else None,
                "extras": extras, "carried": resolution.carried, "kept_from_target": resolution.kept,
                "model": args.model, "data": data, "files": files, "total_bytes": total}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    tmp.rename(args.out)
    by_part: dict[str, int] = {}
    for name, f in files.items():
        part = name.split("/", 1)[0] if "/" in name else "other"
        by_part[part] = by_part.get(part, 0) + f["bytes"]
    print(f"bundle {args.out}: {len(resolution.carried)} wheels carried ({', '.join(sorted(resolution.carried))}), "
          f"{len(resolution.kept)} packages left to the target")
    print("  " + ", ".join(f"{part} {n / 2**20:.1f} MiB" for part, n in sorted(by_part.items())))
    print(f"total {total / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
