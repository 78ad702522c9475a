#!/usr/bin/env bash
# Transformer training-step throughput (issue 13): the C++ engine's Llama step against the same
# model and step in Python PyTorch eager (bench/transformer_step.py, the torch scripts/setup.sh
# installs), same threads, side by side in one run. Each runs ROUNDS times, alternating; the best
# round counts, which keeps a noisy machine's spikes out of the ratio.
# Usage: bench/run_transformer.sh [STEPS] [ROUNDS] [THREADS]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${QD_BUILD:-$root/build}"
steps="${1:-10}"
rounds="${2:-3}"
threads="${3:-2}"
# shellcheck source=../scripts/common.sh
. "$root/scripts/common.sh"
py="$(qd_python)"
[ -x "$build/bench/bench_transformer_step" ] || { echo "build bench_transformer_step first (cmake --build build)"; exit 1; }
rate() { "$py" -c 'import json,sys; print(json.loads(sys.stdin.read())["tokens_per_second"])'; }
best_cpp=0 best_py=0
for ((i = 0; i < rounds; i++)); do
  c="$("$build/bench/bench_transformer_step" --steps "$steps" --threads "$threads" | rate)"
  p="$("$py" "$root/bench/transformer_step.py" --steps "$steps" --threads "$threads" | rate)"
  echo "round $i: C++ $c tokens/s, Python eager $p tokens/s"
  best_cpp="$("$py" -c "print(max($best_cpp, $c))")"
  best_py="$("$py" -c "print(max($best_py, $p))")"
done
echo "profile of the C++ step (ms per step):"
"$build/bench/bench_transformer_step" --steps "$steps" --threads "$threads" --profile
"$py" -c "print(f'llama 17.3M params, batch 16 x 128 tokens, {$threads} threads: C++ {$best_cpp:.0f} tokens/s, Python eager {$best_py:.0f} tokens/s, ratio C++/Python {$best_cpp / $best_py:.2f}x')"
