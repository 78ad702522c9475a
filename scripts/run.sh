#!/usr/bin/env bash
# The main job: set up, build, then
#   1. train the default Fashion-MNIST teacher   (configs/fmnist_teacher.yaml    -> runs/fmnist_teacher)
#   2. the student: distilled from it, channel-pruned to 50% and trained with int8 QAT, in one
#      experiment                                 (configs/fmnist_student_full.yaml -> runs/fmnist_student_full)
# The int8 export is added here when it lands. A stage whose run directory
# already has summary.json is skipped (delete the directory to redo it); an interrupted stage
# resumes from its last checkpoint. Extra arguments go to every `qdistill train`, e.g.
#   scripts/run.sh --set trainer.epochs=2
# Under mpirun: QD_LAUNCH="mpirun -np 2" scripts/run.sh --set trainer.threads=1
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

"$QD_ROOT/scripts/setup.sh"
qd_build
cd "$QD_ROOT"
QD="$QD_BUILD/qdistill"
LAUNCH=(${QD_LAUNCH:-})

stage() {  # stage CONFIG RUN_DIR [args...]
  local config="$1" dir="$2"; shift 2
  if [ -f "$dir/summary.json" ] && [ $# -eq 0 ]; then
    qd_note "$dir already finished (summary.json); delete it to train again"
  else
    qd_note "training $config"
    "${LAUNCH[@]}" "$QD" train "$config" --resume "$@"
  fi
}

stage configs/fmnist_teacher.yaml runs/fmnist_teacher "$@"
stage configs/fmnist_student_full.yaml runs/fmnist_student_full "$@"

python3 - <<'PY'
import json
t = json.load(open("runs/fmnist_teacher/summary.json"))
s = json.load(open("runs/fmnist_student_full/summary.json"))
p = s.get("pruned", {})
print("\n%-44s %9s %14s %11s %11s %8s" % ("model", "params", "test acc (%)", "fp32 bytes", "int8 bytes", "wall"))
print("%-44s %9d %14.2f %11d %11s %7.0fs" % ("teacher (fp32)", t["params"], t["test_accuracy"], t["fp32_bytes"], "-",
                                             t["wall_seconds"]))
print("%-44s %9d %14.2f %11d %11d %7.0fs" % ("student: KD, 50% channels removed, int8 (sim.)", p.get("params", s["params"]),
      p.get("test_accuracy", s["test_accuracy"]), p.get("fp32_bytes", s["fp32_bytes"]), p.get("int8_bytes", s["int8_bytes"]),
      s["wall_seconds"]))
PY
