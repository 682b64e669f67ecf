#!/usr/bin/env bash
# Set up a development environment for lmKAN from a fresh clone, on a fresh machine.
#
#   bash .ci/setup_env.sh            # creates .venv/ and builds lmKAN into it (editable)
#
# - Python venv in .venv (override with LMKAN_VENV=path).
# - torch 2.14.1 (a CUDA 13.0 build on Linux x86-64), numpy, ninja, pytest, tqdm, matplotlib.
# - lmKAN installed editable with --no-build-isolation. When a CUDA toolkit is found
#   (CUDA_HOME, nvcc on PATH, or /usr/local/cuda), the CUDA kernels are compiled even
#   without a GPU, for every supported architecture when no GPU is visible (setup.py). A
#   failed CUDA compile fails the setup, with the compiler's error shown; under CI
#   (CI=true) a missing toolkit does too (LMKAN_FORCE_CUDA=1).
# Re-running it reuses the venv and rebuilds only what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${LMKAN_VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${LMKAN_TORCH_SPEC:-torch==2.14.1}

step() { printf '\n==> %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  step "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# torch's CUDA build and its CUDA libraries take about 6 GiB in the venv, plus pip's
# unpacking; a full disk would otherwise stop pip halfway (OSError 28) with a broken venv.
# Checked only while torch is not installed yet; LMKAN_SKIP_SPACE_CHECK=1 skips it (e.g. for
# a CPU-only torch through LMKAN_TORCH_SPEC).
NEED_GIB=8
if [ "${LMKAN_SKIP_SPACE_CHECK:-}" != "1" ] && ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  free_kib=$(df -Pk "$VENV" | awk 'NR == 2 {print $4}')
  if [ -n "$free_kib" ] && [ "$free_kib" -lt $(( NEED_GIB * 1024 * 1024 )) ]; then
    echo "error: installing $TORCH_SPEC needs about $NEED_GIB GiB free where $VENV lives;" \
         "$(( free_kib / 1024 / 1024 )) GiB free there ($(df -P "$VENV" | awk 'NR == 2 {print $6}'))." \
         "Free some space, or set LMKAN_VENV to a venv path on a larger disk." >&2
    exit 1
  fi
fi
step "installing $TORCH_SPEC and build/test dependencies"
"$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
"$VENV/bin/python" -m pip install -q "$TORCH_SPEC" numpy ninja pytest tqdm matplotlib

# A toolkit is a directory with bin/nvcc and include/cuda_runtime.h (nvcc on PATH may be a
# wrapper script elsewhere, so its own directory is not trusted blindly).
if [ -z "${CUDA_HOME:-}" ]; then
  for home in "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc || echo /nonexistent)")")")" /usr/local/cuda; do
    if [ -x "$home/bin/nvcc" ] && [ -f "$home/include/cuda_runtime.h" ]; then CUDA_HOME=$home; break; fi
  done
fi
if [ -n "${CUDA_HOME:-}" ]; then
  export CUDA_HOME PATH="$CUDA_HOME/bin:$PATH"
  step "CUDA toolkit at $CUDA_HOME: building lmKAN with its CUDA kernels"
  if [ "${CI:-}" = "true" ]; then export LMKAN_FORCE_CUDA=1; fi
else
  step "no CUDA toolkit found: building the pure-PyTorch package (CPU path)"
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
start=$(date +%s)
# Not -q: a failed build must show the compiler's error and setup.py's last line.
"$VENV/bin/python" -m pip install --no-build-isolation --no-deps -e .
step "lmKAN built in $(( $(date +%s) - start )) s"
"$VENV/bin/python" -c "import lmKAN; print(lmKAN.backend_info())"
