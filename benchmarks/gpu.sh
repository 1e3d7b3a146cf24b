#!/usr/bin/env bash
# The GPU checks and benchmarks, as one command for a CUDA machine that has torch but not cellfm's
# other dependencies. Wheels of cellfm and the dinov2 oracle travel in .whl/:
#   pip wheel --no-deps . -w .whl && pip download --no-deps dinov2==0.0.1.dev2 -d .whl
#   bash benchmarks/gpu.sh [OUT_DIR]
set -uo pipefail
out=${1:-${OUT:-benchmarks/results}}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
python3 benchmarks/gpu_check.py 2>&1 | grep -v "xFormers not available" | tee "$out/gpu_check.log"
timeout 420 python3 benchmarks/ssl_step.py --gpu 2>&1 | grep -v "xFormers not available" | tee "$out/ssl_step_gpu.log"
timeout 300 python3 benchmarks/data_path.py --json "$out/data_path_gpu_headline.json" 2>&1 | tee "$out/data_path_gpu.log"
cp benchmarks/results/gpu_check.json benchmarks/results/ssl_step_gpu.json "$out/" 2>/dev/null
exit 0
