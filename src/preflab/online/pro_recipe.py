"""The PRO recipe (seed #12, `task: pro_orchestrator`): fit the prompt -> weight adapter from the reward models'
scores of preferred responses, save it, and use it as the online run's reward aggregator (weights over the reward
functions that depend on the prompt); true reward before / after against fixed equal weights.

"Preference Orchestrator: Prompt-Aware Multi-Objective Alignment for Large Language Models" (arXiv:2511.10656); spec
methods/models-and-loops.md #12. The adapter and its loss are `preflab.reward_models.orchestrator` (default loss
"kl": w*(x) = softmax(z / T), z_k = (r_k(x, y_w) - mu_k) / s_k, L = KL(w* || g(x))); online, the judge's score is

    R(x, y) = sum_k g(phi(x))_k r_k(x, y)      (instead of TRL's fixed sum_k w_k r_k with reward_weights)

phi: bag-of-words counts over the training prompts' words (preflab.reward_models.pro_orchestrator, which also saves
and loads the adapter).

Stages, each an ordinary preflab run in a subfolder of output_dir:
    adapter/   fit_adapter on adapter_data (rows {prompt, chosen_rewards: [r_1..r_K]}; default: the toy's, written to
               data/adapter_rows.jsonl), saved as adapter.safetensors + orchestrator.json (load_orchestrator)
    sft/       SFTTrainer: echo the prompt's words, in capitals or lower case at random (a style-neutral start)
    grpo/      OnlineRun GRPO, reward functions loud_echo + quiet_echo weighted per prompt by the adapter
    control/   (control: true) the same GRPO steps with fixed equal weights (reward_weights [0.5, 0.5])

Toy: "shout: w1 w2" prompts want the words in capitals (loud_echo), "whisper: w1 w2" prompts in lower case
(quiet_echo); the true reward of a response is the reward function its prompt type wants. Any fixed weights make
the same style best for both types, so the control cannot serve both (spec #12, 4. Checks, "theory sanity").

State: pro_state.json (the recipe_params) before the first stage, then after each stage; `resume_from_checkpoint:
true` loads the finished stages and continues an interrupted SFT or GRPO stage from its newest checkpoint when
`save_steps` > 0 (else reruns it from its start; the adapter fit always reruns; preflab.recipe_state), so the result
equals an uninterrupted run's.

On several processes (`accelerate launch --num_processes N`, data parallel only) the SFT stage trains with its batch
of 16 split over the processes (16 / N each; N must divide 16; TRL's SFT loss is the token mean of the global batch,
additive over examples), and the GRPO stages are ordinary online runs: a round of prompts_per_generation prompts (all
processes together) is split over the processes, and trainer grpo's step loss is normalised over all the step's
examples (preflab.online.run), so the split does not change the update. The adapter fit and the held-out evaluations (greedy answers) run on the
main process and every process receives their results; the data files, the adapter, the state and the summary are
written once, by the main process. The result equals the one-process recipe.
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch

from preflab.data.tokenize import bos_ids
from preflab.errors import ConfigError
from preflab.reward_models.pro_orchestrator import (fit_orchestrator, load_orchestrator, prompt_text,
                                                    read_adapter_rows, save_orchestrator)

STATE_FILE = "pro_state.json"
STAGES = ("adapter", "sft", "grpo", "control")
TOY_WORDS = ["sun", "cat", "map", "dog", "red", "box", "pen", "cup", "hat", "log", "net", "owl", "jam", "kit", "fig",
             "bus", "car", "toy", "bee", "ant", "ice", "oak", "elf", "gem"]
TOY_TYPES = {"shout": "loud_echo", "whisper": "quiet_echo"}
SFT_BATCH = 16  # the SFT stage's global batch (split over the processes of a launch)


# the toy: two prompt types, two reward functions
def _echo(prompts, completions, upper: bool) -> list[float]:
    out = []
    for p, c in zip(prompts, completions):
        want = [w.upper() if upper else w for w in prompt_text(p).split(":", 1)[-1].split()]
        got = c.split()
        out.append(0.0 if len(got) != len(want) else sum(a == b for a, b in zip(got, want)) / len(want))
    return out


def loud_echo(prompts, completions, **kwargs) -> list[float]:
    """The share of the prompt's words (after the colon) echoed in place in capitals; 0 for a wrong word count."""
    return _echo(prompts, completions, True)


def quiet_echo(prompts, completions, **kwargs) -> list[float]:
    """The share of the prompt's words echoed in place in lower case; 0 for a wrong word count."""
    return _echo(prompts, completions, False)


def toy_true_reward(prompt: str, completion: str) -> float:
    """The reward function the prompt's type wants: loud_echo for "shout:", quiet_echo for "whisper:"."""
    fn = loud_echo if prompt_text(prompt).startswith("shout") else quiet_echo
    return fn([prompt], [completion])[0]


def toy_prompts(n: int, seed: int, exclude: set = frozenset()) -> list[str]:
    rng, out, seen = random.Random(seed), [], set(exclude)
    while len(out) < n:
        p = f"{rng.choice(list(TOY_TYPES))}: {' '.join(rng.sample(TOY_WORDS, 2))}"
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def toy_adapter_rows(prompts: list[str]) -> list[dict]:
    """Each prompt with the two reward functions' scores of its preferred response (the style its type wants)."""
    rows = []
    for p in prompts:
        words = p.split(":", 1)[1].split()
        preferred = " ".join(w.upper() for w in words) if p.startswith("shout") else " ".join(words)
        rows.append({"prompt": p, "chosen_rewards": [loud_echo([p], [preferred])[0], quiet_echo([p], [preferred])[0]]})
    return rows


def true_reward_by_type(model, tokenizer, prompts: list[str], max_new_tokens: int) -> dict:
    """Greedy answers on `prompts`: mean true reward overall and per prompt type, and a few examples."""
    from preflab.generate import generate_text

    bos = bos_ids(tokenizer)
    ids = [bos + tokenizer(p + "\n", add_special_tokens=False).input_ids for p in prompts]
    answers = generate_text(model, tokenizer, ids, max_new_tokens=max_new_tokens)
    scores = [toy_true_reward(p, a.strip()) for p, a in zip(prompts, answers)]
    by_type = {t: sum(s for p, s in zip(prompts, scores) if p.startswith(t))
               / max(1, sum(p.startswith(t) for p in prompts)) for t in TOY_TYPES}
    return {"true_reward": sum(scores) / len(scores), "by_type": by_type,
            "examples": [{"prompt": p, "answer": a.strip(), "true_reward": s}
                         for p, a, s in list(zip(prompts, answers, scores))[:4]]}


def run_pro(output_dir: str, seed: int = 0, resume: bool = False, quiet: bool = False,
            adapter_data: str | None = None, n_train: int = 400, n_heldout: int = 32, hidden_size: int = 64,
            sft_steps: int = 300, adapter_hidden: int = 0, adapter_loss: str = "kl", adapter_temperature: float = 1.0,
            adapter_steps: int = 300, adapter_lr: float = 0.1, grpo_steps: int = 20, prompts_per_generation: int = 16,
            num_generations: int = 8, learning_rate: float = 3e-4, max_completion_length: int = 12,
            control: bool = True, save_steps: int = 0, stop_after_stage: str | None = None,
            stage_options: dict | None = None, allow_config_change: bool = False) -> dict:
    params = {k: v for k, v in locals().items() if k not in ("output_dir", "resume", "quiet", "stop_after_stage",
                                                             "allow_config_change")}
    from preflab.loops.sft import SFTTrainer
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.online.run import OnlineRun
    from preflab.online.tasks import Task
    from preflab.recipe_options import stage_config
    from preflab.recipe_state import (RecipeState, check_stop_after_stage, end_processes, finish_recipe,
                                      load_safetensors_into, main_result, main_writes, per_process_batch)
    from preflab.runlog import is_main_process

    check_stop_after_stage(stop_after_stage, STAGES)
    if min(n_train, n_heldout, sft_steps, grpo_steps, adapter_steps) < 1:
        raise ConfigError("task pro_orchestrator: n_train, n_heldout, sft_steps, grpo_steps and adapter_steps must "
                          "be >= 1.")
    if adapter_loss != "kl":  # before, "bt" failed in the fit, after the state and data were written
        raise ConfigError(f"task pro_orchestrator: recipe_params.adapter_loss={adapter_loss!r}: the recipe fits the "
                          "adapter with PRO's loss 'kl' (targets from the preferred responses' rewards, the only "
                          "rewards adapter_data rows {prompt, chosen_rewards} carry); 'bt' needs the rejected "
                          "responses' rewards too: fit it in Python (preflab.reward_models.orchestrator.fit_adapter("
                          "..., loss='bt', rejected_rewards=...)) and give the saved folder as reward_aggregator.")
    sft_per_process = per_process_batch(SFT_BATCH, "pro_orchestrator")  # forms a launch's process group first
    torch.set_num_threads(1)
    out, started = Path(output_dir), time.perf_counter()
    say = print if not quiet and is_main_process() else (lambda *a: None)
    reward_names = ["loud_echo", "quiet_echo"]
    train = toy_prompts(n_train, seed)
    heldout = toy_prompts(n_heldout, seed + 1, exclude=set(train))
    adapter_rows = read_adapter_rows(adapter_data, len(reward_names)) if adapter_data else toy_adapter_rows(train)
    state = RecipeState(out, STATE_FILE, params, resume, allow_config_change)
    if not adapter_data:
        def write_adapter_rows() -> None:
            (out / "data").mkdir(parents=True, exist_ok=True)
            (out / "data" / "adapter_rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in adapter_rows))

        main_writes(write_adapter_rows)
    tokenizer = tiny_tokenizer("char")
    new_model = lambda: tiny_causal_lm(tokenizer, arch="llama", hidden_size=hidden_size, num_layers=2,  # noqa: E731
                                       num_heads=4, seed=seed)
    evaluate = lambda m: main_result(  # noqa: E731  (greedy answers on the main process, sent to all)
        lambda: true_reward_by_type(m, tokenizer, heldout, max_completion_length))
    common = dict(seed=seed, logging_steps=10, disable_tqdm=quiet, use_cpu=True, save_steps=save_steps,
                  allow_config_change=allow_config_change)  # a stage resumed from its checkpoint checks it too
    model = new_model()
    from preflab.recipe_start import save_start

    # RUN/start/ and start.json, once, before the SFT stage trains the model (a resume keeps them); no stage is
    # DPO-family (SFT, then GRPO), so none is listed with a reference
    main_writes(lambda: save_start(out, model, tokenizer, {}, resume))

    def fit_adapter(folder: Path) -> dict:
        weights = fit_orchestrator(adapter_rows, reward_names, hidden=adapter_hidden, loss=adapter_loss,
                                   temperature=adapter_temperature, steps=adapter_steps, lr=adapter_lr, seed=seed)
        save_orchestrator(folder, weights, adapter_hidden)
        w = weights(heldout)
        return {"heldout_weights_by_type": {t: w[[i for i, p in enumerate(heldout) if p.startswith(t)]].mean(0).tolist()
                                            for t in TOY_TYPES}}

    def run_adapter(folder: Path) -> dict:  # fitted and saved by the main process, loaded by all below
        return main_result(lambda: fit_adapter(folder))

    say(f"pro_orchestrator: stage 1, fit the prompt -> weight adapter (loss {adapter_loss})")
    adapter_record = state.stage("adapter", run_adapter, lambda folder: None)
    aggregator = load_orchestrator(out / "adapter")
    if stop_after_stage == "adapter":
        end_processes()
        return state.state

    def load(folder: Path) -> None:
        load_safetensors_into(model, folder / "model.safetensors")

    def run_sft(folder: Path, again: bool = False) -> dict:
        rng = random.Random(seed)
        rows = [{"prompt": p + "\n", "completion": " ".join(w.upper() if loud else w for w in p.split(":")[1].split())}
                for p in train for loud in [rng.random() < 0.5]]
        data = out / "data" / "sft.jsonl"

        def write_sft_rows() -> None:
            data.parent.mkdir(parents=True, exist_ok=True)
            data.write_text("".join(json.dumps(r) + "\n" for r in rows))

        main_writes(write_sft_rows)
        cfg = stage_config("pro_orchestrator", {
            **common, "task": "sft", "model_name_or_path": "builtin:tiny-llama", "dataset_name": str(data),
            "max_length": 64, "learning_rate": 3e-3, "per_device_train_batch_size": sft_per_process,
            "max_steps": sft_steps, "warmup_steps": 10, "lr_scheduler_type": "cosine", "output_dir": str(folder),
            "resume_from_checkpoint": again}, stage_options, run_dir=out)
        SFTTrainer(cfg, policy=model, ref=None, tokenizer=tokenizer).train()
        return evaluate(model)

    say("pro_orchestrator: stage 2, SFT (echo in either style)")
    before = state.stage("sft", run_sft, load, checkpoints=save_steps > 0)  # from its checkpoint when it has one
    sft_weights = {k: v.clone() for k, v in model.state_dict().items()}
    if stop_after_stage == "sft":
        end_processes()
        return state.state

    def grpo_stage(name: str, weights) -> dict:
        def run(folder: Path, again: bool = False) -> dict:
            model.load_state_dict(sft_weights)  # a resumed stage then loads its checkpoint's weights over these
            task = Task([p + "\n" for p in train], [loud_echo, quiet_echo],
                        reward_aggregator=weights if callable(weights) else None)
            cfg = stage_config("pro_orchestrator", {
                **common, "task": "online", "trainer": "grpo", "online_task": "dataset",
                "model_name_or_path": "(in memory)", "dataset_name": "(in memory)", "max_steps": grpo_steps,
                "steps_per_generation": 1, "num_generations": num_generations,
                "prompts_per_generation": prompts_per_generation, "per_device_train_batch_size": prompts_per_generation,
                "learning_rate": learning_rate, "warmup_steps": 0, "beta": 0.0, "lr_scheduler_type": "constant",
                "max_completion_length": max_completion_length, "output_dir": str(folder),
                "resume_from_checkpoint": again,
                **({} if callable(weights) else {"reward_weights": list(weights)})}, stage_options, run_dir=out)
            OnlineRun(cfg, policy=model, tokenizer=tokenizer, task=task).train()
            return evaluate(model)

        return state.stage(name, run, load, checkpoints=save_steps > 0)

    say("pro_orchestrator: stage 3, GRPO with the prompt-aware weights")
    after = grpo_stage("grpo", aggregator)
    if stop_after_stage == "grpo":
        end_processes()
        return state.state
    ctl = None
    if control:
        say("pro_orchestrator: control, the same GRPO steps with fixed equal weights")
        ctl = grpo_stage("control", [0.5, 0.5])
    summary = {"recipe": "pro_orchestrator", "metric_name": "heldout_true_reward",
               "metric_before": before["true_reward"], "metric_after": after["true_reward"],
               "baseline": "greedy answers of the SFT policy (either style at random) before GRPO; control_*: the "
                           "same GRPO steps with fixed equal weights reward_weights [0.5, 0.5] over the same reward "
                           "functions",
               "by_type_before": before["by_type"], "by_type_after": after["by_type"],
               "reward_funcs": reward_names, "adapter_loss": adapter_loss,
               "adapter_weights_by_type": adapter_record["heldout_weights_by_type"],
               "adapter_rows": len(adapter_rows), "heldout_prompts": len(heldout), "seed": seed,
               "params": state.state["params"],
               "examples_before": before["examples"], "examples_after": after["examples"]}
    if ctl is not None:
        summary.update({"control_true_reward_after": ctl["true_reward"], "control_by_type_after": ctl["by_type"],
                        "examples_control_after": ctl["examples"]})
    summary["runtime_s"] = time.perf_counter() - started
    return finish_recipe(out, summary)
