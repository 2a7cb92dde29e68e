"""The built-in preference game (online_task: game): one prompt, K single-token answers, a preference oracle.

    game_preferences: [[0.5, 0.8333, 0.1667], [0.1667, 0.5, 1.0], [0.8333, 0.0, 0.5]]   # K x K, P + P^T = 1
    trainer: egpo | inpo | nash_md | online_ipo | sppo | spo

The policy is builtin:tiny-llama's architecture with a K-token vocabulary (answer a = token a), so its exact
distribution over the answers is the softmax of its logits after the prompt token; no other token exists. The
judge is P itself. Each generation round uses the exact expectation over the answers (the population form, the
limit of infinitely many samples; `spo` samples num_generations answers): pairs (i, j) of answers with the
weights and targets below, pi_t = the policy at the round start, pi_ref = pi_0, P pi = win rates against pi.

    (egpo and online_ipo: every optimizer step is a round, steps_per_generation is not used)
    online_ipo  all pairs i < j, objective online_ipo, pref = (P pi_t)_i, (P pi_t)_j   (Calandriello et al. 2024,
                OIPO-1): targets ((P pi_t)_i - (P pi_t)_j)/beta on h = S - S_ref; plain gradient steps cycle at small beta
    egpo        the same loss at an extrapolated opponent (Zhou et al. 2025, arXiv:2503.08942): a real second
                parameter set (a copy of the policy and of the optimizer state) takes the half step on the loss at
                pi_t; the policy then steps from theta_t on the loss with opponent pi_half
    inpo        ordered pairs (i, j), chosen i, weight pi_t(i) pi_t(j) P_ij, objective inpo with tau = beta,
                eta = game_eta / beta, prev_*_logps = log pi_t computed by the run at the round start
                (Zhang et al. 2024, arXiv:2407.00617): minimiser pi_t^(1-eta tau) pi_ref^(eta tau) exp(eta P pi_t)
    nash_md     anchor and opponent the geometric mixture pi_mix ∝ pi_t^(1-eta beta) pi_ref^(eta beta) (eta = game_eta /
                beta): all pairs i < j, objective online_ipo with beta = 1/eta and the reference slots carrying
                log pi_mix: minimiser pi_mix exp(eta P pi_mix), Nash-MD's update (Munos et al. 2023, arXiv:2312.00886)
    apo         accelerated INPO (He et al. 2024, "Accelerated Preference Optimization", arXiv:2410.06293, Alg. 1, with
                INPO's step as the base update): the round's pi_t (weights, anchor, opponent) is the extrapolated
                iterate pi_hat ∝ pi_t^(1 + apo_alpha) / pi_{t-1}^apo_alpha (Eq. 3.6), pi_{t-1} read from the previous
                round, and the round's optimisation starts from the extrapolated parameters theta_t + apo_alpha
                (theta_t - theta_{t-1}) (§5.2: the paper extrapolates the LLM's parameters, exact for a softmax-linear
                policy; for the tiny Llama their distribution approximates pi_hat), theta_{t-1} = the previous
                round-start parameters, kept in the checkpointed task state (apo_alpha 0: trainer inpo bit for bit)
    sppo        all pairs, objective sppo, scores p = (P pi_t), reference slots pi_t (Wu et al. 2024)
    spo         self-play (Swamy et al. 2024, arXiv:2401.04056): num_generations answers sampled from pi_t, reward of
                each = its win proportion (1/(G-1)) sum_{j != i} P[a_i, a_j] against the others, GRPO's objective
                (its KL term to pi_ref weighted by beta)
Audit 2026-12 (zhourunlong/EGPO@f295bf3 simulations/loss_funcs.py::extragradient, run.py): egpo's order (half
step at pi_t, opponent pi_half, full step from theta_t with the loss at theta_t and opponent pi_half) is the
official tabular code's (the lab's egpo is tested equal to it); these rounds average the loss over the K(K-1)/2
pairs i < j where that code averages over all K^2 ordered pairs (diagonal terms 0): the loss is K/(K-1) times
the code's, the same minimiser, a constant the recipes' Adam (beta1 0) is insensitive to.
sppo and spo are no-regret self-play without (sppo) or with a sampled (spo) KL term: on an intransitive game their
last iterate cycles or drifts to a corner (the plain game's Minimax Winner is reached by the average iterate,
preflab.lab.nash_loops.mwu), so they are not in the tv_to_equilibrium guarantee.
Summary (summary.json) and metrics: policy_distribution, reference_distribution, equilibrium (the lab's pi*_beta,
preflab.lab.games.reg_nash with ref = pi_0), tv_to_equilibrium, duality_gap (DG_beta, preflab.lab.games.dual_gap);
summary.json also pairs tv_to_equilibrium_before / duality_gap_before, the starting policy's (OnlineRun.before, this
task's evaluate when the run is built: pi_0 = pi_ref, where DG_beta = 2 beta log sum_a pi_ref(a) exp((P pi_ref)_a /
beta) - 1), with *_after (the final policy's), for the report's headline.
A metrics.jsonl row's tv_to_equilibrium, duality_gap, kl (KL(pi || pi_ref), exact: kl_to_reference) and
policy/p<i> are the round-start policy's (averaged over the
rounds of its logging window); apo rows add apo/extrapolation_tv = TV(pi_hat, pi_t), egpo rows
egpo/opponent_tv = TV(pi_half, pi_t); summary.json's final_metrics carries the final policy's instead (final_row;
kl too), the values of summary.json's own keys, so the two tables of `preflab report` agree.
Average iterate: sppo's and spo's guarantee is on the average of the policies played (SPPO, Wu et al. 2024,
arXiv:2405.00675; SPO, Swamy et al. 2024, arXiv:2401.04056), not on the last iterate, so summary.json
also holds, for every game trainer, policy_distribution_average = (1/R) sum_r pi_r over the R rounds run (pi_r the
round-start policy, the one round r plays: each round counts once), and its tv_to_equilibrium_average and
duality_gap_average. The running sum is the task's state (GameState, with apo's previous round-start parameters),
checkpointed with the round.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from preflab.errors import ConfigError, PreflabError
from preflab.online.examples import Example
from preflab.online_options import check_game_preferences

PROMPT = 1  # the prompt token (not 0: token 0 is the model's padding index, whose embedding is fixed at zero)


class GameTokenizer:
    """Answers are token ids 0..K-1 (decoded "a<id>"); the prompt is token PROMPT; there is no eos."""

    def __init__(self, K: int):
        self.K, self.pad_token_id, self.eos_token_id = K, 0, None

    def decode(self, ids, skip_special_tokens=True) -> str:
        return " ".join(f"a{i}" for i in ids)


class AverageIterate:
    """The running sum of the round-start distributions pi_r and the number of rounds R; mean() = (1/R) sum_r pi_r.
    Saved and restored with the online state (OnlineRun writes task.state to task.json beside round.json, so a
    resumed run neither loses a round nor counts its restored pending round twice)."""

    def __init__(self, K: int):
        self.total, self.rounds = np.zeros(K), 0

    def add(self, pi: np.ndarray) -> None:
        self.total = self.total + pi
        self.rounds += 1

    def mean(self) -> np.ndarray:
        return self.total / self.rounds

    def state_dict(self) -> dict:
        return {"total": self.total.tolist(), "rounds": self.rounds}

    def load_state_dict(self, state: dict) -> None:
        self.total, self.rounds = np.asarray(state["total"], dtype=np.float64), int(state["rounds"])


class GameState(AverageIterate):
    """The game's checkpointed state: the average iterate and, for trainer apo, previous_parameters = the policy's
    un-extrapolated parameters theta_t at the last round start (the next round extrapolates from them). JSON: every
    value of a float32 / bfloat16 / float16 tensor is a Python float exactly, so a resume restores them bit for bit."""

    def __init__(self, K: int):
        super().__init__(K)
        self.previous_parameters: dict[str, torch.Tensor] | None = None

    def state_dict(self) -> dict:
        out = super().state_dict()
        if self.previous_parameters is not None:
            out["previous_parameters"] = {
                name: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                       "values": t.detach().cpu().double().flatten().tolist()}
                for name, t in self.previous_parameters.items()}
        return out

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        saved = state.get("previous_parameters")
        self.previous_parameters = None if saved is None else {
            name: torch.tensor(v["values"], dtype=getattr(torch, v["dtype"])).reshape(v["shape"])
            for name, v in saved.items()}


class GameTask:
    def __init__(self, P: np.ndarray, beta: float, policy, ref_probs: np.ndarray):
        from preflab.lab.games import reg_nash
        from preflab.loops.rollout import PromptRow

        self.P, self.beta, self.ref_probs = P, beta, ref_probs
        self.equilibrium = reg_nash(P, beta, ref_probs)
        self.rows = [PromptRow(0, "game", [PROMPT], {})]
        self.prompts, self.judges, self.heldout = ["game"], [lambda prompts, completions, **kw: [0.0] * len(prompts)], []
        self.evaluate = self._evaluate
        self.state = GameState(len(ref_probs))

    def _evaluate(self, model, tokenizer=None) -> dict:
        out = self.evaluate_distribution(distribution(model))
        if self.state.rounds:  # the average iterate (none before the first round)
            avg = self.evaluate_distribution(self.state.mean())
            out.update({f"{k}_average": avg[k] for k in ("policy_distribution", "tv_to_equilibrium", "duality_gap")})
        return out

    def evaluate_distribution(self, pi: np.ndarray) -> dict:
        """evaluate's metrics of the policy whose answer probabilities are pi (distribution(model))."""
        from preflab.lab.games import dual_gap

        return {"policy_distribution": pi.tolist(), "reference_distribution": self.ref_probs.tolist(),
                "equilibrium": self.equilibrium.tolist(),
                "tv_to_equilibrium": float(0.5 * np.abs(pi - self.equilibrium).sum()),
                "duality_gap": dual_gap(pi, self.P, self.beta, self.ref_probs)}


@torch.no_grad()
def distribution(model) -> np.ndarray:
    """The policy's exact probabilities of the K answers after the prompt token, float64."""
    device = next(model.parameters()).device
    logits = model(input_ids=torch.full((1, 1), PROMPT, dtype=torch.long, device=device)).logits[0, -1].double()
    return torch.softmax(logits, -1).cpu().numpy()


def kl_to_reference(pi: np.ndarray, ref: np.ndarray) -> float:
    """KL(pi || pi_ref) = sum_a pi(a) log(pi(a) / pi_ref(a)), exact over the K answers (0 log 0 = 0). The game's
    metrics row logs it as `kl` for the round-start policy: the pair recipes' `kl` (the mean log-ratio of the trained
    completions) averages over the game's enumerated pairs, every answer alike, not over answers drawn from pi, so it
    is no KL there (it went negative: -0.13 on examples/online/nash_game.yaml's inpo run)."""
    pi, ref = np.asarray(pi, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    held = pi > 0
    return float(np.sum(pi[held] * (np.log(pi[held]) - np.log(ref[held]))))


def final_row(summary: dict) -> dict:
    """final_metrics' game keys, set to the final policy's values (summary.json's tv_to_equilibrium, duality_gap,
    policy_distribution, and kl = KL(pi || pi_ref) of that distribution): the last logged row holds the round-start
    policy's, which read as the final policy's (kl stayed the round start's: 0.0 beside a moved final policy in a
    one-round run)."""
    return {"tv_to_equilibrium": summary["tv_to_equilibrium"], "duality_gap": summary["duality_gap"],
            "kl": kl_to_reference(summary["policy_distribution"], summary["reference_distribution"]),
            **{f"policy/p{i}": float(p) for i, p in enumerate(summary["policy_distribution"])}}


def game_setup(cfg, policy=None):
    """(task, tokenizer, policy): the K-answer policy (builtin tiny Llama, vocabulary K) and the game's task."""
    P = check_game_preferences(cfg.game_preferences)
    K = P.shape[0]
    if policy is None:
        from preflab.models.load import disable_dropout
        from preflab.models.tiny import tiny_causal_lm

        policy = tiny_causal_lm(None, arch="llama", vocab_size=K, hidden_size=16, num_layers=1, num_heads=2,
                                seed=cfg.seed)
        disable_dropout(policy)
        policy.train()
    task = GameTask(P, cfg.beta, policy, distribution(policy))
    return task, GameTokenizer(K), policy


def _pairs(K: int):
    return [(i, j) for i in range(K) for j in range(i + 1, K)]


def _policy_step_copy(run, pi_t: np.ndarray) -> np.ndarray:
    """EGPO's half step on a second parameter set: a copy of the policy and of the optimizer state (refreshed from
    the policy's before every step) takes one optimizer step on the online-IPO loss at opponent pi_t; returns that
    copy's distribution pi_half. The policy itself then steps from theta_t (the lab's egpo_step, equivalently)."""
    from preflab.loops.optimizer import make_optimizer
    from preflab.online.examples import OnlineMicroBatch
    from preflab.scoring.lm import LogProbScorer
    from preflab.step import optimizer_step

    if getattr(run, "_half", None) is None:
        half = copy.deepcopy(run.policy)
        params = [p for p in half.parameters() if p.requires_grad]
        # the copy's tensors and the policy's, matched by name once (load_state_dict's own matching every step
        # took a tenth of the step)
        own = dict(run.policy.named_parameters()) | dict(run.policy.named_buffers())
        pairs = [(t, own[n]) for n, t in [*half.named_parameters(), *half.named_buffers()]]
        optimizer = make_optimizer(run.cfg, params, run.total_steps, [half])[0]  # the policy's weight-decay groups
        run._half = (half, params, optimizer, LogProbScorer(half), pairs)
    half, params, optimizer, scorer, pairs = run._half
    with torch.no_grad():
        for mine, theirs in pairs:
            mine.copy_(theirs)
    _copy_optimizer_state(optimizer, run.optimizer)
    for group in optimizer.param_groups:
        group["lr"] = run.scheduler.get_last_lr()[0]
    examples = _ipo_examples(run, pi_t, run.task.ref_probs)
    original = run.scorer
    run.scorer = scorer
    try:
        optimizer_step([OnlineMicroBatch(examples, [0] * len(examples), 0)], run._forward_pairs, params, optimizer,
                       None, None, run.cfg.max_grad_norm)
    finally:
        run.scorer = original
    return distribution(half)


def _copy_optimizer_state(dst, src) -> None:
    """dst (the copy's optimizer) set to src's state and hyperparameters, as dst.load_state_dict(src.state_dict())
    leaves them, by copying into dst's tensors (parameters matched by their place in the param groups) instead of
    load_state_dict's deep copy and re-keying every step."""
    src = getattr(src, "optimizer", src)  # accelerate's AcceleratedOptimizer wraps the torch optimizer
    if len(dst.param_groups) != len(src.param_groups):
        dst.load_state_dict(src.state_dict())
        return
    with torch.no_grad():
        for mine, theirs in zip(dst.param_groups, src.param_groups, strict=True):
            mine.update({k: v for k, v in theirs.items() if k != "params"})
            for p, q in zip(mine["params"], theirs["params"], strict=True):
                state = src.state.get(q)
                if not state:
                    dst.state.pop(p, None)
                    continue
                own = dst.state.setdefault(p, {})
                for k, v in state.items():
                    if torch.is_tensor(v) and torch.is_tensor(own.get(k)) and own[k].shape == v.shape \
                            and own[k].dtype == v.dtype:
                        own[k].copy_(v)
                    else:
                        own[k] = v.clone() if torch.is_tensor(v) else copy.deepcopy(v)
                for k in [k for k in own if k not in state]:
                    del own[k]


def extrapolate_parameters(model, previous: dict[str, torch.Tensor] | None, alpha: float) -> dict[str, torch.Tensor]:
    """APO's momentum step in parameter space (He et al. 2024, arXiv:2410.06293, §5.2): every parameter theta of model
    is set to theta + alpha (theta - theta_prev), previous = {name: theta_prev} (None, the first round: no change).
    Returns copies of the un-extrapolated {name: theta}, the next round's previous. For a softmax-linear policy (its
    logits linear in the parameters) the new policy is exactly Eq. 3.6's pi_hat ∝ pi_t^(1 + alpha) / pi_{t-1}^alpha;
    for a network it approximates it (the paper's words: the parameter step approximates the momentum step 3.6)."""
    current = {name: p.detach().clone() for name, p in model.named_parameters()}
    if previous is None:
        return current
    if {k: tuple(v.shape) for k, v in previous.items()} != {k: tuple(v.shape) for k, v in current.items()}:
        raise PreflabError("apo: the saved previous round-start parameters do not match the policy's parameters "
                           "(names or shapes): the run's state comes from another model. Resume with the model the "
                           "checkpoint was written with, or start the run again.")
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(current[name] - previous[name].to(device=p.device, dtype=p.dtype), alpha=alpha)
    return current


def _ipo_examples(run, opponent: np.ndarray, anchor: np.ndarray) -> list[Example]:
    win = run.task.P @ opponent
    log_anchor = np.log(np.maximum(anchor, 1e-300))
    return [Example(0, [PROMPT], [[i], [j]], {"pref_y": float(win[i]), "pref_yp": float(win[j])},
                    ref=[[float(log_anchor[i])], [float(log_anchor[j])]]) for i, j in _pairs(len(win))]


def game_round(run, r: int):
    """One generation round of the game (see the module docstring); returns a Round."""
    from preflab.lab.simplex import geometric_mixture
    from preflab.online.examples import Round

    cfg, task = run.cfg, run.task
    P, K, ref = task.P, task.P.shape[0], task.ref_probs
    pi_t = distribution(run.policy)
    after = task.evaluate_distribution(pi_t)  # the round-start policy's metrics (the policy is not stepped here)
    task.state.add(pi_t)  # the average iterate's running sum (before apo replaces pi_t by its extrapolation)
    eta = cfg.game_eta / cfg.beta
    name = cfg.trainer
    log_pi = np.log(np.maximum(pi_t, 1e-300))
    own = {}  # the trainer's own round quantities (egpo's half step, apo's extrapolation), as TV from pi_t
    if name in ("online_ipo", "egpo"):
        opponent = _policy_step_copy(run, pi_t) if name == "egpo" else pi_t
        if name == "egpo":
            own["egpo/opponent_tv"] = float(0.5 * np.abs(opponent - pi_t).sum())
        examples = _ipo_examples(run, opponent, ref)
    elif name == "nash_md":
        mix = geometric_mixture(pi_t, ref, eta * cfg.beta)
        examples = _ipo_examples(run, mix, mix)
    elif name in ("inpo", "apo"):
        if name == "apo":  # extrapolated iterate pi_hat ∝ pi_t^(1 + alpha) / pi_{t-1}^alpha (Nesterov on log pi)
            if run.pending is not None and task.state.previous_parameters is None:
                raise PreflabError(
                    f"apo round {r + 1}: the previous round-start parameters (the momentum's theta_(t-1)) are not in "
                    "the run's state: the checkpoint was written by a preflab from before apo stepped from the "
                    "extrapolated parameters. Start the run again (an apo game run is minutes).")
            a = cfg.apo_alpha
            # the optimisation starts from theta_t + a (theta_t - theta_(t-1)) (APO §5.2); the anchor is Eq. 3.6's
            task.state.previous_parameters = extrapolate_parameters(run.policy, task.state.previous_parameters, a)
            if a:  # a = 0: pi_t itself (INPO bit for bit, no exp(log) round trip)
                prev_pi = np.array([run.pending.metrics[f"policy/p{i}"] for i in range(K)]) if run.pending else pi_t
                z = (1 + a) * log_pi - a * np.log(np.maximum(prev_pi, 1e-300))
                pi_hat = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
                own["apo/extrapolation_tv"] = float(0.5 * np.abs(pi_hat - pi_t).sum())
                pi_t, log_pi = pi_hat, np.log(np.maximum(pi_hat, 1e-300))
            else:
                own["apo/extrapolation_tv"] = 0.0
        log_ref = np.log(np.maximum(ref, 1e-300))
        examples = []
        for i in range(K):
            for j in range(K):
                if i != j:
                    examples.append(Example(0, [PROMPT], [[i], [j]], {}, ref=[[float(log_ref[i])], [float(log_ref[j])]],
                                            prev=[[float(log_pi[i])], [float(log_pi[j])]],
                                            weight=float(pi_t[i] * pi_t[j] * P[i, j])))
        total = sum(e.weight for e in examples)
        for e in examples:
            e.weight *= len(examples) / total
    elif name == "sppo":
        win = P @ pi_t
        examples = [Example(0, [PROMPT], [[i], [j]], {"score_chosen": float(win[i]), "score_rejected": float(win[j])},
                            ref=[[float(log_pi[i])], [float(log_pi[j])]]) for i, j in _pairs(K)]
    elif name == "spo":
        g = torch.Generator().manual_seed(run._round_seed(r))
        G = cfg.num_generations
        examples = []
        for _ in range(cfg.prompts_per_generation):
            answers = torch.multinomial(torch.as_tensor(pi_t), G, replacement=True, generator=g).tolist()
            rewards = [sum(P[a, b] for n, b in enumerate(answers) if n != m) / (G - 1) for m, a in enumerate(answers)]
            examples.append(Example(0, [PROMPT], [[a] for a in answers], {"rewards": rewards, "valid": [True] * G},
                                    ref=[[float(np.log(max(ref[a], 1e-300)))] for a in answers]))
        from preflab.objectives.grpo import group_advantages

        rewards = torch.tensor([e.extras["rewards"] for e in examples], dtype=torch.float64)
        adv = group_advantages(rewards, torch.ones_like(rewards, dtype=torch.bool), cfg.scale_rewards)[0]
        for e, a in zip(examples, adv):
            e.extras["advantages"] = a.tolist()
        if run.round_len > 1:
            for e in examples:
                e.prev = [[float(log_pi[c[0]])] for c in e.completions]
    else:
        raise ConfigError(f"trainer {name!r} has no game form.")
    if name in ("inpo", "apo"):
        for e in examples:
            e.extras = {"prev_chosen_logps": e.prev[0][0], "prev_rejected_logps": e.prev[1][0]}
    order = list(range(len(examples)))
    spg = run.round_len
    slices = [order] * spg if name != "spo" else [order[len(order) * i // spg:len(order) * (i + 1) // spg]
                                                   for i in range(spg)]
    metrics = {"round": float(r + 1), "tv_to_equilibrium": after["tv_to_equilibrium"],
               "duality_gap": after["duality_gap"], "kl": kl_to_reference(after["policy_distribution"], ref),
               **{f"policy/p{i}": float(p) for i, p in enumerate(after["policy_distribution"])}, **own}
    run.counts["rounds"] += 1
    return Round(r, examples, slices, metrics)
