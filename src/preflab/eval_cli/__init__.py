"""`preflab eval`: the command (its parser, and the policy evaluation of a run it runs), above the rooms whose models
it loads: builtin:demo-sft (preflab.demo.sft_model) and a --reward-model (preflab.reward_models.interface).

    cli.py          register (the `preflab eval` parser; --task reward / vlm / diffusion are routed by preflab.cli to
                    the rooms that own them), run (the policy eval), default_reference
    checkpoint.py   evaluate_checkpoint (load a run and its reference, evaluate, write eval.json), load_policy,
                    reward_model_fn

The diagnostics themselves, and what every eval task shares (the split read, the terminal summary, the refusal of
options a task does not read, eval.json's path), live in preflab.eval, which the training loops and the reward models
build on; this room builds on them.
"""
