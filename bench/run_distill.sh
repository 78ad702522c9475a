#!/usr/bin/env bash
# Distillation benchmark (issue 4): KD epoch time with the teacher-output cache against
# recomputing the teacher every step, side by side, same student, same data. Needs the teacher
# run (runs/fmnist_teacher, from scripts/run.sh). Usage: bench/run_distill.sh [STEPS]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${QD_BUILD:-$root/build}"
steps="${1:-60}"
cd "$root"
[ -d runs/fmnist_teacher ] || { echo "runs/fmnist_teacher missing: run scripts/run.sh first"; exit 2; }
echo "== KD student (configs/fmnist_student_kd.yaml), $steps timed steps"
cached="$("$build/bench/bench_step_time" configs/fmnist_student_kd.yaml "$steps" distill.cache=true distill.cache_dir=/tmp/qd_bench_cache)"
echo "cache on:  $cached"
online="$("$build/bench/bench_step_time" configs/fmnist_student_kd.yaml "$steps" distill.cache=false)"
echo "cache off: $online"
a="$(echo "$cached" | sed -n 's/.* \([0-9.]*\) samples\/s/\1/p')"
b="$(echo "$online" | sed -n 's/.* \([0-9.]*\) samples\/s/\1/p')"
python3 -c "print('KD epoch speed-up from the cache: %.2fx (goal >= 2x)' % ($a / $b))"
