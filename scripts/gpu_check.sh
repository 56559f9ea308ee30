#!/usr/bin/env bash
# GPU machine check, about 6 minutes on one H200; prints one table against the aims (see scripts/gpu_check.py).
# A GPU session runs scripts/gpu_run.sh, which prepares and installs the bundle and keeps the outputs.
#   bash scripts/gpu_check.sh [--data DIR] [--model DIR] [--json out.json] [--profile DIR]
#   bash scripts/gpu_check.sh --bundle DIR [...]   # air-gapped: install DIR (scripts/offline_bundle.py) first,
#                                                  # then check with its venv, model and data
#   bash scripts/gpu_check.sh --quick              # reduced sizes: also runs on a CPU-only machine
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ "${1:-}" = "--bundle" ]; then
  BUNDLE=$(cd "${2:?--bundle needs the bundle folder}" && pwd)
  shift 2
  export VENV=${VENV:-$BUNDLE/venv}
  bash "$BUNDLE/install.sh"
  DATA=(); [ -d "$BUNDLE/data" ] && DATA=(--data "$BUNDLE/data")
  exec "$VENV/bin/python" "$HERE/gpu_check.py" --model "$VENV/model" "${DATA[@]}" "$@"
fi
cd "$HERE/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
exec "$PYTHON" scripts/gpu_check.py "$@"
