"""`preflab train` with DSTC's sampler extended by fixed candidates, so a tiny run has pairs and a sandbox timeout:
run under `accelerate launch` by tests/tools/test_recipe_processes.py (and `planted_sampler` in-process there)."""
import sys

from preflab.tool_use import dstc
from preflab.tool_use.dstc_task import assert_line, program

LOOP = "while True:\n    pass"


def planted_sampler(real=dstc.sample_candidates):
    """The real sampler plus, per task, the gold program, the buggy one and a right test, and a program that never
    ends (a sandbox timeout) for the first task."""
    def sample(model, tokenizer, tasks, n_codes, n_tests, *, temperature, seed, **kw):
        out = real(model, tokenizer, tasks, n_codes, n_tests, temperature=temperature, seed=seed, **kw)
        return [(codes + [program(t.first, t.second), program(t.first, t.second, True)] + ([LOOP] if i == 0 else []),
                 tests + [assert_line(0, t.gold(0))]) for i, (t, (codes, tests)) in enumerate(zip(tasks, out))]
    return sample


if __name__ == "__main__":
    from preflab.cli import main

    dstc.sample_candidates = planted_sampler()
    sys.exit(main(sys.argv[1:]))
