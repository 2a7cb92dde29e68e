"""Several runs in the same processes (one launch instead of several), for tests/loops/test_scale_matrix.py and the
other tests that share a launch. Runs are separated by `--`; each is MODE OUT_DIR k=v ...:

    cli     OUT k=v ...   `preflab train k=v ... output_dir=OUT` (the first k=v may be a config file)
    online  OUT k=v ...   the tiny online run of tests/online/online_tiny_run.py (python API, judge e_judge)
    tiny    OUT k=v ...   the tiny offline DPO run of tests/loops/tiny_run.py (synthetic pairs; k=v its overrides)
    refused OUT k=v ...   the same tiny run, expected to stop with a ConfigError (a refused resume): OUT/refusal.json
                          {"message": the error's message, or null when the run was not refused}
    grpo_extrema OUT      tests/objectives/grpo_clip_extrema_ranks.py's step on each rank: OUT/rank<R>.json
    best_extras OUT NAME  tests/loops/test_best_model.py's load_best_model_at_end run of its EXTRA_OBJECTIVES entry
                          NAME at batch 2 per rank: OUT/extras-rank<R>.safetensors, the checkpoint_extras the
                          rank holds after training (the best checkpoint's, if every rank reloads them)
    hub_push OUT          the tiny run with push_to_hub (hub_strategy checkpoint, 4 steps, saves at 2 and 4), with
                          huggingface_hub.HfApi replaced by tests/test_hub_push.py's recorder (no network), restored
                          after: OUT/hub-calls-rank<R>.json, the names of the HfApi calls this rank made
    fsdp    OUT k=v ...   tests/loops/fsdp_run.py's main (the tiny run under FSDP2, OUT/facts.json; with resume_into=
                          and precompute_into=, its resumed and precomputing runs after it)
    resume_verify OUT ENGINE  tests/loops/resume_verify_run.py's damaged-checkpoint resumes (ENGINE: ddp or fsdp2,
                          as the launch's config): OUT/rank<R>.json; its spies on hashing and DCP reads are put back
                          after

    accelerate launch --config_file examples/accelerate/zero2.yaml --num_processes 2 \
        tests/loops/scale_matrix_run.py online OUT1 trainer=grpo save_steps=2 -- online OUT2 ... resume_from_checkpoint=..

A run that fails exits with its code (the cli's, or 1 with the traceback) before the next starts. After each run,
OUT/after-train-rank<R>.json says how many DDP wrappers are still alive in the process (counted without collecting
garbage first) and whether the process group is open: a run that closed the group it formed holds no wrapper.
"""
import gc
import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "online"))
from fsdp_run import close_process_group, keep_process_group, split_runs  # noqa: E402


def run(mode: str, out: str, args: list[str]) -> None:
    if mode == "cli":
        from preflab.cli import main

        code = main(["train", *args, f"output_dir={out}"])
        if code:
            sys.exit(code)
    elif mode == "online":
        import torch

        from test_online_run import tiny_cfg, tiny_run

        torch.set_num_threads(1)
        overrides = {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in args)}
        tiny_run(tiny_cfg(Path(out), **overrides)).train()
    elif mode == "tiny":
        from tiny_run import run as offline_tiny_run

        offline_tiny_run(out, **{k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in args)})
    elif mode == "refused":
        from tiny_run import run as offline_tiny_run

        from preflab.errors import ConfigError

        try:
            offline_tiny_run(out, **{k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in args)})
            message = None
        except ConfigError as err:
            message = str(err)
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "refusal.json").write_text(json.dumps({"message": message}))
    elif mode == "grpo_extrema":
        sys.path.insert(0, str(HERE.parent / "objectives"))
        from grpo_clip_extrema_ranks import write_rank_metrics

        write_rank_metrics(out)
    elif mode == "best_extras":
        write_best_extras(Path(out), *args)
    elif mode == "hub_push":
        write_hub_calls(Path(out))
    elif mode == "fsdp":
        from fsdp_run import main as fsdp_main

        fsdp_main([out, *args])
    elif mode == "resume_verify":
        from resume_verify_run import damaged_resumes

        damaged_resumes(Path(out), *args)
    else:
        sys.exit(f"unknown mode {mode!r}")
    write_after_train(Path(out))


def write_best_extras(out: Path, name: str) -> None:
    """tests/loops/test_best_model.py's 2-process extras run: its _cfg (load_best_model_at_end, 5 steps, evaluated
    and checkpointed each step) with loss_type NAME, batch 2 per rank; OUT/extras-rank<R>.safetensors."""
    from safetensors.torch import save_file

    from preflab.loops.offline import Trainer
    from test_best_model import EXTRA_OBJECTIVES, _cfg, _eval_rows, _rows

    params, greater = EXTRA_OBJECTIVES[name]
    cfg = _cfg(out.parent, out.name, loss_type=name, objective_params=params, max_steps=5, greater_is_better=greater,
               per_device_train_batch_size=2, use_cpu=True)
    trainer = Trainer(cfg, train_data=_rows(16), eval_data=_eval_rows())
    trainer.train()
    extras = {k: v.detach().cpu().contiguous() for k, v in trainer.checkpoint_extras().items()}
    save_file(extras, str(out / f"extras-rank{trainer.accelerator.process_index}.safetensors"))


def write_hub_calls(out: Path) -> None:
    """tests/test_hub_push.py's two-process run: the tiny run uploading each checkpoint and the final model, with
    HfApi recorded; OUT/hub-calls-rank<R>.json lists the calls' names (the main process's only, if uploads are
    made from the main process alone)."""
    import os

    import huggingface_hub

    sys.path.insert(0, str(HERE.parent))
    import test_hub_push

    real = huggingface_hub.HfApi
    huggingface_hub.HfApi, test_hub_push.RecordingHfApi.calls = test_hub_push.RecordingHfApi, []
    try:
        test_hub_push.run(out, max_steps=4, save_steps=2, push_to_hub=True, hub_strategy="checkpoint",
                          hub_model_id="org/ddp")
    finally:
        huggingface_hub.HfApi = real
    (out / f"hub-calls-rank{os.environ.get('RANK', '0')}.json").write_text(
        json.dumps([name for name, _ in test_hub_push.RecordingHfApi.calls]))


def write_after_train(out: Path) -> None:
    """OUT/after-train-rank<R>.json (R: the launcher's RANK): live_ddp_wrappers (every DistributedDataParallel object
    the process still has, reachable or garbage not yet collected) and process_group_open."""
    import os

    import torch
    from torch.nn.parallel import DistributedDataParallel

    live = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())
    (out / f"after-train-rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(
        {"live_ddp_wrappers": live, "process_group_open": torch.distributed.is_initialized()}))


if __name__ == "__main__":
    runs = split_runs(sys.argv[1:])
    if len(runs) > 1:
        keep_process_group()
    for mode, out, *args in runs:
        run(mode, out, args)
    close_process_group()
