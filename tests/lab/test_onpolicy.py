"""The on-policy-data paper's didactic bandit: coverage caps offline MLE; reverse KL is mode-seeking."""
import numpy as np
import pytest

from preflab.lab.closed_forms import kl_optimum
from preflab.lab.simplex import kl
from preflab.lab.onpolicy import (bump_reward, cauchy_reference, compare_methods, forward_kl_grad, offline_ceiling,
                                  reverse_kl_grad)

OFFLINE, ONPOLICY_FT, ONPOLICY_RL, MLE_STAR = (
    "offline Pref-FT (MLE on BoN of pi_ref)", "on-policy Pref-FT (MLE on BoN of pi_t)",
    "on-policy RL (reverse KL to pi*)", "MLE on pi* samples (forward KL to pi*)")


def test_cauchy_reference_and_rewards():
    ref = cauchy_reference()
    assert ref.sum() == 1.0 or abs(ref.sum() - 1) < 1e-12
    assert 1 + np.argmax(ref[1:99]) == 16 and abs(ref[16] - 0.0268) < 1e-4
    assert abs(ref[0] - 0.078) < 1e-3 and abs(ref[99] - 0.042) < 1e-3 and abs(ref[70] - 0.0021) < 1e-4
    aligned, misaligned = bump_reward(center=20), bump_reward(center=70)
    assert abs(ref @ aligned - 0.3772) < 1e-4 and abs(ref @ misaligned - 0.0390) < 1e-4
    assert abs(kl_optimum(ref, aligned, 0.1) @ aligned - 0.947) < 1e-3
    assert abs(kl_optimum(ref, misaligned, 0.1) @ misaligned - 0.941) < 1e-3


def test_forward_and_reverse_kl_gradients():
    pi, p = np.array([0.5, 0.3, 0.2]), np.array([0.8, 0.19, 0.01])
    np.testing.assert_allclose(forward_kl_grad(pi, p), [-0.3, 0.11, 0.19], atol=1e-12)
    np.testing.assert_allclose(reverse_kl_grad(pi, p), [-0.4856, -0.0133, 0.4989], atol=1e-4)
    assert abs(kl(pi, p) - 0.5012) < 1e-4  # KL(pi || p) of the spec, the constant inside the reverse gradient
    assert reverse_kl_grad(pi, p)[2] / forward_kl_grad(pi, p)[2] > 2.6   # empties the near-zero bin faster


def test_offline_mle_is_capped_by_coverage_and_on_policy_is_not():
    ref = cauchy_reference()
    gaps = {}
    for center in (20, 70):
        R = bump_reward(center=center)
        res = compare_methods(R, ref, steps=150)
        final = {k: v["expected_reward"][-1] for k, v in res.items()}
        assert final[OFFLINE] < offline_ceiling(R, ref) + 1e-12
        assert final[ONPOLICY_FT] > 0.9 and final[ONPOLICY_RL] > 0.9
        gaps[center] = min(final[ONPOLICY_FT], final[ONPOLICY_RL]) - final[OFFLINE]
    assert offline_ceiling(bump_reward(center=70), ref) < 0.32 < 0.93 < offline_ceiling(bump_reward(center=20), ref)
    assert gaps[70] > 0.6 and gaps[20] < 0.15                           # largest where pi_ref is thin


def test_reverse_kl_is_mode_seeking_near_the_target():
    ref = cauchy_reference()
    for center in (20, 70):
        res = compare_methods(bump_reward(center=center), ref, steps=300)
        assert res[ONPOLICY_RL]["offtarget_mass"][-1] < 0.5 * res[MLE_STAR]["offtarget_mass"][-1]


def test_off_target_bins_are_relative_to_the_largest_bin_of_pi_star():
    """Four equal bins, R = (0, 0, 1, 1): pi*(0) = pi*(1) = 1/(2 + 2 e^{1/beta}) and pi*.max() = e^{1/beta}/(2 + 2
    e^{1/beta}) ~ 1/2. At 1/beta = 6.5, pi*(0) = 7.5e-4 > 1e-3 * 0.4992 (on target: no off-target mass at step 0); at
    1/beta = 8, pi*(0) = 1.7e-4 < 1e-3 * 0.4998 (bins 0 and 1 off target: pi_ref's mass 0.5 there at step 0)."""
    reward, ref = np.array([0.0, 0.0, 1.0, 1.0]), np.full(4, 0.25)
    for inv_beta, off_mass in ((6.5, 0.0), (8.0, 0.5)):
        res = compare_methods(reward, ref, beta=1 / inv_beta, steps=1)
        for rec in res.values():
            assert rec["offtarget_mass"][0] == pytest.approx(off_mass, abs=1e-15)
