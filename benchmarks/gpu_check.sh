#!/usr/bin/env bash
# One prepared GPU pass (device machine: python3 with torch + transformers, no network), under ~9.5 minutes:
# the CUDA tests, the TT-layer benchmark (bench_layers.py --device cuda; LAYERS_S=0 skips it), the GPT-2 training-step
# benchmark eager (dense, TTM materialized, TTM per-layer, save_weight), then dense and TTM compiled with CUDA
# graphs (GPT2C_S=0 skips it). Wheels the image lacks are carried in .gpu_wheels/.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
out=${OUT:-/tmp/gpu_out}
mkdir -p "$out"
python3 -c "import array_api_compat" 2>/dev/null || python3 -m pip install -q --no-deps --no-index .gpu_wheels/array_api_compat-*.whl
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/machine.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$out/machine.txt"
timeout "${TESTS_S:-90}" python3 -m pytest -q -m gpu -o filterwarnings=default -p no:cacheprovider tests 2>&1 | tee "$out/gpu_tests.txt"
if [ "${LAYERS_S:-120}" != 0 ]; then  # TT layers vs dense and peers (peers from .gpu_wheels when present)
  for wheel in .gpu_wheels/tensorly-*.whl .gpu_wheels/tensorly_torch-*.whl; do
    [ -f "$wheel" ] && python3 -m pip install -q --no-deps --no-index "$wheel"
  done
  timeout "${LAYERS_S:-120}" python3 benchmarks/bench_layers.py --device cuda 2>&1 | tee "$out/gpu_layers.txt"
fi
if [ -f benchmarks/gpu_gpt2.py ]; then
  timeout "${GPT2_S:-180}" python3 benchmarks/gpu_gpt2.py ${GPT2_ARGS:-} 2>&1 | tee "$out/gpu_gpt2.txt"
  if [ "${GPT2C_S:-180}" != 0 ]; then
    timeout "${GPT2C_S:-180}" python3 benchmarks/gpu_gpt2.py --compile --mode reduce-overhead --variants dense,ttm \
      --steps 10 2>&1 | tee "$out/gpu_gpt2_compiled.txt"
  fi
fi
