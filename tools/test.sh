#!/usr/bin/env bash
# The test command (README, .ci/run): set up .venv, build (CPU + CUDA when a toolkit is found),
# run the Python tests, smoke-run the benchmark suite, and run the C++ (CTest) suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/env.sh
VENV=${VENV:-.venv}
"$VENV/bin/python" -m pytest -q tests
if compgen -G "bench/test_*.py" >/dev/null; then
  "$VENV/bin/python" -m pytest -q bench --benchmark-disable -m "not slow"
fi
if [ -f tools/cpp_test.sh ]; then
  bash tools/cpp_test.sh
fi
