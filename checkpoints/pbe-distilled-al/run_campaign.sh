#!/bin/bash
# Active-learning distillation campaign (issue 23), as run in the background of a session:
#   nohup nice -n 5 bash checkpoints/pbe-distilled-al/run_campaign.sh > /tmp/distil_campaign.log 2>&1 &
# from the repository root, with the package's environment active (the [teacher] extra installed). Round 0 (checkpoints/pbe-distilled-al/round0.yaml, a plain `train` run) must have
# written round0/best.safetensors. Round 1: exploration + teacher labels + selection, then training until
# STOP_AT (UTC), resumably. Next session: rerun this script with a later STOP_AT: every phase that finished
# is skipped and the training continues from roundN/state.pt (ROUNDS=2: round 2 after round 1).
set -euo pipefail
STOP_AT=${STOP_AT:-22:40}
ROUNDS=${ROUNDS:-1}  # rounds from round 1 (finished rounds are skipped)
export OMP_NUM_THREADS=1
OUT=checkpoints/pbe-distilled-al
ARGS=(--out "$OUT" --init "$OUT/round0/best.safetensors" --teacher sevennet --first-round 1 --rounds "$ROUNDS"
      --explore-systems 100 --clean-fraction 0.15 --md-systems 25 --teacher-calls 550 --teacher-relax-systems 25
      --max-new-frames 1500 --train-steps 4000 --train-option val_every=250 --lr 5e-4 --warmup-steps 100 --threads 1 --seed 1 --no-progress)
test -f "$OUT/round0/best.safetensors" || { echo "round 0 has not written $OUT/round0/best.safetensors"; exit 2; }
python -m equiformer_calc.cli distil "${ARGS[@]}" --stop-after select
LIMIT=$(( $(date -u -d "$STOP_AT" +%s) - $(date -u +%s) - 480 ))  # the trainer checks its clock every val_every steps
if [ "$LIMIT" -lt 600 ]; then echo "less than 10 min to $STOP_AT: not starting the training"; exit 0; fi
python -m equiformer_calc.cli distil "${ARGS[@]}" --time-limit "$LIMIT"
