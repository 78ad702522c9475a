#!/usr/bin/env bash
# The prepared GPU check (issue 17): one run that proves the CUDA and NCCL paths and measures them,
# so that a lent GPU machine's few minutes go to measuring. Writes $OUT/gpu_check.json (one object
# per stage) and $OUT/gpu_check.log (everything printed).
#
#   scripts/gpu_check.sh            # with CUDA: every stage on the GPU
#                                   # without CUDA: a dry run: the same stages on the CPU at toy sizes,
#                                   # each GPU-only part named as skipped, with the reason
#
# Stages:
#   1 tests        ctest -L gpu (NCCL: 1 rank; 2 ranks on one GPU, which NCCL may refuse), then the
#                  unit suite on the CPU (no test takes a device switch yet: said in the JSON)
#   2 equivalence  the same 20 steps of the teacher and of the KD + QAT student on CPU and on CUDA:
#                  test loss and accuracy of each pair, relative difference printed
#   3 precision    one epoch of the default teacher on CUDA in fp32, bf16 and fp16: samples/s and
#                  test accuracy
#   4 transformer  the Llama training step (bench/transformer_step_bench.cpp) against Python
#                  PyTorch eager (bench/transformer_step.py), same model, batch and precision:
#                  tokens/s and the ratio (goal: C++ >= 1.1x Python on the GPU)
# The build: $QD_BUILD (build/) if it holds qdistill, else a Release build with all cores.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=common.sh
. "$root/scripts/common.sh"
OUT="${OUT:-$QD_BUILD/gpu_check}"
mkdir -p "$OUT"
log="$OUT/gpu_check.log"
stages="$OUT/stages.jsonl"
: > "$stages"
exec > >(tee "$log") 2>&1
py="$(qd_python)"
work="$(mktemp -d "${TMPDIR:-/tmp}/qd_gpu_check.XXXXXX")"
trap 'rm -rf "$work"' EXIT
start=$(date +%s)

cuda="$("$py" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)"
gpu="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)"
[ -n "$gpu" ] || gpu="none"
echo "gpu_check: $(date -u +%FT%TZ), GPU: $gpu, torch CUDA available: $cuda, CPU: $(lscpu | sed -n 's/^Model name: *//p')"
if [ "$cuda" = 1 ]; then dev=cuda; else
  dev=cpu
  echo "gpu_check: no CUDA device: a DRY RUN. Every stage runs on the CPU at toy sizes to prove the plumbing;"
  echo "           what needs the GPU is listed as skipped in $OUT/gpu_check.json."
fi

# stage NAME STATUS JSON-OBJECT-BODY: one line of the result file.
stage() { printf '{"stage": "%s", "status": "%s", %s}\n' "$1" "$2" "$3" >> "$stages"; echo "== stage $1: $2"; }
json_get() { "$py" -c "import json,sys; d=json.load(open(sys.argv[1])); print(d$2)" "$1"; }

# ---- build -------------------------------------------------------------------------------------
if [ ! -x "$QD_BUILD/qdistill" ] || [ ! -x "$QD_BUILD/bench/bench_transformer_step" ]; then
  QD_JOBS="${QD_JOBS:-$(nproc)}" qd_build || { stage build failed '"detail": "the build failed: see the log"'; exit 1; }
fi
qd="$QD_BUILD/qdistill"

# ---- 1 tests -----------------------------------------------------------------------------------
t0=$(date +%s)
(cd "$QD_BUILD" && ctest -L gpu --output-on-failure --timeout 300) > "$work/gpu_tests.log" 2>&1
gpu_rc=$?
cat "$work/gpu_tests.log"
skipped_gpu=$(grep -c "Skipped" "$work/gpu_tests.log" || true)
if [ "${QD_GPU_CHECK_UNIT:-1}" = 1 ]; then
  (cd "$QD_BUILD" && ctest -L unit -j "$(nproc)" --timeout 900) > "$work/unit.log" 2>&1
  unit_rc=$?
  tail -3 "$work/unit.log"
else
  unit_rc=-1
fi
stage tests "$([ $gpu_rc = 0 ] && [ "$unit_rc" -le 0 ] && echo ok || echo failed)" \
  "\"gpu_tests_rc\": $gpu_rc, \"gpu_tests_skipped\": $skipped_gpu, \"unit_suite_rc\": $unit_rc, \"unit_suite_device\": \"cpu\", \"seconds\": $(($(date +%s) - t0))"

# ---- 2 equivalence -----------------------------------------------------------------------------
# The teacher and a KD + QAT student, 20 steps of batch 128 (toy: 4 steps of 32), on the CPU and
# on $dev; the test loss and accuracy of each. On a dry run both sides are the CPU: equal bit for bit.
t0=$(date +%s)
steps=20 batch=128 test=2000
[ "$dev" = cpu ] && steps=4 batch=32 test=200
common=(--set experiment.output_dir="$work/eq" --set trainer.progress=false --set trainer.epochs=1
        --set data.batch_size=$batch --set data.train_subset=$((steps * batch)) --set data.test_subset=$test
        --set schedule.warmup_epochs=0)
eq_ok=1
eq_json=""
for d in cpu "$dev"; do
  "$qd" train "$root/configs/fmnist_teacher.yaml" "${common[@]}" --set experiment.name="teacher_$d" \
    --set trainer.device="$d" --set experiment.overwrite=true > "$work/eq_teacher_$d.log" 2>&1 || eq_ok=0
  "$qd" train "$root/configs/fmnist_student_kd_qat.yaml" "${common[@]}" --set experiment.name="student_$d" \
    --set trainer.device="$d" --set distill.teacher="$work/eq/teacher_cpu" --set experiment.overwrite=true \
    --set qat.start_epoch=0 > "$work/eq_student_$d.log" 2>&1 || eq_ok=0
done
if [ $eq_ok = 1 ]; then
  eq_json="$("$py" - "$work/eq" "$dev" <<'EOF'
import json, sys
root, dev = sys.argv[1], sys.argv[2]
out = []
def last_epoch(run):
    recs = [json.loads(l) for l in open(f"{run}/metrics.jsonl") if l.strip()]
    return [r for r in recs if r["type"] == "epoch"][-1]
for m in ("teacher", "student"):
    a, b = last_epoch(f"{root}/{m}_cpu"), last_epoch(f"{root}/{m}_{dev}")
    la, lb = a["test_loss"], b["test_loss"]
    out.append(f'"{m}": {{"cpu_test_loss": {la}, "device_test_loss": {lb}, "relative_difference": {abs(la - lb) / max(abs(la), 1e-12)}, '
               f'"cpu_test_accuracy": {a["test_accuracy"]}, "device_test_accuracy": {b["test_accuracy"]}}}')
print(", ".join(out))
EOF
)"
  echo "$eq_json"
  stage equivalence "$([ "$dev" = cuda ] && echo ok || echo dry-run)" "$eq_json, \"steps\": $steps, \"batch\": $batch, \"seconds\": $(($(date +%s) - t0))"
else
  tail -5 "$work"/eq_*.log
  stage equivalence failed "\"detail\": \"a run failed: see the log\""
fi

# ---- 3 precision -------------------------------------------------------------------------------
t0=$(date +%s)
prec_json=""
for p in fp32 bf16 fp16; do
  extra=()
  if [ "$dev" = cpu ]; then
    # LibTorch's CPU convolutions have no fp16 kernels (25 samples/s): the dry run skips fp16.
    [ "$p" = fp16 ] && { prec_json+="\"fp16\": \"skipped on the CPU: no fp16 convolution kernels\", "; continue; }
    extra=(--set data.train_subset=2048 --set data.test_subset=500)
  fi
  if "$qd" train "$root/configs/fmnist_teacher.yaml" --set experiment.output_dir="$work/prec" --set experiment.name="$p" \
      --set trainer.epochs=1 --set trainer.progress=false --set trainer.device="$dev" --set trainer.precision="$p" \
      "${extra[@]}" > "$work/prec_$p.log" 2>&1; then
    s="$work/prec/$p/summary.json"
    prec_json+="\"$p\": {\"samples_per_second\": $(json_get "$s" '["train_samples_per_second"]'), \"test_accuracy\": $(json_get "$s" '["test_accuracy"]')}, "
    tail -1 "$work/prec_$p.log"
  else
    tail -3 "$work/prec_$p.log"
    prec_json+="\"$p\": \"failed\", "
  fi
done
stage precision "$([ "$dev" = cuda ] && echo ok || echo dry-run)" "${prec_json}\"device\": \"$dev\", \"seconds\": $(($(date +%s) - t0))"

# ---- 4 transformer step: C++ against Python eager ---------------------------------------------
t0=$(date +%s)
tr_json=""
tsteps=20
[ "$dev" = cpu ] && tsteps=2
for p in fp32 bf16; do
  c="$("$QD_BUILD/bench/bench_transformer_step" --steps $tsteps --device "$dev" --precision $p --threads "$(nproc)" 2>&1 | tail -1)"
  y="$("$py" "$root/bench/transformer_step.py" --steps $tsteps --device "$dev" --precision $p --threads "$(nproc)" 2>&1 | tail -1)"
  echo "C++ $c"
  echo "Python $y"
  r="$("$py" -c 'import json,sys; c=json.loads(sys.argv[1]); y=json.loads(sys.argv[2]); print(json.dumps({"cpp_tokens_per_second": c["tokens_per_second"], "python_tokens_per_second": y["tokens_per_second"], "ratio": round(c["tokens_per_second"] / y["tokens_per_second"], 3)}))' "$c" "$y" 2>/dev/null || echo '"failed"')"
  tr_json+="\"$p\": $r, "
done
stage transformer_step "$([ "$dev" = cuda ] && echo ok || echo dry-run)" "${tr_json}\"device\": \"$dev\", \"steps\": $tsteps, \"goal\": \"cpp >= 1.1x python on cuda\", \"seconds\": $(($(date +%s) - t0))"

# ---- result ------------------------------------------------------------------------------------
"$py" - "$stages" "$OUT/gpu_check.json" "$gpu" "$dev" "$(($(date +%s) - start))" <<'EOF'
import json, sys
stages = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
json.dump({"gpu": sys.argv[3], "device": sys.argv[4], "seconds": int(sys.argv[5]),
           "dry_run": sys.argv[4] != "cuda", "stages": stages}, open(sys.argv[2], "w"), indent=2)
EOF
echo "gpu_check: $OUT/gpu_check.json ($(($(date +%s) - start)) s)"
grep -q '"status": "failed"' "$stages" && exit 1
exit 0
