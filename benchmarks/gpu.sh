#!/usr/bin/env bash
# The GPU checks in one go, for a machine with CUDA and a torch already installed (CI has none):
# the CUDA tests (xformers inside the model, cached sampling, bf16 training), then the speed
# benchmarks, which write benchmarks/results/NAME-gpu.json; `python -m benchmarks docs` renders
# them beside the CPU figures. The log goes to $OUT/gpu.log (default OUT: benchmarks/results/gpu-logs).
#   bash benchmarks/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu-logs}
mkdir -p "$OUT"
export PYTHONPATH="src:.${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
step() {  # name, time limit in seconds, command...: a failed step does not stop the rest
  local name=$1 limit=$2; shift 2
  echo "=== $name: $*" | tee -a "$OUT/gpu.log"
  timeout "$limit" "$@" >"$OUT/step.log" 2>&1
  local rc=$?
  cat "$OUT/step.log" >>"$OUT/gpu.log"; tail -n 25 "$OUT/step.log"; rm "$OUT/step.log"
  echo "=== $name: exit $rc" | tee -a "$OUT/gpu.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$py -c "import torch; from halluscope.gpt.attention import xformers_problem as p; \
print('torch', torch.__version__, torch.version.cuda, '| xformers:', p('cuda') or 'kernels run')"
step tests 240 $py -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py tests/test_gpt_attention.py
step attention_memory 150 $py -m benchmarks attention_memory --lengths 1024 2048 4096 8192
step training_peers 150 $py -m benchmarks training_peers --preset 110m --batch 8
step sampling_peers 200 $py -m benchmarks sampling_peers
step tokenizer_throughput 90 $py -m benchmarks tokenizer_throughput
cp benchmarks/results/*-gpu.json "$OUT"/ 2>/dev/null
ls "$OUT"
