"""MaxMin-RLHF, part 1: an EM mixture of K Bradley-Terry reward models over latent user groups.

Chakraborty, Qiu, Yuan, Koppel, Huang, Manocha, Bedi, Wang 2024, "MaxMin-RLHF: Alignment with Diverse Human
Preferences" (ICML 2024, arXiv:2402.08925); spec methods/models-and-loops.md #35. Every label of user u comes from
one latent group k with reward model r_k:

    E-step   l_{u,k} = sum_{(x, y_w, y_l) in D_u} log sigmoid(r_k(x, y_w) - r_k(x, y_l))
             hard: z_u = argmax_k (log w_k + l_{u,k});   soft: gamma_{u,k} = softmax_k(log w_k + l_{u,k})
    M-step   r_k = argmin  - sum_u gamma_{u,k} sum_{D_u} log sigmoid(r_k(y_w) - r_k(y_l))   (warm-started)
             w_k = mean_u gamma_{u,k}

Reward models are any `nn.Module`s mapping `PairInputs` to [N] scores: linear maps over features, or a transformer
with a head (`PooledHead`). The max-min aggregation of the fitted models is in `maxmin_aggregate.py`.

One EM round is `em_iteration` (M-step callback, E-step, re-seeding, convergence), shared by `fit_reward_mixture`
and the `preflab train` path (`reward_head: em_mixture`, maxmin_train.py), which differ only in the M-step: here a
full-batch Adam fit (`protocols.fit_full_batch`) of an in-memory module on feature tensors, the lab-level fit the
other feature-level estimators (uncertainty, orchestrator, few-shot scorer) share; there a `train_reward` RewardRun
on tokenized pairs (TrainConfig, output folder, checkpoints). A feature-level module has no tokenizer, config or
save_pretrained, which a RewardRun needs, so the two M-steps stay apart; `maxmin_train.load_reward_mixture` turns
a train run back into this module's `RewardMixture`.

Deviation from the paper / reference code: the default initialisation is a random balanced partition of the users
(round robin over a shuffled user list) rather than round robin in data order, which can hand every cluster the same
mix; `init="round_robin"` gives the code's rule. Log-likelihoods use logsigmoid (the code's exp ratio overflows).
An emptied cluster is re-seeded with the worst-fitting user (the code skips it). Hard EM is the default (the code's).
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from preflab.errors import ConfigError, PreflabError
from preflab.reward_models.protocols import PairInputs, fit_full_batch, index_users, num_rows, pair_margins, take


INITS = ("random", "round_robin")


@dataclass
class EMStep:
    """One EM round's outcome: responsibilities [U, K] and priors [K] after the E-step, user_loglik [U, K] (l_{u,k}),
    loglik: the mixture log-likelihood sum_u logsumexp_k(log w_k + l_{u,k}) with the priors the M-step saw, and
    whether the assignment changed (hard: any argmax; soft: any responsibility by more than 1e-4)."""

    responsibilities: Tensor
    priors: Tensor
    user_loglik: Tensor
    loglik: float
    changed: bool


def em_iteration(resp: Tensor, row_user: Tensor, m_step: Callable[[int, Tensor], None],
                 pair_loglik: Callable[[], Tensor], hard: bool = True) -> EMStep:
    """One EM round (M-step, then E-step) over any reward models; `fit_reward_mixture` and the `preflab train` path
    (`reward_head: em_mixture`, preflab.reward_models.maxmin_train) both run it.

    resp: [U, K] responsibilities; row_user: [N] user of each pair; m_step(k, weights [N]) fits group k's model on
    the pairs with per-row weights gamma_{u(row),k} (skipped for an empty group); pair_loglik() -> [N, K]
    log sigmoid(r_k(chosen) - r_k(rejected)) of the fitted models.
    """
    num_users, num_groups = resp.shape
    for k in range(num_groups):
        weights = resp[row_user, k]
        if weights.sum() > 0:
            m_step(k, weights)
    priors = resp.mean(0).clamp_min(1e-8)
    loglik = _per_user(pair_loglik(), row_user, num_users)
    joint = priors.log().unsqueeze(0) + loglik
    total = float(torch.logsumexp(joint, 1).sum())
    new = _one_hot(joint.argmax(1), num_groups) if hard else torch.softmax(joint, 1)
    if hard:
        new = _reseed_empty(new, loglik, row_user)
    changed = not torch.equal(new.argmax(1), resp.argmax(1)) if hard else bool((new - resp).abs().max() > 1e-4)
    return EMStep(new, new.mean(0).clamp_min(1e-8), loglik, total, changed)


@dataclass
class RewardMixture:
    """A fitted mixture: K reward models, group priors and each training user's group.

    users: user ids in order of first appearance; responsibilities: [U, K] (one-hot for hard EM);
    user_loglik: [U, K] final l_{u,k}; loglik_trace: mixture log-likelihood sum_u logsumexp_k(log w_k + l_{u,k})
    after each E-step; iterations: EM rounds run.
    """

    models: nn.ModuleList
    priors: Tensor
    users: list[Hashable]
    responsibilities: Tensor
    user_loglik: Tensor
    loglik_trace: list[float] = field(default_factory=list)
    iterations: int = 0

    @property
    def assignments(self) -> Tensor:
        """[U] most likely group of each training user."""
        return self.responsibilities.argmax(1)

    @torch.no_grad()
    def pair_loglik(self, chosen: PairInputs, rejected: PairInputs) -> Tensor:
        """[N, K] log sigmoid(r_k(chosen) - r_k(rejected)) under each group's model."""
        return torch.stack([F.logsigmoid(pair_margins(m, chosen, rejected)) for m in self.models], 1)

    @torch.no_grad()
    def assign(self, chosen: PairInputs, rejected: PairInputs, user_ids: Sequence[Hashable]) -> tuple[list, Tensor]:
        """E-step for (new) users: (users, [U, K] posterior over groups) from their labelled pairs."""
        users, row_user = index_users(user_ids)
        loglik = _per_user(self.pair_loglik(chosen, rejected), row_user, len(users))
        return users, torch.softmax(self.priors.log().unsqueeze(0) + loglik, 1)

    @torch.no_grad()
    def rewards(self, inputs: PairInputs) -> Tensor:
        """[K, N] r_k on `inputs`."""
        return torch.stack([_scores(m, inputs) for m in self.models])


def fit_reward_mixture(make_model: Callable[[int], nn.Module], chosen: PairInputs, rejected: PairInputs,
                       user_ids: Sequence[Hashable], num_groups: int, *, iterations: int = 10, hard: bool = True,
                       init: str = "random", steps: int = 200, lr: float = 0.05, weight_decay: float = 0.0,
                       seed: int = 0) -> RewardMixture:
    """Fit K = `num_groups` reward models and a user -> group assignment by EM.

    make_model(k) builds group k's reward model (called under a fixed seed seed * 1000 + k).
    chosen, rejected: PairInputs with N rows; user_ids: N ids (the user who labelled each pair).
    iterations: maximum EM rounds (M-step then E-step); stops early once hard assignments stop changing.
    steps, lr, weight_decay: full-batch Adam per M-step (warm-started across rounds; weight_decay is L2).
    """
    if num_groups < 1:
        raise ConfigError(f"num_groups must be >= 1, got {num_groups}.")
    if init not in INITS:
        raise ConfigError(f"init must be one of {INITS}, got {init!r}.")
    n = num_rows(chosen)
    if num_rows(rejected) != n or len(user_ids) != n:
        raise PreflabError(f"chosen ({n}), rejected ({num_rows(rejected)}) and user_ids ({len(user_ids)}) must "
                           "have one row per pair.")
    users, row_user = index_users(user_ids)
    if len(users) < num_groups:
        raise PreflabError(f"{len(users)} users cannot fill {num_groups} groups; lower num_groups.")
    models = nn.ModuleList()
    for k in range(num_groups):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1000 + k)
            models.append(make_model(k))
    resp = initial_assignment(len(users), num_groups, init, seed)
    priors = resp.mean(0)
    trace: list[float] = []
    loglik = torch.zeros(len(users), num_groups)
    rounds = 0

    def m_step(k: int, weights: Tensor) -> None:
        _fit_weighted_bt(models[k], chosen, rejected, weights, steps, lr, weight_decay)

    def pair_loglik() -> Tensor:
        with torch.no_grad():
            return torch.stack([F.logsigmoid(pair_margins(m, chosen, rejected)) for m in models], 1)

    for rounds in range(1, iterations + 1):
        step = em_iteration(resp, row_user, m_step, pair_loglik, hard)
        resp, priors, loglik = step.responsibilities, step.priors, step.user_loglik
        trace.append(step.loglik)
        if not step.changed:
            break
    return RewardMixture(models, priors, users, resp, loglik, trace, rounds)


def cluster_purity(predicted: Sequence[int] | Tensor, planted: Sequence[int] | Tensor) -> float:
    """Purity = (1/U) sum_k max_j |{u: pred_u = k, planted_u = j}|; 1.0 is perfect recovery up to relabelling."""
    pred, true = torch.as_tensor(predicted).long(), torch.as_tensor(planted).long()
    if pred.shape != true.shape:
        raise PreflabError(f"predicted {tuple(pred.shape)} and planted {tuple(true.shape)} differ in shape.")
    table = torch.zeros(int(pred.max()) + 1, int(true.max()) + 1)
    table.index_put_((pred, true), torch.ones(len(pred)), accumulate=True)
    return float(table.max(1).values.sum() / len(pred))


def _scores(model: nn.Module, inputs: PairInputs) -> Tensor:
    out = model(inputs)
    return out.squeeze(-1) if out.dim() == 2 and out.shape[-1] == 1 else out


def _fit_weighted_bt(model, chosen, rejected, weights, steps, lr, weight_decay) -> float:
    keep = weights > 0  # only this group's pairs go through the model
    idx = keep.nonzero().squeeze(1)
    c, r, w = take(chosen, idx), take(rejected, idx), weights[idx]
    loss_fn = lambda: -(w * F.logsigmoid(pair_margins(model, c, r))).sum() / w.sum()  # noqa: E731
    return fit_full_batch(loss_fn, model.parameters(), steps=steps, lr=lr, weight_decay=weight_decay)


def _per_user(pair_ll: Tensor, row_user: Tensor, num_users: int) -> Tensor:
    out = torch.zeros(num_users, pair_ll.shape[1], dtype=pair_ll.dtype)
    return out.index_add_(0, row_user, pair_ll)


def _one_hot(index: Tensor, k: int) -> Tensor:
    return F.one_hot(index, k).to(torch.get_default_dtype())


def initial_assignment(num_users: int, k: int, init: str, seed: int) -> Tensor:
    """[U, K] one-hot start: "random" deals a seeded shuffle of the users round robin, "round_robin" z_u = u mod K."""
    if init not in INITS:
        raise ConfigError(f"init must be one of {INITS}, got {init!r}.")
    order = torch.arange(num_users)
    if init == "random":
        order = torch.randperm(num_users, generator=torch.Generator().manual_seed(seed))
    groups = torch.empty(num_users, dtype=torch.long)
    groups[order] = torch.arange(num_users) % k
    return _one_hot(groups, k)


def _reseed_empty(resp: Tensor, loglik: Tensor, row_user: Tensor) -> Tensor:
    """Give each empty cluster the user whose per-pair log-likelihood under its own group is worst."""
    resp = resp.clone()
    pairs = torch.bincount(row_user, minlength=resp.shape[0]).clamp_min(1)
    for k in (resp.sum(0) == 0).nonzero().flatten().tolist():
        sizes = resp.sum(0)
        fit = (loglik * resp).sum(1) / pairs
        fit[sizes[resp.argmax(1)] <= 1] = float("inf")  # never empty another cluster
        worst = int(fit.argmin())
        resp[worst] = 0
        resp[worst, k] = 1
    return resp
