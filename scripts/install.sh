#!/usr/bin/env bash
# Fresh-machine set-up: a virtualenv in .venv with CPU torch pinned first (an unpinned torch pulls a
# multi-GB CUDA build), then this package with the CPU FAISS, offline-weights and dev extras.
# Reuses an existing .venv (it is created only when .venv/bin/python is missing).
# On a GPU box: EXTRAS=gpu,offline,wandb TORCH_SPEC=torch bash scripts/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS:-dev,cpu,offline}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "$TORCH_SPEC"
echo "installing domain-embed[$EXTRAS] and its dependencies (a few minutes on a fresh machine)"
.venv/bin/python -m pip install --progress-bar on -e ".[$EXTRAS]" | { grep -v "^Requirement already satisfied" || true; }
echo "installed: $(.venv/bin/python -c 'import domain_embed, torch; print("domain-embed", domain_embed.__version__, "torch", torch.__version__)')"
echo "next: HF_HUB_OFFLINE=1 .venv/bin/python -m train +domain=legal data.path=../shared/data/legal/obliqa budget=smoke" \
  "(python -m train --help for more)"
