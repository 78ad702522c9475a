# Shared by setup.sh, test.sh and run.sh: paths, the Python that holds LibTorch, the build.
# shellcheck shell=bash
QD_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
QD_BUILD="${QD_BUILD:-$QD_ROOT/build}"
QD_TORCH_VERSION="2.11.0"
QD_ORT_VERSION="1.23.2"
QD_NUMPY_VERSION="2.4.6"

qd_die() { echo "qdistill setup: error: $*" >&2; exit 1; }
qd_note() { echo "==> $*" >&2; }

# The interpreter whose site-packages hold torch: the project's .venv if setup made one
# (Debian's own python3 refuses pip installs), else $PYTHON or python3.
qd_python() {
  if [ -x "$QD_ROOT/.venv/bin/python" ]; then echo "$QD_ROOT/.venv/bin/python"; else echo "${PYTHON:-python3}"; fi
}

# ccache can only reuse compilations that use the LibTorch precompiled header with these.
export CCACHE_SLOPPINESS="${CCACHE_SLOPPINESS:-pch_defines,time_macros,include_file_mtime,include_file_ctime}"

qd_build() {
  local gen=()
  command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
  if [ ! -f "$QD_BUILD/CMakeCache.txt" ]; then
    qd_note "configuring in $QD_BUILD"
    cmake -S "$QD_ROOT" -B "$QD_BUILD" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
      -DPython3_EXECUTABLE="$(qd_python)" "$@" || qd_die "cmake configure failed (see above)"
  fi
  qd_note "building (${QD_JOBS:-$(nproc)} jobs)"
  cmake --build "$QD_BUILD" -j "${QD_JOBS:-$(nproc)}" || qd_die "build failed (see above)"
}
