#!/usr/bin/env bash
# QAT benchmark (issue 5): training step time of the student with int8 fake-quant (weights
# per-channel, activations per-tensor, Conv-BN folding) against the same student in fp32, side
# by side in one run. Each variant runs ROUNDS times, alternating, and the fastest run counts,
# which keeps a noisy machine's spikes out of the ratio. Usage: bench/run_qat.sh [STEPS] [ROUNDS]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${QD_BUILD:-$root/build}"
steps="${1:-60}"
rounds="${2:-3}"
cd "$root"
cfg=configs/fmnist_student_scratch.yaml
common=(trainer.threads=1)
rate() { sed -n 's/.* \([0-9.]*\) samples\/s/\1/p'; }
declare -A best
variants=(fp32 qat qat_bn_frozen)
for ((i = 0; i < rounds; i++)); do
  for v in "${variants[@]}"; do
    case $v in
      fp32) extra=() ;;
      qat) extra=(qat.enabled=true qat.start_epoch=0) ;;
      qat_bn_frozen) extra=(qat.enabled=true qat.start_epoch=0 qat.freeze_bn_epoch=1) ;;
    esac
    r="$("$build/bench/bench_step_time" "$cfg" "$steps" "${common[@]}" "${extra[@]}" | rate)"
    echo "round $i $v: $r samples/s"
    if [ -z "${best[$v]:-}" ] || python3 -c "import sys; sys.exit(not ($r > ${best[$v]}))"; then best[$v]=$r; fi
  done
done
python3 - "${best[fp32]}" "${best[qat]}" "${best[qat_bn_frozen]}" <<'PY'
import sys
fp32, qat, frozen = map(float, sys.argv[1:])
print(f"student step time, best of the rounds (1 thread): fp32 {1000*128/fp32:.2f} ms, "
      f"QAT {1000*128/qat:.2f} ms, QAT with BN frozen {1000*128/frozen:.2f} ms")
print(f"QAT / fp32 step time: {fp32/qat:.3f}x (BN training), {fp32/frozen:.3f}x (BN frozen); goal <= 1.10x")
PY
