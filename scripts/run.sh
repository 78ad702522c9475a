#!/usr/bin/env bash
# The main job: set up, build, then
#   1. train the default Fashion-MNIST teacher   (configs/fmnist_teacher.yaml    -> runs/fmnist_teacher)
#   2. distill the small student from it          (configs/fmnist_student_kd.yaml -> runs/fmnist_student_kd)
# Later stages (pruning, int8 export) are added here as they land. A stage whose run directory
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
stage configs/fmnist_student_kd.yaml runs/fmnist_student_kd "$@"

python3 - <<'PY'
import json
rows = [("teacher", "runs/fmnist_teacher"), ("student (KD)", "runs/fmnist_student_kd")]
print("\n%-14s %10s %14s %12s %10s" % ("model", "params", "test acc (%)", "samples/s", "wall"))
for name, d in rows:
    s = json.load(open(d + "/summary.json"))
    print("%-14s %10d %14.2f %12.0f %9.0fs" % (name, s["params"], s["test_accuracy"],
          s["train_samples_per_second"], s["wall_seconds"]))
PY
