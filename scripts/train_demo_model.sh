#!/usr/bin/env bash
# Rebuild assets/demo-model with the recipe of the shipped demo model (assets/demo-model/MODEL_CARD.md):
# 8 epochs from scratch on SynRS, then three short fine-tunes on relation-rich SynRS ("all X near Y" weighted up,
# fresh scenes each time). About 65 minutes on an otherwise idle 2-core CPU; every stage resumes by run name.
#
#   bash scripts/train_demo_model.sh            # runs/ and data/ in the repository, result in assets/demo-model
#   RUNS=/tmp/runs OUT=/tmp/demo bash scripts/train_demo_model.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
RUNS=${RUNS:-runs}
OUT=${OUT:-assets/demo-model}
CONFIG=configs/synrs-learning.yaml
NEAR=(--set p_multi=0.6 --set p_single=0.25 --set "template_weights={multi/near: 50, none/near_none: 3}")
NEAR_MORE=(--set p_multi=0.7 --set p_single=0.15 --set "template_weights={multi/near: 50, none/near_none: 3}")

synrs() {  # synrs OUT ARGS...: generate a SynRS set unless it is already there
  local out=$1; shift
  [[ -f $out/synrs_info.json ]] || "$PY" jobs/make_synthetic.py --out "$out" --size 96 --no-progress "$@"
}

fp16() {  # fp16 RUN OUT: evaluate RUN's best/ on SynRS val and test, write its fp16 weights to OUT
  "$PY" benchmarks/train_learning.py --data data/synrs96 --runs "$RUNS" --name "$1" --skip-train --demo-out "$2"
}

# Stage 1: from scratch, 8 epochs (the learning preset).
synrs data/synrs96 --seed 0 --train 3000 --val 300 --test 300
"$PY" jobs/train.py --config $CONFIG --data-root data/synrs96 --storage-path "$RUNS" --name demo-base
fp16 demo-base "$RUNS/demo-base-fp16" || [[ $? -eq 1 ]]  # 1 = learning target missed; weights written

# Stages 2-4: fine-tune on relation-rich sets; each starts from the previous stage's best.
synrs data/synrs96-near --seed 1 --train 3000 --val 300 "${NEAR[@]}"
"$PY" jobs/train.py --config $CONFIG --data-root data/synrs96-near --storage-path "$RUNS" --name demo-near \
  --max-epochs 3 --set init_weights="$RUNS/demo-base-fp16" --set model_overrides.optim.lr=5e-4
synrs data/synrs96-near2 --seed 2 --train 4500 --val 300 "${NEAR_MORE[@]}"
"$PY" jobs/train.py --config $CONFIG --data-root data/synrs96-near2 --storage-path "$RUNS" --name demo-near2 \
  --max-epochs 2 --set init_weights="$RUNS/demo-near/best" --set model_overrides.optim.lr=5e-4
synrs data/synrs96-near3 --seed 3 --train 4500 --val 300 "${NEAR_MORE[@]}"
"$PY" jobs/train.py --config $CONFIG --data-root data/synrs96-near3 --storage-path "$RUNS" --name demo-near3 \
  --max-epochs 2 --set init_weights="$RUNS/demo-near2/best" --set model_overrides.optim.lr=5e-4

fp16 demo-near3 "$OUT" || [[ $? -eq 1 ]]
echo "demo model written to $OUT; update its MODEL_CARD.md from the tables above"
