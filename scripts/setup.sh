#!/usr/bin/env bash
# Create .venv and install autotune with both backends and the test tools. Idempotent.
# On a machine with an NVIDIA GPU and CUDA's compiler, llama-cpp-python is built with CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
if ! python -c "import llama_cpp" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null && command -v nvcc >/dev/null; then
    export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_CUDA=on}"
  else
    # A portable CPU build (AVX2, no AVX-512 or AMX): a virtual machine may report AMX and
    # then fault on its first tile instruction (seen: SIGILL/SIGSEGV in ggml's AMX mul_mat).
    export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}"
  fi
  echo "building llama-cpp-python 0.3.36 (about 8 minutes on a CPU) ..."
  # no wheel cache: a wheel built earlier with other CMAKE_ARGS would be taken as is
  python -m pip install -q --no-cache-dir "llama-cpp-python==0.3.36"
fi
python -m pip install -q -e ".[llama,runtime,test,postgres,serve]"
# Triton runs the runtime's kernels on a GPU and, through its interpreter, in the CPU tests.
# CUDA builds of torch bring their own; a CPU build does not.
python -c "import triton" 2>/dev/null || python -m pip install -q "triton==3.6.0"
# llama.cpp's own tools from the same source, beside autotune: the llama_bench backend measures
# with llama-bench, and `autotune run` serves llama.cpp finalists with llama-server.
if [ ! -x .venv/bin/llama-server ] || [ ! -x .venv/bin/llama-bench ]; then
  echo "building llama-bench and llama-server (about 15 minutes on 2 CPU cores) ..."
  bash scripts/build-llama-tools.sh .venv/bin
fi
echo "autotune is installed in .venv (activate with: . .venv/bin/activate)"
