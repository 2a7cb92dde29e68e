#!/usr/bin/env bash
# preflab vs TRL on one GPU, every configuration of issue 17 interleaved, in one go:
#   Qwen2-0.5B and Llama-1B shapes (random init, make_model.py), batch 8 and 32, reference forward every step and
#   reference log-probs precomputed; bf16 autocast, fused AdamW, sdpa; 25 steps of which 5 warm-up (timed: 20).
# Every JSON line (with its 25-step loss curve) goes to $OUT/results.jsonl; the tables (tokens/s, peak GPU
# memory, MFU against the measured bf16 matmul rate, loss-curve differences) to $OUT/report.md; torch.profiler
# tables of one short run per library to $OUT/profile_{trl,preflab}.txt.
#
#   OUT=/tmp/gpucmp TRL_PY=/tmp/trlvenv/bin/python bash benchmarks/gpu_compare.sh
#   bash benchmarks/gpu_compare.sh --smoke      # CPU dry run of every step with the tiny shape (a few minutes)
#
# Time (estimated, not yet measured on an H200): 16 runs of 20-45 s (process start, model load, two 3-s matmul
# calibrations of common.py, 25 steps) + 2 per shape for the attention A/B (ATTENTION_AB=0: none), models and
# fixture about 1 minute, profiles about 1 minute: 9-13 minutes.
# Under a 10-minute limit per command run one shape per call (MODELS=qwen2-0.5b, then MODELS=llama-1b with the
# same OUT: the results accumulate in one file), and PROFILE=0 on the second call.
# Environment: PY (python with preflab), TRL_PY (python with trl 1.16), PREFBENCH_DIR (the shared bench folder),
# FIX (fixture folder; built with --rows 512 when missing), OUT, MODELS, BATCHES, STEPS, WARMUP, ATTENTION_AB,
# PREFLAB_ARGS (preflab-only runner options; default: rows rounded up to a multiple of 64), PROFILE (0: no profiles).
# torch.compile is not one of the configurations here (its compile adds a minute or more per run): measure it with
#   python benchmarks/compile_compare.py --repeats 2 -- --device cuda --bf16 --model $OUT/models/qwen2-0.5b \
#       --fixture $FIX --batch-size 8 --steps 25 --warmup-steps 5 --pad-to-multiple-of 64
# or add it to every preflab run: PREFLAB_ARGS="--pad-to-multiple-of 64 --torch-compile" with another OUT.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PY:-python}
TRL_PY=${TRL_PY:-/tmp/trlvenv/bin/python}
BENCH=${PREFBENCH_DIR:-$HERE/../../shared/bench}
export PREFBENCH_DIR=$BENCH
TMP=$($PY -c "import tempfile; print(tempfile.gettempdir())")
OUT=${OUT:-$TMP/gpu-compare}
PREFLAB_ARGS=${PREFLAB_ARGS:---pad-to-multiple-of 64}
if [ "${1:-}" = "--smoke" ]; then  # every step of the script on CPU, tiny model, 3 steps, bf16 autocast as on the GPU
  DEVICE=(--device cpu --bf16 --threads 1); MODELS=${MODELS:-tiny}; BATCHES=${BATCHES:-2}; STEPS=${STEPS:-3}
  WARMUP=${WARMUP:-1}; PROFILE_STEPS=2; ROWS=256
else
  DEVICE=(--device cuda --bf16); MODELS=${MODELS:-qwen2-0.5b llama-1b}; BATCHES=${BATCHES:-8 32}
  STEPS=${STEPS:-25}; WARMUP=${WARMUP:-5}; PROFILE_STEPS=8; ROWS=512
fi
FIX=${FIX:-$TMP/prefbench-fixture-$ROWS}  # the smoke's 256-row fixture never stands in for the GPU's 512 rows
mkdir -p "$OUT/models"
RESULTS=$OUT/results.jsonl
started=$(date +%s)
say() { echo "[$(( $(date +%s) - started ))s] $*"; }

[ -f "$FIX/fixture_info.json" ] || { say "fixture ($ROWS rows) -> $FIX"; "$PY" "$BENCH/make_fixture.py" "$FIX" --rows "$ROWS"; }
for m in $MODELS; do
  [ -f "$OUT/models/$m/config.json" ] || { say "model $m"; "$PY" "$BENCH/make_model.py" "$m" "$OUT/models/$m" --fixture "$FIX"; }
done
"$PY" -c "import torch, json; print(json.dumps({'torch': torch.__version__, 'gpu': torch.cuda.get_device_name() if torch.cuda.is_available() else None}))" > "$OUT/environment.json"

run() {  # run LIB MODEL BATCH [runner options...]
  local lib=$1 model=$2 batch=$3; shift 3
  local args=(--fixture "$FIX" --model "$OUT/models/$model" --batch-size "$batch" --steps "$STEPS"
              --warmup-steps "$WARMUP" "${DEVICE[@]}" --out "$RESULTS")
  local t=$(date +%s) line
  if [ "$lib" = trl ]; then
    line=$("$TRL_PY" "$BENCH/trl_dpo.py" "${args[@]}" "$@" 2>>"$OUT/stderr.log" | tail -1)
  else
    # shellcheck disable=SC2086
    line=$("$PY" "$HERE/dpo_throughput.py" "${args[@]}" $PREFLAB_ARGS "$@" 2>>"$OUT/stderr.log" | tail -1)
  fi
  say "$lib $model b$batch $* : $("$PY" -c 'import json,sys; r=json.loads(sys.argv[1]); print(r["tokens_per_s"], "tok/s, peak GPU MiB", r["peak_gpu_mib"], ", final loss", r["final_loss"])' "$line") ($(( $(date +%s) - t ))s)"
}

i=0
for model in $MODELS; do
  for batch in $BATCHES; do
    for ref in "" "--precompute-ref"; do
      # shellcheck disable=SC2086
      if [ $((i % 2)) -eq 0 ]; then run trl "$model" "$batch" $ref; run preflab "$model" "$batch" $ref
      else run preflab "$model" "$batch" $ref; run trl "$model" "$batch" $ref; fi
      i=$((i + 1))
    done
  done
done

# segment attention (the default, `attention: auto`) against the dense 4-D mask, reference every step: decides the
# GPU default (ATTENTION_AB=0 skips these runs)
if [ "${ATTENTION_AB:-1}" != 0 ]; then
  for model in $MODELS; do
    batch=${BATCHES%% *}
    run preflab "$model" "$batch" --attention dense; run preflab "$model" "$batch" --attention segments
  done
fi

if [ "${PROFILE:-1}" != 0 ]; then
  first=${MODELS%% *}
  batch=${BATCHES%% *}
  prof=(--fixture "$FIX" --model "$OUT/models/$first" --batch-size "$batch" --steps "$PROFILE_STEPS" --warmup-steps 1 "${DEVICE[@]}")
  say "profiles ($first, batch $batch, $PROFILE_STEPS steps)"
  "$TRL_PY" "$HERE/profiled.py" --table "$OUT/profile_trl.txt" "$BENCH/trl_dpo.py" "${prof[@]}" > /dev/null 2>>"$OUT/stderr.log"
  # shellcheck disable=SC2086
  "$PY" "$HERE/profiled.py" --table "$OUT/profile_preflab.txt" "$HERE/dpo_throughput.py" "${prof[@]}" $PREFLAB_ARGS > /dev/null 2>>"$OUT/stderr.log"
fi
"$PY" "$HERE/compare.py" --report "$RESULTS" | tee "$OUT/report.md"
say "done: $RESULTS, $OUT/report.md, $OUT/profile_trl.txt, $OUT/profile_preflab.txt"
