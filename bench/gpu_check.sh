#!/usr/bin/env bash
# The GPU check, in one call on a GPU machine (about 6-8 minutes): the GPU tests, the encoder in
# bf16/fp16/fp32, and the job end to end on generated clips with the base-size model. Writes logs and a
# summary under ${OUT:-bench/gpu-results}; copy the numbers into bench/RESULTS.md (## GPU).
#   bash bench/gpu_check.sh            # needs: nvidia-smi, the venv (make venv), espeak-ng and sox
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/gpu-results}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1

echo "== machine"; date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
lscpu | grep -E "Model name|^CPU\(s\)"; $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# peak GPU memory and busy % over the whole check, sampled twice a second
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 > "$OUT/smi.csv" &
SMI=$!
trap 'kill $SMI 2>/dev/null' EXIT

echo "== GPU tests"
timeout 120 $PY -m pytest -q -m gpu tests 2>&1 | tail -5

echo "== encoder: bf16 / fp16 / fp32, one clip at a time and 60 / 600 s batches"
timeout 150 $PY bench/model.py --budgets 0,60,600 --dtypes bfloat16,float16,float32 --seconds 120 --rounds 1 2>&1 | tail -20

echo "== job end to end, base-size model, 2000 generated clips (GPU busy % from bench/e2e.py)"
timeout 240 $PY bench/e2e.py --device cuda --clips 2000 --dtypes bfloat16 --repeats 1 --skip-funasr 2>&1 | tail -20

echo "== CPU-side feed rate on this node (near-free model: what the cores can feed)"
timeout 120 $PY bench/feed.py --mode feed --clips mixed --rows 200 --repeats 1 --out "$OUT/feed" 2>&1 | tail -12

kill $SMI 2>/dev/null
awk -F', ' '{ if ($2 > m) m = $2; s += $1; n++ } END { printf "peak GPU memory %d MiB, mean GPU busy %.0f %% over %d samples\n", m, s / n, n }' "$OUT/smi.csv"
