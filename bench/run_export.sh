#!/usr/bin/env bash
# Export benchmark (issue 7): file sizes, and batch-1 latency on this CPU (1 thread) of
#   ONNX Runtime fp32 (student.fp32.onnx) vs ONNX Runtime int8 (student.int8.onnx, QDQ) vs
#   qdistill-run (student.qdm, integer-only)
# for each exported run given (default: the main job's student, and the unpruned QAT student if
# it was trained). ROUNDS alternating rounds; the best median of each counts, which keeps a noisy
# machine's spikes out of the ratios. Usage: bench/run_export.sh [ROUNDS] [RUN_DIR ...]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"
cd "$QD_ROOT"
rounds="${1:-3}"
shift || true
runs=("$@")
if [ ${#runs[@]} -eq 0 ]; then
  for r in runs/fmnist_student_full runs/fmnist_student_kd_qat; do [ -f "$r/summary.json" ] && runs+=("$r"); done
fi
[ ${#runs[@]} -gt 0 ] || qd_die "no trained QAT run found: run scripts/run.sh first (or pass RUN_DIR)"
py="$(qd_python)"
images=/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
for run in "${runs[@]}"; do
  [ -f "$run/export/student.qdm" ] || "$QD_BUILD/qdistill" export "$run" --no-verify >/dev/null
done
"$py" - "$rounds" "$QD_BUILD/qdistill-run" "$images" "${runs[@]}" <<'PY'
import json, os, subprocess, sys
rounds, qrun, images, runs = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
root = os.getcwd()
def ort(models):
    out = subprocess.run([sys.executable, "bench/ort_latency.py", *models, "--threads", "1", "--iters", "2000",
                          "--warmup", "200", "--json", "/tmp/qd_ort_latency.json"], check=True, capture_output=True, text=True)
    j = json.load(open("/tmp/qd_ort_latency.json"))
    rows = j["models"] if isinstance(j, dict) and "models" in j else j
    return [r["median_us"] for r in rows]
def rt(qdm):
    out = subprocess.run([qrun, qdm, "--idx", images, "--limit", "500", "--repeat", "4", "--json"], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)["latency_us_median"]
print("%-28s %12s %12s %12s %12s" % ("run", "fp32.onnx B", "int8.onnx B", "qdm B", "int8 params"))
for run in runs:
    e = os.path.join(run, "export")
    s = json.load(open(os.path.join(run, "summary.json")))
    print("%-28s %12d %12d %12d %12s" % (os.path.basename(run), os.path.getsize(e + "/student.fp32.onnx"),
          os.path.getsize(e + "/student.int8.onnx"), os.path.getsize(e + "/student.qdm"),
          s.get("pruned", {}).get("params", s["params"])))
t = os.path.join("runs", "fmnist_teacher", "summary.json")
if os.path.exists(t):
    ts = json.load(open(t))
    print("%-28s %12d %12s %12s %12d   (fp32 parameter bytes; the teacher is not exported)" %
          ("fmnist_teacher", ts["fp32_bytes"], "-", "-", ts["params"]))
print()
print("%-28s %10s %10s %13s %16s %20s" % ("run (batch 1, 1 thread)", "ORT fp32", "ORT int8", "qdistill-run",
      "ORT fp32/int8", "qdistill-run/ORT int8"))
for run in runs:
    e = os.path.join(run, "export")
    best = [float("inf")] * 3
    for _ in range(rounds):
        f, i = ort([e + "/student.fp32.onnx", e + "/student.int8.onnx"])
        q = rt(e + "/student.qdm")
        best = [min(best[0], f), min(best[1], i), min(best[2], q)]
    f, i, q = best
    print("%-28s %8.1fus %8.1fus %11.1fus %15.2fx %19.2fx" % (os.path.basename(run), f, i, q, f / i, q / i))
print("\ngoals: ORT int8 >= 2x faster than ORT fp32 (ORT fp32/int8 >= 2); qdistill-run within 1.5x of ORT int8 (<= 1.5)")
PY
