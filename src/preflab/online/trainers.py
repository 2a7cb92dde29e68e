"""The online recipes: which objective, which reference, and how a judged round becomes training examples.

    name           examples                                   objective      reference slots carry
    online_dpo     pairs by score (pair_builder)              loss_type      pi_0        Guo et al. 2024 (2402.04792)
    iterative_dpo  pairs by score                             loss_type      pi_t        Xiong et al. 2024 (2312.11456)
    rso            pairs from rejection sampling of the K     hinge_norm     pi_0        Liu et al. 2023 (2309.06657)
    sppo           best / worst by win rate p_i = P(y_i > pi_t) sppo          pi_t        Wu et al. 2024 (2405.00675)
    gpo            best / worst by centred score s_i (log-odds)  gpo       pi_t        Zhang et al. 2024 (2410.02197)
    hypo_online_pairs  pairs by score + the K fresh samples   hypo           pi_0        Song et al. 2024 (2406.01462)
                   (`hypo` is its former name, kept: a run under it prints a note)
    dpa_rsf        the best of K by the directional score v^T r (v = reward_weights over the judges, e.g. the
                   attribute heads of a multi-objective RM), SFT on it (only the chosen side is read)
                                                              sft            -           Wang et al. 2024, DPA (2402.18571)
    grpo bnpo dapo dr_grpo   groups of G completions          grpo(loss_type=name)  pi_0 (beta > 0)  Shao et al. 2024
    gspo           groups, sequence-level importance ratios   grpo(importance_sampling_level=sequence, loss_type=grpo)
                                                                              Zheng et al. 2025 (2507.18071)
    cispo sapo luspo vespo   groups of G completions          grpo(loss_type=name; luspo with sequence ratios)
                   TRL 1.16's other GRPO loss types (papers: preflab.objectives._grpo_losses)
    rloo           groups of G completions, leave-one-out advantages of the KL-penalised rewards over the round
                                                              rloo           pi_0 (beta > 0)  Ahmadian et al. 2024
                                                                                             (2402.14740), TRL's RLOO
dpa_rsf deviation from DPA's rejection-sampling fine-tuning: the direction is not written into the prompt (the policy
is not direction-conditioned); a prompt whose K scores all tie gives no example.
    tpo            groups of K completions ranked by score   tpo_tree       pi_0        Liao et al. 2024 (2410.12854)
    upo            all pairs kept by BALD (judges / dropout) upo            pi_t        Wang et al. 2025 (AAAI), UPO
                   (online/upo.py: L = (1-a) l(b D') + a l(-b D'), a = a_max BALD / ln 2)
    mcts_dpo       step pairs from an MCTS over answer steps  mcts_step_dpo  pi_0        Xie et al. 2024 (2405.00451)
                   (online/mcts.py: highest vs lowest Q child of each committed decision, eps from visits)
hypo_online_pairs deviation from HyPO (Song et al. 2024): the paper's contrastive (DPO) term runs on the *offline*
preference data and only the KL term on fresh, unlabeled samples of pi_theta; here the DPO pairs are the judged
online samples (online DPO + HyPO's online reverse-KL term). The paper's data split is `preflab train` with task: dpo,
loss_type: hypo, hypo_online_samples: k (preflab.online.hypo_offline).
tpo: tpo_tree_depth 1 (default) is a one-level tree (K branches from the prompt, each response one step, so the step
weights reduce to one per response); tpo_tree_depth D > 1 grows K-branch trees of D steps (online/tpo_tree_round.py).
Win rates (sppo, gpo) come from the judge's K x K matrix P[i, j] = P(y_i > y_j | x) over the valid completions
of a prompt: a preference model's win_rate_matrix, or a reward judge through preference_temperature
(0: P = 1[r_i > r_j] + 1/2 1[r_i = r_j]; t > 0: sigmoid((r_i - r_j)/t)). p_i = (1/K) sum_j P[i, j] estimates
P(y_i > pi_t) from the K samples of pi_t (the diagonal contributes 1/2) for SPPO. GPO regresses on the general
preference *score*, not on a probability: with T[i, j] = log(P[i, j] / (1 - P[i, j])) the preference log-odds (for
a GPM, s(y_i > y_j)/tau exactly; for a reward judge with t > 0, (r_i - r_j)/t),

    s_i = (1/K) sum_j (T[i, j] - T[j, i])

as in the official GPO pipeline (general-preference/general-preference-model@a376d95,
LLM-Alignment/scripts/compute_score_from_raw.py: the GPM's raw score table, antisymmetrized, "directly use the table
as prob (actually score)"; chosen/rejected = argmax/argmin of the same row means, RMs/ranker.py "max_logits").
s_i is zero for a response as good as pi_t, so GPO's target s/beta pushes a worse-than-average response's log-ratio
down (SPPO subtracts 1/2 for the same reason); feeding GPO the uncentred p_i in [0, 1] would raise the rejected
response (the defect of the former loops.online path, pinned by tests/online/test_online_run.py). Hard labels
(preference_temperature 0, or a judge returning P = 0 or 1) have infinite log-odds: gpo refuses them. T is read
without the sigmoid round trip when it can be (a judge's `log_odds_matrix`, GPMPreference/BTPreference; a reward
judge's (r_i - r_j)/t), since a saturated probability loses it. (Before this
fix the gpo trainer used the bounded 2 p_i - 1, a different target scale from the paper's code.)
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from preflab.errors import ConfigError
from preflab.loops.pair_builders import build_pairs
# the trainers that add a mixture-of-experts policy's router loss, as TRL's GRPOTrainer
from preflab.models.moe import ROUTER_LOSS_TRAINERS  # noqa: F401  (re-exported)
from preflab.online.examples import Example
from preflab.online_recipes import RENAMED, TRAINERS, TrainerSpec  # noqa: F401  (TRAINERS, RENAMED: public names)


def preference_matrix(rewards: torch.Tensor, temperature: float) -> torch.Tensor:
    """[k, k] P(y_i > y_j) from rewards [k] (see the module docstring)."""
    diff = rewards.unsqueeze(1) - rewards.unsqueeze(0)
    if temperature > 0:
        return torch.sigmoid(diff / temperature)
    return (diff > 0).double() + 0.5 * (diff == 0).double()


def preference_log_odds(P: torch.Tensor, row_id=None) -> torch.Tensor:
    """[k, k] T[i, j] = log(P[i, j] / (1 - P[i, j])), the general-preference score GPO regresses on (module
    docstring), from a probability matrix; see `check_log_odds` for what is refused."""
    P = torch.as_tensor(P, dtype=torch.float64)
    return check_log_odds(torch.log(P) - torch.log1p(-P), row_id)


def check_log_odds(T: torch.Tensor, row_id=None) -> torch.Tensor:
    """T with a zero diagonal; refuses an infinite or NaN off-diagonal score (P of 0 or 1: hard labels) with what
    to change. Indices are among the prompt's scorable completions."""
    T = torch.as_tensor(T, dtype=torch.float64)
    off = ~torch.eye(T.shape[0], dtype=torch.bool)
    bad = off & ~torch.isfinite(T)
    if bad.any():
        i, j = (int(x) for x in torch.nonzero(bad)[0])
        raise ConfigError(
            f"trainer gpo: prompt row {row_id}: the preference score log(P / (1 - P)) of scorable completions "
            f"{i} over {j} is {float(T[i, j])} (P = 0 or 1); GPO regresses on the score, not on hard labels. Set "
            "preference_temperature > 0 (a reward judge then gives (r_i - r_j) / t) or use a preference model "
            "(e.g. a GPM) whose scores are finite.")
    return T.masked_fill(~off, 0.0)


def reward_log_odds(rewards: torch.Tensor, temperature: float, row_id=None) -> torch.Tensor:
    """[k, k] (r_i - r_j) / t, the log-odds of `preference_matrix(rewards, t)` computed exactly (t > 0)."""
    r = torch.as_tensor(rewards, dtype=torch.float64)
    diff = r.unsqueeze(1) - r.unsqueeze(0)
    hard = torch.where(diff == 0, torch.zeros_like(diff), torch.sign(diff) * math.inf)  # t = 0: P in {0, 1/2, 1}
    return check_log_odds(diff / temperature if temperature > 0 else hard, row_id)


def rso_metrics(totals: dict[str, int]) -> dict[str, float]:
    """A round's RSO numbers from build_pairs' totals over its prompts: rso/acceptance_rate = accepted / scanned
    (the candidates Algorithm 1's scans looked at, each accepted with probability exp((r - M) / rso_beta)),
    rso/accepted and rso/scanned (the round's totals), rso/sampling_rounds = mean rejection rounds per prompt."""
    return {"rso/acceptance_rate": totals["accepted"] / totals["scanned"], "rso/accepted": float(totals["accepted"]),
            "rso/scanned": float(totals["scanned"]), "rso/sampling_rounds": totals["rounds"] / totals["prompts"]}


def build_examples(spec: TrainerSpec, cfg, rows, completions: list[list[list[int]]], scores: torch.Tensor,
                   matrices: Callable[[int, list[int]], torch.Tensor], generator: torch.Generator,
                   per_judge: torch.Tensor | None = None,
                   log_odds: Callable[[int, list[int]], torch.Tensor] | None = None,
                   where: str = "") -> tuple[list, dict]:
    """(examples, counts) of one judged round. rows: the round's prompt rows; completions[p][k]: token ids;
    scores [P, K] (NaN: dropped); matrices(p, valid_indices) -> P over those completions; per_judge [P, K, J]:
    each judge's own scores (read by upo only); log_odds(p, valid_indices) -> T = log(P / (1 - P)) computed without
    the sigmoid round trip (read by gpo; None: from matrices)."""
    examples, counts = [], {"pairs/ties_dropped": 0}
    if spec.kind == "groups":
        for p, row in enumerate(rows):
            scored = ~scores[p].isnan()
            extras = {"rewards": scores[p].nan_to_num(0.0).tolist(), "valid": scored.tolist()}
            if spec.loss_type in ("grpo", "rloo"):
                # TRL 1.16's GRPOTrainer (and RLOOTrainer): a completion no reward function scored stays in the loss
                # with advantage 0 (its tokens in the normaliser, its KL term trained), out of the baseline and the
                # reward means
                extras.update(valid=[True] * len(completions[p]), scored=scored.tolist())
            examples.append(Example(row.row_id, row.prompt_ids, completions[p], extras))
        return examples, counts
    if spec.scores == "upo":
        from preflab.online.upo import upo_examples

        return upo_examples(cfg, rows, completions, scores, per_judge, generator)
    if spec.scores == "reward":
        plan = build_pairs(scores, spec.builder or cfg.pair_builder, generator, cfg.rso_beta, cfg.rso_num_samples,
                           cfg.judge_timeout_s, where)
        counts["pairs/ties_dropped"] = plan.ties_dropped
        if ":" in (spec.builder or cfg.pair_builder):  # a user's builder: pairs against the judge's scores, counted
            counts["pairs/against_scores"] = plan.against_scores
        if plan.rso and plan.rso["scanned"]:  # RSO's rejection sampling (Liu et al. 2023, Algorithm 1)
            counts.update(rso_metrics(plan.rso))
        for p, c, r in plan.triples:
            row = rows[p]
            ex = Example(row.row_id, row.prompt_ids, [completions[p][c], completions[p][r]],
                         {"score_chosen": float(scores[p, c]), "score_rejected": float(scores[p, r])})
            if spec.online_kl:
                ex.online = list(completions[p])   # all K fresh samples (the KL term needs no score)
            examples.append(ex)
        return examples, counts
    for p, row in enumerate(rows):
        valid = torch.nonzero(~scores[p].isnan()).flatten().tolist()
        if len(valid) < 2:
            continue
        if spec.scores == "win_rate":
            value = matrices(p, valid).mean(-1)              # p_i = (1/K) sum_j P[i, j]
        else:  # one judgment per prompt: the log-odds directly, or from P when the caller has no log_odds
            T = check_log_odds(log_odds(p, valid), row.row_id) if log_odds else \
                preference_log_odds(matrices(p, valid), row.row_id)
            value = (T - T.T).mean(-1)                       # GPO: s_i = (1/K) sum_j (T[i, j] - T[j, i])
        best, worst = int(value.argmax()), int(value.argmin())
        if value[best] == value[worst]:
            counts["pairs/ties_dropped"] += 1
            continue
        examples.append(Example(row.row_id, row.prompt_ids,
                                [completions[p][valid[best]], completions[p][valid[worst]]],
                                {"score_chosen": float(value[best]), "score_rejected": float(value[worst])}))
    return examples, counts
