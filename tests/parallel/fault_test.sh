#!/usr/bin/env bash
# A rank that throws at step 3 must make mpirun exit non-zero within 30 s, with a message
# naming the rank. Usage: fault_test.sh MPIRUN_SH FAULT_MAIN
set -u
start=$(date +%s)
out="$(timeout 60 "$1" 2 "$2" 2>&1)"
rc=$?
elapsed=$(( $(date +%s) - start ))
echo "$out" | tail -n 20
echo "exit code $rc after ${elapsed}s"
[ "$rc" -ne 0 ] || { echo "FAIL: exit code 0"; exit 1; }
[ "$rc" -ne 124 ] || { echo "FAIL: hung (killed by timeout)"; exit 1; }
[ "$elapsed" -le 30 ] || { echo "FAIL: took ${elapsed}s > 30s"; exit 1; }
echo "$out" | grep -q "rank 1/2: error: injected failure at step 3" || { echo "FAIL: no message naming rank 1"; exit 1; }
echo "ok"
