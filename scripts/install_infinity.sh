#!/usr/bin/env bash
# A real OpenAI-compatible embedding server for the served-model tests (tests/test_served_server.py): Infinity in a
# virtualenv of its own, since its pins (numpy<2, sentence-transformers<4, transformers<=5.0) conflict with ours,
# as a real deployment's would. Idempotent: an existing install is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${INFINITY_VENV:-.venv/infinity}
if [ -x "$VENV/bin/infinity_emb" ]; then
    echo "infinity: $VENV already installed"
    exit 0
fi
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q torch==2.13.0 'infinity-emb[server,torch]==0.0.78'
echo "infinity: installed in $VENV ($("$VENV/bin/python" -c 'import infinity_emb; print(infinity_emb.__version__)'))"
