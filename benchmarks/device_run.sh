#!/usr/bin/env bash
# On the GPU machine, from the repository root, after benchmarks/device_kit.sh prepared .whl/ and .bench/ here:
#   bash benchmarks/device_run.sh MODEL [--no-tests] [--no-profile] [--smoke]
# 1. installs the carried wheels (TRL 1.16, datasets) into /tmp/site, no network;
# 2. unless --no-tests: the GPU-only tests (tests/loops/test_engines_gpu.py, the CUDA test of
#    tests/perf/test_flex_attention.py: its CPU tests run on CPU, not here; the QLoRA GPU test when bitsandbytes is
#    there), log to $OUT/gpu_tests.log;
# 3. benchmarks/gpu_compare.sh for MODEL (qwen2-0.5b, llama-1b, ...; batches 8 and 32, reference every step and
#    precomputed, TRL and preflab interleaved), models and fixture under /tmp, results accumulated in
#    /tmp/gpu-compare across calls on the same (warm) machine;
# 4. copies the small outputs to $OUT (results.jsonl, report.md, profiles, environment, logs): at most 8 files.
# It ends itself LIMIT_S seconds after its start (default 540: inside the device tool's 600-s command limit, whose
# kill would skip step 4): the tests get at most 240 s of it, gpu_compare.sh the rest; a cut run keeps the runs
# already finished in results.jsonl and report.md is written from them.
# --smoke: the same on CPU with the tiny shape whatever MODEL names (a real shape on CPU takes minutes per step),
# results in /tmp/gpu-compare-smoke so they never join a GPU report (PY, TRL_PY: pythons with preflab's and TRL's
# packages; the wheels are installed only when TRL_PY cannot import trl).
set -uo pipefail
MODEL=${1:?usage: device_run.sh MODEL [--no-tests] [--no-profile] [--smoke]}
shift
TESTS=1; PROFILE=1; SMOKE=()
for a in "$@"; do
  case $a in --no-tests) TESTS=0;; --no-profile) PROFILE=0;; --smoke) SMOKE=(--smoke);; *) echo "unknown option $a"; exit 2;; esac
done
RESULTS_DIR=${RESULTS_DIR:-/tmp/gpu-compare}
if [ ${#SMOKE[@]} -gt 0 ]; then
  [ "$MODEL" = tiny ] || echo "device_run.sh --smoke: the tiny shape instead of $MODEL (CPU)"
  MODEL=tiny; RESULTS_DIR=${SMOKE_RESULTS_DIR:-/tmp/gpu-compare-smoke}
fi
PY=${PY:-python3}
TRL_PY=${TRL_PY:-$PY}
export PYTHONUNBUFFERED=1
START=$(date +%s)
if [ ${#SMOKE[@]} -gt 0 ]; then LIMIT_S=${LIMIT_S:-3600}; else LIMIT_S=${LIMIT_S:-540}; fi
left() { local t=$(( LIMIT_S - ($(date +%s) - START) )); echo $(( t > 1 ? t : 1 )); }  # timeout 0 would mean none
OUT=${OUT:-/tmp/device-out}; mkdir -p "$OUT"
collect() {
  for f in results.jsonl report.md profile_trl.txt profile_preflab.txt environment.json stderr.log; do
    [ -f "$RESULTS_DIR/$f" ] && cp "$RESULTS_DIR/$f" "$OUT/" ; done
  return 0
}
trap collect EXIT
if ! "$TRL_PY" -c "import trl" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD/src
"$TRL_PY" - <<'PY' | tee "$OUT/versions.txt"
import importlib
for name in ("torch", "transformers", "accelerate", "peft", "datasets", "pyarrow", "trl", "preflab"):
    try:
        mod = importlib.import_module(name)
        print(name, getattr(mod, "__version__", "?"), mod.__file__)
    except Exception as exc:  # a missing or incompatible package: say which, the run below will stop on it
        print(name, "FAILED", type(exc).__name__, exc)
import torch
print("gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
PY
if [ "$TESTS" = 1 ]; then
  t=$(left); [ "$t" -gt 240 ] && t=240
  timeout "$t" "$PY" -m pytest -q -p no:cacheprovider -rs tests/loops/test_engines_gpu.py \
    tests/perf/test_flex_attention.py::test_flex_training_scores_and_gradients_equal_padded_on_cuda \
    tests/test_qlora.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
fi
# timeout signals gpu_compare.sh's whole process group (the runner it waits on too)
OUT=$RESULTS_DIR PY=$PY TRL_PY=$TRL_PY PREFBENCH_DIR=$PWD/.bench MODELS=$MODEL PROFILE=$PROFILE \
  timeout "$(left)" bash benchmarks/gpu_compare.sh "${SMOKE[@]}"
rc=$?
if [ "$rc" = 124 ]; then
  echo "device_run.sh: stopped after LIMIT_S=$LIMIT_S s; report.md from the runs finished so far"
  [ -s "$RESULTS_DIR/results.jsonl" ] && PREFBENCH_DIR=$PWD/.bench "$PY" benchmarks/compare.py --report \
    "$RESULTS_DIR/results.jsonl" > "$RESULTS_DIR/report.md"
fi
exit "$rc"
