"""Lab experiments contrasting DPO with its variants (hypo-coverage, vpo, rdpo-flips, onpolicy-bandit, dpo-3d)."""
from __future__ import annotations

import numpy as np

from preflab.lab.bandit import Bandit, b4, dpo_fixture
from preflab.lab.contrasts import dpo_loss, hypo_vs_dpo, move_off_data_mass, rdpo_vs_dpo, vpo_solutions
from preflab.lab.dpo_3d import chosen_nll, likelihood_trajectory, sample_pairs
from preflab.lab.lab_objectives import FlexDPOLoss
from preflab.lab.onpolicy import bump_reward, cauchy_reference, compare_methods, offline_ceiling
from preflab.lab.closed_forms import kl_optimum
from preflab.lab.registration import experiment
from preflab.lab.results import ExperimentResult, Panel
from preflab.lab.token_env import TokenEnv


def coverage_bandit() -> Bandit:
    """B4 with only the pair (y0, y1) in the data: y2, y3 are off the data."""
    return b4().with_coverage([(0, 1)])


@experiment("hypo-coverage", "HyPO vs DPO under partial coverage: off-data responses")
def hypo_coverage(quick: bool) -> ExperimentResult:
    env, beta, lam = coverage_bandit(), 0.1, 0.1
    res = hypo_vs_dpo(env, beta, lam)
    off = res["off"][0]
    masses = np.linspace(0.01, 0.99, 50)
    log_ref = np.log(env.ref.numpy()[0])
    dpo_curve, hypo_curve = [], []
    for m in masses:
        pi = move_off_data_mass(res["dpo"][0], off, m)
        loss = dpo_loss(env, pi[None], beta)
        dpo_curve.append(loss)
        hypo_curve.append(loss + lam * float(np.sum(pi * (np.log(pi) - log_ref))))
    p1 = Panel("log pi/pi_ref per response (data: only the pair y0 vs y1)", "response", "log pi(y) / pi_ref(y)",
               kind="bars", categories=["y0 (data)", "y1 (data)", "y2 (off)", "y3 (off)"],
               curves={"DPO": res["dpo_logratio"][0], f"HyPO (lambda {lam})": res["hypo_logratio"][0]},
               reference={"pi_ref": 0.0})
    p2 = Panel("moving mass off the data (ratios within each set fixed)", "total mass on y2, y3", "loss",
               curves={"DPO loss (flat: blind to off-data mass)": (masses, dpo_curve),
                       "HyPO loss = DPO + lambda KL": (masses, hypo_curve)})
    return ExperimentResult("", "Partial coverage: HyPO stays near pi_ref off the data, DPO does not",
                            "the DPO loss only sees covered log-ratios, so its minimizers leave off-data mass "
                            "arbitrary; HyPO's on-policy KL makes log pi/pi_ref = KL(pi||pi_ref) on every uncovered "
                            "response (Song et al. 2024).", [p1, p2],
                            {k: v for k, v in res.items() if k != "off"})


@experiment("vpo", "VPO: optimism vs pessimism moves the solution away from / toward the calibration policy")
def vpo(quick: bool) -> ExperimentResult:
    env, beta, lam = b4(), 0.5, 0.01
    res = vpo_solutions(env, beta, lam)
    p = Panel(f"B4, beta {beta}, lambda {lam}, pi_cal = pi_ref = (.4,.3,.2,.1)", "response", "pi(y)", kind="bars",
              categories=["y0", "y1", "y2", "y3"],
              curves={"pi_ref": env.ref.numpy()[0], "VPO optimistic (online, +)": res["optimistic"][0],
                      "DPO": res["dpo"][0], "VPO pessimistic (offline, -)": res["pessimistic"][0]})
    return ExperimentResult("", "VPO: the sign of the value term moves the solution in the predicted direction",
                            "adding s lam E_cal log pi: the optimistic (s = +1) minimizer has lower E_cal log pi "
                            "than DPO's (explores away from pi_cal), the pessimistic one higher (Cen et al. 2024).",
                            [p], res)


@experiment("rdpo-flips", "rDPO vs DPO when labels are flipped at rate eps")
def rdpo_flips(quick: bool) -> ExperimentResult:
    env, beta = dpo_fixture(), 0.1
    rates = [0.0, 0.1, 0.2, 0.3, 0.4] if quick else list(np.round(np.arange(0.0, 0.45, 0.05), 2))
    d_dpo, d_rdpo = [], []
    for eps in rates:
        res = rdpo_vs_dpo(env, beta, eps)
        d_dpo.append(float(np.max(np.abs(res["dpo"] - res["optimum"]))))
        d_rdpo.append(float(np.max(np.abs(res["rdpo"] - res["optimum"]))))
    p = Panel("pi_ref = [.5,.3,.2], r = [0,.1,.3], beta = 0.1, population data", "flip rate eps",
              "max |pi - pi*| (clean optimum)", logy=True,
              curves={"DPO on flipped labels": (rates, d_dpo), "rDPO on flipped labels": (rates, d_rdpo)})
    return ExperimentResult("", "Provably robust DPO under label flips",
                            "the rDPO loss is an unbiased estimate of the clean DPO loss, so its population "
                            "minimizer is the clean pi*; DPO fits the flipped proportions (Chowdhury et al. 2024).",
                            [p], {"flip_rates": rates, "dpo_distance": d_dpo, "rdpo_distance": d_rdpo})


@experiment("onpolicy-bandit", "mode-seeking vs mass-covering, on-policy vs offline (didactic Cauchy bandit)")
def onpolicy_bandit(quick: bool) -> ExperimentResult:
    steps = 150 if quick else 400
    record = tuple(range(0, steps + 1, 5))
    ref = cauchy_reference()
    panels, numbers = [], {}
    offtarget = Panel("mode-seeking vs mass-covering fit of the same pi*", "exact update",
                      "mass where pi* < 1e-3 max pi*", logy=True)
    for name, center in (("aligned (peak at bin 20, near pi_ref's mode)", 20),
                         ("misaligned (peak at bin 70, low pi_ref)", 70)):
        R = bump_reward(center=center)
        res = compare_methods(R, ref, steps=steps, record=record)
        for k, v in res.items():
            if "pi*" in k:
                short = "reverse KL (mode-seeking)" if "reverse" in k else "forward KL (mass-covering)"
                offtarget.curves[f"{short}, {name.split()[0]}"] = (v["steps"], v["offtarget_mass"])
        panels.append(Panel(name, "exact update", "E_pi[R]", curves={k: (v["steps"], v["expected_reward"])
                                                                     for k, v in res.items()},
                            reference={"E_pi*[R], beta 0.1": float(kl_optimum(ref, R, 0.1) @ R),
                                       "offline ceiling E_BoN(pi_ref)[R]": offline_ceiling(R, ref)}))
        numbers[f"center_{center}"] = {k: {"final_reward": v["expected_reward"][-1],
                                           "offtarget_mass": v["offtarget_mass"][-1]} for k, v in res.items()}
    panels.append(offtarget)
    return ExperimentResult("", "On-policy data and mode-seeking objectives (Tajwar et al. 2024)",
                            "offline MLE on best-of-N of pi_ref is capped by pi_ref's coverage of the reward peak; "
                            "on-policy methods are not, and the gap is largest when the peak is where pi_ref is thin.",
                            panels, numbers)


@experiment("dpo-3d", "3D properties of DPO in the token environment (chosen and rejected both fall)")
def dpo_3d(quick: bool) -> ExperimentResult:
    env = TokenEnv(3, 3, context="last", seed=0)
    pairs = sample_pairs(env, 3, seed=0)
    steps = 150 if quick else 400
    runs = {"DPO": likelihood_trajectory(env, pairs, steps=steps),
            "Flex-DPO (beta_l 0.05)": likelihood_trajectory(env, pairs, FlexDPOLoss(0.1, 0.05), steps=steps),
            "DPO + 0.05 NLL(chosen)": likelihood_trajectory(env, pairs, steps=steps,
                                                            regularizer=chosen_nll(env, pairs, 0.05))}
    curves, styles = {}, {}
    for k, (name, run) in enumerate(runs.items()):
        curves[f"{name}: chosen"] = (run["steps"], run["chosen"])
        curves[f"{name}: rejected"] = (run["steps"], run["rejected"])
        styles[f"{name}: chosen"], styles[f"{name}: rejected"] = f"C{k}-", f"C{k}--"
    p1 = Panel("V = 3, L = 3, bigram policy (shared parameters), 3 off-policy pairs, hard labels, beta 0.1",
               "gradient step", "mean log pi(y)/pi_ref(y) (solid chosen, dashed rejected)", curves=curves,
               styles=styles, reference={"reference": 0.0})
    p2 = Panel("dispersion: probability of responses outside the data", "gradient step", "mass on unseen responses",
               curves={name: (run["steps"], run["unseen_mass"]) for name, run in runs.items()})
    return ExperimentResult("", "3D properties of DPO: drastic drop, degradation, dispersion",
                            "the rejected likelihood drops fastest, the chosen likelihood falls too once its gradient "
                            "vanishes, freed mass moves off the data; an SFT term keeps the chosen up "
                            "(Yan et al. 2024).", [p1, p2],
                            {name: {"chosen": run["chosen"][-1], "rejected": run["rejected"][-1],
                                    "unseen_mass": run["unseen_mass"][-1]} for name, run in runs.items()})
