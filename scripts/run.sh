#!/usr/bin/env bash
# The main job: set up, build, then
#   1. train the default Fashion-MNIST teacher   (configs/fmnist_teacher.yaml    -> runs/fmnist_teacher)
#   2. the student: distilled from it, channel-pruned to 50% and trained with int8 QAT, in one
#      experiment                                 (configs/fmnist_student_full.yaml -> runs/fmnist_student_full)
#   3. export it (runs/fmnist_student_full/export/student.{qdm,int8.onnx,fp32.onnx}), verified
#      against the simulation, and run it with qdistill-run and ONNX Runtime (on this CPU, and on an
#      emulated x86 with AVX2 but no VNNI): the final table, with this CPU's int8 kernel flags.
# A stage whose run directory
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

qd_note "exporting runs/fmnist_student_full"
"$QD" export runs/fmnist_student_full
E=runs/fmnist_student_full/export
T=/usr/share/datasets/fashion-mnist/t10k
py="$(qd_python)"
"$QD_BUILD/qdistill-run" "$E/student.qdm" --idx "$T-images-idx3-ubyte.gz" --labels "$T-labels-idx1-ubyte.gz" \
  --repeat 2 --json > "$E/qdistill_run.json"
"$py" tests/export/ort_run.py "$E/student.fp32.onnx" --images "$T-images-idx3-ubyte.gz" \
  --labels "$T-labels-idx1-ubyte.gz" --threads 1 > "$E/ort_fp32.txt"
"$py" tests/export/ort_run.py "$E/student.int8.onnx" --images "$T-images-idx3-ubyte.gz" \
  --labels "$T-labels-idx1-ubyte.gz" --threads 1 > "$E/ort_int8.txt"
"$py" bench/ort_latency.py "$E/student.fp32.onnx" "$E/student.int8.onnx" --threads 1 --json "$E/ort_latency.json" >/dev/null
# The same int8 file on an emulated x86 with AVX2 but no VNNI (QEMU), where ONNX Runtime's int8
# kernels saturate pair sums at int16: the portable grid (qat.target: portable) keeps it exact.
rm -f "$E/ort_int8_avx2.txt"
if [ "$(uname -m)" = x86_64 ]; then
  scripts/emulated_python.sh run x86_avx2 tests/export/ort_run.py "$E/student.int8.onnx" \
    --images "$T-images-idx3-ubyte.gz" --labels "$T-labels-idx1-ubyte.gz" > "$E/ort_int8_avx2.txt"
fi

"$py" - <<'PY'
import json, os, re
t = json.load(open("runs/fmnist_teacher/summary.json"))
s = json.load(open("runs/fmnist_student_full/summary.json"))
e = "runs/fmnist_student_full/export"
rt = json.load(open(e + "/qdistill_run.json"))
ort_lat = json.load(open(e + "/ort_latency.json"))
lat = {os.path.basename(m["model"]): m["median_us"] for m in ort_lat["models"]}
cpu = ort_lat["cpu"]
dep = json.load(open(e + "/report.json"))["deployment"]
acc = lambda f: float(re.search(r"accuracy: ([0-9.]+)", open(os.path.join(e, f)).read()).group(1)) * 100
size = lambda f: os.path.getsize(os.path.join(e, f))
print("\nfinal table (Fashion-MNIST test set, 10,000 images; latency: batch 1, 1 thread, median)")
print("%-46s %9s %9s %12s %12s" % ("model", "params", "acc (%)", "file bytes", "latency"))
print("%-46s %9d %9.2f %12d %12s" % ("teacher, fp32 (LibTorch)", t["params"], t["test_accuracy"], t["fp32_bytes"], "-"))
p = s.get("pruned", {})
print("%-46s %9d %9.2f %12d %10.1fus" % ("student, fp32 (student.fp32.onnx, ONNX Runtime)", p.get("params", s["params"]),
      acc("ort_fp32.txt"), size("student.fp32.onnx"), lat["student.fp32.onnx"]))
print("%-46s %9s %9.2f %12d %10.1fus" % ("student, int8 (student.int8.onnx, ONNX Runtime)", "", acc("ort_int8.txt"),
      size("student.int8.onnx"), lat["student.int8.onnx"]))
print("    on this CPU: %s; %s -> ONNX Runtime's int8 kernels: %s" % (cpu["model"], " ".join(cpu["flags"]),
      dep["this_machine"]))
if os.path.exists(os.path.join(e, "ort_int8_avx2.txt")):
    print("%-46s %9s %9.2f %12s %12s" % ("  same file, ONNX Runtime on an emulated AVX2 CPU", "",
          acc("ort_int8_avx2.txt"), "", "(emulated)"))
print("%-46s %9s %9.2f %12d %10.1fus" % ("student, int8 (student.qdm, qdistill-run)", "", rt["accuracy"],
      size("student.qdm"), rt["latency_us_median"]))
print("(teacher bytes: fp32 parameters; student: KD, 50%% of channels removed, int8 QAT; files in %s)" % e)
print("int8 file: qat.target %s, weights in %s; exact (proved) on: %s" % (dep["target"], dep["weight_range"],
      ", ".join(dep["exact_on"])))
PY
