#!/usr/bin/env bash
# The binary must keep libtorch_cuda.so (else CUDA looks "not available" on GPU machines) and
# must not need the driver library libcuda.so.1 at load time (else it cannot start on machines
# without an NVIDIA driver).
set -u
bin="$1"
deps="$(ldd "$bin")" || { echo "ldd failed on $bin"; exit 1; }
if echo "$deps" | grep -q 'libcuda\.so'; then
  echo "FAIL: $bin needs the NVIDIA driver library at load time:"; echo "$deps" | grep libcuda; exit 1
fi
if ! readelf -d "$bin" | grep -q 'NEEDED.*libtorch_cuda\.so'; then
  echo "FAIL: $bin does not link libtorch_cuda.so (dropped by --as-needed?)"; exit 1
fi
echo "ok: $bin links libtorch_cuda.so and does not need libcuda.so.1"
