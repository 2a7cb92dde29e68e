#!/usr/bin/env bash
# Prepare, on a machine WITH package-registry access, what a bare GPU machine (no network; see its image's package
# list: torch, transformers, accelerate, peft, pytest there, but no TRL and no datasets) needs to run
# benchmarks/device_run.sh from this repository's root:
#   .whl/    wheels of TRL 1.16.0 and the datasets stack it needs (about 2 MB; installed there with --no-index)
#   .bench/  a copy of the shared bench folder (../shared/bench: make_fixture.py, make_model.py, trl_dpo.py,
#            common.py, flops_limit.py), which does not travel with the repository
# Both are git-ignored (.gitignore), so a device call names them in `carry`. Then, on the GPU machine, in the
# repository root:
#   bash benchmarks/device_run.sh qwen2-0.5b       # GPU-only tests, then one shape of gpu_compare.sh
#   bash benchmarks/device_run.sh llama-1b --no-tests --no-profile
# Python 3.12 wheels (the GPU image's python3); datasets 4.7 because it needs pyarrow>=21, not 24.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
BENCH=${PREFBENCH_DIR:-../shared/bench}
PY=${PY:-python3}
{ git check-ignore -q .whl/x && git check-ignore -q .bench/x; } || { echo ".whl/ and .bench/ must be git-ignored (.gitignore)"; exit 2; }
rm -rf .whl .bench && mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl trl==1.16.0 datasets==4.7.0 "dill==0.4.0" "multiprocess==0.70.18"
cp -r "$BENCH" .bench
rm -rf .bench/__pycache__
du -sh .whl .bench
echo "ready: carry [\".whl\", \".bench\"] and run: bash benchmarks/device_run.sh qwen2-0.5b"
