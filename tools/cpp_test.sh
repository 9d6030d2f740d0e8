#!/usr/bin/env bash
# The C++ (libtorch) suite: configure the CMake build in build-cmake/, build it and run CTest.
#   VENV=/path/to/venv bash tools/cpp_test.sh      (default VENV: .venv)
# torch's CMake files come from the venv's torch. The CUDA kernel is left out unless
# INNA_FUSED_CUDA=1 (the Python build already compiles it; nvcc would double the time here).
# BUILD_DIR overrides the build folder; JOBS the parallel compile jobs (default: all cores).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
BUILD_DIR=${BUILD_DIR:-build-cmake}
JOBS=${JOBS:-$(nproc)}
TORCH_PREFIX=$("$VENV/bin/python" -c 'import torch; print(torch.utils.cmake_prefix_path)')
# A machine with only Python and pip gets CMake (and CTest) from PyPI into the venv.
if ! command -v cmake >/dev/null 2>&1 || ! command -v ctest >/dev/null 2>&1; then
  [ -x "$VENV/bin/cmake" ] || "$VENV/bin/python" -m pip install -q cmake
  export PATH="$VENV/bin:$PATH"
fi
if [ "${INNA_FUSED_CUDA:-0}" = "1" ]; then cuda=ON; else cuda=OFF; fi
generator=()
if command -v ninja >/dev/null 2>&1 || [ -x "$VENV/bin/ninja" ]; then
  generator=(-G Ninja -DCMAKE_MAKE_PROGRAM="$(command -v ninja || echo "$VENV/bin/ninja")")
fi
if [ -f "$BUILD_DIR/CMakeCache.txt" ]; then
  generator=()  # an existing build folder keeps its generator
fi
cmake -S . -B "$BUILD_DIR" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DINNA_FUSED_WITH_CUDA=$cuda
cmake --build "$BUILD_DIR" -j "$JOBS"
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$JOBS"
