#!/usr/bin/env bash
# The main job: set up, build, then train the default Fashion-MNIST teacher
# (configs/fmnist_teacher.yaml). Later stages (distilled, pruned, int8 student; export) are
# added here as they land. Extra arguments go to `qdistill train`, e.g.
#   scripts/run.sh --set trainer.epochs=2
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

"$QD_ROOT/scripts/setup.sh"
qd_build
cd "$QD_ROOT"
QD="$QD_BUILD/qdistill"

teacher_dir="runs/fmnist_teacher"
if [ -f "$teacher_dir/summary.json" ] && [ $# -eq 0 ]; then
  qd_note "teacher already trained ($teacher_dir/summary.json); delete $teacher_dir to train it again"
else
  qd_note "training the teacher: configs/fmnist_teacher.yaml"
  "$QD" train configs/fmnist_teacher.yaml --resume "$@"
fi
"$QD" eval "$teacher_dir"
cat "$teacher_dir/summary.json"
