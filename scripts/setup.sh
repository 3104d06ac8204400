#!/usr/bin/env bash
# Create .venv and install autotune with both backends and the test tools. Idempotent.
# On a machine with an NVIDIA GPU and CUDA's compiler, llama-cpp-python is built with CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
# llama.cpp is compiled once (scripts/build-llama-cpp.sh) for llama-cpp-python's libraries and
# for llama's own tools: the llama_bench backend measures with llama-bench, and `autotune run`
# serves llama.cpp finalists with llama-server. On a machine with an NVIDIA GPU and CUDA's
# compiler, it is built with CUDA.
if ! python -c "import llama_cpp" 2>/dev/null || [ ! -x .venv/bin/llama-server ] || [ ! -x .venv/bin/llama-bench ]; then
  # the Python package without libraries of its own (the next step builds them); no wheel
  # cache: a wheel built earlier with its own libraries would be taken as is
  CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" python -m pip install -q --no-cache-dir "llama-cpp-python==0.3.36"
  echo "building llama.cpp (about 10 minutes on 2 CPU cores) ..."
  bash scripts/build-llama-cpp.sh .venv/bin
fi
python -m pip install -q -e ".[llama,runtime,test,postgres,serve]"
# Triton runs the runtime's kernels on a GPU and, through its interpreter, in the CPU tests.
# CUDA builds of torch bring their own; a CPU build does not.
python -c "import triton" 2>/dev/null || python -m pip install -q "triton==3.6.0"
echo "autotune is installed in .venv (activate with: . .venv/bin/activate)"
