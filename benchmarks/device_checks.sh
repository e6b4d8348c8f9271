#!/usr/bin/env bash
# GPU checks as one prepared script, for a lent GPU machine (the `device` tool), from the repository root:
#   bash benchmarks/device_checks.sh [tests] [smoke] [train] [loop] [extract]   (default: all; results under $OUT)
# The machine has torch, transformers and torch_geometric; zarr and its needs travel as wheels in .whl/.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-results/device}
STEPS=${*:-tests smoke train loop extract}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi -L
python3 -c "import torch, transformers, torch_geometric, zarr; print(torch.__version__, transformers.__version__, torch_geometric.__version__, zarr.__version__)"
if [[ $STEPS == *tests* ]]; then
  echo "== unit tests on the GPU path"
  python3 -m pytest -q -p no:cacheprovider tests/test_features.py tests/test_model.py 2>&1 | tail -15
fi
if [[ $STEPS == *smoke* ]]; then
  echo "== pipeline smoke (extract on GPU, torchrun + NCCL)"
  python3 benchmarks/pipeline_smoke.py --out "$OUT/pipeline_smoke_gpu.json" 2>&1 | grep -v "it/s\]" | tail -12
fi
if [[ $STEPS == *train* ]]; then
  echo "== train step"
  python3 benchmarks/train_step.py --out "$OUT/train_step_gpu.json" 2>&1 | tail -40
fi
if [[ $STEPS == *loop* ]]; then
  echo "== train loop: loader, step and loop clips/s; evaluation of 1,000 reference-shape clips"
  python3 benchmarks/train_loop.py --clips 128 --epochs 3 --eval-clips 1000 --work-dir /tmp \
    --out "$OUT/train_loop_gpu.json" 2>&1 | grep -v "it/s\]" | tail -30
fi
if [[ $STEPS == *extract* ]]; then
  echo "== extract throughput"
  python3 benchmarks/extract_throughput.py --arch base --clips 1024 --batch-clips 16 --workers 14 \
    --out "$OUT/extract_gpu.json" 2>&1 | grep -v "it/s\]" | tail -40
fi
