#!/usr/bin/env bash
# Fuzzes a loader of hostile files with libFuzzer, ASan and UBSan. QD_FUZZ_TARGET picks it:
#   qdm      (default) the .qdm loader and the interpreter behind it (tests/fuzz/qdm_fuzz.cpp)
#   formats  the safetensors and GGUF readers and GGUF dequantization (tests/fuzz/formats_fuzz.cpp)
# Builds $QD_BUILD/fuzz/<target>_fuzz with clang straight from the sources (no CMake, no LibTorch),
# writes a seed corpus of valid files, then fuzzes for SECONDS (default 60); the corpus in
# $QD_BUILD/fuzz/corpus (qdm) or corpus_<target> grows from run to run. Exits non-zero on any
# finding (crash, sanitizer report, uncaught exception, leak, timeout, out-of-memory): the input is
# saved in $QD_BUILD/fuzz/ and the command that replays it printed.
# Usage: [QD_FUZZ_TARGET=formats] scripts/fuzz.sh [SECONDS] [libFuzzer flags...]   e.g. scripts/fuzz.sh 600 -jobs=2
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

secs="${1:-60}"
[ $# -gt 0 ] && shift
[[ "$secs" =~ ^[0-9]+$ ]] || qd_die "usage: scripts/fuzz.sh [SECONDS] [libFuzzer flags...]"
cxx="${QD_FUZZ_CXX:-clang++}"
command -v "$cxx" >/dev/null 2>&1 || qd_die "$cxx not found (scripts/setup.sh installs clang and libclang-rt-14-dev)"

cd "$QD_ROOT"
target="${QD_FUZZ_TARGET:-qdm}"
out="$QD_BUILD/fuzz"
bin="$out/${target}_fuzz"
case "$target" in
  qdm)
    sources=(runtime/qdm.cpp runtime/model.cpp runtime/kernels.cpp runtime/interpreter.cpp runtime/graph.cpp runtime/ops.cpp
             runtime/ops_image.cpp runtime/ops_text.cpp runtime/text_kernels.cpp runtime/executor.cpp runtime/thread_pool.cpp common/atomic_file.cpp
             tests/fuzz/qdm_fuzz.cpp)
    watched=(runtime common/atomic_file.cpp tests/fuzz/qdm_fuzz.cpp tests/runtime/model_builders.h)
    corpus="$out/corpus"
    what="the .qdm loader and interpreter"
    ;;
  formats)
    sources=(formats/mapped_file.cpp formats/safetensors.cpp formats/gguf.cpp tests/fuzz/formats_fuzz.cpp)
    watched=(formats tests/fuzz/formats_fuzz.cpp tests/formats/format_builders.h)
    corpus="$out/corpus_formats"
    what="the safetensors and GGUF readers"
    ;;
  *) qd_die "QD_FUZZ_TARGET=$target: expected qdm or formats" ;;
esac
mkdir -p "$corpus"

# Rebuilt when a runtime source, the target or this script changed. -fno-sanitize-recover makes
# every UBSan report (signed overflow, bad shift, float-to-int overflow) fatal, so it is a finding;
# -ffp-contract=off as CMakeLists.txt compiles interpreter.cpp.
if [ ! -x "$bin" ] || [ -n "$(find "${watched[@]}" scripts/fuzz.sh -newer "$bin" -print -quit)" ]; then
  qd_note "building $bin (clang++ -fsanitize=fuzzer,address,undefined -O1 -g)"
  "$cxx" -std=c++17 -O1 -g -fno-omit-frame-pointer -ffp-contract=off -I"$QD_ROOT" \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    "${sources[@]}" -o "$bin.tmp" || qd_die "building the fuzzer failed (see above)"
  mv "$bin.tmp" "$bin"
else
  qd_note "$bin is up to date"
fi

seeds="$out/seeds_$target"
qd_note "writing the seed corpus (valid files) to $seeds"
rm -rf "$seeds"
mkdir -p "$seeds"
"$bin" --write-seeds "$seeds" || qd_die "writing the seeds failed (see above)"

corpus_before=$(find "$corpus" -type f | wc -l)
log="$out/fuzz_$target.log"
stamp="$out/.run_start"
touch "$stamp"
qd_note "fuzzing $what for ${secs}s: corpus $corpus ($corpus_before inputs) + seeds; log $log"
rc=0
"$bin" -max_total_time="$secs" -max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
  -artifact_prefix="$out/" "$@" "$corpus" "$seeds" >"$log" 2>&1 || rc=$?

runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
corpus_after=$(find "$corpus" -type f | wc -l)
if [ "$rc" -ne 0 ] || grep -q '^SUMMARY: ' "$log"; then
  echo "--- $log, without libFuzzer's progress lines ---" >&2
  grep -v -e '^#[0-9]' -e '^	NEW_FUNC' "$log" | tail -n 60 >&2
  echo "---" >&2
  mapfile -t found < <(find "$out" -maxdepth 1 -newer "$stamp" -type f \
    \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | sort)
  for f in "${found[@]}"; do echo "qdistill fuzz: finding saved in $f; replay: $bin $f" >&2; done
  echo "qdistill fuzz: FAILED: libFuzzer reported a finding (exit status $rc) after ${runs:-?} executions" >&2
  exit 1
fi
qd_note "fuzzed $what for ${took:-$secs}s: ${runs:-?} executions, no crash;" \
  "corpus $corpus_before -> $corpus_after inputs"
