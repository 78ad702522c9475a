#!/usr/bin/env bash
# `mpirun -np 2 qdistill train` end to end: one run directory written by rank 0 with
# world_size 2 in summary.json; and a bad launch (parallel.backend: local under mpirun) gets a
# clear message and a non-zero exit. Usage: cli_mpi_test.sh MPIRUN_SH QDISTILL
set -u
mpi="$1"; qd="$2"
dir="$(mktemp -d)"; trap 'rm -rf "$dir"' EXIT
cat > "$dir/exp.yaml" <<YAML
experiment: {name: two, output_dir: $dir/runs}
model: {name: convnet, width: 4, depth: 2}
data: {train_subset: 1024, test_subset: 200, batch_size: 32}
trainer: {epochs: 2, threads: 1}
YAML
out="$("$mpi" 2 "$qd" train "$dir/exp.yaml" 2>&1)"; rc=$?
echo "$out" | tail -n 5
[ $rc -eq 0 ] || { echo "FAIL: 2-rank training exited $rc"; exit 1; }
python3 - "$dir/runs/two/summary.json" <<'PY' || exit 1
import json, sys
s = json.load(open(sys.argv[1]))
assert s["world_size"] == 2, s
assert s["backend"] == "mpi", s
assert s["test_accuracy"] > 10, s  # above chance after 2 short epochs
print("summary ok:", s["world_size"], s["backend"], s["test_accuracy"])
PY
[ "$(ls "$dir/runs")" = "two" ] || { echo "FAIL: unexpected run directories: $(ls "$dir/runs")"; exit 1; }

out="$(timeout 60 "$mpi" 2 "$qd" train "$dir/exp.yaml" --set experiment.name=bad --set parallel.backend=local 2>&1)"; rc=$?
echo "$out" | grep -q "parallel.backend: local, but this process is one of 2" || { echo "FAIL: no clear message: $out"; exit 1; }
[ $rc -ne 0 ] && [ $rc -ne 124 ] || { echo "FAIL: exit code $rc"; exit 1; }
echo ok
