#!/usr/bin/env bash
# Tunes the issue-4 KD student on a validation split (the last 5000 training samples), never on the
# test set. Runs pairs of variants side by side (one thread each) and prints validation accuracy.
# Needs runs/fmnist_teacher. Usage: scripts/kd_tune.sh [OUT]   (default runs_tune)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$QD_ROOT"
QD="$QD_BUILD/qdistill"
out="${1:-runs_tune}"
mkdir -p "$out/logs"
common=(--set data.validation_size=5000 --set experiment.output_dir="$out" --set trainer.threads=1 --resume)
run() {  # NAME CONFIG OVERRIDES...
  local name=$1 cfg=$2; shift 2
  "$QD" train "configs/fmnist_student_$cfg.yaml" "${common[@]}" --set experiment.name="$name" "$@" \
    > "$out/logs/$name.log" 2>&1
}
# Each line: two variants that run side by side.
run scratch_e15 scratch & run kd_a09_T4_e15 kd & wait
run kd_a10_T4_e15 kd --set distill.alpha=1.0 & run kd_a09_T2_e15 kd --set distill.temperature=2 & wait
run kd_a09_T8_e15 kd --set distill.temperature=8 & run kd_a05_T4_e15 kd --set distill.alpha=0.5 & wait
run scratch_e30 scratch --set trainer.epochs=30 & run kd_a09_T4_e30 kd --set trainer.epochs=30 & wait
python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
for name in sorted(os.listdir(out)):
    p = os.path.join(out, name, "summary.json")
    if os.path.exists(p):
        s = json.load(open(p))
        print(f"{name:16s} {s['eval_split']} accuracy: last epoch {s['final_test_accuracy']:.2f}, best {s['test_accuracy']:.2f}")
PY
