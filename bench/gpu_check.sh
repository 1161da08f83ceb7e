#!/usr/bin/env bash
# The GPU check: one call on a bare GPU node (python3 + torch, no package index), at most 8 minutes.
#   here:  bash bench/gpu_bundle.sh                  # once: .gpu-bundle/ (~40 MB, git-ignored)
#   there: bash bench/gpu_check.sh                   # from this checkout, .gpu-bundle/ beside it
#          (device tool: command "bash bench/gpu_check.sh", carry [".gpu-bundle"])
#   dry run on a CPU box, same code paths, tiny sizes: GPU_CHECK_DRY=1 bash bench/gpu_check.sh  (or --cpu)
#          (python3 must have torch and msgpack, as the GPU node's has: else PY=<such a python>, e.g. the
#          venv's; with GPU_BUNDLE_PY=<its version> given to gpu_bundle.sh)
# Activates the bundle (bench/gpu_activate.sh: Ray, soundfile, soxr, pydantic unpacked into /tmp, this
# checkout first on PYTHONPATH, so the working tree as it is gets measured), then, each part under a
# `timeout` cut from what is left of GPU_CHECK_LIMIT_S (default 470 s; see budget() below):
#   a. the machine: GPU, driver, cores, memory, /dev/shm, versions, commit
#   b. the GPU tests: `pytest -m gpu` on the test files that have GPU tests (the others need moto, funasr...)
#   c. the encoder alone on >= 400 clips of 1-20 s packed as the job packs them (pipeline.batching
#      pack/collate, 600 s budget): bench/gpu_encoder.py (its GPU variants side by side in bf16, parity
#      against fp32), then bench/model.py (the code as it is in bf16 / fp16 / fp32 with the job's own
#      batch_seconds and max_batch_size: audio-s/s and % of the matmul rate)
#   d. the job end to end with defaults (only input, model.source, model.device cuda, output set) on
#      20,000 rows over 900 generated files: 16 kHz wav, 44.1 kHz stereo flac, 48 kHz mp3, 1-20 s
#      (bench/gpu_corpus.py, from the bundle's speech pieces), one run through bench/gpu_job.py:
#      steady audio-s/s and rows/s from two progress lines, GPU busy %, node CPU busy %, peak memory,
#      start-up and tail apart; SIGTERM at its deadline, the session killed 12 s later
#   e. the same with 1 and 2 model actors per GPU (model.gpus_per_actor 1 / 0.5; the defaults give an
#      H200 with 16 cores 4: pipeline/cluster.py actors_per_gpu)
# Prints a summary at the END (a device call returns only the output's tail). Full logs under
# ${OUT:-bench/gpu-results}: gpu_check.log, summary.txt, jobs.jsonl, logs.tar.gz (every part's log),
# gpu_encoder.json and gpu_encoder_profile.txt (6 files: a device call brings back at most 8).
# Copy the numbers into bench/RESULTS.md (## GPU).
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=${GPU_CHECK_DRY:-0}
[ "${1:-}" = --cpu ] && DRY=1
OUT=${OUT:-bench/gpu-results}
WORK=${GPU_CHECK_WORK:-/tmp/e2v-gpu-check}
LIMIT=${GPU_CHECK_LIMIT_S:-$([ "$DRY" = 1 ] && echo 900 || echo 470)}
mkdir -p "$OUT" && rm -rf "$WORK" && mkdir -p "$WORK/logs"
LOGS=$WORK/logs
exec 3>&1 4>&2 > >(tee "$OUT/gpu_check.log") 2>&1
TEE=$!
SUMMARY=$WORK/summary.txt
say() { echo "$*" | tee -a "$SUMMARY"; }
# Each part runs under `timeout` for at most its CAP, and less where that is needed to leave every part
# after it its FLOOR (a job: its deadline; its grace comes on top). A part that ends early leaves its time
# to the later ones, so the floors only bite when earlier parts overrun.
PARTS=(tests variants encoder host large corpus d e2 e4)
declare -A CAP FLOOR
budget() { # budget PART: the seconds PART may take now
  local p later=0 seen=0 b
  for p in "${PARTS[@]}"; do
    if [ $seen = 1 ]; then later=$((later + FLOOR[$p])); case $p in d | e*) later=$((later + GRACE)) ;; esac; fi
    [ "$p" = "$1" ] && seen=1
  done
  case $1 in d | e*) later=$((later + GRACE)) ;; esac
  b=$((LIMIT - SECONDS - later)); b=$((b < CAP[$1] ? b : CAP[$1])); echo $((b < 1 ? 1 : b))
}
if [ "$DRY" = 1 ]; then
  DEVICE=cpu MODEL=feed FILES=30 ROWS=300 GRACE=10
  # the jobs take the GPU path (model.device cuda, a pool of GPU shares) on a Ray GPU this box has not:
  # on the CPU path the e. parts' model.gpus_per_actor was ignored, so the dry run checked none of it
  JOB=(env EMOTION2VEC_SIMULATE_GPU=1 'RAY_OVERRIDE_RESOURCES={"GPU": 1}') JOB_DEVICE=cuda
  CAP=([tests]=60 [variants]=90 [encoder]=60 [host]=40 [large]=40 [corpus]=60 [d]=120 [e2]=90 [e4]=90)
  FLOOR=([tests]=20 [variants]=20 [encoder]=20 [host]=20 [large]=20 [corpus]=20 [d]=60 [e2]=60 [e4]=60)
  VARIANTS=(--device cpu --quick) ENCODER=(--dtypes float32 --seconds 20 --rounds 1)
else
  # on an H200 (2026-12-04) the parts took: GPU tests > 17 s (cut there), gpu_encoder.py ~45 s, the
  # jobs 69 / 57 / 56 s (start-up 25-32 s): 337 s in all. The floors (321 s with the graces) leave every
  # part something useful; a job cut at its deadline still gives its steady rates (progress lines)
  DEVICE=cuda MODEL=base FILES=900 ROWS=20000 GRACE=12 JOB=() JOB_DEVICE=cuda
  CAP=([tests]=90 [variants]=75 [encoder]=40 [host]=40 [large]=25 [corpus]=35 [d]=100 [e2]=70 [e4]=70)
  FLOOR=([tests]=30 [variants]=45 [encoder]=20 [host]=15 [large]=15 [corpus]=20 [d]=50 [e2]=45 [e4]=45)
  read -ra VARIANTS <<< "${GPU_ENCODER_ARGS:---rounds 2}"
  ENCODER=(--dtypes bfloat16,float16,float32 --seconds 4400 --rounds 1)
fi

echo "== bundle"
t=$SECONDS
source bench/gpu_activate.sh || { say "FAILED: the bundle did not activate (bash bench/gpu_bundle.sh here first?)"; exit 1; }
say "bundle activated in $((SECONDS - t)) s ($BUNDLE -> $GPU_SITE)"

echo "== a. machine"
{
  date -u
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv,noheader
  else echo "no nvidia-smi"; fi
  echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores;" \
    "memory $(free -g | awk '/Mem:/ {print $2}') GiB; /dev/shm $(df -h /dev/shm | awk 'NR==2 {print $2}')"
  "$PY" -c "import sys, torch, ray, numpy, pyarrow; print('python', sys.version.split()[0], '| torch', torch.__version__, 'CUDA', torch.version.cuda, '| ray', ray.__version__, '| numpy', numpy.__version__, '| pyarrow', pyarrow.__version__)"
  # the .git that travels may lag the working tree: its tree id says what ran (compare: git rev-parse C^{tree})
  echo "commit $(git describe --always --dirty 2>/dev/null || echo '? (no .git here)'), working tree" \
    "$(GIT_INDEX_FILE=$WORK/git-index git add -A 2>/dev/null && GIT_INDEX_FILE=$WORK/git-index git write-tree 2>/dev/null || echo '?')"
} 2>&1 | tee -a "$SUMMARY"

echo "== b. GPU tests"
files=$(grep -l "mark.gpu" tests/test_*.py | tr '\n' ' ')
T=$(budget tests)
timeout "$T" "$PY" -m pytest -q -m gpu -p no:cacheprovider $files > "$LOGS/gpu_tests.log" 2>&1
rc=$?
say "b. GPU tests ($files; rc $rc$([ $rc = 124 ] && echo ", cut at $T s")): $(grep -E '(passed|failed|skipped|error)' "$LOGS/gpu_tests.log" | tail -1)"
grep -E "^(FAILED|ERROR)" "$LOGS/gpu_tests.log" | cut -c1-200 | tee -a "$SUMMARY"

echo "== c. encoder alone"
# bench/gpu_encoder.py: the encoder's GPU variants side by side in bf16 (>= 400 clips of 1-20 s packed
# as the job packs them), parity against float32; writes gpu_encoder.json and a profile to $OUT
T=$(budget variants)
OUT=$OUT timeout "$T" "$PY" bench/gpu_encoder.py "${VARIANTS[@]}" > "$LOGS/gpu_encoder.log" 2>&1
rc=$?
say "c. encoder variants: bench/gpu_encoder.py ${VARIANTS[*]} (rc $rc$([ $rc = 124 ] && echo ", cut at $T s"))"
{ grep -E "^\||batches, .* audio; " "$LOGS/gpu_encoder.log" || tail -n 12 "$LOGS/gpu_encoder.log"; } | tail -n 16 | cut -c1-240 | tee -a "$SUMMARY"
[ $rc = 0 ] || tail -5 "$LOGS/gpu_encoder.log" | cut -c1-300 | tee -a "$SUMMARY"
# bench/model.py: the code as it is in bf16 / fp16 / fp32, with the job's own batch budget and clips per
# batch on this device (pipeline.predictor's defaults: 600 s / 256 on a GPU)
T=$(budget encoder)
read -r budget_s max_batch < <("$PY" -c "from pipeline.predictor import DEFAULT_BATCH_SECONDS as S, DEFAULT_MAX_BATCH_SIZE as B; print(S['$DEVICE'], B['$DEVICE'])")
ENCODER+=(--budgets "$budget_s" --max-batch "$max_batch")
timeout "$T" "$PY" bench/model.py "${ENCODER[@]}" > "$LOGS/encoder.log" 2>&1
rc=$?
say "c. encoder by dtype: bench/model.py ${ENCODER[*]} (rc $rc$([ $rc = 124 ] && echo ", cut at $T s"))"
{ grep -E "clips, |^\|" "$LOGS/encoder.log" || tail -n 12 "$LOGS/encoder.log"; } | tail -n 8 | cut -c1-240 | tee -a "$SUMMARY"
[ $rc = 0 ] || tail -5 "$LOGS/encoder.log" | cut -c1-300 | tee -a "$SUMMARY"

echo "== c2. the model actor's host work, and the large size"
# a model actor's host CPU per audio-second outside the forward, on job-sized blocks (what one core allows
# at 20,000 audio-s/s: 50 us), base size with frames off and on, each block's shape new and then seen
# again (the forward's CPU was 4x the GPU's time: plans per new shape, or launches?), and the CPU side of
# one call by op (torch.profiler); then the large size's encoder alone
T=$(budget host)
# where bench/gpu_job.py (--work $WORK/jobs) looks for its base model: written once (356 MB, ~3 s), not twice
base_dir=$WORK/jobs/model
[ "$DRY" = 1 ] || "$PY" -c "import sys; sys.path.insert(0, 'bench'); from common import base_model_dir; from pathlib import Path; base_model_dir(Path('$base_dir'))" >> "$LOGS/actor_host.log" 2>&1
if [ "$DRY" = 1 ]; then HOST=(--device sim --blocks 1 --again --profile 8); else HOST=(--device cuda --model "$base_dir" --blocks 6 --again --profile 15); fi
timeout "$T" "$PY" bench/actor_host.py "${HOST[@]}" >> "$LOGS/actor_host.log" 2>&1
say "c2. actor host work (rc $?): $(grep -c '^| ' "$LOGS/actor_host.log") table lines"
grep "^|" "$LOGS/actor_host.log" | cut -c1-200 | tee -a "$SUMMARY"
T=$(budget large)
timeout "$T" "$PY" bench/model.py --dim 1024 --dtypes "$([ "$DRY" = 1 ] && echo float32 || echo bfloat16)" \
  --budgets "$budget_s" --max-batch "$max_batch" --seconds "$([ "$DRY" = 1 ] && echo 20 || echo 2000)" --rounds 1 > "$LOGS/large.log" 2>&1
say "c2. large size (D 1024), encoder alone (rc $?):"
{ grep -E "^\|" "$LOGS/large.log" || tail -n 5 "$LOGS/large.log"; } | tail -n 6 | cut -c1-240 | tee -a "$SUMMARY"

echo "== corpus"
T=$(budget corpus)
timeout "$T" "$PY" bench/gpu_corpus.py --pieces "$BUNDLE/pieces" --out "$WORK/corpus" --files "$FILES" \
  --rows "$ROWS" > "$LOGS/corpus.log" 2>&1
say "$(tail -1 "$LOGS/corpus.log" | cut -c1-300)"

job() { # job PART NAME [--set k=v ...]: one run of the job through bench/gpu_job.py
  local name=$2 T
  T=$(budget "$1")
  shift 2
  if [ "$T" -lt 20 ]; then say "$name: skipped, out of time"; return; fi
  "${JOB[@]}" "$PY" bench/gpu_job.py --work "$WORK/jobs" --corpus "$WORK/corpus/corpus-$ROWS.json" --name "$name" \
    --deadline "$T" --grace "$GRACE" --device "$JOB_DEVICE" --model "$MODEL" "$@" 2>&1 | tee -a "$SUMMARY"
}
if [ -f "$WORK/corpus/corpus-$ROWS.json" ]; then
  echo "== d. the job with defaults"
  job d d.defaults
  echo "== e. 1 and 2 model actors per GPU (the defaults chose 4 on a big GPU with 16 cores)"
  job e2 e.1-actor-per-gpu --set model.gpus_per_actor=1
  job e4 e.2-actors-per-gpu --set model.gpus_per_actor=0.5
else
  say "d/e: no corpus, no job runs"
fi

# at most 8 files come back from a device call: the logs go in one archive
cp "$SUMMARY" "$OUT/summary.txt"
cp "$WORK/jobs/gpu_jobs.jsonl" "$OUT/jobs.jsonl" 2>/dev/null
cp "$WORK"/jobs/*.log "$WORK"/jobs/*.top "$LOGS/" 2>/dev/null
tar -C "$WORK" -czf "$OUT/logs.tar.gz" logs
# the summary goes last: the log's tee is closed (and waited for) first, so nothing lands after it
exec 1>&3 2>&4 3>&- 4>&-
wait "$TEE" 2>/dev/null || sleep 1
{
  echo
  echo "==================== GPU check summary ($SECONDS s; logs: $OUT/logs.tar.gz) ===================="
  cat "$SUMMARY"
} | tee -a "$OUT/gpu_check.log"
