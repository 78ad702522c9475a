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
rows = [("teacher (fp32)", "runs/fmnist_teacher"), ("student (KD, 50% channels, int8 QAT)", "runs/fmnist_student_full")]
print("\n%-38s %8s %9s %14s %10s %10s %8s" % ("model", "params", "nonzero", "test acc (%)", "fp32 bytes", "int8 bytes", "wall"))
for name, d in rows:
    s = json.load(open(d + "/summary.json"))
    print("%-38s %8d %9d %14.2f %10d %10s %7.0fs" % (name, s["params"], s["nonzero_params"], s["test_accuracy"],
          s["fp32_bytes"], s.get("int8_bytes", "-") if "qat" in s else "-", s["wall_seconds"]))
PY
