#!/usr/bin/env bash
# The GPU check, for a fresh GPU machine (under 8 minutes): installs the project with uv
# from pyproject.toml + uv.lock, builds its own data, and prints one table (benchmarks/gpu_check.py):
# training triplets/s (bf16, batch 1,024 and 8,192), indexing 1M passages, exact search on the GPU, and
# torchrun DDP with NCCL on the GPUs present.
#
#   bash benchmarks/gpu_check.sh               # on a GPU machine
#   bash benchmarks/gpu_check.sh --cpu-smoke   # the same steps on the CPU at small sizes (no GPU needed)
#
# Each missing piece is one line and exit status 2. WORK (default /tmp/gpu_check) is the scratch folder.
set -uo pipefail
cd "$(dirname "$0")/.."
missing=0
command -v uv > /dev/null || { echo "gpu_check: uv is not installed (pip install uv, or https://docs.astral.sh/uv/)"; missing=1; }
[[ -f uv.lock && -f pyproject.toml ]] || { echo "gpu_check: run it from a checkout of the project (no uv.lock here)"; missing=1; }
if [[ " $* " != *" --cpu-smoke "* ]]; then
  command -v nvidia-smi > /dev/null || { echo "gpu_check: nvidia-smi not found: no NVIDIA driver on this machine (--cpu-smoke checks the script on the CPU)"; missing=1; }
fi
[[ $missing == 0 ]] || exit 2
start=$(date +%s)
if ! uv sync --locked --quiet > /tmp/gpu_check_uv_sync.log 2>&1; then
  echo "gpu_check: uv sync --locked failed (no route to PyPI?): $(tail -n 1 /tmp/gpu_check_uv_sync.log)"
  exit 2
fi
echo "uv sync: $(( $(date +%s) - start )) s"
[[ " $* " == *" --cpu-smoke "* ]] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
exec uv run --locked --no-sync python benchmarks/gpu_check.py --work "${WORK:-/tmp/gpu_check}" "$@"
