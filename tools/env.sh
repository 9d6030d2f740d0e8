#!/usr/bin/env bash
# Create (or refresh) ./.venv with torch and the dev tools, then build inna_fused in place.
#   bash tools/env.sh            # then: .venv/bin/python -m inna_fused bench
# Environment: VENV (default .venv), INNA_FUSED_CUDA=0|1 (default: build CUDA when a toolkit is
# found), TORCH_CUDA_ARCH_LIST (default "8.0;9.0" when no GPU is visible),
# INNA_FUSED_BUILD_TESTING=1|0 (default 1: also build the test-only extension).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
# requirements-dev.txt pins torch and, in the same install, the integration packages (timm,
# transformers, lightning, ...; tests/test_integrations_*.py): pip cannot replace torch for them.
"$VENV/bin/python" -m pip install -q -r requirements-dev.txt
"$VENV/bin/python" - <<'EOF'
from importlib.metadata import PackageNotFoundError, version
def v(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return "missing (its tests skip)"
print("integrations:", ", ".join(f"{n} {v(n)}" for n in
      ("torch", "torchvision", "timm", "transformers", "accelerate", "lightning", "jsonargparse")))
EOF

# torch guesses CUDA_HOME from where `nvcc` sits; point it at a toolkit root with lib64/libcudart.
if [ -z "${CUDA_HOME:-}" ]; then
  for root in "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc || echo /nonexistent)")")")" \
              /usr/local/cuda /usr/local/cuda-*; do
    if ls "$root"/lib64/libcudart* >/dev/null 2>&1 && [ -x "$root/bin/nvcc" ]; then
      export CUDA_HOME="$root"; break
    fi
  done
fi
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
# The test-only extension inna_fused._C_testing (csrc/testing/: the CUDA launch emulation that
# tests/test_cuda_emulated.py runs); users' builds (pip install .) leave it out.
export INNA_FUSED_BUILD_TESTING="${INNA_FUSED_BUILD_TESTING:-1}"
"$VENV/bin/python" -m pip install -q --no-build-isolation -e . 
"$VENV/bin/python" -m inna_fused info
