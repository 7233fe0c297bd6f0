#!/usr/bin/env bash
# One-shot GPU check (issue 18): the CUDA tests and the speed ratios, one table at the end.
#
#   bash benchmarks/gpu_check.sh             # on a GPU machine (about 5 minutes on an H100/H200)
#   bash benchmarks/gpu_check.sh --dry-run   # on the CPU in seconds: tiny sizes, CUDA steps skipped
#
# Run from the repository root with the environment that has kmtools' dependencies
# (PYTHON=path/to/python to choose it). Each step has its own time limit; a failed step is
# reported and the others still run. Exit status: 0 when no step failed (skipped is not failed).
set -u
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
HAVE_CUDA=$($PY -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
if [ "$DRY" = 1 ]; then DEV=cpu; else DEV=$([ "$HAVE_CUDA" = 1 ] && echo cuda || echo cpu); fi
LOG=$(mktemp -d)
ROWS=()
FAILED=0

step() {  # step NAME LIMIT_S NEEDS_CUDA(0/1) command...
  local name=$1 limit=$2 cuda=$3; shift 3
  if [ "$cuda" = 1 ] && [ "$DEV" != cuda ]; then
    ROWS+=("| $name | skipped | - | no CUDA$([ "$DRY" = 1 ] && echo ' (dry run)') |")
    return
  fi
  local t0=$SECONDS
  if timeout "$limit" "$@" >"$LOG/$name.out" 2>&1; then status=ok; else status="FAILED (rc $?)"; FAILED=1; fi
  local last
  last=$(grep -E "ratio|×|passed|failed|skipped|zennit / fast|one-pixel" "$LOG/$name.out" | tail -n 1 | tr '|' '/' | cut -c1-150)
  ROWS+=("| $name | $status | $((SECONDS - t0)) s | ${last:-see $LOG/$name.out} |")
  echo "== $name: $status" >&2
  cat "$LOG/$name.out" >&2
}

echo "device: $DEV (CUDA available: $HAVE_CUDA), dry run: $DRY" >&2
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU')" >&2

if [ "$DRY" = 1 ]; then
  step gpu-tests 300 0 $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py -rs
  step neon 300 0 $PY benchmarks/neon_engines.py --arch smallcnn --shape 1,8,8 --batch 4 --reps 1
  step scoring 300 0 $PY benchmarks/scoring_backends.py --batches 64 --reps 1 -n 3 --popsize 12 --steps 2
  step tailor 300 0 $PY benchmarks/tailor_breakdown.py -n 256 --val-n 64 --epochs 1 --rounds 1
  step cuda-forward 60 1 true
else
  step gpu-tests 240 1 $PY -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py -rs
  step cuda-forward 120 1 $PY -c "
import time, torch
from kmtools.models import zoo
m = zoo.create('resnet18').cuda().eval().to(memory_format=torch.channels_last)
x = torch.rand(4096, 3, 32, 32, device='cuda').contiguous(memory_format=torch.channels_last)
with torch.no_grad(), torch.autocast('cuda', torch.bfloat16):
    for _ in range(3): m(x)
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(10): m(x)
    torch.cuda.synchronize(); dt = (time.perf_counter() - t) / 10
print(f'ResNet18 bf16 channels-last forward, batch 4096: {4096 / dt:,.0f} img/s (ratio to nothing: a reference figure)')"
  step neon-smallcnn 150 0 $PY benchmarks/neon_engines.py --arch smallcnn --device "$DEV" --reps 10
  step neon-resnet18 150 0 $PY benchmarks/neon_engines.py --arch resnet18 --device "$DEV" --reps 10
  step scoring-cpu 150 0 $PY benchmarks/scoring_backends.py --threads "$(nproc)" --reps 3
  step tailor 150 0 $PY benchmarks/tailor_breakdown.py --epochs 1 --rounds 2 --threads "$(nproc)"
  if $PY -c "import torchattacks" 2>/dev/null; then
    step onepixel-vs-torchattacks 240 1 $PY benchmarks/onepixel.py -n 40 --device cuda
  else
    ROWS+=("| onepixel-vs-torchattacks | skipped | - | torchattacks not installed (pip install the wheel carried with the repo) |")
  fi
fi

echo
echo "| step | status | time | last figure |"
echo "|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
echo
echo "logs: $LOG"
exit $FAILED
