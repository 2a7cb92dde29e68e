"""UPO's round (trainer upo): all ordered pairs of a judged round, kept by BALD uncertainty, with per-pair smoothing.

Wang et al. 2025 (AAAI), "Self-Evolutionary Large Language Models through Uncertainty-Enhanced Preference
Optimization"; spec methods/models-and-loops.md #26. Per round, from the K samples of pi_{t-1} per prompt:

    pairs     every (a, b) with r(a) > r(b) (all_pairs; the released code keeps all pairs), r = the combined judge
    estimator T "passes" p^t = P_t(a > b) = sigmoid((r_t(a) - r_t(b)) / upo_temperature), one per judge t of
              reward_funcs (an ensemble of judges in place of MC-dropout passes of a trained classifier)
    BALD      B = H[(1/T) sum_t p^t] - (1/T) sum_t H[p^t]   (preflab.reward_models.uncertainty.bald)
    keep      pairs whose majority vote is "a better" (a tie of the vote is undecided and dropped), then
              ceil(upo_fraction x #kept) of them: drawn with P_j ∝ (1 - B_j)^upo_mu (upo_selection: sample) or the
              lowest B (lowest)
    objective L = (1 - alpha_j) l(beta Delta'_j) + alpha_j l(-beta Delta'_j), alpha_j = upo_alpha_max B_j / ln 2,
              Delta' against the previous iterate (the reference is refreshed every round; objectives/upo.py; the
              paper's choice -- the released code scores against the SFT model, see that docstring)

The estimator's passes (upo_uncertainty):
    mc_dropout  the paper's MC dropout: T = upo_passes forward passes of the one reward model among reward_funcs with
                its dropout on (`preflab.reward_models.uncertainty.dropout_on`; each pass seeded from the round), pass
                t's rewards r_t giving p^t as above. A reward model with no active dropout is refused, naming it
                (every pass would be equal and every B = 0); so is a run whose reward_funcs hold no reward model or
                more than one. The pairs and their order still come from the combined judge's scores.
    judges      one pass per judge of reward_funcs (deep-ensemble style: disagreement between judges is the epistemic
                part, a judge's own sigmoid margin the aleatoric part). With one judge T = 1, every B = 0 and UPO
                reduces to DPO on a sampled upo_fraction of the pairs against the previous iterate.
A pair for which any pass returned no score is dropped and counted.

Derived, not the paper's: the paper's estimator is the policy backbone with a 2-way head trained on labelled pairs
(input: the pair rendered in one template); here the pass probability comes from a pointwise reward model's two
rewards, P_t = sigmoid((r_t(a) - r_t(b)) / upo_temperature) (a Bradley-Terry classifier over the pair).
"""
from __future__ import annotations

import math

import torch

from preflab.errors import ConfigError
from preflab.loops.pair_builders import build_pairs
from preflab.objectives.upo import alpha_from_bald
from preflab.online.examples import Example
from preflab.reward_models.uncertainty import dropout_on, dropout_sources, select_reliable_pairs


def _name(judge) -> str:
    return getattr(judge, "__name__", None) or type(judge).__name__


def dropout_estimator(judges: list, names: list[str] | None = None):
    """The reward model of `judges` whose dropout passes are UPO's estimator (upo_uncertainty: mc_dropout): the one
    judge with `.score` and an nn.Module `.model` that has active dropout; anything else is refused, saying why."""
    names = names or [_name(j) for j in judges]
    models = [(n, j) for n, j in zip(names, judges)
              if hasattr(j, "score") and not hasattr(j, "win_rate_matrix")
              and isinstance(getattr(j, "model", None), torch.nn.Module)]
    if len(models) != 1:
        found = ", ".join(n for n, _ in models) or "none"
        raise ConfigError(f"trainer upo, upo_uncertainty: mc_dropout runs the dropout passes on one reward model in "
                          f"reward_funcs (a reward-model directory); reward_funcs {names} hold {len(models)} "
                          f"({found}). Give exactly one, or use upo_uncertainty: judges.")
    name, judge = models[0]
    if not dropout_sources(judge.model):
        raise ConfigError(f"trainer upo, upo_uncertainty: mc_dropout: reward model {name!r} has no active dropout "
                          "(no Dropout module with p > 0, no *dropout attribute > 0), so every pass would be equal "
                          "and every BALD 0. Train or load it with dropout (e.g. attention_dropout / "
                          "hidden_dropout / resid_pdrop > 0 in its config.json, with disable_dropout: false), or use "
                          "upo_uncertainty: judges.")
    return judge


def dropout_pass_rewards(model_judge, prompts: list, texts: list, passes: int, seed: int,
                         timed=None, scored: list[bool] | None = None) -> torch.Tensor:
    """[N, T] rewards of (prompts[i], texts[i]) from T = `passes` scorings with the judge's dropout on (seed: the
    passes' dropout masks, so a rerun or resumed round draws the same ones; the global RNG is left untouched).
    timed(judge, call, n): each scoring under the run's judge_timeout_s (Judge.timed); None: called inline.
    scored: which completions the round's judges scored; the others (dropped: a judge raised on them, or every judge
    returned None) are not scored again and get NaN in every pass (upo_examples then counts their pairs unjudged).
    None: all of them."""
    timed = timed or (lambda judge, call, n: call())
    keep = [i for i in range(len(texts)) if scored is None or scored[i]]
    out = torch.full((len(texts), passes), math.nan, dtype=torch.float64)
    if not keep:
        return out
    sub_prompts, sub_texts = [prompts[i] for i in keep], [texts[i] for i in keep]
    with torch.random.fork_rng(devices=[]), dropout_on(model_judge.model):
        torch.manual_seed(seed)
        runs = [torch.as_tensor(timed(model_judge, lambda: model_judge.score(sub_prompts, sub_texts), len(keep)),
                                dtype=torch.float64).reshape(-1).cpu() for _ in range(passes)]
    out[keep] = torch.stack(runs, -1)
    return out


def pass_probs(per_judge: torch.Tensor, pairs: list[tuple[int, int, int]], temperature: float) -> torch.Tensor:
    """[T, N, 2] (P_t(chosen > rejected), 1 - that) per judge t and pair (p, chosen, rejected); per_judge [P, K, T]."""
    p, c, r = (torch.tensor(x) for x in zip(*pairs))
    diff = (per_judge[p, c] - per_judge[p, r]).T          # [T, N]
    p0 = torch.sigmoid(diff / temperature)
    return torch.stack([p0, 1 - p0], -1)


def upo_examples(cfg, rows, completions, scores: torch.Tensor, per_judge: torch.Tensor,
                 generator: torch.Generator) -> tuple[list[Example], dict]:
    """(examples, counts) of one judged round for trainer upo (see the module docstring)."""
    plan = build_pairs(scores, "all_pairs", generator)
    counts = {"pairs/ties_dropped": plan.ties_dropped, "upo/pairs": 0, "upo/unjudged": 0, "upo/disagree": 0,
              "upo/undecided": 0, "upo/selected": 0}
    triples = [t for t in plan.triples if not bool(per_judge[t[0], [t[1], t[2]]].isnan().any())]
    counts["upo/unjudged"] = len(plan.triples) - len(triples)
    if not triples:
        return [], counts
    probs = pass_probs(per_judge.double(), triples, cfg.upo_temperature)
    seed = int(torch.randint(2 ** 31 - 1, (1,), generator=generator))
    sel = select_reliable_pairs(probs, cfg.upo_fraction, mu=cfg.upo_mu, rule=cfg.upo_selection, seed=seed)
    counts.update({f"upo/{k}": v for k, v in sel.counts.items() if k in ("pairs", "disagree", "undecided",
                                                                          "selected")})
    counts["upo/bald_mean"] = float(sel.bald.mean())
    alpha = alpha_from_bald(sel.bald, cfg.upo_alpha_max)
    examples = []
    for j in sel.index.tolist():
        p, c, r = triples[j]
        row = rows[p]
        examples.append(Example(row.row_id, row.prompt_ids, [completions[p][c], completions[p][r]],
                                {"score_chosen": float(scores[p, c]), "score_rejected": float(scores[p, r]),
                                 "alpha": float(alpha[j]), "chosen_reward_abs": abs(float(scores[p, c]))}))
    if examples:
        counts["upo/bald_selected_mean"] = float(sel.bald[sel.index].mean())
    return examples, counts
