#!/usr/bin/env bash
# The GPU suite on a lent GPU machine (benchmarks/GPU.md has the whole procedure).
#
#   bash benchmarks/gpu_run.sh prepare      # here, once: the wheels that machine lacks → .whl/
#   bash benchmarks/gpu_run.sh [ARGS...]    # there: install .whl/, check, run the suite into
#                                           # $OUT (default out/gpu-suite) with ARGS
#                                           # (e.g. --only propagate,points)
#
# The machine's python3 holds torch (CUDA), transformers, accelerate, huggingface-hub,
# safetensors, numpy, opencv, scipy, pyyaml and pillow; diffusers is the one package it lacks,
# a pure-Python wheel (~6 MB of the 64 MiB the working tree may carry).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == prepare ]]; then
    py=${PYTHON:-python3}
    version=${DIFFUSERS_VERSION:-$("$py" -c 'import diffusers; print(diffusers.__version__)')}
    rm -rf .whl
    mkdir .whl
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "diffusers==$version"
    ls -l .whl
    exit 0
fi

out=${OUT:-out/gpu-suite}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
{
    nvidia-smi -L || true
    python3 - <<'EOF'
import importlib, sys
import torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
for name in ("diffusers", "transformers", "accelerate", "huggingface_hub", "safetensors"):
    module = importlib.import_module(name)
    print(name, module.__version__, module.__file__)
if not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device")
print("device", torch.cuda.get_device_name(0))
EOF
} 2>&1 | tee "$out/env.txt"
python3 benchmarks/gpu_suite.py --out "$out" --no-append "$@" 2>&1 | tee "$out/log.txt"
