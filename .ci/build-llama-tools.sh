#!/usr/bin/env bash
# Build a CPU llama-bench (statically linked) from the same llama.cpp that llama-cpp-python 0.3.36
# vendors, and put it in DEST (a directory on PATH). The llama_bench engine's tests use it.
set -euo pipefail
dest=${1:?destination directory}
version=0.3.36
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$work"
tar xzf "$work"/llama_cpp_python-$version.tar.gz -C "$work"
src="$work/llama_cpp_python-$version/vendor/llama.cpp"
# GGML_NATIVE=OFF: portable (AVX2, no AMX), as scripts/setup.sh builds llama-cpp-python on a CPU machine
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF \
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF > "$work/cmake.log" 2>&1 || { tail -30 "$work/cmake.log"; exit 1; }
cmake --build "$work/build" --target llama-bench -j "$(nproc)" > "$work/build.log" 2>&1 || { tail -30 "$work/build.log"; exit 1; }
mkdir -p "$dest"
cp "$work/build/bin/llama-bench" "$dest/"
"$dest/llama-bench" --help > /dev/null 2>&1 || true
echo "llama-bench built into $dest"
