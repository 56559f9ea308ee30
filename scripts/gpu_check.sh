#!/usr/bin/env bash
# GPU machine check in under 5 minutes on one H100; prints one table (see scripts/gpu_check.py).
#   bash scripts/gpu_check.sh [--data DIR] [--json out.json]
#   bash scripts/gpu_check.sh --quick      # reduced sizes: also runs on a CPU-only machine
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
exec "$PYTHON" scripts/gpu_check.py "$@"
