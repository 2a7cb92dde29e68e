"""The RAFT + DPO ladder-program recipe on a tiny model (seed #43): SFT on retrieval-augmented prompts, then DPO
against graph-edit negatives; program-level accuracy (attribute-aware isomorphism) on held-out instructions.

Runs offline on a built-in char-level Llama (like `preflab demo`); both stages are ordinary `preflab` runs of the
offline Trainer (loss_type sft, then sigmoid) in `output_dir/sft` and `output_dir/dpo`, so checkpoints, metrics and
reports are the usual ones. The state is saved to `raft_ladder_state.json` after each stage; with
`resume_from_checkpoint: true` a finished stage is skipped (its weights are loaded) and an interrupted one is run
again from its start, so the result equals an uninterrupted run (preflab.recipe_state).

On several processes (`accelerate launch --num_processes N`, data parallel only) both stages train with the batch of
16 split over the processes (16 / N each; N must divide 16), their sft terms averaged over every chosen token of the
step (objectives.sft token_mean "step"), so the result equals the one-process recipe; the data files, the
program-accuracy evaluations, the state and the summary are made once, by the main process.

Control (`control: true`, the default; `output_dir/control`): the SFT model trained with as many more SFT steps as
the DPO stage took, on the same SFT data with the DPO stage's batch, learning rate and schedule (as dstc's control):
what the DPO stage's steps give when spent on more SFT. summary.json records it as control_program_accuracy_after.

sft_lr_scale multiplies the SFT stage's learning rate (3e-3) and nothing else (not the control's) (preflab.recipe_sft_lr: Wang et al.
2025 lower the learning rate of the SFT stage that precedes DPO). 1.0 (the default) is the recipe as before: same stage
configs, state file and summary.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from preflab.data.tokenize import bos_ids
from preflab.errors import ConfigError
from preflab.generate import generate_text
from preflab.ladder.builders import dpo_rows, raft_rows
from preflab.ladder.program import LadderError, isomorphic, parse_program
from preflab.ladder.synthetic import make_ladder_rows
from preflab.loops.offline import Trainer
from preflab.models.load import frozen_copy
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from preflab.recipe_options import stage_config
from preflab.recipe_sft_lr import check_sft_lr_scale, scaled_sft_lr, sft_lr_params, sft_lr_summary
from preflab.recipe_start import save_start
from preflab.recipe_state import (RecipeState, finish_recipe, load_safetensors_into, main_result, main_writes,
                                  per_process_batch, start_processes)
from preflab.runlog import is_main_process

STATE_FILE = "raft_ladder_state.json"

SFT = dict(loss_type="sft", learning_rate=3e-3, per_device_train_batch_size=16, max_steps=400, warmup_steps=10,
           lr_scheduler_type="cosine")
# DPO with an NLL term on the chosen program (RPO, seed #6; TRL's rpo_alpha): plain DPO against near-miss
# negatives lowered the accuracy on this task (0.41 -> 0.20, valid programs 1.00 -> 0.75, both sides' likelihood
# fell; before the LR warmup started at rate 0: 0.58 -> 0.30), the NLL term keeps it up
DPO = dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 1.0], beta=0.5, learning_rate=3e-4,
           per_device_train_batch_size=16, max_steps=250, warmup_steps=5, lr_scheduler_type="cosine")


def program_accuracy(model, tokenizer, rows: list[dict], max_new_tokens: int = 40) -> tuple[float, float, list]:
    """(share of programs isomorphic to the gold, share that parse, examples) under greedy decoding."""
    bos = bos_ids(tokenizer)
    ids = [bos + tokenizer(r["prompt"], add_special_tokens=False).input_ids for r in rows]
    outs = generate_text(model, tokenizer, ids, max_new_tokens=max_new_tokens)
    correct = valid = 0
    examples = []
    for row, out in zip(rows, outs):
        text = out.strip().split("\nQ:")[0].strip()
        try:
            program, ok = parse_program(text), True
        except LadderError:
            program, ok = None, False
        right = ok and isomorphic(program, parse_program(row["program_text"]))
        valid += ok
        correct += right
        examples.append({"instruction": row["instruction"], "gold": row["program_text"], "output": text,
                         "correct": bool(right)})
    return correct / len(rows), valid / len(rows), examples


def run_raft_ladder(output_dir: str, seed: int = 0, n_train: int = 600, n_test: int = 64, retrieve_k: int = 1,
                    sft_steps: int | None = None, dpo_steps: int | None = None, quiet: bool = False,
                    resume: bool = False, stage_options: dict | None = None, sft_lr_scale: float = 1.0,
                    control: bool = True, allow_config_change: bool = False) -> dict:
    check_sft_lr_scale("raft_ladder", sft_lr_scale, SFT["learning_rate"])
    steps = {"sft_steps": sft_steps, "dpo_steps": dpo_steps}
    if (n_train < 2 or n_test < 1 or not 0 <= retrieve_k < n_train
            or any(v is not None and v < 1 for v in steps.values())):
        # retrieve_k < 0 sliced the ranking ([:-1]: every training example but one in each prompt); n_test 0 divided
        # the held-out accuracy by zero after training
        raise ConfigError(f"raft_ladder recipe_params: need n_train >= 2, n_test >= 1 (held-out instructions), "
                          f"0 <= retrieve_k < n_train (examples retrieved into each prompt) and sft_steps, dpo_steps "
                          f">= 1 when set; got n_train={n_train}, n_test={n_test}, retrieve_k={retrieve_k}, "
                          f"sft_steps={sft_steps}, dpo_steps={dpo_steps}.")
    torch.set_num_threads(1)
    out, started = Path(output_dir), time.perf_counter()
    processes = start_processes()  # a launch's process group, formed before anything is written
    per_process = per_process_batch(SFT["per_device_train_batch_size"], "raft_ladder")
    state = RecipeState(out, STATE_FILE, {"seed": seed, "n_train": n_train, "n_test": n_test,
                                          "retrieve_k": retrieve_k, "sft_steps": sft_steps, "dpo_steps": dpo_steps,
                                          "stage_options": stage_options,
                                          **sft_lr_params(sft_lr_scale),
                                          # only when off: a state written before the control existed still matches
                                          **({} if control else {"control": False})}, resume, allow_config_change)
    rows = make_ladder_rows(n_train + n_test, seed=seed)
    train, test = rows[:n_train], rows[n_train:]
    train_aug = raft_rows(train, train, retrieve_k, same_split=True)
    test_aug = raft_rows(train, test, retrieve_k, same_split=False)
    sft_pairs, sft_counts = dpo_rows(train_aug, seed=seed)  # chosen = gold; the sft loss reads the chosen side
    dpo_pairs, dpo_counts = dpo_rows(train_aug, seed=seed + 1)
    data = out / "data"

    def write_data() -> None:
        data.mkdir(parents=True, exist_ok=True)
        for name, payload in (("sft.jsonl", sft_pairs), ("dpo.jsonl", dpo_pairs)):
            (data / name).write_text("".join(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n"
                                             for r in payload))

    main_writes(write_data)
    tokenizer = tiny_tokenizer("char")
    model = tiny_causal_lm(tokenizer, arch="llama", hidden_size=96, num_layers=2, num_heads=4, seed=seed)
    # RUN/start/ and start.json, once, before the SFT stage trains the model (a resume keeps them); the DPO stage
    # trains against the SFT stage's final model, the reference `preflab eval RUN/dpo` takes by default
    main_writes(lambda: save_start(out, model, tokenizer, {"dpo": "sft"}, resume))
    common = dict(model_name_or_path="builtin:tiny-llama", max_length=192, seed=seed, logging_steps=10,
                  disable_tqdm=quiet, use_cpu=True, per_device_train_batch_size=per_process)
    if processes > 1:  # the sft terms' token mean over the global batch of 16, as one process has it
        common["objective_params"] = {"token_mean": "step"}
    say = print if not quiet and is_main_process() else (lambda *a: None)

    def accuracy() -> tuple[float, float, list]:  # greedy decoding on the main process, sent to all
        return main_result(lambda: program_accuracy(model, tokenizer, test_aug))

    def load(folder: Path) -> None:
        load_safetensors_into(model, folder / "model.safetensors")
        say(f"raft_ladder: {folder.name} finished earlier, weights loaded from {folder}")

    def run_sft(folder: Path) -> dict:
        base_acc, _, _ = accuracy()
        scaled = {"learning_rate": scaled_sft_lr(SFT["learning_rate"], sft_lr_scale)}
        Trainer(stage_config("raft_ladder", {**SFT, **scaled, **common,
                                             **({"max_steps": sft_steps} if sft_steps else {}),
                                             "dataset_name": str(data / "sft.jsonl"), "output_dir": str(folder)},
                             stage_options, run_dir=out),
                policy=model, ref=None, tokenizer=tokenizer).train()
        acc, valid, examples = accuracy()
        return {"untrained_accuracy": base_acc, "accuracy": acc, "valid": valid, "examples": examples[:6]}

    def run_dpo(folder: Path) -> dict:
        Trainer(stage_config("raft_ladder", {**DPO, **common, **({"max_steps": dpo_steps} if dpo_steps else {}),
                                             "dataset_name": str(data / "dpo.jsonl"), "output_dir": str(folder)},
                             stage_options, run_dir=out),
                policy=model, ref=frozen_copy(model), tokenizer=tokenizer).train()
        acc, valid, examples = accuracy()
        return {"accuracy": acc, "valid": valid, "examples": examples[:6]}

    def run_control(folder: Path) -> dict:  # the DPO stage's steps, batch, learning rate and schedule, as SFT
        load_safetensors_into(model, out / "sft" / "model.safetensors")
        schedule = {k: DPO[k] for k in ("learning_rate", "max_steps", "warmup_steps", "lr_scheduler_type")}
        Trainer(stage_config("raft_ladder", {**SFT, **schedule, **common,
                                             **({"max_steps": dpo_steps} if dpo_steps else {}),
                                             "dataset_name": str(data / "sft.jsonl"), "output_dir": str(folder)},
                             stage_options, run_dir=out),
                policy=model, ref=None, tokenizer=tokenizer).train()
        acc, valid, examples = accuracy()
        return {"accuracy": acc, "valid": valid, "examples": examples[:6]}

    say("raft_ladder: stage 1/2, SFT on retrieval-augmented prompts")
    sft = state.stage("sft", run_sft, load)
    say(f"raft_ladder: program accuracy after SFT {sft['accuracy']:.3f} (valid {sft['valid']:.3f})")
    say("raft_ladder: stage 2/2, DPO against graph-edit negatives")
    dpo = state.stage("dpo", run_dpo, load)
    say(f"raft_ladder: program accuracy after DPO {dpo['accuracy']:.3f} (after SFT {sft['accuracy']:.3f})")
    summary = {"recipe": "raft_ladder", "metric_name": "program_accuracy_isomorphism",
               "metric_before": sft["accuracy"], "metric_after": dpo["accuracy"],
               "metric_untrained": sft["untrained_accuracy"],
               "valid_program_rate_before": sft["valid"], "valid_program_rate_after": dpo["valid"],
               "baseline": "the same model after the RAFT SFT stage, before DPO", "heldout": len(test),
               "retrieve_k": retrieve_k, "negatives": dpo_counts, "seed": seed,
               "examples_before": sft["examples"], "examples_after": dpo["examples"],
               **sft_lr_summary(sft_lr_scale, SFT["learning_rate"])}
    if control:
        steps_taken = dpo_steps or DPO["max_steps"]
        say(f"raft_ladder: control, {steps_taken} more SFT steps from the SFT model instead of DPO")
        ctl = state.stage("control", run_control, load)
        say(f"raft_ladder: program accuracy of the control {ctl['accuracy']:.3f} (after DPO {dpo['accuracy']:.3f})")
        summary.update({"control_program_accuracy_after": ctl["accuracy"], "control_valid_program_rate_after":
                        ctl["valid"], "control_sft_steps": steps_taken, "examples_control_after": ctl["examples"],
                        "control_baseline": "the SFT model trained with as many more SFT steps as the DPO stage "
                                            "took (same SFT data; the DPO stage's batch, learning rate and "
                                            "schedule)"})
    summary["runtime_s"] = time.perf_counter() - started
    return finish_recipe(out, summary)
