"""Themis's arithmetic toy (models-and-loops.md #44, demo): does a reward model that calls a calculator beat the
same reward model without tool traces on held-out magnitudes?

Questions "a+b*c"; the positive answer is the value, the negative is off by one. Traces: Thought -> Action:
Calculator -> Action Input: the expression -> Observation: the calculator's value -> Work: whether the answer
matches. Two tiny char-level reward models are trained the same way (`RewardRun`, LM + 0.5 BT loss): one on the
traces, one without (the assistant turn is empty). At evaluation, on operands larger than any seen in training,
the tool-using model writes its own trace and the calculator runs for real (`score_with_tools`); pairwise accuracy
of both goes to summary.json.

The two reward models are trained in `output_dir/with_traces` and `output_dir/without_traces` (ordinary RewardRun
runs); the state is saved to `themis_state.json` after each, and with `resume_from_checkpoint: true` a finished one
is loaded from its safetensors instead of trained again and an interrupted one is trained again from its start, so
the result equals an uninterrupted run (preflab.recipe_state).

On several processes (`accelerate launch --num_processes N`) both trainings are data parallel with the recipe's global
batch (16 pairs = N x 16/N per process; the loss is per pair, so the result equals the one-process recipe); the
evaluation with its calculator calls, the tool cache, the state and summary.json are the main process's, the other
processes wait and receive its numbers.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from preflab.errors import ConfigError
from preflab.objectives.base import ObjectiveOutput
from preflab.recipe_options import stage_config
from preflab.recipe_state import (RecipeState, finish_recipe, load_safetensors_into, main_result, per_process_batch)
from preflab.reward_models.themis import (SPECIAL_TOKENS, TaraAnswer, TaraRow, ThemisModel, ToolStep, encode,
                                          score_with_tools, segments, themis_losses)
from preflab.reward_models.train import RewardRun
from preflab.tools import Calculator, ToolBox
from preflab.tools.calculator import evaluate_expression

STATE_FILE = "themis_state.json"


def arithmetic_rows(n: int, low: int, high: int, seed: int) -> list[TaraRow]:
    rng, rows = random.Random(seed), []
    for _ in range(n):
        a, b, c = (rng.randint(low, high) for _ in range(3))
        expr = f"{a}+{b}*{c}"
        value = evaluate_expression(expr)
        wrong = value + rng.choice([-1, 1])

        def answer(x, right):
            step = ToolStep("compute it.", "Calculator", expr, str(value))
            return TaraAnswer(str(x), [step], "the answer matches." if right else "the answer does not match.")
        rows.append(TaraRow(expr, None, answer(value, True), answer(wrong, False)))
    return rows


@dataclass
class ThemisBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    row_ids: list[int]
    num_tokens: int


def make_collate(tokenizer, with_trace: bool, max_length: int = 256):
    pad = tokenizer.pad_token_id

    def collate(items):
        encoded = [encode(segments(r, r.positive, True, with_trace), tokenizer, max_length=max_length)
                   for _, r in items]
        encoded += [encode(segments(r, r.negative, False, with_trace), tokenizer, max_length=max_length)
                    for _, r in items]
        width = max(len(e["input_ids"]) for e in encoded)
        ids = torch.full((len(encoded), width), pad)
        labels = torch.full((len(encoded), width), -100)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for i, e in enumerate(encoded):
            n = len(e["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(e["input_ids"]), torch.tensor(e["labels"]), 1
        return ThemisBatch(ids, mask, labels, [i for i, _ in items], int(mask.sum()))
    return collate


def themis_loss_fn(model, mb: ThemisBatch) -> ObjectiveOutput:
    logits, rewards = model(mb.input_ids, mb.attention_mask)
    losses, lm, bt = themis_losses(logits, mb.labels, rewards)
    n = len(mb.row_ids)
    return ObjectiveOutput(losses.mean(), losses, {"lm_loss": lm.mean().detach(), "bt_loss": bt.mean().detach(),
                                                   "rewards/accuracies": (rewards[:n] > rewards[n:]).float().mean()})


def themis_tokenizer():
    from preflab.models.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer("char")
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    return tokenizer


def new_themis_model(tokenizer, seed: int = 0) -> ThemisModel:
    """The untrained tiny char-level Llama + zero value head that both reward models start from."""
    from preflab.models.tiny import tiny_causal_lm

    return ThemisModel(tiny_causal_lm(tokenizer, arch="llama", vocab_size=len(tokenizer), hidden_size=96,
                                      num_layers=2, num_heads=4, seed=seed))


def load_themis(tokenizer, folder: Path, seed: int = 0) -> ThemisModel:
    """A reward model saved by `train_themis` (ThemisModel.save_pretrained), loaded into the same architecture."""
    from safetensors.torch import load_file

    model = new_themis_model(tokenizer, seed)
    load_safetensors_into(model.lm, folder / "model.safetensors")
    model.value_head.weight.data.copy_(load_file(str(folder / "value_head.safetensors"))["weight"])
    return model


def train_themis(rows, tokenizer, with_trace: bool, output_dir: Path, steps: int, seed: int = 0,
                 quiet: bool = True, stage_options: dict | None = None, *, run_dir: Path) -> ThemisModel:
    """stage_options: the run's top-level options that reach the recipe's stages (preflab.recipe_options); run_dir:
    the recipe's output_dir (preflab.recipe_options.stage_config)."""
    model = new_themis_model(tokenizer, seed)
    cfg = stage_config("themis", dict(task="reward", model_name_or_path="builtin:tiny-llama",
                                      dataset_name="(in memory)", learning_rate=2e-3,
                                      per_device_train_batch_size=per_process_batch(16, "themis"), max_steps=steps,
                                      warmup_steps=10, lr_scheduler_type="cosine", logging_steps=20, seed=seed,
                                      disable_tqdm=quiet, use_cpu=True, output_dir=str(output_dir)), stage_options,
                       run_dir=run_dir)
    run = RewardRun(cfg, model, tokenizer, list(enumerate(rows)), make_collate(tokenizer, with_trace),
                    themis_loss_fn, reward_info={"head": "themis", "with_trace": with_trace})
    run.train()
    return run.acc.unwrap_model(run.model)


def pairwise_accuracy(model, tokenizer, rows, with_trace: bool, toolbox=None) -> tuple[float, dict]:
    model.eval()
    correct, calls, errors = 0, 0, 0
    for r in rows:
        if with_trace:
            pos = score_with_tools(model, tokenizer, r.question, r.positive.answer, toolbox, max_new_tokens=160)
            neg = score_with_tools(model, tokenizer, r.question, r.negative.answer, toolbox, max_new_tokens=160)
            rp, rn = pos["reward"], neg["reward"]
            calls += pos["tool_calls"] + neg["tool_calls"]
            errors += pos["tool_errors"] + neg["tool_errors"]
        else:
            batch = make_collate(tokenizer, False)([(0, r)])
            with torch.no_grad():
                _, rewards = model(batch.input_ids, batch.attention_mask)
            rp, rn = float(rewards[0]), float(rewards[1])
        correct += rp > rn
    return correct / len(rows), {"tool_calls": calls, "tool_errors": errors}


def run_themis_arithmetic(output_dir: str, steps: int = 400, n_train: int = 800, n_test: int = 64, seed: int = 0,
                          quiet: bool = True, train_operands: tuple = (0, 49), test_operands: tuple = (50, 99),
                          resume: bool = False, stage_options: dict | None = None,
                          allow_config_change: bool = False) -> dict:
    if steps < 1 or n_train < 2 or n_test < 1:  # each reward model trains; both sets hold pairs to score
        raise ConfigError(f"themis recipe_params: need steps >= 1, n_train >= 2 and n_test >= 1; got steps={steps}, "
                          f"n_train={n_train}, n_test={n_test}.")
    for name, span in (("train_operands", train_operands), ("test_operands", test_operands)):
        if not (isinstance(span, (list, tuple)) and len(span) == 2 and all(type(v) is int for v in span)
                and 0 <= span[0] <= span[1]):
            raise ConfigError(f"themis recipe_params.{name} must be [low, high], integers with 0 <= low <= high "
                              f"(the operands' range), got {span!r}.")
    torch.set_num_threads(1)
    per_process_batch(16, "themis")  # a launch's process group, formed before anything is written
    out, started = Path(output_dir), time.perf_counter()
    state = RecipeState(out, STATE_FILE, {"steps": steps, "n_train": n_train, "n_test": n_test, "seed": seed,
                                          "train_operands": train_operands, "test_operands": test_operands,
                                          "stage_options": stage_options}, resume, allow_config_change)
    train = arithmetic_rows(n_train, *train_operands, seed)
    test = arithmetic_rows(n_test, *test_operands, seed + 1)  # held-out magnitudes (same digit counts)
    tokenizer = themis_tokenizer()
    models = {}

    def stage(name: str, with_trace: bool) -> ThemisModel:
        def run(folder: Path) -> dict:
            models[name] = train_themis(train, tokenizer, with_trace, folder, steps, seed, quiet, stage_options,
                                        run_dir=output_dir)
            return {"with_trace": with_trace, "steps": steps}

        def load(folder: Path) -> None:
            models[name] = load_themis(tokenizer, folder, seed)

        state.stage(name, run, load)
        return models[name]

    with_tools = stage("with_traces", True)
    without = stage("without_traces", False)

    def evaluate() -> tuple:  # the tool calls once, on the main process
        toolbox = ToolBox([Calculator()], cache_path=out / "tool_cache.json")
        acc_tools, tool_stats = pairwise_accuracy(with_tools, tokenizer, test, True, toolbox)
        toolbox.save()
        acc_plain, _ = pairwise_accuracy(without, tokenizer, test, False)
        return acc_tools, tool_stats, acc_plain, toolbox.stats

    acc_tools, tool_stats, acc_plain, toolbox_stats = main_result(evaluate)
    summary = {"recipe": "themis", "metric_name": "pairwise_accuracy_heldout_magnitudes",
               "metric_before": acc_plain, "metric_after": acc_tools,
               "baseline": "the same reward model trained and scored without tool traces",
               "train_operands": list(train_operands), "test_operands": list(test_operands), "heldout_pairs": len(test), "train_pairs": len(train), "steps": steps, **tool_stats,
               "toolbox": toolbox_stats, "runtime_s": time.perf_counter() - started}
    return finish_recipe(out, summary)
