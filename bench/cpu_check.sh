#!/usr/bin/env bash
# The CPU check, in one call on a CPU machine (about 25 minutes on 2 cores; QUICK=1: a few minutes, to
# try the script): every measurement behind the CPU targets of bench/RESULTS.md ("Against the issue's
# targets (#23)"), in the order they are listed there, with the CPU model and its bf16 / AMX flags
# first. Meant for a kind of CPU the results do not have yet (an AVX-512 + AMX-BF16 Xeon). Writes logs
# under ${OUT:-bench/cpu-results}; copy the numbers into bench/RESULTS.md with the machine line.
#   bash bench/cpu_check.sh           # needs: the venv (make venv), espeak-ng, sox and ffmpeg
# Run it on an otherwise idle machine: every comparison inside is side by side, but a busy box
# still makes the absolute rates meaningless.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/cpu-results}
PY=${PY:-.venv/bin/python}
QUICK=${QUICK:-0}
mkdir -p "$OUT"
exec > >(tee "$OUT/cpu_check.log") 2>&1

big() { [ "$QUICK" = 1 ] && echo "$2" || echo "$1"; } # big FULL QUICK: the size for this run

echo "== machine"; date -u
grep -m1 "model name" /proc/cpuinfo; grep -m1 -E "^cpu family" /proc/cpuinfo; grep -m1 "^model\s" /proc/cpuinfo
echo "bf16 / AMX flags: $(grep -m1 flags /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx512f|avx512_bf16|amx_bf16|amx_tile|amx_fp16)$' | tr '\n' ' ')"
nproc; uptime
$PY -c "import torch; print('torch', torch.__version__, 'mkldnn bf16', torch.backends.mkldnn.is_available())"

echo "== encoder: share of the matmul rate, fp32 and bf16, oneDNN linears on / off, FunASR's encoder"
$PY bench/model.py --seconds "$(big 60 8)" --budgets 0,16 --dtypes float32,bfloat16 --kernels --funasr \
  --rounds "$(big 3 1)" 2>&1 | tail -30

echo "== start-up to the first batch: embedded Ray, then a running cluster"
$PY bench/startup.py --size base --clips 8 --repeats "$(big 3 1)" --work "$OUT/startup" 2>&1 | tail -40
$PY bench/startup.py --size base --clips 8 --repeats "$(big 3 2)" --ray cluster --work "$OUT/startup" 2>&1 | tail -40

echo "== end to end against FunASR one clip at a time: fp32 and bf16, labels compared"
$PY bench/e2e.py --clips "$(big 120 8)" --repeats 1 --dtypes float32,bfloat16 --work "$OUT/e2e" 2>&1 | tail -25

echo "== decode stage against the soundfile + soxr tight loop (mixed 16 / 44.1 / 48 kHz)"
$PY bench/decode_stage.py --clips mixed --rounds "$(big 3 1)" --out "$OUT/decode-stage" 2>&1 | tail -20

echo "== the job with a near-free model against decode + forward tight loops"
$PY bench/feed.py --mode feed --clips short --rows "$(big 2000 500)" --factor 4 --repeats "$(big 2 1)" \
  --out "$OUT/feed" 2>&1 | tail -20

echo "== done"; date -u
