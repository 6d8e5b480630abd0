#!/usr/bin/env bash
# The GPU measurements of benchmarks/RESULTS.md, each set in one go:
#   bash benchmarks/run_gpu.sh [OUTDIR]            # sampling and training vs torch
#   bash benchmarks/run_gpu.sh OUTDIR rollouts     # continuous batching, GRPO iteration, memory
# The first: the sampling shape of issue 3 and the training shape of issue 4, ours vs
# transformers + torch in the same process. "rollouts" (under 10 minutes on an
# H100/H200), with its targets: >= 150,000 tokens/s at batch 256 on the fixed-length
# SmolLM2-135M shape; continuous >= 2x bucketed on the ragged one; one GRPO iteration
# (64 prompts x 8 samples x 256 new tokens, reference log-probs, one update) <= 3 s;
# per-stage device memory. Needs jax (CUDA), flax, optax, transformers, torch and
# ml-collections (with absl-py and PyYAML); where the machine lacks ml-collections,
# bring its wheels.
set -uo pipefail
out=${1:-benchmarks/out}
what=${2:-train_sample}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import jax; print('jax', jax.__version__, jax.devices())" | tee -a "$out/gpu.txt"
if [ "$what" = rollouts ]; then
  timeout 120 python3 benchmarks/sampling.py --batch 256 --prompt_len 64 --new_tokens 256 \
    --dtype bfloat16 --repeats 2 2>&1 | tee "$out/sampling_fixed.txt"
  timeout 200 python3 benchmarks/ragged.py --rows 1024 --slots 256 --max_len 512 \
    --dtype bfloat16 --sides continuous,bucketed,torch 2>&1 | tee "$out/ragged.txt"
  timeout 150 python3 benchmarks/grpo_iteration.py --prompts 64 --n 8 --new_tokens 256 \
    --dtype bfloat16 --micro_batch 64 2>&1 | tee "$out/grpo_iteration.txt"
  timeout 100 python3 benchmarks/memory.py --models smollm2_135m,llama3_2_1b --loss sft \
    --states 1 --remat 1 --moment_dtype bfloat16 --update_per_array 1 2>&1 | tee "$out/memory.txt"
  exit 0
fi
timeout 330 python3 benchmarks/sampling.py --batch 256,64,16,1 --prompt_len 64 \
  --new_tokens 256 --dtype bfloat16 --repeats 2 2>&1 | tee "$out/sampling.txt"
# The recommended GPU setting (remat, whole-vocab log-probs) against torch's fastest
# (no gradient checkpointing), then our defaults.
timeout 200 python3 benchmarks/training.py --batch 16 --seq 1024 --dtype bfloat16 \
  --steps 10 --warmup 2 --remat --chunk 0 2>&1 | tee "$out/training.txt"
timeout 200 python3 benchmarks/training.py --batch 16 --seq 1024 --dtype bfloat16 \
  --steps 10 --warmup 2 --compare_torch 0 2>&1 | tee -a "$out/training.txt"
