#!/usr/bin/env bash
# The test command (README, .ci/run): set up .venv, build (CPU + CUDA when a toolkit is found),
# run the Python tests, smoke-run the benchmark suite, and run the C++ (CTest) suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/env.sh
VENV=${VENV:-.venv}
# torch.compile's on-disk caches are shared by every checkout on a machine, and their keys do not
# cover a custom op's schema: a graph compiled against an earlier build of the op (e.g. another
# list order) could be replayed. Each test run compiles into a cache of its own.
TORCHINDUCTOR_CACHE_DIR="$(mktemp -d)"
export TORCHINDUCTOR_CACHE_DIR
trap 'rm -rf "$TORCHINDUCTOR_CACHE_DIR"' EXIT
"$VENV/bin/python" -m pytest -q tests
if compgen -G "bench/test_*.py" >/dev/null; then
  "$VENV/bin/python" -m pytest -q bench --benchmark-disable -m "not slow"
fi
if [ -f tools/cpp_test.sh ]; then
  bash tools/cpp_test.sh
fi
