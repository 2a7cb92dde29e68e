"""RPS as an inference-time recipe (preflab.online.rps): the spec's dominance toy, equal compute, and the
reduction to the baseline when the generator ignores the direction."""
import json
import random

import pytest
import torch

from preflab.online.rps import compare_rps, main, toy_generator, toy_score


def test_dominance_toy_matches_the_spec_numbers_at_equal_compute():
    # spec #8: target 45, neighbours {15, 22.5, 30, 37.5, 45} toward the centre 0; v*^T r = q(t) cos(t - 45)
    out = compare_rps(["x", "y"], 45.0, toy_generator, toy_score, k=5, theta_max=30.0, toward=0.0)
    assert out["angles"] == [15.0, 22.5, 30.0, 37.5, 45.0]
    assert out["rps_target_score"] == pytest.approx(0.866, abs=5e-4)       # picks 15 degrees: cos 30
    assert out["baseline_target_score"] == pytest.approx(0.189, abs=5e-4)  # q(45) = exp(-25/15)
    assert out["chosen_angles"] == [15.0, 15.0]
    assert out["generator_calls"] == {"rps": 10, "baseline": 10}           # k x prompts, both methods


def test_default_neighbours_are_the_released_grid_rule():
    # rcmao/Robust_Preference_Selection get_angle_perturbations defaults: grid [-40, 40] step 5, theta_max 30, top 5
    out = compare_rps(["x"], 45.0, toy_generator, toy_score)
    assert out["neighbor_rule"] == "grid" and out["angles"] == [40.0, 35.0, 30.0, 25.0, 20.0]
    assert out["rps_target_score"] == pytest.approx(0.9063077870, abs=1e-9)   # picks 20: q(20) cos 25
    assert out["chosen_angles"] == [20.0] and out["generator_calls"] == {"rps": 5, "baseline": 5}


def test_a_generator_that_ignores_the_direction_makes_rps_the_baseline():
    rng = {"r": random.Random(0)}

    def generate(prompt, angle):  # a sampler with no direction input
        return torch.tensor([rng["r"].random(), rng["r"].random()], dtype=torch.float64)

    def reset():
        rng["r"] = random.Random(0)

    out = compare_rps(list("abcd"), 30.0, generate, toy_score, k=3, theta_max=20.0, reset=reset)
    assert out["per_prompt"] == [{"rps": p["baseline"], "baseline": p["baseline"]} for p in out["per_prompt"]]
    assert out["rps_win_rate_vs_baseline"] == 0.5 and out["generator_calls"] == {"rps": 12, "baseline": 12}


def test_entry_writes_summary(tmp_path):
    main(["--generator", "toy", "--target-deg", "45", "--toward", "0", "--output-dir", str(tmp_path)])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rps_target_score"] > summary["baseline_target_score"] + 0.6


def test_methods_that_both_call_the_generator_other_than_k_times_a_prompt_are_refused(monkeypatch):
    """Equal compute means k calls per prompt for each method: two methods that agree with each other but both
    make one call more than k per prompt are refused too (not only a mismatch between them)."""
    import preflab.online.rps as rps
    from preflab.errors import PreflabError

    def one_more(select):
        def wrapped(prompt, target_deg, generate, score, **kw):
            generate(prompt, target_deg)                       # a stray extra sample
            return select(prompt, target_deg, generate, score, **kw)
        return wrapped

    monkeypatch.setattr(rps, "rps_select", one_more(rps.rps_select))
    with pytest.raises(PreflabError, match=r"RPS called the generator 12 times, the baseline 10, expected k x prompts "
                                           r"= 10 each"):
        compare_rps(["x", "y"], 45.0, toy_generator, toy_score, k=5)
    monkeypatch.setattr(rps, "baseline_select", one_more(rps.baseline_select))
    with pytest.raises(PreflabError, match=r"RPS called the generator 12 times, the baseline 12, expected k x prompts "
                                           r"= 10 each"):
        compare_rps(["x", "y"], 45.0, toy_generator, toy_score, k=5)
