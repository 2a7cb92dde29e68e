#!/usr/bin/env bash
# A virtual environment with the lent GPU machine's package versions (its image 'cuda', as read there: Python 3.12,
# torch 2.11.0+cu130, transformers 5.17.0, accelerate 1.15.0, safetensors 0.8.0, tokenizers 0.23.2, numpy 2.5,
# torchvision 0.26.0; no TRL, no datasets) plus what benchmarks/device_kit.sh carries there (trl 1.16.0,
# datasets 4.7.0), so that an incompatibility shows here and not in the few minutes of a GPU lease. torch from PyPI
# is the CUDA build (about 3 GB with its nvidia-* wheels); it runs on CPU. preflab is installed editable, with
# [dev]; peft is whatever pip picks (the image's version is not known).
#   bash benchmarks/gpu_image_venv.sh [DIR]            # default /tmp/gpuimg; PY312: a Python 3.12 interpreter
# then, from the repository root:
#   OMP_NUM_THREADS=1 PATH=DIR/bin:$PATH PYTHONPATH=$PWD/src python -m pytest -q -p no:cacheprovider --timeout 900
#   PY=DIR/bin/python TRL_PY=DIR/bin/python bash benchmarks/device_run.sh tiny --smoke
# PATH matters: the multi-process tests start the venv's `preflab` and `accelerate` console scripts.
# PIP_CONFIG_FILE=/dev/null: a machine-wide pip configuration (constraints, local indexes) is not used for it.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
DIR=${1:-/tmp/gpuimg}
is312() { "$1" -c "import sys; assert sys.version_info[:2] == (3, 12)" 2>/dev/null; }
if [ -z "${PY312:-}" ]; then  # the first that runs (a pyenv shim of a version not selected does not)
  for c in python3.12 "$HOME"/.pyenv/versions/3.12.*/bin/python3.12; do is312 "$c" && { PY312=$c; break; }; done
fi
is312 "${PY312:-false}" || { echo "gpu_image_venv.sh: no Python 3.12 (the GPU image's); set PY312=/path/to/python3.12"
  exit 2; }
"$PY312" -m venv "$DIR"
pins=$(mktemp)
printf '%s\n' torch==2.11.0 torchvision==0.26.0 transformers==5.17.0 accelerate==1.15.0 safetensors==0.8.0 \
  tokenizers==0.23.2 "numpy>=2.5,<2.6" trl==1.16.0 datasets==4.7.0 > "$pins"
PIP_CONFIG_FILE=/dev/null "$DIR/bin/pip" install -q -c "$pins" -e ".[dev]" torchvision trl datasets
rm -f "$pins"
"$DIR/bin/python" -c "import torch, transformers, accelerate, peft; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'peft', peft.__version__)"
