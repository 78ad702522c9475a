#!/usr/bin/env bash
# Runs a test program under mpiexec with N ranks: adds --allow-run-as-root when root (CI
# containers) and --oversubscribe (more ranks than the 2 cores). Usage: mpirun.sh N CMD [ARGS]
set -u
n="$1"; shift
flags=(--oversubscribe)
[ "$(id -u)" = 0 ] && flags+=(--allow-run-as-root)
command -v mpiexec >/dev/null 2>&1 || { echo "mpiexec not found: run scripts/setup.sh (installs openmpi-bin)"; exit 1; }
# One intra-op thread per rank: ranks share 2 cores.
export OMP_NUM_THREADS=1
exec mpiexec "${flags[@]}" -n "$n" "$@"
