"""Several tool / program recipe runs in the same processes (one launch instead of one per recipe: each launch costs a
launcher and every rank's imports), for tests/tools/test_recipe_processes.py. Runs are separated by `--`; each is
ENTRY CONFIG OUT PARAMS_JSON, run as `preflab train CONFIG output_dir=OUT disable_tqdm=true recipe_params=PARAMS_JSON`
with ENTRY:

    module  `preflab train` as it is
    dstc    DSTC's sampler extended by fixed candidates (tests/tools/dstc_launch.py), for this run only
    pro     the PRO toy's dense echo reward (tests/tools/pro_launch.py), for this run only

    accelerate launch --config_file examples/accelerate/ddp.yaml --num_processes 2 tests/tools/recipes_launch.py \
        module examples/tools/themis.yaml OUT1 '{"steps": 3}' -- dstc examples/tools/dstc.yaml OUT2 '{...}'

A run that fails exits with its code before the next starts. A recipe that runs on the main process only (icpl) ends
the other processes' part of its run at once: put it last.
"""
import gc
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "loops"))
from fsdp_run import close_process_group, keep_process_group, split_runs  # noqa: E402


def run(entry: str, config: str, out: str, params: str) -> None:
    from preflab.cli import main
    from preflab.online import pro_recipe
    from preflab.tool_use import dstc

    patches = {"module": [], "dstc": [(dstc, "sample_candidates")], "pro": [(pro_recipe, "_echo")]}[entry]
    kept = [(owner, name, getattr(owner, name)) for owner, name in patches]
    if entry == "dstc":
        from dstc_launch import planted_sampler

        dstc.sample_candidates = planted_sampler()
    elif entry == "pro":
        from pro_launch import dense_echo

        pro_recipe._echo = dense_echo
    try:
        code = main(["train", config, f"output_dir={out}", "disable_tqdm=true", f"recipe_params={params}"])
    finally:
        for owner, name, value in kept:
            setattr(owner, name, value)
        sys.stdout.flush()
    if code:
        sys.exit(code)


if __name__ == "__main__":
    runs = split_runs(sys.argv[1:])
    if len(runs) > 1:
        from accelerate import PartialState

        keep_process_group()
        # a recipe's end (preflab.recipe_state.end_processes) closes the process group through PartialState
        PartialState.destroy_process_group = lambda self, group=None: None
    for entry, config, out, params in runs:
        run(entry, config, out, params)
    gc.collect()  # as end_processes does: DDP reducers waiting for the garbage collector go before their group
    close_process_group()
