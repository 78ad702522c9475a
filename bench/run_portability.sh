#!/usr/bin/env bash
# Portability of the exported int8 ONNX file (issue 12): for each QAT run given, the test-set
# accuracy and the argmax agreement with the training simulation of
#   the simulation, qdistill-run, ONNX Runtime on this CPU, and ONNX Runtime on emulated CPUs of
#   every other class (scripts/emulated_python.sh: x86 AVX2 without VNNI, ARM64 NEON / dot / i8mm),
#   plus ONNX Runtime on the AVX2 CPU with session.x64quantprecision=1 (its u8 x u8 kernels);
# and ONNX Runtime's batch-1 latency on this CPU (1 thread), with and without that option.
# Usage: bench/run_portability.sh [--limit N] RUN_DIR [RUN_DIR ...]
#   e.g. bench/run_portability.sh runs/fmnist_student_full runs/fmnist_student_full_x86_vnni
# (the second: the main job's student trained on the full 8-bit grid,
#  qdistill train configs/fmnist_student_full.yaml --set qat.target=x86_vnni --set experiment.name=fmnist_student_full_x86_vnni)
# Emulated CPUs run under QEMU: their accuracies are real, their speed is not measured.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"
cd "$QD_ROOT"
limit=0
if [ "${1:-}" = --limit ]; then
  [ $# -ge 2 ] && [[ "$2" =~ ^[0-9]+$ ]] || qd_die "--limit needs a number of images"
  limit="$2"
  shift 2
fi
[ $# -gt 0 ] || qd_die "usage: bench/run_portability.sh [--limit N] RUN_DIR [RUN_DIR ...]"
py="$(qd_python)"
T=/usr/share/datasets/fashion-mnist/t10k
for run in "$@"; do
  [ -f "$run/config.resolved.yaml" ] || qd_die "$run: not a run directory (no config.resolved.yaml)"
  qd_note "exporting $run"
  mkdir -p "$run/export"
  "$QD_BUILD/qdistill" export "$run" --simulation-logits "$run/export/simulation_logits.f32" > "$run/export/export.log"
done
"$py" - "$limit" "$T" "$@" <<'PY'
import json, os, re, subprocess, sys, tempfile
limit, T, runs = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
emulated = ["x86_avx2", "arm64_neon", "arm64_dot", "arm64_i8mm"]

def ort(prefix, onnx, sim, extra=()):
    cmd = prefix + ["tests/export/ort_run.py", onnx, "--images", T + "-images-idx3-ubyte.gz", "--labels",
                    T + "-labels-idx1-ubyte.gz", "--reference", sim, "--min-agreement", "0", *extra]
    if limit:
        cmd += ["--limit", str(limit)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit("run_portability: failed: %s\n%s%s" % (" ".join(cmd), out.stdout, out.stderr))
    acc = float(re.search(r"accuracy: ([0-9.]+)", out.stdout).group(1)) * 100
    agree = float(re.search(r"argmax agreement with .*?: ([0-9.]+)", out.stdout).group(1)) * 100
    return acc, agree

def latency(onnx, extra=()):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "latency.json")
        subprocess.run([sys.executable, "bench/ort_latency.py", onnx, "--threads", "1", "--iters", "3000",
                        "--json", out, *extra], check=True, capture_output=True)
        j = json.load(open(out))
    return j["models"][0]["median_us"], j["cpu"]

rows = []
for run in runs:
    e = os.path.join(run, "export")
    rep = json.load(open(os.path.join(e, "report.json")))
    sim = os.path.join(e, "simulation_logits.f32")
    onnx = os.path.join(e, "student.int8.onnx")
    v, d = rep["verify"], rep["deployment"]
    r = {"run": os.path.basename(run), "target": d["target"], "weights": d["weight_range"], "exact_on": d["exact_on"],
         "this_machine": d["this_machine"],
         "simulation": v["simulation_accuracy"], "qdistill-run": (v["runtime_accuracy"], 100 * v["argmax_agreement"])}
    r["ort native"] = ort([sys.executable], onnx, sim)
    for cpu in emulated:
        r["ort " + cpu] = ort(["scripts/emulated_python.sh", "run", cpu], onnx, sim)
    r["ort x86_avx2 u8u8"] = ort(["scripts/emulated_python.sh", "run", "x86_avx2"], onnx, sim,
                                  ["--session-config", "session.x64quantprecision=1"])
    r["latency"], cpu = latency(onnx)
    r["latency u8u8"], _ = latency(onnx, ["--session-config", "session.x64quantprecision=1"])
    for p in d["platforms"]:
        if p["id"] == "ort_x86_avx2" and "emulated" in p:
            r["emulated x86_avx2"] = (p["emulated"]["accuracy"], 100 * p["emulated"]["argmax_agreement"])
    rows.append(r)

print("CPU: %s; %s -> ONNX Runtime's int8 kernels here: %s" % (cpu["model"], " ".join(cpu["flags"]),
      rows[0]["this_machine"]))
print("test accuracy %% / argmax agreement with the simulation %%%s" %
      (" (ONNX Runtime on the first %d images; simulation and qdistill-run on all)" % limit if limit else ""))
cols = ["qdistill-run", "ort native", *("ort " + c for c in emulated), "ort x86_avx2 u8u8"]
print("%-34s %-9s %10s" % ("run (target, weights)", "", "simulation") + "".join(" %16s" % c for c in cols))
for r in rows:
    print("%-34s %-9s %10.2f" % ("%s (%s, %s)" % (r["run"], r["target"], r["weights"]), "", r["simulation"]) +
          "".join(" %8.2f / %5.1f" % r[c] for c in cols))
    if "emulated x86_avx2" in r:
        print("%-34s   qdistill export's emulation of x86 AVX2: %.2f / %.1f" % ("", *r["emulated x86_avx2"]))
    print("%-34s   exact (proved) on: %s" % ("", ", ".join(r["exact_on"])))
print("\nONNX Runtime batch-1 latency on this CPU (1 thread, median): int8 file as exported / with "
      "session.x64quantprecision=1 (u8 x u8 kernels)")
for r in rows:
    print("%-34s %8.1f us / %8.1f us" % (r["run"], r["latency"], r["latency u8u8"]))
PY
