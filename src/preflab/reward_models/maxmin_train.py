"""MaxMin-RLHF's EM mixture of reward models as a `preflab train` run: `task: reward`, `reward_head: em_mixture`.

Chakraborty et al. 2024, "MaxMin-RLHF: Alignment with Diverse Human Preferences" (ICML 2024, arXiv:2402.08925);
spec methods/models-and-loops.md #35. Every pair row names the user who labelled it (`user_column`); EM alternates

    M-step   r_k = argmin - sum_rows gamma_{u(row),k} log sigma((r_k(x, y_w) - r_k(x, y_l)) / tau)   (warm-started)
    E-step   l_{u,k} = sum_{rows of u} log sigma((r_k(x, y_w) - r_k(x, y_l)) / tau);
             hard: z_u = argmax_k (log w_k + l_{u,k});   soft: gamma_{u,k} = softmax_k(log w_k + l_{u,k})

with the EM round of `preflab.reward_models.maxmin.em_iteration` (the Python API's, the same code). Each M-step of
component k is an ordinary reward-model run (`train_pairwise_reward` -> RewardRun on the shared TrainingRun loop) in
`output_dir/em-iter-<t>/component-<k>/`, over the pairs of k's users (hard EM) or all pairs with per-row weights
gamma rescaled to mean 1 (soft EM; the loss is sum_i w_i l_i / N). Round t starts component k from its round t-1
model (the reference code keeps training the same model); round 1 from model_name_or_path with seed = seed + k.

reward_head_params: num_components (K, 2), em_iterations (10; stops early when the assignment stops changing),
user_column ("user_id"), group_column (optional planted group of each user: cluster purity is reported), hard
(true), init ("random": a seeded balanced shuffle; "round_robin": z_u = u mod K, the code's), tau (1.0).

Output: mixture.json (component folders, priors, the user -> cluster assignment, responsibilities and the z-score
statistics of each component on the training responses, used by the `maxmin:<dir>` judge), summary.json (EM
log-likelihood per round, per-cluster accuracy, cluster sizes, purity), em_state.json (resume: a finished round is
skipped, an interrupted one is run again from its start, so the result equals an uninterrupted run).
K = 1 is plain BT reward training: the one component's run is the `reward_head: bt` run. With an eval set
(eval_dataset_name / eval_fraction) each held-out pair is scored by its user's cluster model (eval_routed_accuracy).
One process only: a multi-process launch is refused (the EM state and E-step are not shared over ranks).
Deviation from the paper / code: as preflab.reward_models.maxmin (random balanced init by default, logsigmoid,
empty clusters re-seeded with the worst-fitting user).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from preflab.errors import ConfigError, DataError
from preflab.objectives.base import ObjectiveOutput
from preflab.option_types import is_number
from preflab.reward_models.bt import BTHead

STATE_FILE = "em_state.json"
MIXTURE_FILE = "mixture.json"
RESUME_MAY_CHANGE = ("output_dir", "resume_from_checkpoint", "overwrite_output_dir", "allow_config_change",
                     "disable_tqdm", "logging_steps", "report_to")
DEFAULTS = {"num_components": 2, "em_iterations": 10, "user_column": "user_id", "group_column": None, "hard": True,
            "init": "random", "tau": 1.0}


@dataclasses.dataclass(frozen=True)
class WeightedBTHead(BTHead):
    """BT loss times each row's EM weight (extras `em_weight`): l_i = w_i * BT_i. Saved as a plain BT head."""

    def loss(self, out_chosen, out_rejected, extras: dict) -> ObjectiveOutput:
        out = super().loss(out_chosen, out_rejected, extras)
        losses = out.losses * extras["em_weight"].to(out.losses.dtype)
        return ObjectiveOutput(losses.mean(), losses, out.metrics, metric_extrema=out.metric_extrema)


def mixture_params(cfg) -> dict:
    """reward_head_params of `reward_head: em_mixture` with defaults; an unknown key or a bad value is a ConfigError."""
    given = dict(cfg.reward_head_params or {})
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"reward_head_params: {unknown} are not options of reward_head: em_mixture (it has "
                          f"{sorted(DEFAULTS)}).")
    p = {**DEFAULTS, **given}
    for key in ("num_components", "em_iterations"):
        if not isinstance(p[key], int) or isinstance(p[key], bool) or p[key] < 1:
            raise ConfigError(f"reward_head_params.{key} must be an integer >= 1, got {p[key]!r}.")
    for key in ("user_column", "group_column"):
        if p[key] is not None and (not isinstance(p[key], str) or not p[key]):
            raise ConfigError(f"reward_head_params.{key} must be a column name, got {p[key]!r}.")
    if p["user_column"] is None:
        raise ConfigError("reward_head_params.user_column must name the column of the labelling user's id.")
    if not isinstance(p["hard"], bool):
        raise ConfigError(f"reward_head_params.hard must be true or false, got {p['hard']!r}.")
    if p["init"] not in ("random", "round_robin"):
        raise ConfigError(f"reward_head_params.init must be random or round_robin, got {p['init']!r}.")
    if not is_number(p["tau"]) or not p["tau"] > 0:
        raise ConfigError(f"reward_head_params.tau must be a number > 0, got {p['tau']!r}.")
    return p


def row_users(pairs: list, params: dict, source: str) -> tuple[list, dict]:
    """(the user id of every pair, {user: planted group} or {}); a missing id or a user in two planted groups is a
    DataError naming the file, the row and the field."""
    col, gcol = params["user_column"], params["group_column"]
    users, groups = [], {}
    for pair in pairs:
        user = pair.extras.get(col)
        if user is None or user == "" or isinstance(user, (list, dict, float)):
            raise DataError(f"{source}: row {pair.row_id}: field {col!r} is {'missing' if user is None else repr(user)}"
                            f"; reward_head: em_mixture needs the id (a string or an integer) of the user who labelled "
                            "each pair. Add the column, or name yours with reward_head_params.user_column.")
        users.append(user)
        if gcol is not None:
            group = pair.extras.get(gcol)
            if group is None:
                raise DataError(f"{source}: row {pair.row_id}: field {gcol!r} is missing (reward_head_params."
                                "group_column names the planted group of each user); add it to every row or remove "
                                "group_column.")
            if groups.setdefault(user, group) != group:
                raise DataError(f"{source}: row {pair.row_id}: field {gcol!r}: user {user!r} is in group {group!r} "
                                f"here and {groups[user]!r} in an earlier row; a user belongs to one planted group.")
    return users, groups


def train_mixture(cfg, tokenizer=None, train_data=None, eval_data=None, model=None) -> dict:
    """Fit the EM mixture (see the module docstring); returns the summary dict (also summary.json). The K models
    are built from model_name_or_path (component k with seed + k); an in-memory `model` is refused."""
    from preflab.launch_env import launched_world_size
    from preflab.loops.resume import resume_requested
    from preflab.recipe_state import RecipeState
    from preflab.reward_models.maxmin import cluster_purity, em_iteration, initial_assignment
    from preflab.reward_models.protocols import index_users
    from preflab.rundir import claim_output_dir, release_output_dir

    params = mixture_params(cfg)
    if model is not None:
        raise ConfigError("reward_head: em_mixture builds its K models from model_name_or_path (component k with seed "
                          "+ k, later rounds from the round before); pass no model, or save yours and name its folder.")
    if launched_world_size() > 1:
        raise ConfigError("reward_head: em_mixture runs in one process (its EM state and E-step are not shared over "
                          f"ranks; this launch started {launched_world_size()}); start it with plain `preflab train`.")
    if tokenizer is None:
        from preflab.models.load import load_tokenizer

        tokenizer = load_tokenizer(cfg.model_name_or_path, cfg.trust_remote_code)
    report = {}
    if train_data is None:
        from preflab.models.load import cap_max_length, max_positions
        from preflab.reward_models.data import load_reward_pairs

        cap_max_length(cfg, max_positions(cfg.model_name_or_path, cfg.trust_remote_code))
        train_data, eval_data, report, _ = load_reward_pairs(cfg, tokenizer)
    user_ids, planted = row_users(train_data, params, cfg.dataset_name or "train_data")
    users, row_user = index_users(user_ids)
    K = params["num_components"]
    if len(users) < K:
        raise ConfigError(f"reward_head_params.num_components={K} but {cfg.dataset_name} has {len(users)} users; "
                          "lower num_components.")
    if cfg.resume_from_checkpoint == "auto":  # its state file is no checkpoint-N (preflab.recipe_state)
        raise ConfigError("resume_from_checkpoint: auto is for runs that keep checkpoint-N folders; reward_head "
                          "em_mixture keeps its own state: set resume_from_checkpoint: true to continue it, or leave "
                          "it out to start afresh.")
    out = Path(cfg.output_dir)
    claim_output_dir(out, cfg.overwrite_output_dir)
    try:
        # a resume must train every component as the interrupted run did: its options, except where output goes
        same = {k: v for k, v in cfg.to_dict().items() if k not in RESUME_MAY_CHANGE and k != "reward_head_params"}
        state_params = {**params, **same, "num_pairs": len(train_data)}
        state = RecipeState(out, STATE_FILE, state_params, resume_requested(cfg))
        fitter = _ComponentFitter(cfg, params, tokenizer, train_data, out)
        resp = initial_assignment(len(users), K, params["init"], cfg.seed)
        components = [None] * K
        records = []
        for t in range(1, params["em_iterations"] + 1):
            def run(folder, resp=resp, components=components):
                step = em_iteration(resp, row_user, lambda k, w: fitter.m_step(folder, components, k, w),
                                    lambda: fitter.pair_loglik(components), params["hard"])
                return {"responsibilities": step.responsibilities.tolist(), "loglik": step.loglik,
                        "changed": step.changed, "components": list(components)}

            record = state.stage(f"em-iter-{t}", run, lambda folder: None)
            records.append(record)
            resp, components = torch.tensor(record["responsibilities"]), list(record["components"])
            if not record["changed"]:
                break
        summary = _finish(cfg, params, fitter, users, row_user, planted, resp, records, components, report,
                          cluster_purity, initial_assignment(len(users), K, params["init"], cfg.seed))
        if eval_data:
            summary.update(_routed_eval(fitter, eval_data, params, dict(zip(users, resp.argmax(1).tolist())),
                                        components, cfg.eval_dataset_name or cfg.dataset_name))
            if "eval_routed_accuracy" in summary:
                summary["final_metrics"]["eval_routed_accuracy"] = summary["eval_routed_accuracy"]
            from preflab.runlog import write_summary

            write_summary(out, summary)
        # the resolved config beside summary.json, as every run writes it: without it `preflab report OUTPUT_DIR`
        # (which the run's last line offers) said the folder "holds no preflab run"
        from preflab.launch_paths import save_run_config  # with launch.json: its relative paths' absolute ones

        save_run_config(cfg, out)
    finally:
        release_output_dir(out)
    return summary


class _ComponentFitter:
    """The M-step of one component (a `train_pairwise_reward` run) and the E-step's scores of the fitted components."""

    def __init__(self, cfg, params, tokenizer, pairs, out: Path):
        self.cfg, self.params, self.tokenizer, self.pairs, self.out = cfg, params, tokenizer, pairs, out
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.head = WeightedBTHead(tau=float(params["tau"]), center_rewards_coefficient=cfg.center_rewards_coefficient)

    def m_step(self, folder: Path, components: list, k: int, weights: torch.Tensor) -> None:
        from preflab.reward_models.reward_run import train_pairwise_reward

        keep = (weights > 0).nonzero().flatten().tolist()
        scale = len(keep) / float(weights[keep].sum())  # mean weight 1 over the rows kept (hard EM: all 1)
        items = [dataclasses.replace(self.pairs[i], extras={**self.pairs[i].extras,
                                                            "em_weight": float(weights[i]) * scale}) for i in keep]
        source = str(self.out / components[k]) if components[k] else self.cfg.model_name_or_path
        run_dir = folder / f"component-{k}"
        sub = dataclasses.replace(self.cfg, output_dir=str(run_dir), model_name_or_path=source,
                                  seed=self.cfg.seed + k, reward_head="bt", reward_head_params={},
                                  resume_from_checkpoint=None, eval_fraction=0.0, eval_dataset_name=None,
                                  eval_dataset_config=None)
        train_pairwise_reward(sub, tokenizer=self.tokenizer, train_data=items, head=self.head)
        components[k] = str(run_dir.relative_to(self.out))

    def rewards(self, component: str) -> tuple[torch.Tensor, torch.Tensor]:
        """([N], [N]) rewards of the chosen and rejected sides under one saved component."""
        from preflab.reward_models.eval import pair_outputs
        from preflab.reward_models.heads import build_reward_model

        model = build_reward_model(str(self.out / component), 1, self.tokenizer, seed=self.cfg.seed).eval()
        out_c, out_r = pair_outputs(model, self.pairs, self.pad_id, self.cfg.per_device_eval_batch_size)
        return out_c[:, 0].float(), out_r[:, 0].float()

    def pair_loglik(self, components: list) -> torch.Tensor:
        """[N, K] log sigma((r_k(chosen) - r_k(rejected)) / tau)."""
        cols = []
        for component in components:
            if component is None:  # never fitted (its group was empty from the start): no evidence for it
                cols.append(torch.full((len(self.pairs),), -torch.inf))
                continue
            r_c, r_r = self.rewards(component)
            cols.append(F.logsigmoid((r_c - r_r) / self.params["tau"]))
        return torch.stack(cols, 1)


def _finish(cfg, params, fitter, users, row_user, planted, resp, records, components, report, purity_of,
            start) -> dict:
    """mixture.json and summary.json of a finished EM."""
    from preflab.runlog import write_summary

    out, K = fitter.out, params["num_components"]
    assign = resp.argmax(1)
    sides = [fitter.rewards(c) for c in components]
    rewards = torch.stack([torch.cat(s) for s in sides])  # [K, 2N]: every training response
    row_cluster = assign[row_user]
    accuracy, sizes = {}, {}
    for k, (r_c, r_r) in enumerate(sides):
        rows = row_cluster == k
        sizes[str(k)] = int((assign == k).sum())
        accuracy[str(k)] = float((r_c[rows] > r_r[rows]).float().mean()) if rows.any() else None
    routed = torch.stack([r_c - r_r for r_c, r_r in sides]).gather(0, row_cluster[None]).squeeze(0)
    user_ll = _user_loglik(torch.stack([F.logsigmoid((r_c - r_r) / params["tau"]) for r_c, r_r in sides], 1),
                           row_user, len(users))
    joint = resp.mean(0).clamp_min(1e-8).log() + user_ll
    top2 = joint.topk(min(2, K), 1).values
    margins = (top2[:, 0] - top2[:, 1]) if K > 1 else torch.zeros(len(users))
    mixture = {"method": "MaxMin-RLHF EM mixture (preflab reward_head: em_mixture)", "tau": params["tau"],
               "components": components, "priors": resp.mean(0).tolist(), "users": [str(u) for u in users],
               "assignments": {str(u): int(k) for u, k in zip(users, assign)},
               "responsibilities": resp.tolist(), "user_loglik": user_ll.tolist(),
               "loglik_trace": [r["loglik"] for r in records],
               "standardizer": {"mean": rewards.mean(1).tolist(), "std": rewards.std(1).clamp_min(1e-8).tolist(),
                                "reference": "every chosen and rejected response of the training pairs"}}
    (out / MIXTURE_FILE).write_text(json.dumps(mixture, indent=1))
    summary = {"method": "em_mixture", "num_components": K, "em_iterations_run": len(records),
               "converged": not records[-1]["changed"], "loglik_trace": [r["loglik"] for r in records],
               "cluster_sizes": sizes, "priors": resp.mean(0).tolist(), "per_cluster_accuracy": accuracy,
               "routed_accuracy": float((routed > 0).float().mean()),
               "user_margin": {"min": float(margins.min()), "median": float(margins.median())},
               "components": components, "data": report}
    if planted:
        truth = [planted[u] for u in users]
        labels = {g: i for i, g in enumerate(dict.fromkeys(truth))}
        truth = torch.tensor([labels[g] for g in truth])
        summary.update(metric_name="cluster_purity", metric_before=purity_of(start.argmax(1), truth),
                       metric_after=purity_of(assign, truth),
                       baseline="before: the initial assignment (init) of the users to clusters; after: EM's")
    else:
        summary.update(metric_name="mixture_loglik", metric_before=records[0]["loglik"],
                       metric_after=records[-1]["loglik"],
                       baseline="before: the mixture log-likelihood after EM round 1; after: after the last round")
    summary["final_metrics"] = {"em_iterations_run": len(records), "mixture_loglik": records[-1]["loglik"],
                                "routed_accuracy": summary["routed_accuracy"], summary["metric_name"]:
                                summary["metric_after"]}  # what `preflab train` prints
    write_summary(out, summary)
    return summary


def _routed_eval(fitter, pairs: list, params: dict, cluster_of: dict, components: list, source: str) -> dict:
    """eval_routed_accuracy: each held-out pair scored by its user's cluster model (users seen in training);
    pairs of users the training data never showed are counted (eval_pairs_unseen_users), not scored."""
    users, _ = row_users(pairs, {**params, "group_column": None}, source)
    known = [i for i, u in enumerate(users) if u in cluster_of]
    result = {"eval_pairs": len(pairs), "eval_pairs_unseen_users": len(pairs) - len(known)}
    if known:
        scorer = _ComponentFitter(fitter.cfg, params, fitter.tokenizer, [pairs[i] for i in known], fitter.out)
        margins = torch.stack([r_c - r_r for r_c, r_r in (scorer.rewards(c) for c in components)])
        route = torch.tensor([cluster_of[users[i]] for i in known])
        result["eval_routed_accuracy"] = float((margins.gather(0, route[None]) > 0).float().mean())
    return result


def _user_loglik(pair_ll: torch.Tensor, row_user: torch.Tensor, num_users: int) -> torch.Tensor:
    return torch.zeros(num_users, pair_ll.shape[1], dtype=pair_ll.dtype).index_add_(0, row_user, pair_ll)


def load_mixture(path: str | Path) -> dict:
    """mixture.json of an em_mixture run, with its component folders made absolute; ConfigError when absent."""
    path = Path(path)
    file = path / MIXTURE_FILE
    if not file.is_file():
        raise ConfigError(f"{path} holds no {MIXTURE_FILE}: give the output_dir of a finished `task: reward`, "
                          "`reward_head: em_mixture` run.")
    mixture = json.loads(file.read_text())
    mixture["components"] = [str(path / c) for c in mixture["components"]]
    return mixture


class TokenReward(torch.nn.Module):
    """A saved reward model as a feature-level module: {"input_ids", "attention_mask"} -> [N] rewards."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, inputs: dict) -> torch.Tensor:
        from preflab.reward_models.heads import sequence_outputs

        return sequence_outputs(self.model, inputs["input_ids"], inputs["attention_mask"])[:, 0]


def load_reward_mixture(path: str | Path):
    """The Python API's `RewardMixture` (preflab.reward_models.maxmin) of an em_mixture run: its K components as
    TokenReward modules, priors, users, responsibilities, user log-likelihoods and the EM log-likelihood trace;
    `assign(chosen, rejected, user_ids)` then places new users (inputs as `collate_pairs` lays out token ids)."""
    from preflab.reward_models.heads import load_reward_model
    from preflab.reward_models.maxmin import RewardMixture

    mixture = load_mixture(path)
    models = torch.nn.ModuleList(TokenReward(load_reward_model(c).eval()) for c in mixture["components"])
    return RewardMixture(models, torch.tensor(mixture["priors"]), list(mixture["users"]),
                         torch.tensor(mixture["responsibilities"]), torch.tensor(mixture["user_loglik"]),
                         list(mixture["loglik_trace"]), len(mixture["loglik_trace"]))
