#!/usr/bin/env bash
# Issue-4 experiment: the small student trained alone vs distilled from the default teacher,
# same epochs and data, over several seeds; prints mean +- std test accuracy of each.
# Needs runs/fmnist_teacher (scripts/run.sh). Two runs at a time, one thread each (2 cores).
# Usage: scripts/kd_vs_scratch.sh [SEEDS...]     (default: 0 1 2; runs go to $QD_KD_OUT, default runs_kd)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$QD_ROOT"
QD="$QD_BUILD/qdistill"
seeds=("${@:-0 1 2}")
[ $# -eq 0 ] && seeds=(0 1 2)
[ -f runs/fmnist_teacher/summary.json ] || { echo "runs/fmnist_teacher missing: run scripts/run.sh first"; exit 2; }
out="${QD_KD_OUT:-runs_kd}"
mkdir -p "$out/logs"
for s in "${seeds[@]}"; do
  for v in scratch kd; do
    "$QD" train "configs/fmnist_student_$v.yaml" --resume --set experiment.seed="$s" --set experiment.name="${v}_s$s" \
      --set experiment.output_dir="$out" --set trainer.threads=1 > "$out/logs/${v}_s$s.log" 2>&1 &
  done
  wait
done
python3 - "$out" "${seeds[@]}" <<'PY'
import json, statistics, sys
out, seeds = sys.argv[1], sys.argv[2:]
res = {}
for v in ("scratch", "kd"):
    acc = [json.load(open(f"{out}/{v}_s{s}/summary.json"))["final_test_accuracy"] for s in seeds]
    res[v] = acc
    sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
    print(f"{v:8s} last-epoch test accuracy over seeds {seeds}: " + ", ".join(f"{a:.2f}" for a in acc)
          + f"  -> {statistics.mean(acc):.2f} +- {sd:.2f}")
print(f"KD - scratch: {statistics.mean(res['kd']) - statistics.mean(res['scratch']):+.2f} points (goal >= +0.5)")
PY
