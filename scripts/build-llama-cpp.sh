#!/usr/bin/env bash
# Build llama.cpp once, from the sources that llama-cpp-python 0.3.36 vendors, for both of its
# users: the shared libraries go into the llama_cpp package of the active Python (installed
# beforehand without a build of its own: LLAMA_BUILD=OFF), and llama-bench and llama-server
# into DEST (scripts/setup.sh: .venv/bin). The llama_bench backend measures with llama-bench;
# `autotune run` serves llama.cpp finalists with llama-server (autotune.served). With CUDA's
# compiler and a GPU the build is for CUDA, else for any x86-64 CPU; LLAMA_CMAKE_ARGS replaces
# that choice.
set -euo pipefail
dest=${1:?destination directory for llama-bench and llama-server}
version=0.3.36
package=$(python -c "import importlib.util as u; print(u.find_spec('llama_cpp').submodule_search_locations[0])")
libdir="$package/lib"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$work"
tar xzf "$work"/llama_cpp_python-$version.tar.gz -C "$work"
src="$work/llama_cpp_python-$version/vendor/llama.cpp"
# GGML_NATIVE=OFF: portable (AVX2, no AVX-512 or AMX): a virtual machine may report AMX and
# then fault on its first tile instruction (seen: SIGILL/SIGSEGV in ggml's AMX mul_mat).
if command -v nvidia-smi >/dev/null && command -v nvcc >/dev/null; then default_args="-DGGML_CUDA=on"
else default_args="-DGGML_NATIVE=OFF"; fi
# The libraries find each other beside themselves ($ORIGIN); the tools find them in the package.
# No CURL or OpenSSL: neither tool downloads models, and llama-server is measured over plain HTTP.
# No web UI: llama-server would otherwise fetch its prebuilt assets from Hugging Face while building.
# shellcheck disable=SC2086  # the arguments are words
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON ${LLAMA_CMAKE_ARGS:-$default_args} \
  -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON "-DCMAKE_INSTALL_RPATH=\$ORIGIN;$libdir" \
  -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_CURL=OFF \
  -DLLAMA_OPENSSL=OFF > "$work/cmake.log" 2>&1 || { tail -30 "$work/cmake.log"; exit 1; }
cmake --build "$work/build" --target llama mtmd llama-bench llama-server -j "$(nproc)" > "$work/build.log" 2>&1 \
  || { tail -30 "$work/build.log"; exit 1; }
mkdir -p "$libdir" "$dest"
find "$work/build/bin" -maxdepth 1 -name "lib*.so*" -exec cp -P {} "$libdir/" \;
for tool in llama-bench llama-server; do
  cp "$work/build/bin/$tool" "$dest/"
  "$dest/$tool" --help > /dev/null 2>&1 || { echo "$dest/$tool --help failed" >&2; exit 1; }
done
python -c "import llama_cpp; llama_cpp.llama_backend_init()" || { echo "llama_cpp cannot load the libraries in $libdir" >&2; exit 1; }
echo "llama.cpp built: libraries in $libdir, llama-bench and llama-server in $dest"
