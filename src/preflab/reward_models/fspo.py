"""The FSPO recipe (seed #15, `task: fspo`): per-user labelled pairs -> few-shot episodes -> an ordinary offline
DPO / IPO run on them; preference accuracy of held-out users, before and after, against plain DPO on pooled pairs.

Singh, Hsu, Sadigh, Finn et al. 2025, "FSPO" (arXiv:2502.19312); spec methods/models-and-loops.md #15. The policy
learns pi(y | x, C_u), C_u = N labelled pairs of user u, with a pairwise objective on episodes (the paper: IPO):

    L = E_u E_{(x, y_w, y_l) in D_u} E_{C in D_u \\ {(x, .)}, |C| = N} l(Delta(x (+) C))

Episodes are `preflab.reward_models.fewshot_episodes.build_episodes` (the released text format, byte for byte);
with shots = 0 every pair is rendered with no examples (`render_episode([], x)`), which is exactly the pooled
baseline's data: FSPO with shots = 0 is plain DPO on the same pairs. Stages, each an ordinary preflab run
(preflab.loops.offline.Trainer, `task: dpo`) in a subfolder of output_dir:

    fspo/     the policy trained on the training users' episodes (k shots each)
    pooled/   (baseline: true) the same steps from the same initial weights on the same pairs without context

Data: `data_file` (jsonl rows {user_id, prompt, chosen, rejected[, group]}, or response_x/response_y/label), or the
built-in toy: two groups of users with opposite tastes on prompts of the same words ("loud" users prefer the words
echoed in capitals, "quiet" users in lower case). Users are split before any episode is built: the held-out users' rows are
never trained on; their episodes (shots from their own rows) are evaluated and counted in summary.json.

Metric: preference accuracy, 1[log pi(y_w | x (+) C) > log pi(y_l | x (+) C)] over held-out users' episodes, per
group (column `group`, else one group per user) and overall; `pair_choice_reward` is the mean
sigmoid(log pi(y_w) - log pi(y_l)), the true reward (1 for the user's preferred response, 0 for the other) that the
policy earns when it picks one of the two responses by its own probabilities. A context-free policy gives the same
answer to both groups on the same prompt (its accuracies for the two groups on a shared prompt sum to 1), so on the
toy it cannot serve both.

State: fspo_state.json (the recipe_params, then the finished stages' records) is written before the first stage and
after each stage; `resume_from_checkpoint: true` loads the finished stages' weights and continues an interrupted
stage from its newest checkpoint when `save_steps` > 0 (else reruns it from its start; preflab.recipe_state), so the
result equals an uninterrupted run's. Without resume an existing state is refused.

On several processes (`accelerate launch --num_processes N`, data parallel only) both stages train with the recipe's
global batch split over the processes (batch_size / N each; N must divide it), so the result equals the one-process
recipe: the loss_type must be a per-pair mean (PER_PAIR_LOSSES) or `sft`, whose token mean then runs over the whole
optimizer step's chosen tokens (objectives.sft token_mean "step", as raft_ladder's sft terms); one that couples the
batch's pairs otherwise, such as aot's sorted matching, is refused there. The held-out scoring (before and after
each stage) runs on the main process and every process receives its numbers; the episode files, state and summary
are written once, by the main process. The users' rows and episodes are built on every process (seeded, the same on
each, and a bad row is refused by every process alike).
"""
from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from preflab.data.report import RowProblem
from preflab.data.sources import read_file_rows
from preflab.errors import ConfigError, DataError
from preflab.reward_models.fewshot_episodes import (DEFAULT_INSTRUCTION, build_episodes, render_completion,
                                                    render_episode, user_pair, user_pairs)

if TYPE_CHECKING:  # torch is imported inside the functions that use it: the toy rows and episodes need none
    import torch

STATE_FILE = "fspo_state.json"
STAGES = ("fspo", "pooled")
# loss_types whose loss is the mean of a per-pair loss (each pair's term depends on that pair only): additive over the
# pairs, so N processes x batch_size / N pairs train the one-process objective of batch_size pairs
PER_PAIR_LOSSES = ("sigmoid", "dpo", "ipo", "hinge", "robust", "exo_pair", "nca_pair", "sppo_hard", "apo_zero",
                   "apo_down", "discopop", "bco_pair")
STEP_TOKEN_MEAN_LOSSES = ("sft",)  # a token mean over the batch: on several processes, over the whole step's tokens
TOY_WORDS = ["sun", "cat", "map", "dog", "red", "box", "pen", "cup", "hat", "log", "net", "owl", "jam", "kit", "fig",
             "bus", "car", "toy", "bee", "ant", "ice", "oak", "elf", "gem"]


def toy_user_rows(users_per_group: int, rows_per_user: int, seed: int = 0) -> list[dict]:
    """Rows {user_id, group, prompt, chosen, rejected}: prompts "echo: w1 w2" of 3-letter words; a "loud" user
    prefers "W1 W2" over "w1 w2", a "quiet" user the reverse (each user's prompts are distinct)."""
    rng, rows = random.Random(seed), []
    for group in ("loud", "quiet"):
        for u in range(users_per_group):
            prompts = set()
            while len(prompts) < rows_per_user:
                prompts.add(" ".join(rng.sample(TOY_WORDS, 2)))
            order = sorted(prompts)  # a set's order depends on PYTHONHASHSEED: sorted, then shuffled by the seed
            rng.shuffle(order)
            for words in order:
                loud, quiet = words.upper(), words
                chosen, rejected = (loud, quiet) if group == "loud" else (quiet, loud)
                rows.append({"user_id": f"{group}-{u}", "group": group, "prompt": f"echo: {words}",
                             "chosen": chosen, "rejected": rejected})
    return rows


def read_user_rows(path: str | Path) -> list[dict]:
    """The rows of a jsonl file, each checked as an FSPO input row; an error names the file, row, line and field."""
    def build(raw) -> dict:
        user_pair(raw.data, raw.row_id)
        group = raw.data.get("group")
        if "group" in raw.data and not isinstance(group, (str, int)):
            raise RowProblem("bad_field", "group", f"expected a string or integer, got {group!r}")
        return raw.data

    rows = read_file_rows(path, build, option="recipe_params.data_file",
                          form="{user_id, prompt, chosen, rejected[, group]}")
    if not rows:
        raise DataError(f"{path}: no rows. Give at least one row per user.")
    return rows


def episode_rows(rows: list[dict], *, shots: int, passes: int, seed: int,
                 instruction: str = DEFAULT_INSTRUCTION) -> tuple[list[dict], dict]:
    """(pairwise rows {prompt, chosen, rejected, user_id, group, query_row, shot_rows}, counts).

    shots >= 1: `build_episodes` (each of a user's rows is the query of one episode per pass); shots = 0: every row,
    in input order, once per pass, rendered with no examples, i.e. the pooled pairs in the episode text format."""
    if shots < 0 or passes < 1:
        raise ConfigError(f"task fspo: need shots >= 0 and passes >= 1, got shots={shots}, passes={passes}.")
    if shots == 0:
        pairs = user_pairs(rows)
        out = [{"prompt": render_episode([], p.prompt, instruction), "chosen": render_completion(p.chosen),
                "rejected": render_completion(p.rejected), "user_id": p.user_id, "query_row": p.row_id,
                "shot_rows": []} for _ in range(passes) for p in pairs]
        counts = {"users": len({p.user_id for p in pairs}), "pairs": len(pairs), "episodes": len(out),
                  "skipped_users": {}}
    else:
        out, report = build_episodes(rows, shots=shots, passes=passes, instruction=instruction, seed=seed)
        counts = {"users": report.users, "pairs": report.pairs, "episodes": report.episodes,
                  "skipped_users": {str(k): v for k, v in report.skipped_users.items()},
                  "dropped_episodes": dict(report.dropped_episodes)}
    for r in out:
        r["group"] = str(rows[r["query_row"]].get("group", r["user_id"]))
    return out, counts


def queried_rows(rows: list[dict], episodes: list[dict]) -> list[dict]:
    """The rows (in input order) that are the query of at least one of `episodes` (episode_rows' output on `rows`):
    the pairs the pooled baseline trains and is scored on, so that it sees the same pairs as FSPO, less the
    examples. A user with too few rows for `shots` has no episode (build_episodes skips it, counted), and an episode
    dropped for its length has no query; their pairs are in neither (before, the pooled stage trained and was scored
    on them while FSPO was not, so the two accuracies were over different pairs, a skipped user's group missing from
    FSPO's alone)."""
    asked = {r["query_row"] for r in episodes}
    return [row for i, row in enumerate(rows) if i in asked]


def skipped_users_note(train_counts: dict, held_counts: dict, shots: int) -> str | None:
    """The terminal's line on the users build_episodes skipped (too few rows for `shots`), training and held-out,
    or None: summary.json's skipped_users, said where it happens."""
    train, held = train_counts["skipped_users"], held_counts["skipped_users"]
    if not train and not held:
        return None
    parts = [f"{len(users)} {kind} user(s) {sorted(users)}" for kind, users in (("training", train), ("held-out", held))
             if users]
    return (f"fspo: note: {' and '.join(parts)} have too few rows with distinct prompts for shots={shots} (a user "
            f"needs shots + 1): both stages leave their pairs out, of training (training users) and of scoring (held-out "
            "users; summary.json skipped_users); "
            "give them more rows or lower shots.")


def split_users(rows: list[dict], heldout_users: list | None, heldout_fraction: float) -> tuple[list, list, list]:
    """(train rows, held-out rows, held-out user ids): `heldout_users` by id, else the last `heldout_fraction` of
    each group's users (first-appearance order), at least one per group."""
    order, by_group = [], defaultdict(list)
    for r in rows:
        if r["user_id"] not in order:
            order.append(r["user_id"])
            by_group[str(r.get("group", r["user_id"]))].append(r["user_id"])
    if heldout_users is not None:
        unknown = [u for u in heldout_users if u not in order]
        if unknown:
            raise ConfigError(f"recipe_params.heldout_users {unknown} are not user_ids of the data (it has "
                              f"{order[:10]}{' ...' if len(order) > 10 else ''}).")
        held = list(heldout_users)
    else:
        if not 0 < heldout_fraction < 1:
            raise ConfigError(f"recipe_params.heldout_fraction must be in (0, 1), got {heldout_fraction}.")
        held = [u for users in by_group.values() for u in users[len(users) - max(1, round(heldout_fraction
                                                                                          * len(users))):]]
    train = [r for r in rows if r["user_id"] not in held]
    if not train:
        raise ConfigError("task fspo: every user is held out; hold out fewer users.")
    return train, [r for r in rows if r["user_id"] in held], held


def response_logps(model, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 32) -> torch.Tensor:
    """[N] sum of log pi(response token | prompt, previous tokens), encoded as the training rows are
    (BOS + prompt tokens + response tokens)."""
    import torch  # imported where used: the toy rows and the episode files need none (a fresh process skips it)

    bos = tokenizer.bos_token_id
    out = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            seqs, spans = [], []
            for p, r in zip(prompts[start:start + batch_size], responses[start:start + batch_size]):
                p_ids = ([bos] if bos is not None else []) + tokenizer(p, add_special_tokens=False)["input_ids"]
                r_ids = tokenizer(r, add_special_tokens=False)["input_ids"]
                seqs.append(p_ids + r_ids)
                spans.append((len(p_ids), len(p_ids) + len(r_ids)))
            width = max(map(len, seqs))
            pad = tokenizer.pad_token_id or 0
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
            for b, (lo, hi) in enumerate(spans):
                targets = ids[b, lo:hi]
                out.append(logp[b, lo - 1:hi - 1].gather(-1, targets[:, None]).sum())
    return torch.stack(out)


def preference_accuracy(model, tokenizer, rows: list[dict]) -> dict:
    """{accuracy, pair_choice_reward, by_group: {group: {accuracy, pair_choice_reward, episodes}}} over rows
    {prompt, chosen, rejected, group}; a tie (equal log-probs) counts as wrong."""
    import torch

    prompts = [r["prompt"] for r in rows]
    margin = (response_logps(model, tokenizer, prompts, [r["chosen"] for r in rows])
              - response_logps(model, tokenizer, prompts, [r["rejected"] for r in rows]))
    correct, soft = (margin > 0).float(), torch.sigmoid(margin)
    groups = defaultdict(list)
    for i, r in enumerate(rows):
        groups[r["group"]].append(i)
    by_group = {g: {"accuracy": correct[idx].mean().item(), "pair_choice_reward": soft[idx].mean().item(),
                    "episodes": len(idx)} for g, idx in sorted(groups.items())}
    examples = [{"user_id": str(r.get("user_id")), "group": r["group"], "query": r["prompt"].rsplit("\n", 2)[-2],
                 "chosen": r["chosen"].strip(), "rejected": r["rejected"].strip(), "logp_margin": margin[i].item()}
                for i, r in enumerate(rows[:4])]
    return {"accuracy": correct.mean().item(), "pair_choice_reward": soft.mean().item(), "by_group": by_group,
            "examples": examples}


def _write_pairs(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for r in rows))
    return path


def run_fspo(output_dir: str, seed: int = 0, resume: bool = False, quiet: bool = False,
             data_file: str | None = None, heldout_users: tuple | None = None, heldout_fraction: float = 0.25,
             users_per_group: int = 6, rows_per_user: int = 12, shots: int = 1, passes: int = 2,
             instruction: str = DEFAULT_INSTRUCTION, loss_type: str = "sigmoid", beta: float = 0.1, steps: int = 300,
             batch_size: int = 16, learning_rate: float = 3e-3, hidden_size: int = 64, num_layers: int = 2,
             baseline: bool = True, save_steps: int = 0, stop_after_stage: str | None = None,
             stage_options: dict | None = None, allow_config_change: bool = False) -> dict:
    params = {k: v for k, v in locals().items() if k not in ("output_dir", "resume", "quiet", "stop_after_stage",
                                                             "allow_config_change")}
    import torch

    from preflab.loops.offline import Trainer
    from preflab.models.load import frozen_copy
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.recipe_options import stage_config
    from preflab.recipe_state import (RecipeState, check_stop_after_stage, end_processes, finish_recipe,
                                      load_safetensors_into, main_result, main_writes, per_process_batch,
                                      start_processes)
    from preflab.runlog import is_main_process

    check_stop_after_stage(stop_after_stage, STAGES)
    if steps < 1 or batch_size < 1:
        raise ConfigError("task fspo: steps and batch_size must be >= 1.")
    processes = start_processes()  # a launch's process group, formed before anything is written
    if processes > 1 and loss_type not in PER_PAIR_LOSSES + STEP_TOKEN_MEAN_LOSSES:
        raise ConfigError(f"task fspo: loss_type={loss_type!r} on {processes} processes: only a per-pair mean loss "
                          f"{list(PER_PAIR_LOSSES)} or {list(STEP_TOKEN_MEAN_LOSSES)} (its token mean over the whole "
                          "step) splits its batch over the processes without changing the objective. Use one of "
                          "those, or run it as one process (`preflab train CONFIG.yaml`).")
    # sft's token mean over the global batch's chosen tokens, as one process has it (not each process's own mean)
    objective_params = {"token_mean": "step"} if processes > 1 and loss_type in STEP_TOKEN_MEAN_LOSSES else {}
    per_process = per_process_batch(batch_size, "fspo")
    torch.set_num_threads(1)
    out, started = Path(output_dir), time.perf_counter()
    rows = read_user_rows(data_file) if data_file else toy_user_rows(users_per_group, rows_per_user, seed)
    train, held, held_ids = split_users(rows, None if heldout_users is None else list(heldout_users),
                                        heldout_fraction)
    episodes, train_counts = episode_rows(train, shots=shots, passes=passes, seed=seed, instruction=instruction)
    pooled, _ = episode_rows(queried_rows(train, episodes), shots=0, passes=passes, seed=seed,
                             instruction=instruction)
    eval_fspo, held_counts = episode_rows(held, shots=shots, passes=1, seed=seed + 1, instruction=instruction)
    eval_pooled, _ = episode_rows(queried_rows(held, eval_fspo), shots=0, passes=1, seed=seed + 1,
                                  instruction=instruction)
    if not episodes or not eval_fspo:
        raise DataError(f"task fspo: {len(episodes)} training and {len(eval_fspo)} held-out episodes with "
                        f"shots={shots}; each user needs more than `shots` rows with distinct prompts (skipped users: "
                        f"{train_counts['skipped_users'] or held_counts['skipped_users']}).")
    state = RecipeState(out, STATE_FILE, params, resume, allow_config_change)  # written at once: after the checks of the data above
    data = out / "data"
    # the held-out users' episodes and pooled pairs as scored, for `preflab eval RUN/fspo --data
    # RUN/data/heldout_episodes.jsonl` (its ranking accuracy is the summary's metric_after; before, they were not
    # written and a user had to rebuild them to evaluate the stage runs on the held-out users)
    main_writes(lambda: (_write_pairs(data / "episodes.jsonl", episodes), _write_pairs(data / "pooled.jsonl", pooled),
                         _write_pairs(data / "heldout_episodes.jsonl", eval_fspo),
                         _write_pairs(data / "heldout_pooled.jsonl", eval_pooled)))
    tokenizer = tiny_tokenizer("char")
    new_model = lambda: tiny_causal_lm(tokenizer, arch="llama", hidden_size=hidden_size,  # noqa: E731
                                       num_layers=num_layers, num_heads=4, seed=seed)
    longest = max(len(r["prompt"]) + len(r["chosen"]) for r in episodes + eval_fspo) + 2
    say = print if not quiet and is_main_process() else (lambda *a: None)
    initial = new_model()
    from preflab.recipe_start import START, save_start

    # RUN/start/ and start.json, once (a resume keeps them): both stages train against these weights, the reference
    # `preflab eval RUN/fspo` and `RUN/pooled` take by default
    main_writes(lambda: save_start(out, initial, tokenizer, {"fspo": START, "pooled": START}, resume))
    before = main_result(lambda: {"fspo": preference_accuracy(initial, tokenizer, eval_fspo),
                                  "pooled": preference_accuracy(initial, tokenizer, eval_pooled)})

    def stage(name: str, file: Path, eval_rows: list[dict]) -> dict:
        model = new_model()

        def run(folder: Path, again: bool = False) -> dict:
            cfg = stage_config("fspo", {"task": "dpo", "model_name_or_path": "builtin:tiny-llama",
                                        "dataset_name": str(file), "output_dir": str(folder), "loss_type": loss_type,
                                        "beta": beta, "max_steps": steps, "per_device_train_batch_size": per_process,
                                        "learning_rate": learning_rate, "warmup_steps": 0, "max_length": longest,
                                        "seed": seed, "logging_steps": 10, "save_steps": save_steps,
                                        "disable_tqdm": quiet, "use_cpu": True, "objective_params": objective_params,
                                        "resume_from_checkpoint": again, "allow_config_change": allow_config_change},
                               stage_options, run_dir=out)
            Trainer(cfg, policy=model, ref=frozen_copy(model), tokenizer=tokenizer).train()
            return main_result(lambda: preference_accuracy(model, tokenizer, eval_rows))

        def load(folder: Path) -> None:
            load_safetensors_into(model, folder / "model.safetensors")
            say(f"fspo: {name} finished earlier, weights loaded from {folder}")

        # save_steps > 0: an interrupted stage continues from its newest checkpoint (ref = the initial weights, as
        # in an uninterrupted run: the model is new_model() before the checkpoint is loaded)
        return state.stage(name, run, load, checkpoints=save_steps > 0)

    skipped = skipped_users_note(train_counts, held_counts, shots)
    if skipped:
        say(skipped)
    say(f"fspo: stage 1, {loss_type} on {len(episodes)} episodes ({shots} shots) of {train_counts['users']} users")
    after = stage("fspo", data / "episodes.jsonl", eval_fspo)
    if stop_after_stage == "fspo":
        end_processes()
        return state.state
    pooled_after = None
    if baseline:
        say(f"fspo: stage 2 (baseline), {loss_type} on the same {len(pooled)} pairs without context")
        pooled_after = stage("pooled", data / "pooled.jsonl", eval_pooled)
    summary = {"recipe": "fspo", "metric_name": "heldout_user_preference_accuracy",
               "metric_before": before["fspo"]["accuracy"], "metric_after": after["accuracy"],
               "baseline": "the initial policy on the held-out users' episodes; control (pooled_*): the same "
                           f"{loss_type} steps from the same weights on the same pairs without the users' examples "
                           "(plain DPO on pooled pairs), evaluated on the held-out users' pairs",
               "by_group_before": before["fspo"]["by_group"], "by_group_after": after["by_group"],
               "pair_choice_reward_before": before["fspo"]["pair_choice_reward"],
               "pair_choice_reward_after": after["pair_choice_reward"],
               "heldout_users": [str(u) for u in held_ids], "heldout_episodes": len(eval_fspo),
               "heldout_pairs": held_counts["pairs"], "train_users": train_counts["users"],
               "train_pairs": train_counts["pairs"], "train_episodes": train_counts["episodes"],
               "skipped_users": {**train_counts["skipped_users"], **held_counts["skipped_users"]},
               "shots": shots, "passes": passes, "loss_type": loss_type, "beta": beta, "seed": seed,
               "params": state.state["params"],
               "example_episode": {k: eval_fspo[0][k] for k in ("prompt", "chosen", "rejected", "group")},
               "examples_before": before["fspo"]["examples"], "examples_after": after["examples"]}
    if pooled_after is not None:
        summary.update({"pooled_accuracy_before": before["pooled"]["accuracy"],
                        "pooled_accuracy_after": pooled_after["accuracy"],
                        "pooled_by_group_after": pooled_after["by_group"],
                        "pooled_pair_choice_reward_after": pooled_after["pair_choice_reward"],
                        # the pooled stage is the recipe's control (the same steps spent without the examples): under
                        # the control_* names `preflab train` prints it beside metric_after and `preflab report`'s
                        # headline puts it in the baseline column (before, neither showed it: an FSPO result that
                        # pooled DPO beats was shown alone)
                        "control_after": pooled_after["accuracy"],
                        "control_pair_choice_reward_after": pooled_after["pair_choice_reward"]})
    summary["runtime_s"] = time.perf_counter() - started
    return finish_recipe(out, summary)
