"""What `preflab eval --task diffusion` adds for ppd runs beyond the shared diffusion eval
(preflab.loops.diffusion_eval): the user table of a checkpoint-N folder, the per-user breakdown of eval.json, and
user-aware --reward-fn calls.

PPD (Dang et al., 2025, "Personalized Preference Fine-tuning of Diffusion Models"; methods §28) conditions the UNet on
a user embedding, so one pooled number hides whether personalization helped every user or only some: `per_user`
gives each evaluated user's pairs, loss, implicit accuracy and preference accuracy with the user branch on
(personalized) and off (base), and with --reward-fn the user's win rate against the base model. Every per-user number
is a mean over that user's pairs of the same per-pair values the pooled metrics average, so the pairs-weighted mean of
a per-user column is the pooled value.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch

from preflab.errors import ConfigError

# ppd's per-pair columns, read off each eval batch: the objective's loss, then the four denoising errors
# (pair_errors: personalized chosen, personalized rejected, base chosen, base rejected)
PAIR_COLUMNS = ("loss", "err_chosen", "err_rejected", "base_err_chosen", "base_err_rejected")


def check_user_layout(weight: torch.Tensor | None, rows: dict, tokens, what: str, holder: str) -> None:
    """A ConfigError unless `rows` {user: (first row, S)} and `tokens` L_u (from `what`) describe `weight`
    [rows, L_u * d_u] (from `holder`): every user's rows inside the table, a width that L_u divides."""
    if weight is None or not isinstance(tokens, int) or tokens < 1 or weight.shape[1] % tokens or \
            any(first < 0 or count < 1 or first + count > weight.shape[0] for first, count in rows.values()):
        raise ConfigError(f"{what} (tokens {tokens!r}, {len(rows)} users) does not describe {holder} "
                          f"{None if weight is None else list(weight.shape)}; the two files come from different "
                          "runs or were edited.")


def user_table_of(run_dir: str, weight: torch.Tensor, rows: dict, tokens: int, source: str, saved: dict,
                  user_embeddings: str | None, rebuilt_from: str | None = None):
    """The UserTable (preflab.loops.diffusion) of a ppd run's saved rows: users it lacks come from `user_embeddings`,
    else the run's configured user_embeddings file (a run with learned embeddings has none: only its training users
    can be scored, and --user-embeddings is refused). rebuilt_from: the file the rows were just rebuilt from (a
    checkpoint's precomputed table), which then also supplies the missing users."""
    from preflab.loops.diffusion import UserTable

    configured = saved.get("user_embeddings")
    if not configured:
        if user_embeddings is not None:
            raise ConfigError(f"--user-embeddings {user_embeddings}: {run_dir} learned one embedding per training "
                              "user (no user_embeddings in its config.yaml), so its user branch never read a file's "
                              "embeddings; remove --user-embeddings (it scores only its training users).")
        return UserTable(weight, rows, tokens, source, None,
                         "The run learned one embedding per training user (no user_embeddings in its config.yaml), "
                         "so it scores only the held-out pairs of its training users: drop those rows, or train on "
                         "precomputed user_embeddings to evaluate held-out users.")
    file = rebuilt_from or user_embeddings or configured
    if not Path(file).is_file():
        if user_embeddings is not None:
            raise ConfigError(f"--user-embeddings {user_embeddings} is not a file.")
        return UserTable(weight, rows, tokens, source, None,
                         f"The run's user_embeddings {configured} is not a file here: pass --user-embeddings FILE "
                         "holding these users' embeddings (from the embedder the run's came from), or drop their "
                         "rows.")
    return UserTable(weight, rows, tokens, f"{source} or {file}", str(file),
                     "Add the user's [L_u, d_u] (or [S, L_u, d_u]) embedding to that file, pass --user-embeddings "
                     "FILE holding it, or drop its rows.")


def checkpoint_user_table(run_dir: str, saved: dict, user_embeddings: str | None):
    """The UserTable of a ppd run's checkpoint-N: which user is which row from its trainer_state.json's ppd_users
    (DiffusionRun.checkpoint_record, the final directory's users.json), the rows themselves from model.safetensors'
    module.users.weight (a learned table: trained, so saved with the branch) or rebuilt from the user_embeddings
    file (a precomputed table: frozen, so not saved; --user-embeddings FILE, else the run's configured file) as
    training built them, and refused unless their sha256 is the one the checkpoint recorded. Refused too: a
    checkpoint without ppd_users (an older preflab), a file that lacks a trained user."""
    from safetensors import safe_open

    from preflab.loops.diffusion import check_user_stacks, stacked_user_rows, table_sha256

    path = Path(run_dir)
    if not (path / "trainer_state.json").is_file():
        raise ConfigError(f"{run_dir} holds no trainer_state.json: not a complete preflab checkpoint; evaluate the "
                          "run's final directory or another checkpoint-N.")
    record = json.loads((path / "trainer_state.json").read_text()).get("ppd_users")
    if not isinstance(record, dict):
        raise ConfigError(f"{run_dir} is a checkpoint of a ppd run without ppd_users in its trainer_state.json "
                          "(which user is which row of its user table; written by an older preflab): evaluate the "
                          "run's final directory (users.json, user_branch.safetensors).")
    rows = {u: tuple(v) for u, v in (record.get("subsets") or {}).items()}
    tokens = record.get("tokens")
    source = f"{path / 'trainer_state.json'} (the run's {len(rows)} users at step {path.name.split('-')[-1]})"
    configured = saved.get("user_embeddings")
    if not configured:  # learned: a trained parameter of the checkpoint
        with safe_open(str(path / "model.safetensors"), framework="pt") as f:
            weight = f.get_tensor("module.users.weight") if "module.users.weight" in f.keys() else None
        check_user_layout(weight, rows, tokens, f"{path / 'trainer_state.json'}'s ppd_users",
                          f"{path / 'model.safetensors'}'s module.users.weight")
        return user_table_of(run_dir, weight, rows, tokens, source, saved, user_embeddings)
    file = user_embeddings or configured
    if not Path(file).is_file():
        raise ConfigError(f"{run_dir} is a checkpoint of a ppd run on precomputed user_embeddings {file}, which is "
                          "not a file here: a checkpoint holds the user branch, not the frozen table; pass "
                          "--user-embeddings FILE (the file the run trained with).")
    try:
        with safe_open(str(file), framework="pt") as f:
            found = {u: f.get_tensor(u) for u in rows if u in f.keys()}
    except Exception as err:  # safetensors' own error types; any is the file's
        raise ConfigError(f"user_embeddings {file!r} is not a readable safetensors file: {err}") from err
    lacking = sorted(set(rows) - set(found))
    if lacking:
        raise ConfigError(f"user_embeddings {file} lacks {len(lacking)} of the {len(rows)} users {run_dir} trained "
                          f"with ({', '.join(repr(u) for u in lacking[:5])}); pass --user-embeddings FILE (the file "
                          "the run trained with).")
    weight, rebuilt = stacked_user_rows(check_user_stacks(file, found))
    check_user_layout(weight, rows, tokens, f"{path / 'trainer_state.json'}'s ppd_users", f"{file}'s users")
    if rebuilt != rows or table_sha256(weight) != record.get("table_sha256"):
        raise ConfigError(f"user_embeddings {file} no longer holds the table {run_dir} trained with (its users' "
                          "embeddings or subset counts changed: sha256 or rows differ from the checkpoint's "
                          "ppd_users); pass --user-embeddings FILE (the file the run trained with).")
    return user_table_of(run_dir, weight, rows, tokens, source, saved, user_embeddings, rebuilt_from=str(file))


def pair_errors(batch) -> torch.Tensor:
    """[B, 4] denoising errors (MSE, minus the scores) of a diffusion PairBatch: policy chosen, policy rejected,
    reference chosen, reference rejected (for ppd: the user branch on, then off)."""
    sides = (batch.policy_chosen, batch.policy_rejected, batch.ref_chosen, batch.ref_rejected)
    return torch.stack([-s.sum.detach().double().cpu() for s in sides], dim=1)


def pair_columns(objective, batch) -> torch.Tensor:
    """[B, 5] float64 per-pair values of one ppd eval batch (PAIR_COLUMNS): the objective's per-pair loss (its
    `losses`, whose mean is the batch loss) and the four denoising errors (pair_errors)."""
    losses = objective(batch).losses.detach().double().cpu()
    return torch.cat([losses[:, None], pair_errors(batch)], dim=1)


def preference_accuracy(err_chosen: torch.Tensor, err_rejected: torch.Tensor) -> float | None:
    """mean[e_w < e_l] + 0.5 mean[e_w = e_l]: the fraction of pairs where the model denoises the chosen image better
    (its -MSE score ranks the pair as the user did); None for no pairs. Of (Delta_theta, Delta_ref) = (e_w - e_l of
    the policy, of the reference) it is Diffusion-DPO's implicit accuracy, mean[z > 0] + 0.5 mean[z = 0] with
    z = Delta_ref - Delta_theta."""
    if not len(err_chosen):
        return None
    return float((err_chosen < err_rejected).double().mean() + 0.5 * (err_chosen == err_rejected).double().mean())


def per_user_breakdown(users: list[str], columns: torch.Tensor, trained_users: set | None) -> dict:
    """eval.json's per_user: {user: {pairs, loss, implicit_accuracy, preference_accuracy/personalized,
    preference_accuracy/base, preference_accuracy/gain, seen_in_training}} of the pairs whose users are `users` and
    per-pair values `columns` [N, 5] (PAIR_COLUMNS), users sorted. Each is the mean over the user's pairs of:
    the pair loss; [z > 0] + [z = 0]/2 with z = (e_ref_w - e_ref_l) - (e_w - e_l) (implicit accuracy); [e_w < e_l] +
    [e_w = e_l]/2 with the branch on and off (preference accuracy); gain = personalized - base. seen_in_training:
    whether the user has training rows (None where the training data was not read)."""
    out = {}
    for user in sorted(set(users)):
        c = columns[torch.tensor([u == user for u in users])]
        personalized, base = preference_accuracy(c[:, 1], c[:, 2]), preference_accuracy(c[:, 3], c[:, 4])
        implicit = preference_accuracy(c[:, 1] - c[:, 2], c[:, 3] - c[:, 4])  # [Delta_theta < Delta_ref]: z > 0
        out[user] = {"pairs": len(c), "loss": float(c[:, 0].mean()), "implicit_accuracy": implicit,
                     "preference_accuracy/personalized": personalized, "preference_accuracy/base": base,
                     "preference_accuracy/gain": personalized - base,
                     "seen_in_training": None if trained_users is None else user in trained_users}
    return out


def add_per_user_win_rates(per_user: dict, users: list[str], policy: list, reference: list,
                           confidence: float) -> None:
    """Each user's win rate of the personalized samples against the base model's (preflab.eval.winrate.win_rate on
    the scores of that user's prompts: ties 1/2, Wilson interval), into per_user[user] as win_rate,
    win_rate/ci_low, win_rate/ci_high and win_rate/n (prompts with both scores); users without a sampled prompt get
    none (only the first --win-rate-prompts pairs are sampled)."""
    from preflab.eval.winrate import win_rate

    for user in sorted(set(users)):
        mine = [i for i, u in enumerate(users) if u == user]
        rate = win_rate([policy[i] for i in mine], [reference[i] for i in mine], confidence)
        per_user[user].update({"win_rate": rate.win_rate, "win_rate/ci_low": rate.ci_low,
                               "win_rate/ci_high": rate.ci_high, "win_rate/n": rate.n})


def takes_users(reward_fn) -> bool:
    """Whether --reward-fn accepts the users: a parameter named `users`, or **kwargs (inspect.signature; a callable
    whose signature cannot be read is called without them). Such a function is called f(images, prompts,
    users=[user id per image]) on a ppd run's samples, so one reward can score each user's taste."""
    try:
        params = inspect.signature(reward_fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any((p.name == "users" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)) or p.kind is p.VAR_KEYWORD
               for p in params)


def per_user_lines(per_user: dict, most: int = 10) -> list[str]:
    """The terminal's per-user block: every user when there are at most `most`, else the 3 with the largest and the
    3 with the smallest preference-accuracy gain (personalized - base; ties by user id)."""
    if not per_user:
        return []

    def line(user, m):
        win = f", win rate {m['win_rate']:.4f} of {m['win_rate/n']}" if m.get("win_rate/n") else ""
        return (f"    {user}: {m['pairs']} pairs, loss {m['loss']:.4f}, preference accuracy "
                f"{m['preference_accuracy/personalized']:.4f} vs base {m['preference_accuracy/base']:.4f} "
                f"({m['preference_accuracy/gain']:+.4f}){win}")

    users = sorted(per_user)
    if len(users) <= most:
        return [f"  per user ({len(users)}; eval.json per_user):"] + [line(u, per_user[u]) for u in users]
    ranked = sorted(users, key=lambda u: (-per_user[u]["preference_accuracy/gain"], u))
    return ([f"  per user ({len(users)}; the 3 largest and 3 smallest gains; all in eval.json per_user):"]
            + [line(u, per_user[u]) for u in ranked[:3]] + ["    ..."]
            + [line(u, per_user[u]) for u in ranked[-3:]])
