"""The preference game through `preflab train` (examples/online/nash_game.yaml; the equilibrium tests on a shorter
schedule, SHORT_SCHEDULE): EGPO, INPO, APO and Nash-MD end within total variation 0.03 of the lab's KL-regularised
equilibrium pi*_beta (beta = 0.1, pi_ref = pi_0) on intransitive 3- and 4-action games; online IPO at small beta
keeps cycling."""
from pathlib import Path

import numpy as np
import pytest
import torch

from preflab.config import load_config
from preflab.lab.games import dual_gap, g3, reg_nash
from preflab.online.run import OnlineRun

RECIPE = Path(__file__).parents[2] / "examples" / "online" / "nash_game.yaml"
P4 = [[0.5, 0.95, 0.05, 0.725], [0.05, 0.5, 0.95, 0.275], [0.95, 0.05, 0.5, 0.95], [0.275, 0.725, 0.05, 0.5]]


def game_run(tmp_path, *overrides):
    cfg = load_config(RECIPE, [f"output_dir={tmp_path}", "disable_tqdm=true", *overrides])
    return OnlineRun(cfg).train()


def game_run_stopped(stop_at_step, tmp_path, step, *overrides):
    """game_run interrupted when it asks for step `step` + 1 (conftest's stop_at_step), as if killed right after
    its checkpoint-`step`: a resume test needs the cut run's checkpoint, not its remaining steps."""
    run = OnlineRun(load_config(RECIPE, [f"output_dir={tmp_path}", "disable_tqdm=true", *overrides]))
    with stop_at_step(run, step):
        run.train()


# The shipped schedule is 30 rounds of 40 steps at learning rate 0.02 (1200 steps). The equilibrium tests run 40
# rounds of 5 steps at 0.035 (200 steps, a sixth of the cost): each trainer's round map has pi*_beta as its fixed
# point whatever the inner optimisation (the steps only minimise the round's loss), so the same bound on the distance
# to the same closed-form pi*_beta is checked. Final TV (seed 0) at these 200 / at 40 rounds of 10 steps (400) / at the
# shipped 1200 steps: inpo g3 0.0031 / 0.0053 / 0.012, inpo p4 0.0060 / 0.0061 / 0.020, nash_md g3 0.012 / 0.0071 /
# 0.0085, nash_md p4 0.0059 / 0.0087 / 0.016, apo g3 0.0041 / 0.014 / 0.0087 (20 rounds of 10 steps end further
# away: apo 0.071, nash_md p4 0.052; at 400 steps, learning rate 0.04: the others below 0.012 too, apo 0.020; apo
# 0.0033 at 0.03, 0.011 at 0.045; apo before its rounds started from the extrapolated parameters: 0.0079 / 0.0052,
# 0.002 at 0.03, 0.046 at 0.045).
SHORT_SCHEDULE = ["max_steps=200", "steps_per_generation=5", "learning_rate=0.035"]


@pytest.mark.slow
@pytest.mark.parametrize("trainer,game", [(t, g) for t in ("egpo", "inpo", "nash_md") for g in ("g3", "p4")]
                         + [("apo", "g3")])   # apo on the 4-action game: 0.028 (shipped), too close to the bound
def test_nash_trainers_reach_the_regularised_equilibrium(tmp_path, trainer, game):
    """The shipped recipe; inpo, apo and nash_md on SHORT_SCHEDULE (40 rounds of 5 steps at learning rate 0.035),
    EGPO (every step a round; its half step makes a step cost twice the others') on the shipped learning rate for 50
    steps: it is within TV 1e-6 of pi*_beta by then (g3 2.3e-8, p4 2.0e-7; after 100 steps 2.4e-8 / 1.2e-8, 2e-8
    after 1200), and its update with the win rates transposed ends TV 0.17 / 0.36 away (g3 / p4, the same after 100
    steps as after 400 and 1200)."""
    P = g3() if game == "g3" else np.array(P4)
    summary = game_run(tmp_path, f"trainer={trainer}", *([f"game_preferences={P4}"] if game == "p4" else []),
                       *(["max_steps=50"] if trainer == "egpo" else SHORT_SCHEDULE))
    pi, ref = np.array(summary["policy_distribution"]), np.array(summary["reference_distribution"])
    star = reg_nash(P, 0.1, ref)                                   # the lab's equilibrium, recomputed here
    assert np.allclose(summary["equilibrium"], star, atol=1e-9)
    assert 0.5 * np.abs(pi - star).sum() <= 0.03, (pi, star)
    assert summary["duality_gap"] == pytest.approx(dual_gap(pi, P, 0.1, ref))
    assert abs(pi.sum() - 1) < 1e-12 and 0.5 * np.abs(ref - star).sum() > 0.1   # it moved far from pi_0


@pytest.mark.slow
def test_online_ipo_cycles_at_small_beta_where_egpo_converges(tmp_path):
    """beta = 0.01 on G3 with a constant learning rate: online IPO's last iterate keeps swinging (answer 0's
    probability spans more than 0.5 over steps 50-150), EGPO's stays near pi*_beta (span < 0.15, the jitter of
    a constant step; final TV < 0.03). Seed 0: spans 0.97 / 0.105, EGPO's TV 0.0045 (over steps 100-300 of a
    300-step run, the constant rate's longer prefix: 0.97 / 0.095, TV 0.0020)."""
    import json

    spans = {}
    for trainer in ("online_ipo", "egpo"):
        out = tmp_path / trainer
        summary = game_run(out, f"trainer={trainer}", "beta=0.01", "max_steps=150", "lr_scheduler_type=constant",
                           "logging_steps=1")
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if "policy/p0" in x]
        p0 = [r["policy/p0"] for r in rows if r["step"] >= 50]
        spans[trainer] = (max(p0) - min(p0), summary["tv_to_equilibrium"])
    assert spans["online_ipo"][0] > 0.5 and spans["egpo"][0] < 0.15, spans
    assert spans["egpo"][1] < 0.03


def test_egpo_half_step_leaves_the_policys_optimizer_state_alone(tmp_path):
    """EGPO's half step runs on a copy of the policy and of its optimizer state: after it, the policy's Adam moments
    and step count are bitwise what they were (the copy once shared them through load_state_dict, which keeps the
    source's tensors when dtype and device agree, so the half step also advanced the policy's second moment and
    step count), and the copy moved away from pi_t."""
    from preflab.online.game import _policy_step_copy, distribution

    cfg = load_config(RECIPE, [f"output_dir={tmp_path}", "disable_tqdm=true", "trainer=egpo", "max_steps=3",
                               "lr_scheduler_type=constant"])  # linear would end at lr 0: a half step that stays
    run = OnlineRun(cfg)
    run.train()
    state = run.optimizer.optimizer.state
    before = {id(p): {k: v.clone() for k, v in s.items()} for p, s in state.items()}
    params = [p.detach().clone() for p in run.policy.parameters()]
    pi_t = distribution(run.policy)
    pi_half = _policy_step_copy(run, pi_t)
    assert before and all(torch.equal(state[p][k], v) for p in state for k, v in before[id(p)].items())
    assert all(torch.equal(a, b) for a, b in zip(params, run.policy.parameters()))
    assert np.array_equal(distribution(run.policy), pi_t) and np.abs(pi_half - pi_t).max() > 1e-4


@pytest.mark.parametrize("extra,named", [(dict(temperature=0.5), "temperature"), (dict(top_p=0.9), "top_p"),
                                         (dict(generation_batch_size=8), "generation_batch_size"),
                                         (dict(num_generations=8), "num_generations"),
                                         (dict(prompts_per_generation=4), "prompts_per_generation")])
def test_game_refuses_sampling_options_it_never_reads(extra, named):
    """The game's rounds (all trainers but spo) take the exact expectation over the K answers: a sampling option
    written for them ran as if absent (before: `trainer=inpo temperature=0.5` trained the same as without it)."""
    from preflab.config import config_from_dict
    from preflab.errors import ConfigError

    base = dict(task="online", online_task="game", trainer="inpo", max_steps=2,
                model_name_or_path="builtin:tiny-llama", game_preferences=[[0.5, 0.8], [0.2, 0.5]])
    with pytest.raises(ConfigError, match=rf"^{named} is read by the online tasks that sample text.*"
                                          r"not by trainer 'inpo' with online_task 'game'"):
        config_from_dict({**base, **extra})
    if named in ("num_generations", "prompts_per_generation"):   # spo samples num_generations answers per prompt
        assert getattr(config_from_dict({**base, **extra, "trainer": "spo"}), named) == extra[named]


@pytest.mark.parametrize("trainer", ["inpo", "spo"])
def test_game_needs_positive_beta(trainer):
    """beta = 0 in the game crashed with ZeroDivisionError (inpo, spo: eta = game_eta / beta, the equilibrium
    pi*_beta); it is now a config error naming beta (egpo, sppo: their objectives refused it, in other words)."""
    from preflab.config import config_from_dict
    from preflab.errors import ConfigError

    base = dict(task="online", online_task="game", trainer=trainer, max_steps=2,
                model_name_or_path="builtin:tiny-llama", game_preferences=[[0.5, 0.8], [0.2, 0.5]])
    for beta in (0.0, -0.1):
        with pytest.raises(ConfigError, match=rf"online_task: game needs beta > 0 .*got beta={beta}"):
            config_from_dict({**base, "beta": beta})


def test_game_spo_needs_two_generations():
    """spo's reward is a win proportion against the other num_generations - 1 samples of the group: with
    num_generations=1 the first round died with ZeroDivisionError; it is now a config error naming the option
    (2 is the smallest group, accepted)."""
    from preflab.config import config_from_dict
    from preflab.errors import ConfigError

    base = dict(task="online", online_task="game", trainer="spo", max_steps=2,
                model_name_or_path="builtin:tiny-llama", game_preferences=[[0.5, 0.8], [0.2, 0.5]])
    with pytest.raises(ConfigError, match=r"^num_generations must be >= 2 for trainer spo in online_task: game, "
                                          r"got 1: spo rewards each sampled answer with its win proportion"):
        config_from_dict({**base, "num_generations": 1})
    assert config_from_dict({**base, "num_generations": 2}).num_generations == 2


def test_game_preferences_refuses_booleans():
    """YAML true / false in the preference matrix ran as 1 / 0 (bool is an int in Python); a probability written as
    a boolean is refused, naming the entry."""
    from preflab.config import config_from_dict
    from preflab.errors import ConfigError

    base = dict(task="online", online_task="game", trainer="inpo", max_steps=2, model_name_or_path="builtin:tiny-llama")
    with pytest.raises(ConfigError, match=r"game_preferences\[0\]\[1\] = True is not a probability in \[0, 1\]"):
        config_from_dict({**base, "game_preferences": [[0.5, True], [False, 0.5]]})


@pytest.mark.parametrize("trainer,unread", [("egpo", ["game_eta", "steps_per_generation"]), ("inpo", []),
                                            ("sppo", ["game_eta"])])
def test_game_notes_options_its_trainer_does_not_read(capsys, trainer, unread):
    """The shipped yaml's game_eta (read by inpo / apo / nash_md) and steps_per_generation (egpo and online_ipo make
    every step a round) ran unread and unmentioned under the documented `trainer=egpo`; each is now a note naming
    the trainers that read it (a note, not an error: one yaml serves every game trainer)."""
    load_config(RECIPE, [f"trainer={trainer}"])
    err = capsys.readouterr().err
    for name in ("game_eta", "steps_per_generation", "num_iterations"):
        line = [ln for ln in err.splitlines() if ln.startswith(f"preflab: note: {name}=")]
        assert len(line) == (name in unread), (name, err)
    if unread:
        assert "preflab: note: game_eta=0.1 is read by game trainers apo, inpo, nash_md, not by trainer " \
               f"'{trainer}'; it has no effect on this run." in err


def test_game_final_metrics_are_the_final_policys(tmp_path):
    """summary.json's final_metrics (the report's "Final metrics" table) held the last logged row's duality_gap,
    the policy's at the START of the last round, beside the summary's final-policy duality_gap; its game keys now
    are the final policy's, recomputed here from the trained policy's exact distribution."""
    import json

    from preflab.online.game import distribution

    cfg = load_config(RECIPE, [f"output_dir={tmp_path}", "disable_tqdm=true", "trainer=inpo", "max_steps=80"])
    run = OnlineRun(cfg)
    summary = run.train()
    pi, ref = distribution(run.policy), np.array(summary["reference_distribution"])
    final = summary["final_metrics"]
    assert final["duality_gap"] == pytest.approx(dual_gap(pi, g3(), 0.1, ref), rel=1e-12)
    assert final["duality_gap"] == summary["duality_gap"] == final["eval_duality_gap"]
    assert final["tv_to_equilibrium"] == summary["tv_to_equilibrium"]
    assert [final[f"policy/p{i}"] for i in range(3)] == pytest.approx(pi.tolist(), rel=1e-12)
    # KL(pi || pi_ref) of the final policy (it was the last round start's)
    assert final["kl"] == pytest.approx(float(np.sum(pi * np.log(pi / ref))), rel=1e-9)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "loss" in r][-1]
    assert last["step"] == 80 and abs(last["duality_gap"] - final["duality_gap"]) > 1e-3  # the round start's
    assert abs(last["kl"] - final["kl"]) > 1e-4
    assert json.loads((tmp_path / "summary.json").read_text())["final_metrics"]["duality_gap"] == final["duality_gap"]


def test_game_average_iterate_is_the_mean_of_the_logged_round_policies(tmp_path, stop_at_step):
    """sppo's guarantee is on the average iterate: summary.json's policy_distribution_average is the mean of the
    round-start distributions (recomputed here from metrics.jsonl, one row per round), its TV and duality gap those of
    that mean, on a 2-answer game whose equilibrium is closed-form ((P pi)_0 - (P pi)_1 = p - 1/2 for every pi, so
    pi*_beta ∝ pi_ref (e^((p - 1/2)/beta), 1)) and the gap DG_beta written out by hand; a run resumed from a
    mid-round checkpoint keeps the running sum (its average equals the uninterrupted run's)."""
    import json

    p, beta = 0.6, 0.1
    P = np.array([[0.5, p], [1 - p, 0.5]])
    steps = ["trainer=sppo", f"game_preferences={P.tolist()}", "max_steps=120", "steps_per_generation=20",
             "logging_steps=20"]
    summary = game_run(tmp_path / "full", *steps)
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    rounds = {r["round"]: [r[f"policy/p{i}"] for i in range(2)] for r in rows if "loss" in r}
    assert sorted(rounds) == [1, 2, 3, 4, 5, 6]
    avg, ref = np.mean(list(rounds.values()), axis=0), np.array(summary["reference_distribution"])
    star = ref * np.exp([(p - 0.5) / beta, 0.0])
    star /= star.sum()
    assert summary["equilibrium"] == pytest.approx(star.tolist(), abs=1e-9)
    gap = (beta * np.log(ref @ np.exp(P @ avg / beta)) + beta * np.log(ref @ np.exp(-(P.T @ avg) / beta))
           + 2 * beta * float(avg @ np.log(avg / ref)))
    assert summary["policy_distribution_average"] == pytest.approx(avg.tolist(), rel=1e-9)
    assert summary["tv_to_equilibrium_average"] == pytest.approx(0.5 * np.abs(avg - star).sum(), rel=1e-6)
    assert summary["duality_gap_average"] == pytest.approx(gap, rel=1e-6)
    assert abs(summary["duality_gap_average"] - summary["duality_gap"]) > 1e-3   # not the last iterate's
    game_run_stopped(stop_at_step, tmp_path / "cut", 50, *steps, "save_steps=50")
    resumed = game_run(tmp_path / "resumed", *steps, f"resume_from_checkpoint={tmp_path / 'cut' / 'checkpoint-50'}")
    assert resumed["resumed_from_step"] == 50
    assert resumed["policy_distribution_average"] == pytest.approx(summary["policy_distribution_average"], abs=1e-9)


def test_apo_at_alpha_zero_is_inpo_and_resumes_exactly(tmp_path, stop_at_step):
    """apo_alpha = 0: no extrapolation of the distribution or of the parameters, so trainer apo is trainer inpo bit
    for bit (final and average distributions equal as floats). At apo_alpha 0.3 the rounds start from the
    extrapolated parameters theta_t + 0.3 (theta_t - theta_(t-1)) (He et al. 2024, §5.2); theta_(t-1) is kept in the
    checkpointed task state, so a run resumed from a mid-round checkpoint ends on the uninterrupted run's policy, bit
    for bit; it differs from inpo's."""
    import json

    steps = ["max_steps=60", "steps_per_generation=10", "logging_steps=10"]
    inpo = game_run(tmp_path / "inpo", "trainer=inpo", *steps)
    zero = game_run(tmp_path / "zero", "trainer=apo", "apo_alpha=0", *steps)
    for key in ("policy_distribution", "policy_distribution_average"):
        assert zero[key] == inpo[key], key
    apo = game_run(tmp_path / "apo", "trainer=apo", *steps)
    assert 0.5 * np.abs(np.array(apo["policy_distribution"]) - inpo["policy_distribution"]).sum() > 1e-3
    game_run_stopped(stop_at_step, tmp_path / "cut", 35, "trainer=apo", *steps, "save_steps=35")
    saved = json.loads((tmp_path / "cut" / "online-state" / "step-35" / "task.json").read_text())
    assert "previous_parameters" in saved
    resumed = game_run(tmp_path / "resumed", "trainer=apo", *steps,
                       f"resume_from_checkpoint={tmp_path / 'cut' / 'checkpoint-35'}")
    assert resumed["resumed_from_step"] == 35
    for key in ("policy_distribution", "policy_distribution_average"):
        assert resumed[key] == apo[key], key


@pytest.mark.parametrize("value", [0, 2])
def test_game_refuses_refresh_reference_every(value):
    """The game's rounds carry their reference log-probs exactly (pi_0, or pi_t in sppo's reference slots): no
    reference model is copied or refreshed, so refresh_reference_every did nothing there (2 ran as 0), unmentioned;
    written at any value (its default 0 included) it is refused."""
    from preflab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^refresh_reference_every is read by the online tasks that sample text "
                                          r"\(dataset, vision_dataset, demo; the game's reference is pi_0.*not by "
                                          r"trainer 'sppo' with online_task 'game'; remove it"):
        load_config(RECIPE, ["trainer=sppo", f"refresh_reference_every={value}"])
    cfg = load_config(RECIPE, ["trainer=sppo"])  # not set to sppo's 1 by the config (a reloaded config kept it)
    assert cfg.refresh_reference_every == 0 and cfg.loss_type == "sppo"
