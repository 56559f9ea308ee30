#!/usr/bin/env bash
# install.sh of an offline bundle (scripts/offline_bundle.py copies it in): no network needed.
# Checks every file against manifest.json, makes a venv at $VENV (default <bundle>/venv) that also sees the
# packages of $PYTHON (default python3; torch and CUDA stay the system's), installs the package from wheels/
# with --no-index, and expands the fp16 model to fp32 at $VENV/model (training keeps fp32 master weights).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python3}
VENV=${VENV:-$HERE/venv}
"$PYTHON" - "$HERE" <<'PY'
import hashlib, json, pathlib, sys
root = pathlib.Path(sys.argv[1])
files = json.loads((root / "manifest.json").read_text())["files"]
bad = [f for f, m in files.items()
       if not (root / f).is_file() or hashlib.sha256((root / f).read_bytes()).hexdigest() != m["sha256"]]
sys.exit(f"bundle damaged (missing or changed): {', '.join(bad)}" if bad else 0)
PY
# a venv without pip (ensurepip would also bring an old setuptools that shadows the system's), driven by the
# system's pip; ensurepip's only where the system has no pip
if "$PYTHON" -m pip --version >/dev/null 2>&1; then
  "$PYTHON" -m venv --without-pip "$VENV"
  PIP=("$PYTHON" -m pip --python "$VENV/bin/python")
else
  "$PYTHON" -m venv "$VENV"
  PIP=("$VENV/bin/python" -m pip)
fi
# the packages $PYTHON sees, its own venv's included (--system-site-packages would miss those), after the bundle's
PURELIB=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$PYTHON" - > "$PURELIB/_target_system.pth" <<'PY'
import site, sys
paths = dict.fromkeys(site.getsitepackages() + sys.path)
print("\n".join(p for p in paths if p.endswith(("site-packages", "dist-packages"))))
PY
WHEEL=$(ls "$HERE"/wheels/domain_embed-*.whl)
EXTRAS=$("$PYTHON" -c 'import json, sys; print(",".join(json.load(open(sys.argv[1])).get("extras", [])))' \
  "$HERE/manifest.json")
[ -z "$EXTRAS" ] || WHEEL="$WHEEL[$EXTRAS]"  # the extras offline_bundle.py --extras carried
"${PIP[@]}" install --no-index --no-cache-dir --disable-pip-version-check --find-links "$HERE/wheels" "$WHEEL"
"$VENV/bin/python" - "$HERE/model" "$VENV/model" <<'PY'
import pathlib, shutil, sys
from safetensors.torch import load_file, save_file
src, dst = map(pathlib.Path, sys.argv[1:])
shutil.rmtree(dst, ignore_errors=True)
shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors"))
for f in src.rglob("*.safetensors"):
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in load_file(f).items()}
    save_file(tensors, dst / f.relative_to(src), metadata={"format": "pt"})
PY
"$VENV/bin/python" -c 'import domain_embed, torch
print("installed: domain-embed", domain_embed.__version__, "| torch", torch.__version__, "| CUDA", torch.cuda.is_available())'
DATA=""
[ -d "$HERE/data" ] && DATA=" data.path=$HERE/data"
echo "next: HF_HUB_OFFLINE=1 $VENV/bin/python -m train +domain=beir model.path=$VENV/model$DATA"
echo "  or: bash $HERE/scripts/gpu_check.sh --bundle $HERE"
