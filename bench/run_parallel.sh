#!/usr/bin/env bash
# Data-parallel benchmarks (issue 3), side by side in one run:
#  1. MPI all-reduce throughput against message size, 2 ranks.
#  2. Default-teacher training throughput: 1 rank vs 2 ranks, one intra-op thread per rank,
#     and the scaling ratio.
# Usage: bench/run_parallel.sh [STEPS]   (after scripts/test.sh or scripts/run.sh has built)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${QD_BUILD:-$root/build}"
steps="${1:-30}"
mpi="$root/tests/mpirun.sh"
cd "$root"

echo "== MPI all-reduce, 2 ranks"
"$mpi" 2 "$build/bench/bench_allreduce"

echo
echo "== default teacher (configs/fmnist_teacher.yaml), $steps timed steps of 128 per rank"
one="$(OMP_NUM_THREADS=1 "$build/bench/bench_step_time" configs/fmnist_teacher.yaml "$steps" trainer.threads=1)"
echo "$one"
two="$("$mpi" 2 "$build/bench/bench_step_time" configs/fmnist_teacher.yaml "$steps" trainer.threads=1)"
echo "$two"
r1="$(echo "$one" | sed -n 's/.* \([0-9.]*\) samples\/s/\1/p')"
r2="$(echo "$two" | sed -n 's/.* \([0-9.]*\) samples\/s/\1/p')"
python3 -c "print('scaling 2 ranks / 1 rank: %.2fx (goal >= 1.7x)' % ($r2 / $r1))"
