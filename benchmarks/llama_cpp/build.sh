#!/usr/bin/env bash
# Build the llama.cpp that check_pocket_gguf.py runs voxport's pockettts exports in, and pocket_check.
#
#   benchmarks/llama_cpp/build.sh [WORK_DIR]        (default: build/llama_cpp under the repo root)
#
# llama.cpp's `pockettts` support is taken from the llama.cpp vendored in llama-cpp-python 0.3.36's
# sdist (ggml commit 0c1e570), the version voxport's layout was checked against. Steps, each skipped
# when its output already exists (so re-running is cheap, and an interrupted build resumes):
#   1. pip download the sdist (the repo venv's pip)      -> WORK/llama_cpp_python-0.3.36.tar.gz
#   2. unpack it                                          -> WORK/llama_cpp_python-0.3.36/
#   3. cmake configure vendor/llama.cpp (shared libs, CPU, no curl/OpenSSL/tests/examples/server)
#      -> WORK/build/
#   4. build only the `llama` and `mtmd` targets (~15 min on 2 cores) -> WORK/build/bin/lib{llama,mtmd}.so
#   5. g++ pocket_check.cpp against them (rpath to WORK/build/bin) -> WORK/pocket_check (rebuilt when
#      pocket_check.cpp is newer)
# Environment: PYTHON (default REPO/.venv/bin/python), JOBS (default nproc), CXX (default g++).
set -euo pipefail

VERSION=0.3.36
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
WORK="${1:-$REPO/build/llama_cpp}"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
JOBS="${JOBS:-$(nproc)}"
CXX="${CXX:-g++}"

mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
TARBALL="$WORK/llama_cpp_python-$VERSION.tar.gz"
SRC="$WORK/llama_cpp_python-$VERSION"
LLAMA="$SRC/vendor/llama.cpp"
BUILD="$WORK/build"
BIN="$WORK/pocket_check"

step() { printf '== %s\n' "$*"; }

# 1. sdist
if [[ -f "$TARBALL" || -f "$LLAMA/CMakeLists.txt" ]]; then
    step "sdist: have $TARBALL (or its unpacked tree), skipping download"
else
    step "sdist: downloading llama-cpp-python==$VERSION into $WORK"
    "$PYTHON" -m pip download "llama-cpp-python==$VERSION" --no-deps --no-binary :all: -d "$WORK"
    [[ -f "$TARBALL" ]] || { echo "expected $TARBALL after pip download" >&2; exit 1; }
fi

# 2. unpack
if [[ -f "$LLAMA/CMakeLists.txt" ]]; then
    step "source: have $LLAMA, skipping unpack"
else
    step "source: unpacking into $SRC"
    tar -xzf "$TARBALL" -C "$WORK"
fi

# 3. configure (the flags that worked; CMAKE_BUILD_TYPE defaults to Release in llama.cpp)
if [[ -f "$BUILD/Makefile" ]]; then
    step "configure: have $BUILD/Makefile, skipping"
else
    step "configure: $LLAMA -> $BUILD"
    cmake -S "$LLAMA" -B "$BUILD" \
        -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=ON \
        -DLLAMA_CURL=OFF \
        -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=OFF \
        2>&1 | tee "$WORK/cmake.log"
fi

# 4. build libllama + libmtmd only
if [[ -f "$BUILD/bin/libllama.so" && -f "$BUILD/bin/libmtmd.so" ]]; then
    step "build: have $BUILD/bin/libllama.so and libmtmd.so, skipping"
else
    step "build: targets llama mtmd with $JOBS jobs (log: $WORK/build.log; ~15 min on 2 cores)"
    cmake --build "$BUILD" --target llama mtmd -j "$JOBS" 2>&1 | tee "$WORK/build.log" | grep -E 'Built target|error' || true
    [[ -f "$BUILD/bin/libllama.so" && -f "$BUILD/bin/libmtmd.so" ]] || {
        echo "build failed, see $WORK/build.log" >&2
        exit 1
    }
fi

# 5. pocket_check
LIBDIR="$(cd "$BUILD/bin" && pwd -P)"
if [[ -x "$BIN" && "$BIN" -nt "$HERE/pocket_check.cpp" ]]; then
    step "pocket_check: $BIN is up to date, skipping"
else
    step "pocket_check: compiling $HERE/pocket_check.cpp"
    "$CXX" -std=c++17 -O2 -Wall \
        -I "$LLAMA/include" -I "$LLAMA/tools/mtmd" -I "$LLAMA/ggml/include" \
        "$HERE/pocket_check.cpp" -o "$BIN" \
        -L "$LIBDIR" -lmtmd -lllama -Wl,-rpath,"$LIBDIR"
fi

step "done"
echo "  llama.cpp source : $LLAMA"
echo "  shared libraries : $LIBDIR"
echo "  driver           : $BIN"
echo "next: $PYTHON benchmarks/llama_cpp/check_pocket_gguf.py --bin $BIN"
