"""One round of the preference game (preflab.online.game.game_round), written out from each paper's update: the
pairs' targets, weights and anchors of online IPO, EGPO, Nash-MD, INPO, APO, SPPO and SPO on G3, with a round-start
policy pi_t moved away from pi_ref = pi_0 (so that an anchor at the wrong one of the two shows).

The end-to-end game tests (test_game.py) check that the trainers land on the regularised equilibrium after 1200
steps; an update that is wrong but still contracts (APO interpolating instead of extrapolating, APO without its
previous iterate, Nash-MD's mixture weight beta where the recipe has game_eta = beta, EGPO playing pi_t where
online IPO converges too) passes those. These fail on it."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from preflab.config import load_config
from preflab.online.game import distribution, game_round
from preflab.online.run import OnlineRun

RECIPE = Path(__file__).parents[2] / "examples" / "online" / "nash_game.yaml"


def round_start(tmp_path, trainer, *overrides):
    """(run, pi_t, pi_ref): the run built from the shipped recipe, its policy's head moved so that pi_t != pi_ref."""
    cfg = load_config(RECIPE, [f"output_dir={tmp_path}", "disable_tqdm=true", f"trainer={trainer}", *overrides])
    run = OnlineRun(cfg)
    head = run.policy.get_output_embeddings().weight
    with torch.no_grad():
        head.add_(torch.randn(head.shape, generator=torch.Generator().manual_seed(3)) * 2.0)
    pi_t, ref = distribution(run.policy), run.task.ref_probs
    assert 0.5 * np.abs(pi_t - ref).sum() > 0.05, (pi_t, ref)
    return run, pi_t, ref


def normalised(log_p):
    p = np.exp(log_p - log_p.max())
    return p / p.sum()


def test_online_ipo_and_nash_md_rounds_follow_their_updates(tmp_path):
    """online IPO: all pairs i < j, targets (P pi_t)_i, (P pi_t)_j, anchor log pi_ref (Calandriello et al. 2024).
    Nash-MD: opponent and anchor the geometric mixture pi_mix ∝ pi_t^(1 - eta beta) pi_ref^(eta beta), eta =
    game_eta / beta (Munos et al. 2023): here eta beta = game_eta = 0.3."""
    run, pi_t, ref = round_start(tmp_path / "ipo", "online_ipo")
    P = run.task.P
    examples = game_round(run, 0).examples
    assert [e.completions for e in examples] == [[[0], [1]], [[0], [2]], [[1], [2]]]
    win = P @ pi_t
    for e in examples:
        (i,), (j,) = e.completions
        assert (e.extras["pref_y"], e.extras["pref_yp"]) == pytest.approx((win[i], win[j]), rel=1e-12)
        assert [e.ref[0][0], e.ref[1][0]] == pytest.approx([np.log(ref[i]), np.log(ref[j])], rel=1e-12)

    run, pi_t, ref = round_start(tmp_path / "nmd", "nash_md", "game_eta=0.3")
    mix = normalised(0.7 * np.log(pi_t) + 0.3 * np.log(ref))
    win = run.task.P @ mix
    for e in game_round(run, 0).examples:
        (i,), (j,) = e.completions
        assert (e.extras["pref_y"], e.extras["pref_yp"]) == pytest.approx((win[i], win[j]), rel=1e-9)
        assert [e.ref[0][0], e.ref[1][0]] == pytest.approx([np.log(mix[i]), np.log(mix[j])], rel=1e-9)


@pytest.mark.parametrize("trainer", ["inpo", "apo"])
def test_inpo_and_apo_rounds_weigh_ordered_pairs_by_the_iterate(tmp_path, trainer):
    """INPO (Zhang et al. 2024): ordered pairs (i, j), i chosen, weight pi(i) pi(j) P_ij (normalised to mean 1),
    prev = log pi, ref = log pi_ref, with pi = pi_t. APO (He et al. 2024, Alg. 1): the same with pi the
    extrapolated iterate pi_hat ∝ pi_t^(1 + a) / pi_{t-1}^a, pi_{t-1} read from the previous round's metrics."""
    run, pi_t, ref = round_start(tmp_path, trainer, *(["apo_alpha=0.5"] if trainer == "apo" else []))
    P = run.task.P
    prev = np.array([0.2, 0.3, 0.5])
    # apo's theta_(t-1) (test_apo_round_starts_from_the_extrapolated_parameters): here theta_t's own, no parameter step
    run.task.state.previous_parameters = {n: p.detach().clone() for n, p in run.policy.named_parameters()}
    run.pending = SimpleNamespace(metrics={f"policy/p{i}": float(p) for i, p in enumerate(prev)})
    pi = pi_t if trainer == "inpo" else normalised(1.5 * np.log(pi_t) - 0.5 * np.log(prev))
    played = game_round(run, 1)
    examples = played.examples
    if trainer == "apo":  # the logged size of the extrapolation: TV(pi_hat, pi_t)
        assert played.metrics["apo/extrapolation_tv"] == pytest.approx(0.5 * np.abs(pi - pi_t).sum(), rel=1e-9)
        assert played.metrics["apo/extrapolation_tv"] > 0.03
    else:
        assert "apo/extrapolation_tv" not in played.metrics
    pairs = [(i, j) for i in range(3) for j in range(3) if i != j]
    assert [tuple(c[0] for c in e.completions) for e in examples] == pairs
    w = np.array([pi[i] * pi[j] * P[i, j] for i, j in pairs])
    assert [e.weight for e in examples] == pytest.approx((w * len(w) / w.sum()).tolist(), rel=1e-9)
    for e, (i, j) in zip(examples, pairs):
        assert (e.extras["prev_chosen_logps"], e.extras["prev_rejected_logps"]) == \
            pytest.approx((np.log(pi[i]), np.log(pi[j])), rel=1e-9)
        assert [e.ref[0][0], e.ref[1][0]] == pytest.approx([np.log(ref[i]), np.log(ref[j])], rel=1e-12)


def test_apo_at_alpha_zero_logs_an_extrapolation_of_zero(tmp_path):
    """apo_alpha = 0: pi_hat = pi_t, and the round still logs apo/extrapolation_tv (0.0), as every apo row does."""
    run, pi_t, _ = round_start(tmp_path, "apo", "apo_alpha=0")
    run.task.state.previous_parameters = {n: p.detach().clone() for n, p in run.policy.named_parameters()}
    run.pending = SimpleNamespace(metrics={f"policy/p{i}": p for i, p in enumerate([0.2, 0.3, 0.5])})
    assert game_round(run, 1).metrics["apo/extrapolation_tv"] == 0.0


def test_apo_round_starts_from_the_extrapolated_parameters(tmp_path):
    """APO §5.2 (He et al. 2024): the round's optimisation starts from theta_t + a (theta_t - theta_(t-1)),
    theta_(t-1) the previous round-start parameters (round 1: no previous, no change). Between the two round starts
    only the output head moves here, and the logits are linear in the head (a softmax-linear policy), so the
    extrapolated policy is exactly Eq. 3.6's pi_hat ∝ pi_t^(1 + a) / pi_(t-1)^a, the round's anchor (prev log-probs)."""
    cfg = load_config(RECIPE, [f"output_dir={tmp_path}", "disable_tqdm=true", "trainer=apo", "apo_alpha=0.5"])
    run = OnlineRun(cfg)
    assert not run.policy.config.tie_word_embeddings   # the head is not the prompt token's embedding too
    theta_0 = {n: p.detach().clone() for n, p in run.policy.named_parameters()}
    run.pending = game_round(run, 0)
    assert all(torch.equal(p, theta_0[n]) for n, p in run.policy.named_parameters())   # first round: theta_0 itself
    pi_prev = distribution(run.policy)
    head = run.policy.get_output_embeddings().weight
    with torch.no_grad():   # "training": the head moves
        head.add_(torch.randn(head.shape, generator=torch.Generator().manual_seed(3)) * 2.0)
    theta_1 = {n: p.detach().clone() for n, p in run.policy.named_parameters()}
    pi_t = distribution(run.policy)
    examples = game_round(run, 1).examples
    for n, p in run.policy.named_parameters():
        assert torch.equal(p, theta_1[n] + 0.5 * (theta_1[n] - theta_0[n])), n
    assert not torch.equal(head, theta_1["lm_head.weight"])
    assert all(torch.equal(v, theta_1[n]) for n, v in run.task.state.previous_parameters.items())  # next theta_(t-1)
    pi_hat = normalised(1.5 * np.log(pi_t) - 0.5 * np.log(pi_prev))
    assert distribution(run.policy) == pytest.approx(pi_hat, rel=1e-5)
    assert 0.5 * np.abs(pi_hat - pi_t).sum() > 0.05          # the extrapolation moved the policy
    anchor = {(e.completions[0][0], e.completions[1][0]): e.extras["prev_chosen_logps"] for e in examples}
    assert [anchor[(i, (i + 1) % 3)] for i in range(3)] == pytest.approx(np.log(pi_hat).tolist(), rel=1e-9)


def test_apo_refuses_a_later_round_without_the_previous_parameters(tmp_path):
    """A round after the first needs theta_(t-1); a state without it (an apo checkpoint from before the parameter
    step) is refused, naming the round, rather than run as a round without momentum; parameters of another shape too."""
    from preflab.errors import PreflabError

    run, _, _ = round_start(tmp_path, "apo")
    run.pending = SimpleNamespace(metrics={f"policy/p{i}": 1 / 3 for i in range(3)})
    before = {n: p.detach().clone() for n, p in run.policy.named_parameters()}
    with pytest.raises(PreflabError, match="apo round 2: the previous round-start parameters"):
        game_round(run, 1)
    run.task.state.previous_parameters = {n: v[..., :1] for n, v in before.items()}
    with pytest.raises(PreflabError, match="do not match the policy's parameters"):
        game_round(run, 1)
    assert all(torch.equal(p, before[n]) for n, p in run.policy.named_parameters())   # left as it was


def test_sppo_round_scores_and_anchors_at_the_round_start_policy(tmp_path):
    """SPPO (Wu et al. 2024): all pairs i < j, scores p = (P pi_t)_i, (P pi_t)_j, the reference slots carrying
    log pi_t (SPPO anchors only to the previous iterate), not log pi_ref."""
    run, pi_t, ref = round_start(tmp_path, "sppo")
    win = run.task.P @ pi_t
    for e in game_round(run, 0).examples:
        (i,), (j,) = e.completions
        assert (e.extras["score_chosen"], e.extras["score_rejected"]) == pytest.approx((win[i], win[j]), rel=1e-12)
        assert [e.ref[0][0], e.ref[1][0]] == pytest.approx([np.log(pi_t[i]), np.log(pi_t[j])], rel=1e-9)


def test_spo_rewards_are_win_proportions_against_the_other_samples(tmp_path):
    """SPO (Swamy et al. 2024): reward of answer a_m = (1/(G-1)) sum_{n != m} P[a_m, a_n], recomputed from the
    round's sampled answers; the advantages are GRPO's group z-scores of those rewards."""
    run, pi_t, ref = round_start(tmp_path, "spo", "num_generations=5", "prompts_per_generation=4",
                                 "per_device_train_batch_size=4")
    P = run.task.P
    examples = game_round(run, 0).examples
    assert len(examples) == 4
    for e in examples:
        a = [c[0] for c in e.completions]
        want = [sum(P[a[m], a[n]] for n in range(5) if n != m) / 4 for m in range(5)]
        assert e.extras["rewards"] == pytest.approx(want, rel=1e-12)
        r = np.array(want)
        assert e.extras["advantages"] == pytest.approx(((r - r.mean()) / (r.std(ddof=1) + 1e-4)).tolist(), rel=1e-9)


def test_egpo_round_plays_against_the_half_step_policy(tmp_path):
    """EGPO (Zhou et al. 2025, extragradient): the round's online-IPO targets are win rates against pi_half, the
    distribution of the parameter copy after its half step from theta_t, not against pi_t (plain online IPO)."""
    cfg = load_config(RECIPE, [f"output_dir={tmp_path}", "disable_tqdm=true", "trainer=egpo", "max_steps=2",
                               "lr_scheduler_type=constant"])
    run = OnlineRun(cfg)
    run.train()
    pi_t, ref = distribution(run.policy), run.task.ref_probs
    played = game_round(run, 2)
    examples = played.examples
    pi_half = distribution(run._half[0])
    assert np.abs(pi_half - pi_t).max() > 1e-4
    # the logged size of the extragradient's half step: TV(pi_half, pi_t)
    assert played.metrics["egpo/opponent_tv"] == pytest.approx(0.5 * np.abs(pi_half - pi_t).sum(), rel=1e-9)
    win = run.task.P @ pi_half
    for e in examples:
        (i,), (j,) = e.completions
        assert (e.extras["pref_y"], e.extras["pref_yp"]) == pytest.approx((win[i], win[j]), rel=1e-12)
        assert [e.ref[0][0], e.ref[1][0]] == pytest.approx([np.log(ref[i]), np.log(ref[j])], rel=1e-12)


def test_a_rounds_distance_to_the_equilibrium_is_the_total_variation(tmp_path):
    """tv_to_equilibrium = max over answer sets A of |pi_t(A) - pi*(A)| (the total variation distance; for
    distributions the mass pi_t puts above pi*), of the round-start policy, in [0, 1]."""
    run, pi_t, _ = round_start(tmp_path, "inpo")
    eq = run.task.equilibrium
    sets = [[a for a in range(3) if mask >> a & 1] for mask in range(8)]
    tv = max(abs(pi_t[s].sum() - eq[s].sum()) for s in sets)
    metrics = game_round(run, 0).metrics
    assert metrics["tv_to_equilibrium"] == pytest.approx(tv, rel=1e-9) and tv > 0.05
    assert [metrics[f"policy/p{i}"] for i in range(3)] == pytest.approx(pi_t.tolist(), rel=1e-12)
