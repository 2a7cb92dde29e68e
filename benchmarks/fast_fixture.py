#!/usr/bin/env python
"""Run the shared bench's make_fixture.py unchanged, only faster: random.Random.choices caches the cumulative
weights of a weights list it has already seen. `choices` computes exactly these floats on every call, so the files
are byte-identical (checked: the default fixture's sha256 match); without the cache a 128k-vocabulary fixture
spends hours re-accumulating ~96k word weights for every word drawn.

  python benchmarks/fast_fixture.py "$TMPDIR/prefbench-v128k" --vocab-size 131072
"""
import itertools
import os
import random
import runpy
import sys
from pathlib import Path

MAKER = Path(os.environ.get("PREFBENCH_DIR") or Path(__file__).resolve().parents[1].parent / "shared" / "bench") \
    / "make_fixture.py"

_orig = random.Random.choices
_cache = {}


def choices(self, population, weights=None, *, cum_weights=None, k=1):
    if weights is not None and cum_weights is None:
        key = id(weights)
        hit = _cache.get(key)
        if hit is None or hit[0] is not weights:
            hit = (weights, list(itertools.accumulate(weights)))
            _cache[key] = hit
        return _orig(self, population, cum_weights=hit[1], k=k)
    return _orig(self, population, weights, cum_weights=cum_weights, k=k)


random.Random.choices = choices
sys.argv = [str(MAKER)] + sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
