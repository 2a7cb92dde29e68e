"""The PRO recipe (seed #12, `task: pro_orchestrator`): fit the prompt -> weight adapter from the reward models'
scores of preferred responses, save it, and use it as the online run's reward aggregator (weights over the reward
functions that depend on the prompt); true reward before / after against fixed equal weights.

"Preference Orchestrator: Prompt-Aware Multi-Objective Alignment for Large Language Models" (arXiv:2511.10656); spec
methods/models-and-loops.md #12. The adapter and its loss are `preflab.reward_models.orchestrator` (default loss
"kl": w*(x) = softmax(z / T), z_k = (r_k(x, y_w) - mu_k) / s_k, L = KL(w* || g(x))); online, the judge's score is

    R(x, y) = sum_k g(phi(x))_k r_k(x, y)      (instead of TRL's fixed sum_k w_k r_k with reward_weights)

phi: bag-of-words counts over the training prompts' words (`PromptFeatures`, saved with the adapter).

Stages, each an ordinary preflab run in a subfolder of output_dir:
    adapter/   fit_adapter on adapter_data (rows {prompt, chosen_rewards: [r_1..r_K]}; default: the toy's, written to
               data/adapter_rows.jsonl), saved as adapter.safetensors + orchestrator.json (load_orchestrator)
    sft/       SFTTrainer: echo the prompt's words, in capitals or lower case at random (a style-neutral start)
    grpo/      OnlineRun GRPO, reward functions loud_echo + quiet_echo weighted per prompt by the adapter
    control/   (control: true) the same GRPO steps with fixed equal weights (reward_weights [0.5, 0.5])

Toy: "shout: w1 w2" prompts want the words in capitals (loud_echo), "whisper: w1 w2" prompts in lower case
(quiet_echo); the true reward of a response is the reward function its prompt type wants. Any fixed weights make
the same style best for both types, so the control cannot serve both (spec #12, 4. Checks, "theory sanity").

State: pro_state.json after each stage; `resume_from_checkpoint: true` loads the finished stages and reruns an
interrupted one from its start (preflab.recipe_state), so the result equals an uninterrupted run's.
"""
from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from preflab.errors import ConfigError, DataError
from preflab.reward_models.orchestrator import PreferenceWeightAdapter, fit_adapter

ADAPTER_FILE, META_FILE, STATE_FILE = "adapter.safetensors", "orchestrator.json", "pro_state.json"
STAGES = ("adapter", "sft", "grpo", "control")
TOY_WORDS = ["sun", "cat", "map", "dog", "red", "box", "pen", "cup", "hat", "log", "net", "owl", "jam", "kit", "fig",
             "bus", "car", "toy", "bee", "ant", "ice", "oak", "elf", "gem"]
TOY_TYPES = {"shout": "loud_echo", "whisper": "quiet_echo"}


def _prompt_text(prompt) -> str:
    if isinstance(prompt, list):  # chat messages
        return " ".join(str(m.get("content", "")) for m in prompt if isinstance(m, dict))
    return str(prompt)


def prompt_words(prompt) -> list[str]:
    return re.findall(r"[a-z0-9]+", _prompt_text(prompt).lower())


class PromptFeatures:
    """phi(x): counts of the vocabulary's words in the prompt (lower-cased [a-z0-9]+ words), [N, V] float."""

    def __init__(self, vocabulary: Sequence[str]):
        self.vocabulary = list(vocabulary)
        self.index = {w: i for i, w in enumerate(self.vocabulary)}

    @classmethod
    def from_prompts(cls, prompts) -> "PromptFeatures":
        return cls(sorted({w for p in prompts for w in prompt_words(p)}))

    def __call__(self, prompts) -> torch.Tensor:
        x = torch.zeros(len(prompts), len(self.vocabulary))
        for i, p in enumerate(prompts):
            for w in prompt_words(p):
                if w in self.index:
                    x[i, self.index[w]] += 1
        return x


class PromptWeights:
    """The saved orchestrator as a reward aggregator: prompts -> [N, K] weights on the simplex (Judge's `weights`)."""

    def __init__(self, adapter: PreferenceWeightAdapter, features: PromptFeatures, reward_names: Sequence[str]):
        self.adapter, self.features, self.reward_names = adapter, features, list(reward_names)

    def __call__(self, prompts) -> torch.Tensor:
        with torch.no_grad():
            return self.adapter(self.features(prompts))


def read_adapter_rows(path: str | Path, num_rewards: int | None = None) -> list[dict]:
    """Rows {prompt, chosen_rewards: [r_1..r_K]} of a jsonl file; an error names the file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"recipe_params.adapter_data: {path} is not a file (a jsonl of rows {{prompt, "
                        "chosen_rewards: [one reward per reward function, of the preferred response]}}).")
    rows = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}, line {line_no}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not JSON ({e}); each line must be one row object.") from e
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object with prompt and chosen_rewards, got {type(row).__name__}.")
        if not isinstance(row.get("prompt"), (str, list)) or not prompt_words(row["prompt"]):
            raise DataError(f"{where}, field 'prompt': missing or without words (columns present: {sorted(row)}).")
        r = row.get("chosen_rewards")
        if not isinstance(r, list) or not r or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                      for v in r):
            raise DataError(f"{where}, field 'chosen_rewards': expected a list of numbers (the reward functions' "
                            f"scores of the preferred response), got {r!r}.")
        k = num_rewards if num_rewards is not None else len(rows[0]["chosen_rewards"]) if rows else len(r)
        if len(r) != k:
            raise DataError(f"{where}, field 'chosen_rewards': {len(r)} values; expected {k}, one per reward "
                            "function, in the order of reward_funcs.")
        rows.append({"prompt": row["prompt"], "chosen_rewards": [float(v) for v in r]})
    if len(rows) < 2:
        raise DataError(f"{path}: {len(rows)} rows; the z-scores of the targets need at least 2.")
    return rows


def fit_orchestrator(rows: list[dict], reward_names: Sequence[str], *, hidden: int = 0, loss: str = "kl",
                     temperature: float = 1.0, steps: int = 300, lr: float = 0.1, seed: int = 0) -> PromptWeights:
    """The adapter fitted by `fit_adapter` on the rows' prompt features and chosen rewards."""
    features = PromptFeatures.from_prompts([r["prompt"] for r in rows])
    torch.manual_seed(seed)
    adapter = PreferenceWeightAdapter(len(features.vocabulary), len(reward_names), hidden=hidden)
    chosen = torch.tensor([r["chosen_rewards"] for r in rows])
    if chosen.shape[1] != len(reward_names):
        raise ConfigError(f"the adapter data has {chosen.shape[1]} rewards per row for {len(reward_names)} reward "
                          f"functions {list(reward_names)}.")
    fit_adapter(adapter, features([r["prompt"] for r in rows]), chosen_rewards=chosen, loss=loss,
                temperature=temperature, steps=steps, lr=lr)
    return PromptWeights(adapter, features, reward_names)


def save_orchestrator(folder: str | Path, weights: PromptWeights, hidden: int) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in weights.adapter.state_dict().items()},
              str(folder / ADAPTER_FILE))
    (folder / META_FILE).write_text(json.dumps({"method": "pro_orchestrator", "reward_names": weights.reward_names,
                                                "vocabulary": weights.features.vocabulary, "hidden": hidden},
                                               indent=1))


def load_orchestrator(folder: str | Path) -> PromptWeights:
    """The reward aggregator saved by `save_orchestrator` (adapter.safetensors + orchestrator.json)."""
    folder = Path(folder)
    if not (folder / META_FILE).is_file() or not (folder / ADAPTER_FILE).is_file():
        raise ConfigError(f"{folder} holds no PRO orchestrator ({META_FILE} and {ADAPTER_FILE}); fit one with "
                          "`preflab train` task: pro_orchestrator (its adapter/ folder).")
    meta = json.loads((folder / META_FILE).read_text())
    features = PromptFeatures(meta["vocabulary"])
    adapter = PreferenceWeightAdapter(len(features.vocabulary), len(meta["reward_names"]), hidden=meta["hidden"])
    adapter.load_state_dict(load_file(str(folder / ADAPTER_FILE)))
    return PromptWeights(adapter, features, meta["reward_names"])


# the toy: two prompt types, two reward functions
def _echo(prompts, completions, upper: bool) -> list[float]:
    out = []
    for p, c in zip(prompts, completions):
        want = [w.upper() if upper else w for w in _prompt_text(p).split(":", 1)[-1].split()]
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
    fn = loud_echo if _prompt_text(prompt).startswith("shout") else quiet_echo
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

    ids = [[tokenizer.bos_token_id] + tokenizer(p + "\n", add_special_tokens=False).input_ids for p in prompts]
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
            control: bool = True, save_steps: int = 0, stop_after_stage: str | None = None) -> dict:
    params = {k: v for k, v in locals().items() if k not in ("output_dir", "resume", "quiet", "stop_after_stage")}
    from preflab.config import config_from_dict
    from preflab.loops.sft import SFTTrainer
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.online.run import OnlineRun
    from preflab.online.tasks import Task
    from preflab.recipe_state import RecipeState, load_safetensors_into
    from preflab.runlog import write_summary

    if stop_after_stage not in (None, *STAGES):
        raise ConfigError(f"recipe_params.stop_after_stage must be one of {STAGES} or null, got {stop_after_stage!r}.")
    if min(n_train, n_heldout, sft_steps, grpo_steps, adapter_steps) < 1:
        raise ConfigError("task pro_orchestrator: n_train, n_heldout, sft_steps, grpo_steps and adapter_steps must "
                          "be >= 1.")
    torch.set_num_threads(1)
    out, started = Path(output_dir), time.perf_counter()
    say = (lambda *a: None) if quiet else print
    reward_names = ["loud_echo", "quiet_echo"]
    train = toy_prompts(n_train, seed)
    heldout = toy_prompts(n_heldout, seed + 1, exclude=set(train))
    adapter_rows = read_adapter_rows(adapter_data, len(reward_names)) if adapter_data else toy_adapter_rows(train)
    state = RecipeState(out, STATE_FILE, params, resume)
    if not adapter_data:
        (out / "data").mkdir(parents=True, exist_ok=True)
        (out / "data" / "adapter_rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in adapter_rows))
    tokenizer = tiny_tokenizer("char")
    new_model = lambda: tiny_causal_lm(tokenizer, arch="llama", hidden_size=hidden_size, num_layers=2,  # noqa: E731
                                       num_heads=4, seed=seed)
    evaluate = lambda m: true_reward_by_type(m, tokenizer, heldout, max_completion_length)  # noqa: E731
    common = dict(seed=seed, logging_steps=10, disable_tqdm=quiet, use_cpu=True, save_steps=save_steps)
    model = new_model()

    def run_adapter(folder: Path) -> dict:
        weights = fit_orchestrator(adapter_rows, reward_names, hidden=adapter_hidden, loss=adapter_loss,
                                   temperature=adapter_temperature, steps=adapter_steps, lr=adapter_lr, seed=seed)
        save_orchestrator(folder, weights, adapter_hidden)
        w = weights(heldout)
        return {"heldout_weights_by_type": {t: w[[i for i, p in enumerate(heldout) if p.startswith(t)]].mean(0).tolist()
                                            for t in TOY_TYPES}}

    say(f"pro_orchestrator: stage 1, fit the prompt -> weight adapter (loss {adapter_loss})")
    adapter_record = state.stage("adapter", run_adapter, lambda folder: None)
    aggregator = load_orchestrator(out / "adapter")
    if stop_after_stage == "adapter":
        return state.state

    def load(folder: Path) -> None:
        load_safetensors_into(model, folder / "model.safetensors")

    def run_sft(folder: Path) -> dict:
        rng = random.Random(seed)
        rows = [{"prompt": p + "\n", "completion": " ".join(w.upper() if loud else w for w in p.split(":")[1].split())}
                for p in train for loud in [rng.random() < 0.5]]
        data = out / "data" / "sft.jsonl"
        data.parent.mkdir(parents=True, exist_ok=True)
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        cfg = config_from_dict({**common, "task": "sft", "model_name_or_path": "builtin:tiny-llama",
                                "dataset_name": str(data), "max_length": 64, "learning_rate": 3e-3,
                                "per_device_train_batch_size": 16, "max_steps": sft_steps, "warmup_steps": 10,
                                "lr_scheduler_type": "cosine", "output_dir": str(folder)})
        SFTTrainer(cfg, policy=model, ref=None, tokenizer=tokenizer).train()
        return evaluate(model)

    say("pro_orchestrator: stage 2, SFT (echo in either style)")
    before = state.stage("sft", run_sft, load)
    sft_weights = {k: v.clone() for k, v in model.state_dict().items()}
    if stop_after_stage == "sft":
        return state.state

    def grpo_stage(name: str, weights) -> dict:
        def run(folder: Path) -> dict:
            model.load_state_dict(sft_weights)
            task = Task([p + "\n" for p in train], [loud_echo, quiet_echo],
                        reward_aggregator=weights if callable(weights) else None)
            cfg = config_from_dict({**common, "task": "online", "trainer": "grpo", "online_task": "dataset",
                                    "model_name_or_path": "(in memory)", "dataset_name": "(in memory)",
                                    "max_steps": grpo_steps, "steps_per_generation": 1,
                                    "num_generations": num_generations,
                                    "prompts_per_generation": prompts_per_generation,
                                    "per_device_train_batch_size": prompts_per_generation,
                                    "learning_rate": learning_rate, "warmup_steps": 0, "beta": 0.0,
                                    "lr_scheduler_type": "constant", "max_completion_length": max_completion_length,
                                    "output_dir": str(folder),
                                    **({} if callable(weights) else {"reward_weights": list(weights)})})
            OnlineRun(cfg, policy=model, tokenizer=tokenizer, task=task).train()
            return evaluate(model)

        return state.stage(name, run, load)

    say("pro_orchestrator: stage 3, GRPO with the prompt-aware weights")
    after = grpo_stage("grpo", aggregator)
    if stop_after_stage == "grpo":
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
    write_summary(out, summary)
    return summary
