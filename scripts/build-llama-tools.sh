#!/usr/bin/env bash
# Build llama-bench and llama-server (llama.cpp statically linked) from the same llama.cpp that
# llama-cpp-python 0.3.36 vendors, and put them in DEST (scripts/setup.sh: .venv/bin). The
# llama_bench backend measures with llama-bench; `autotune run` serves llama.cpp finalists with
# llama-server (autotune.served). With CUDA's compiler and a GPU they are built for CUDA, else
# for any x86-64 CPU; LLAMA_TOOLS_CMAKE_ARGS replaces that choice.
set -euo pipefail
dest=${1:?destination directory}
version=0.3.36
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$work"
tar xzf "$work"/llama_cpp_python-$version.tar.gz -C "$work"
src="$work/llama_cpp_python-$version/vendor/llama.cpp"
# GGML_NATIVE=OFF: portable (AVX2, no AMX), as scripts/setup.sh builds llama-cpp-python on a CPU machine.
if command -v nvidia-smi >/dev/null && command -v nvcc >/dev/null; then default_args="-DGGML_CUDA=on"
else default_args="-DGGML_NATIVE=OFF"; fi
# No CURL or OpenSSL: neither tool downloads models, and llama-server is measured over plain HTTP.
# No web UI: llama-server would otherwise fetch its prebuilt assets from Hugging Face while building.
# shellcheck disable=SC2086  # the arguments are words
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF ${LLAMA_TOOLS_CMAKE_ARGS:-$default_args} \
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF > "$work/cmake.log" 2>&1 || { tail -30 "$work/cmake.log"; exit 1; }
cmake --build "$work/build" --target llama-bench llama-server -j "$(nproc)" > "$work/build.log" 2>&1 \
  || { tail -30 "$work/build.log"; exit 1; }
mkdir -p "$dest"
for tool in llama-bench llama-server; do
  cp "$work/build/bin/$tool" "$dest/"
  "$dest/$tool" --help > /dev/null 2>&1 || { echo "$dest/$tool --help failed" >&2; exit 1; }
done
echo "llama-bench and llama-server built into $dest"
