#!/usr/bin/env bash
# Issue 14, side by side on the GPT case's student (configs/smollm2_student_kd.yaml: SmolLM2-135M
# cut to 15 layers), the same sequences and steps twice:
#   top-k: KD against the teacher's top-64 logits, cached once (the cache build is timed too);
#   full:  KD against the whole 49,152-token distribution, the teacher run every step.
# Prints each run's held-out perplexity (how far top-k KD is from full KD) and the KD epoch's
# time (the speed-up the cache buys). Usage: bench/run_lm_cache.sh [SEQUENCES] (default 160 of
# 256 tokens: 20 steps of 8).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${QD_BUILD:-$root/build}"
seqs="${1:-160}"
out="${QD_BENCH_OUT:-/tmp/qd_lm_cache_bench}"
cd "$root"
rm -rf "$out"
common=(--set "data.train_subset=$seqs" --set trainer.eval_every_steps=0 --set trainer.checkpoint_every_minutes=0
        --set "experiment.output_dir=$out" --set trainer.progress=false)
for run in "topk 64" "full 0"; do
  set -- $run
  echo "== $1: distill.top_k=$2, $seqs sequences"
  "$build/qdistill" train configs/smollm2_student_kd.yaml "${common[@]}" --set "experiment.name=$1" --set "distill.top_k=$2" \
    2>&1 | grep -E "test |teacher cache|took" || true
done
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
s = {n: json.load(open(f"{out}/{n}/summary.json")) for n in ("topk", "full")}
print("| run | test perplexity | validation perplexity | KD epoch (s) | wall (s) |")
print("|---|---|---|---|---|")
for n in ("topk", "full"):
    r = s[n]
    print(f"| {n} | {r['perplexity']:.2f} | {r['validation_perplexity']:.2f} | {r['train_seconds']:.0f} | {r['wall_seconds']:.0f} |")
t, f = s["topk"], s["full"]
print(f"top-64 vs full-vocabulary KD: test perplexity {100 * (t['perplexity'] / f['perplexity'] - 1):+.2f}%")
print(f"KD epoch speed-up from the cache: {f['train_seconds'] / t['train_seconds']:.2f}x (goal >= 5x); "
      f"whole run, cache build and evaluations included: {f['wall_seconds'] / t['wall_seconds']:.2f}x")
PY
