#!/usr/bin/env bash
# The dev table of training recipes, then one test run of the winner (README "Choosing the recipe").
#   bash scripts/recipe_table.sh OUT_DIR [override ...]     e.g. data.path=... model.path=... budget=smoke
# 1. Every file of conf/recipe runs on the dev split (eval.split=dev) in one Hydra multirun; the jobs share
#    audit/baseline/mine/triplets, and OUT_DIR/sweep/sweep_summary.md ranks them by dev nDCG@10.
# 2. The first of that ranking, and only it, is evaluated on test once, in its own job folder: its fine-tuned
#    model is reused (the finetune key does not depend on the evaluated split); baseline and evaluate rerun.
# PYTHON (default .venv/bin/python, else python3) runs `-m train`; RECIPES overrides the list of recipes, DOMAIN
# the domain (default legal).
set -euo pipefail
OUT=${1:?usage: recipe_table.sh OUT_DIR [override ...]}
shift
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
RECIPES=${RECIPES:-$(ls conf/recipe | sed 's/\.yaml$//' | paste -sd, -)}
SWEEP="$OUT/sweep"
if [ ! -f "$SWEEP/sweep_summary.json" ]; then  # a finished table is not redone; a killed one resumes its jobs
  "$PYTHON" -m train -m "+domain=${DOMAIN:-legal}" tracking=none eval.split=dev "hydra.sweep.dir=$SWEEP" "+recipe=$RECIPES" "$@"
fi
read -r JOB OVERRIDES < <("$PYTHON" - "$SWEEP/sweep_summary.json" <<'PY'
import json, sys
summary = json.load(open(sys.argv[1]))  # its best job: the first by the ranking it names (summary["rule"])
best = next(j for j in summary["jobs"] if j["job"] == summary["best_job"])
print(best["job"], " ".join(o for o in best["overrides"] if not o.startswith("eval.split=")))
PY
)
echo "chosen on dev: job $JOB ($OVERRIDES); evaluating it once on test"
# shellcheck disable=SC2086  # the job's overrides are Hydra words without spaces
"$PYTHON" -m train $OVERRIDES eval.split=test "hydra.run.dir=$SWEEP/$JOB" "shared_dir=$SWEEP/shared"
