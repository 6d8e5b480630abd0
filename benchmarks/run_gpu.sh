#!/usr/bin/env bash
# The GPU measurements of benchmarks/RESULTS.md in one go: the sampling shape of issue 3
# and the training shape of issue 4, ours vs transformers + torch in the same process.
#   bash benchmarks/run_gpu.sh [OUTDIR]
set -uo pipefail
out=${1:-benchmarks/out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import jax; print('jax', jax.__version__, jax.devices())" | tee -a "$out/gpu.txt"
timeout 330 python3 benchmarks/sampling.py --batch 256,64,16,1 --prompt_len 64 \
  --new_tokens 256 --dtype bfloat16 --repeats 2 2>&1 | tee "$out/sampling.txt"
# The recommended GPU setting (remat, whole-vocab log-probs) against torch's fastest
# (no gradient checkpointing), then our defaults.
timeout 200 python3 benchmarks/training.py --batch 16 --seq 1024 --dtype bfloat16 \
  --steps 10 --warmup 2 --remat --chunk 0 2>&1 | tee "$out/training.txt"
timeout 200 python3 benchmarks/training.py --batch 16 --seq 1024 --dtype bfloat16 \
  --steps 10 --warmup 2 --compare_torch 0 2>&1 | tee -a "$out/training.txt"
