#!/usr/bin/env bash
# Python with ONNX Runtime on an EMULATED CPU (QEMU user mode), so that the tests can check what
# ONNX Runtime's int8 kernels compute on CPU classes this machine is not: the x86 AVX2 and ARM64
# classes that `qdistill export` reports on (export/deploy_targets.h). Not AVX-512 (QEMU 7.2's
# TCG has none) nor TensorRT.
#
#   scripts/emulated_python.sh setup             # once: the ARM64 sysroot (idempotent; ~0.3 s when done)
#   scripts/emulated_python.sh run CPU ARGS...   # the setup Python's ARGS on CPU
#   scripts/emulated_python.sh check CPU         # prints what the guest sees; exit 1 unless it is CPU
#
# CPU (QEMU 7.2 models; the guest's features are checked by `check`):
#   x86_avx2     qemu-x86_64 -cpu Haswell: AVX2 + FMA, no AVX-512, no VNNI   (MLAS: vpmaddubsw, saturating)
#   arm64_neon   qemu-aarch64 -cpu cortex-a72: ARMv8.0 NEON, no dot product  (MLAS: plain NEON int8 kernels)
#   arm64_dot    qemu-aarch64 -cpu neoverse-n1: + dot product, no i8mm       (MLAS: UDOT/SDOT kernels)
#   arm64_i8mm   qemu-aarch64 -cpu max,sve=off: + i8mm                       (MLAS: UMMLA/SMMLA kernels)
# x86_avx2 runs this machine's own Python (scripts/common.sh's qd_python) under qemu-x86_64: an x86-64
# host only; QEMU's TCG has no AVX-512, so no VNNI either.
# The ARM64 classes run a Debian bookworm arm64 python3.11 (only the packages below, unpacked with
# dpkg-deb -x) with the aarch64 wheels of onnxruntime and numpy unzipped into its dist-packages. It lives in
# $QD_ARM64_ROOT (default <repo>/.cache/arm64, ~235 MB; ~48 MB downloaded, ~10 s). setup downloads from
# deb.debian.org with a private apt state in that directory (the system's apt/dpkg configuration is not
# touched) and from PyPI with pip download. The guest does not see the caller's PYTHONPATH (x86-64
# packages): give it QD_ARM64_PYTHONPATH instead. Errors are one line on stderr and exit 2; "cannot
# emulate that CPU here" (QEMU or the ARM64 sysroot missing, a non-x86 host for x86_avx2) exits 3,
# which the tests report as a skip.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

die() { echo "emulated_python.sh: error: $*" >&2; exit 2; }
unavailable() { echo "emulated_python.sh: $*" >&2; exit 3; }
usage() { die "usage: scripts/emulated_python.sh setup | run CPU [PYTHON-ARGS...] | check CPU (CPU: x86_avx2, arm64_neon, arm64_dot, arm64_i8mm)"; }

ARM64_ROOT="${QD_ARM64_ROOT:-$QD_ROOT/.cache/arm64}"
SYSROOT="$ARM64_ROOT/sysroot"
SITE_REL="usr/lib/python3/dist-packages"   # on the guest python's default sys.path (Debian's site.py)
STAMP="$ARM64_ROOT/.complete"
LOG="$ARM64_ROOT/setup.log"
SUITE="bookworm"
MIRROR="${QD_ARM64_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${QD_ARM64_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
KEYRING="/usr/share/keyrings/debian-archive-keyring.gpg"

# The smallest set that runs python3.11 with numpy and onnxruntime (and ctypes, bz2, lzma, gzip).
# Not here, so those modules do not import: libssl3 (ssl; hashlib falls back to its built-in
# algorithms), libsqlite3-0, libuuid1 (uuid falls back), libcrypt1, libreadline8/libncursesw6 (REPL).
DEBS=(
  libc6 libgcc-s1 libstdc++6                                  # onnxruntime, numpy: C/C++ runtime
  python3.11-minimal libpython3.11-minimal libpython3.11-stdlib
  zlib1g libexpat1                                            # python3.11 itself
  libffi8 libbz2-1.0 liblzma5                                 # ctypes; bz2, lzma (imported by numpy)
)
WHEELS=("onnxruntime==$QD_ORT_VERSION" "numpy==$QD_NUMPY_VERSION")  # no other imports needed
KEY="v2 $SUITE ${DEBS[*]} ${WHEELS[*]}"

have() { command -v "$1" >/dev/null 2>&1; }
need_qemu() { have "$1" || unavailable "$1 not found: apt-get install qemu-user (scripts/setup.sh installs it)"; }

# apt-get on a private state: own lists, cache, sources and an empty dpkg status, arm64 only.
private_apt() {
  local a="$ARM64_ROOT/apt"
  apt-get -q -o Dir::State="$a/state" -o Dir::State::Lists="$a/lists" -o Dir::State::status="$a/status" \
    -o Dir::Cache="$a/cache" -o Dir::Etc::SourceList="$a/sources.list" -o Dir::Etc::SourceParts="$a/empty" \
    -o Dir::Etc::Preferences="$a/empty/preferences" -o Dir::Etc::PreferencesParts="$a/empty" \
    -o APT::Architecture=arm64 -o APT::Architectures::=arm64 -o APT::Sandbox::User=root \
    -o Debug::NoLocking=1 "$@"
}

# The guest python with the environment run gives it; guest --exec CPU ARGS... replaces this shell.
guest() {
  local pre=()
  if [ "$1" = --exec ]; then pre=(exec); shift; fi
  local cpu="$1"; shift
  "${pre[@]}" env -u PYTHONHOME -u PYTHONPATH -u PYTHONUSERBASE -u PYTHONSTARTUP -u PYTHONEXECUTABLE -u PYTHONPLATLIBDIR \
    -u LD_LIBRARY_PATH -u LD_PRELOAD PYTHONNOUSERSITE=1 ${QD_ARM64_PYTHONPATH:+PYTHONPATH="$QD_ARM64_PYTHONPATH"} \
    qemu-aarch64 -L "$SYSROOT" -cpu "$cpu" "$SYSROOT/usr/bin/python3.11" "$@"
}

ready() {
  [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$KEY" ] && [ -x "$SYSROOT/usr/bin/python3.11" ] \
    && [ -d "$SYSROOT/$SITE_REL/onnxruntime" ]
}

cmd_setup() {
  [ $# -eq 0 ] || usage
  need_qemu qemu-aarch64
  have apt-get || die "apt-get not found: setup needs a Debian-based machine"
  have dpkg-deb || die "dpkg-deb not found: setup needs a Debian-based machine"
  [ -f "$KEYRING" ] || die "$KEYRING missing: apt-get install debian-archive-keyring"
  local py; py="$(qd_python)"
  "$py" -m pip --version >/dev/null 2>&1 || die "no pip for $py: apt-get install python3-pip"

  mkdir -p "$ARM64_ROOT" || die "cannot create $ARM64_ROOT"
  [ -f "$ARM64_ROOT/.gitignore" ] || echo '*' >"$ARM64_ROOT/.gitignore" || die "cannot write in $ARM64_ROOT"
  if have flock; then  # concurrent setups (parallel tests) wait for the first
    exec 9>"$ARM64_ROOT/.lock"
    flock 9 || die "cannot lock $ARM64_ROOT/.lock"
  fi
  if ready; then
    qd_note "arm64 sysroot ready in $ARM64_ROOT"
    return 0
  fi
  rm -f "$STAMP"
  : >"$LOG"

  local a="$ARM64_ROOT/apt"
  mkdir -p "$a/state" "$a/lists/partial" "$a/cache/archives/partial" "$a/empty" || die "cannot create $a"
  : >"$a/status"
  {
    echo "deb [arch=arm64 signed-by=$KEYRING] $MIRROR $SUITE main"
    echo "deb [arch=arm64 signed-by=$KEYRING] $MIRROR $SUITE-updates main"
    echo "deb [arch=arm64 signed-by=$KEYRING] $SECURITY_MIRROR $SUITE-security main"
  } >"$a/sources.list"
  qd_note "apt: $SUITE arm64 package lists (private state in $a)"
  private_apt update >>"$LOG" 2>&1 || die "apt-get update (arm64, $MIRROR) failed: see $LOG"
  { rm -rf "$ARM64_ROOT/debs" && mkdir -p "$ARM64_ROOT/debs"; } || die "cannot create $ARM64_ROOT/debs"
  qd_note "apt: downloading ${DEBS[*]}"
  (cd "$ARM64_ROOT/debs" && private_apt download "${DEBS[@]}") >>"$LOG" 2>&1 \
    || die "apt-get download (arm64) failed: see $LOG"

  qd_note "pip: downloading the aarch64 wheels ${WHEELS[*]}"
  { mkdir -p "$ARM64_ROOT/wheels" && rm -f "$ARM64_ROOT"/wheels/*.whl; } || die "cannot create $ARM64_ROOT/wheels"
  "$py" -m pip download -q -d "$ARM64_ROOT/wheels" --only-binary=:all: \
    --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 --python-version 3.11 \
    --implementation cp --abi cp311 --no-deps "${WHEELS[@]}" >>"$LOG" 2>&1 \
    || die "pip download ${WHEELS[*]} (aarch64) failed: see $LOG"

  qd_note "unpacking into $SYSROOT"
  local new="$ARM64_ROOT/sysroot.new" f l t
  { rm -rf "$new" && mkdir -p "$new/$SITE_REL"; } || die "cannot create $new"
  for f in "$ARM64_ROOT"/debs/*.deb; do
    dpkg-deb -x "$f" "$new" || die "dpkg-deb -x $f failed"
  done
  for f in "$ARM64_ROOT"/wheels/*.whl; do
    "$py" -m zipfile -e "$f" "$new/$SITE_REL" || die "cannot unzip $f"
  done
  # Absolute links (usr/lib/python3.11/sitecustomize.py -> /etc/...) would reach the host's files:
  # make them relative, inside the sysroot.
  while IFS= read -r -d '' l; do
    t="$(readlink "$l")"
    ln -sfn "$(realpath -m --relative-to="$(dirname "$l")" "$new$t")" "$l" || die "cannot relink $l"
  done < <(find "$new" -type l -lname '/*' -print0)
  # An empty loader cache: the guest's ld.so searches its own default directories instead of
  # reading the host's /etc/ld.so.cache.
  : >"$new/etc/ld.so.cache"
  # Paths missing from the sysroot fall through to the host's: Debian's site.py puts
  # /usr/local/lib/python3.11/dist-packages first, where a host may keep x86-64 packages.
  mkdir -p "$new/usr/local/lib/python3.11/dist-packages" "$new/usr/local/lib/python3/dist-packages" \
    || die "cannot create $new/usr/local"
  {
    for f in "$ARM64_ROOT"/debs/*.deb; do dpkg-deb -W --showformat='${Package} ${Version}\n' "$f"; done
    (cd "$ARM64_ROOT/wheels" && sha256sum -- *.whl)
  } >"$ARM64_ROOT/manifest.txt"
  rm -rf "$SYSROOT" || die "cannot remove the old $SYSROOT"
  mv "$new" "$SYSROOT" || die "cannot move $new to $SYSROOT"

  # Byte-compile once (the guest would otherwise recompile every import on each run when
  # PYTHONDONTWRITEBYTECODE is set): with the host's python when it is a 3.11 (same bytecode), else the guest.
  qd_note "byte-compiling the guest's stdlib, numpy and onnxruntime"
  if [ "$("$py" -c 'import sys; print(sys.implementation.cache_tag)' 2>/dev/null)" = "cpython-311" ]; then
    "$py" -m compileall -q "$SYSROOT/usr/lib/python3.11" "$SYSROOT/$SITE_REL" >>"$LOG" 2>&1 || true
  else
    guest cortex-a53 -m compileall -q "$SYSROOT/usr/lib/python3.11" "$SYSROOT/$SITE_REL" >>"$LOG" 2>&1 || true
  fi

  qd_note "checking: import onnxruntime, numpy under qemu-aarch64 -cpu cortex-a53"
  guest cortex-a53 -c "import sys, numpy, onnxruntime
sys.exit(onnxruntime.__version__ != '$QD_ORT_VERSION' or numpy.__version__ != '$QD_NUMPY_VERSION'
         or 'CPUExecutionProvider' not in onnxruntime.get_available_providers())" >>"$LOG" 2>&1 \
    || die "the arm64 python cannot import onnxruntime $QD_ORT_VERSION and numpy $QD_NUMPY_VERSION: see $LOG"
  echo "$KEY" >"$STAMP"
  qd_note "arm64 sysroot ready in $ARM64_ROOT ($(du -sh "$ARM64_ROOT" | cut -f1))"
}

# The QEMU model of a CPU class.
arm64_model() {
  case "$1" in
    arm64_neon) echo cortex-a72 ;;
    arm64_dot) echo neoverse-n1 ;;
    arm64_i8mm) echo max,sve=off ;;
    *) return 1 ;;
  esac
}
X86_AVX2_MODEL="Haswell-noTSX,-pcid,-x2apic,-tsc-deadline,-invpcid"  # without the flags TCG lacks (no warnings)

# exec's the setup Python (x86_avx2) or the guest's (arm64_*) on CPU with ARGS.
run_on() {
  local cpu="$1"; shift
  if [ "$cpu" = x86_avx2 ]; then
    [ "$(uname -m)" = x86_64 ] || unavailable "x86_avx2 needs an x86-64 host (this is $(uname -m))"
    need_qemu qemu-x86_64
    local exe
    # QEMU runs ELF binaries, not wrapper scripts such as pyenv's shims: the interpreter itself.
    exe="$("$(qd_python)" -c 'import sys; print(sys.executable)')" || die "cannot run $(qd_python)"
    exec qemu-x86_64 -cpu "$X86_AVX2_MODEL" "$exe" "$@"
  fi
  local model
  model="$(arm64_model "$cpu")" || die "unknown CPU '$cpu': expected x86_avx2, arm64_neon, arm64_dot or arm64_i8mm"
  need_qemu qemu-aarch64
  if have flock && [ -f "$ARM64_ROOT/.lock" ]; then  # a setup rebuilding the sysroot finishes first
    exec 9<"$ARM64_ROOT/.lock"
    flock -s 9 || die "cannot lock $ARM64_ROOT/.lock"
  fi
  ready || unavailable "no arm64 sysroot (or an outdated one) in $ARM64_ROOT: run scripts/emulated_python.sh setup"
  guest --exec "$model" "$@"
}

cmd_run() {
  [ $# -ge 1 ] || usage
  run_on "$@"
}

# What the guest sees, from the kernel's auxiliary vector (ARM64) or CPUID through numpy (x86):
# exit 0 when it is the class asked for.
cmd_check() {
  [ $# -eq 1 ] || usage
  run_on "$1" -c '
import sys
cpu = sys.argv[1]
if cpu == "x86_avx2":
    from numpy._core._multiarray_umath import __cpu_features__ as f
    seen = {k: bool(f[k]) for k in ("AVX2", "FMA3", "AVX512F", "AVX512VNNI")}
    ok = seen["AVX2"] and seen["FMA3"] and not seen["AVX512F"] and not seen["AVX512VNNI"]
else:
    import ctypes
    getauxval = ctypes.CDLL(None).getauxval
    getauxval.restype = ctypes.c_ulong
    hwcap, hwcap2 = getauxval(16), getauxval(26)  # AT_HWCAP, AT_HWCAP2
    seen = {"asimd": bool(hwcap & (1 << 1)), "asimddp": bool(hwcap & (1 << 20)), "i8mm": bool(hwcap2 & (1 << 13))}
    want = {"arm64_neon": (False, False), "arm64_dot": (True, False), "arm64_i8mm": (True, True)}[cpu]
    ok = seen["asimd"] and (seen["asimddp"], seen["i8mm"]) == want
print(cpu, "sees", " ".join(k + ("+" if v else "-") for k, v in seen.items()), "(as expected)" if ok else "(NOT as expected)")
sys.exit(0 if ok else 1)
' "$1"
}

case "${1:-}" in
  setup) shift; cmd_setup "$@" ;;
  run) shift; cmd_run "$@" ;;
  check) shift; cmd_check "$@" ;;
  *) usage ;;
esac
