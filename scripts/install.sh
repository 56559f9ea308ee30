#!/usr/bin/env bash
# Fresh-machine set-up: a virtualenv in .venv with torch pinned first (an unpinned torch pulls a multi-GB CUDA
# build), then this package with its extras: by default the CPU FAISS, offline-weights and dev extras.
# Reuses an existing .venv (it is created only when .venv/bin/python is missing); one that already has FAISS GPU
# keeps it (EXTRAS defaults to dev,gpu,offline there), so `bash .ci/run` on a GPU box never adds faiss-cpu beside it.
# On a GPU box: EXTRAS=gpu,offline,wandb bash scripts/install.sh
#   With the gpu extra, torch comes from TORCH_INDEX_URL (default the CUDA 12.8 wheels): faiss-gpu-cu12 needs the
#   CUDA 12 runtime, so torch's CUDA major must be 12 too, and the install stops if it is not.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
has_faiss_gpu() {
  .venv/bin/python -c 'import importlib.metadata as m, sys
sys.exit(not any((d.metadata["Name"] or "").lower().startswith("faiss-gpu") for d in m.distributions()))'
}
if [ -z "${EXTRAS:-}" ]; then
  if has_faiss_gpu; then EXTRAS=dev,gpu,offline; else EXTRAS=dev,cpu,offline; fi
fi
.venv/bin/python -m pip install -q --upgrade pip
if [[ ",$EXTRAS," == *,gpu,* ]]; then
  TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cu128}
  .venv/bin/python -m pip install -q "$TORCH_SPEC" --index-url "$TORCH_INDEX_URL"
  cuda=$(.venv/bin/python -c 'import torch; print(torch.version.cuda or "none")')
  if [[ $cuda != 12.* ]]; then
    echo "install: torch is built for CUDA $cuda but faiss-gpu-cu12 needs CUDA 12: reinstall torch from a CUDA 12" \
      "index (pip install --force-reinstall $TORCH_SPEC --index-url $TORCH_INDEX_URL)" >&2
    exit 1
  fi
else
  .venv/bin/python -m pip install -q "$TORCH_SPEC"
fi
echo "installing domain-embed[$EXTRAS] and its dependencies (a few minutes on a fresh machine)"
.venv/bin/python -m pip install --progress-bar on -e ".[$EXTRAS]" | { grep -v "^Requirement already satisfied" || true; }
echo "installed: $(.venv/bin/python -c 'import domain_embed, torch; print("domain-embed", domain_embed.__version__, "torch", torch.__version__)')"
echo "next: HF_HUB_OFFLINE=1 .venv/bin/python -m train +domain=legal data.path=../shared/data/legal/obliqa budget=smoke" \
  "(python -m train --help for more)"
