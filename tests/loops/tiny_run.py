"""A tiny DPO run with synthetic pairs, shared by the trainer tests (run in-process or as a subprocess).

python tests/loops/tiny_run.py OUT_DIR [key=value ...]   (also under `accelerate launch --num_processes 2 --cpu`)
"""
import os
import random
import sys
from types import SimpleNamespace

import torch

from preflab.config import config_from_dict
from preflab.loops.offline import Trainer
from preflab.models.load import frozen_copy
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer


def synthetic_pairs(n=32, seed=0):
    rng = random.Random(seed)
    draw = lambda k: [rng.randrange(6, 200) for _ in range(k)]  # noqa: E731
    return [SimpleNamespace(row_id=i, prompt_ids=[1] + draw(rng.randrange(2, 6)), chosen_ids=draw(3) + [2],
                            rejected_ids=draw(rng.randrange(1, 5)) + [2], extras={}) for i in range(n)]


def run(out_dir, tiny_arch="llama", n_pairs=32, n_eval_pairs=0, callbacks=(), **overrides):
    """tiny_arch: "llama" (no dropout) or "gpt2" (dropout 0.1 in training mode: draws from the torch RNG).
    n_eval_pairs: eval data of that many other synthetic pairs (none: no evaluation). callbacks: the Trainer's."""
    torch.set_num_threads(1)
    params = dict(model_name_or_path="builtin:tiny-llama", dataset_name="synthetic", output_dir=str(out_dir),
                  learning_rate=1e-3, per_device_train_batch_size=4, max_steps=6, logging_steps=1,
                  disable_tqdm=True, use_cpu=True)
    params.update(overrides)
    cfg = config_from_dict(params)
    tok = tiny_tokenizer()
    policy = tiny_causal_lm(tok, arch=tiny_arch, seed=0)
    ref = frozen_copy(policy)
    trainer = Trainer(cfg, policy=policy, ref=ref, tokenizer=tok, train_data=synthetic_pairs(n_pairs),
                      eval_data=synthetic_pairs(n_eval_pairs, seed=1) if n_eval_pairs else None,
                      callbacks=list(callbacks))
    if os.environ.get("TINY_RUN_POISON"):  # "RANK:STEP,STEP": that rank's loss is NaN at those (1-based) steps
        poison(trainer, os.environ["TINY_RUN_POISON"])
    return trainer.train(), trainer


def poison(trainer, spec: str) -> None:
    """Make the loss of one rank NaN at some steps (one forward per step: no gradient accumulation)."""
    rank, steps = spec.split(":")
    if trainer.accelerator.process_index != int(rank):
        return
    bad, original, calls = {int(s) for s in steps.split(",")}, trainer.forward, {"n": 0}

    def forward(mb):
        calls["n"] += 1
        out = original(mb)
        if calls["n"] in bad:
            out.loss, out.losses = out.loss * float("nan"), out.losses * float("nan")
        return out

    trainer.forward = forward


if __name__ == "__main__":
    import yaml

    from preflab.cli import drop_tracebacks
    from preflab.errors import PreflabError
    from preflab.recipe_state import end_processes

    extra = dict(item.split("=", 1) for item in sys.argv[2:])
    try:
        run(sys.argv[1], **{k: yaml.safe_load(v) for k, v in extra.items()})  # the trainer is dropped on return
    except PreflabError as err:  # as `preflab train` stops (preflab.cli.main): the message, then the process group
        print(f"{type(err).__name__}: {err}", file=sys.stderr)  # closed with the stopped run freed first (a group or a
        drop_tracebacks(err)                               # DDP wrapper alive at exit can abort the process)
        end_processes()
        sys.exit(2)
