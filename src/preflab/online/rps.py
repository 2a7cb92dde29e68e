"""RPS as an inference-time recipe: RPS selection vs the best-of-k baseline at equal compute, written to summary.json.

    python -m preflab.online.rps --generator toy --target-deg 45 --k 5 --theta-max 30 --output-dir D
    python -m preflab.online.rps --generator toy --target-deg 45 --toward 0 --output-dir D     (rule "even")
    python -m preflab.online.rps --generator builtin:demo-sft --prompts 32 --output-dir D
    python -m preflab.online.rps --generator RUN_DIR --target-deg 45 --prompts 64 --output-dir D

Mao et al. 2025, "Robust Preference Alignment via Directional Neighborhood Consensus" (arXiv:2510.20498); spec
methods/models-and-loops.md #8. For a target direction v* = (cos theta*, sin theta*), RPS generates one response
per neighbour direction v_i (angle(v_i, v*) <= theta_max; by default the released grid rule, the k angles of the
5-degree grid in [-40, 40] closest to theta*, preflab.reward_models.directional.grid_neighbor_angles) and
returns y_{argmax_i s_i} with s_i = v*^T r(x, y_i); the baseline generates k responses all conditioned on v* and
applies the same rule (best-of-k under v*). Both call the generator exactly k times per prompt: compare_rps counts
the calls and refuses a comparison where they differ.

Generators (generate(prompt, angle_deg) -> response):
    toy               the spec's dominance toy (paper Theorem 1 setting): the response to direction theta is its
                      reward vector q(theta) v(theta), q(theta) = exp(-max(0, |theta| - 20) / 15) (reliable within
                      20 degrees of the training centre 0); deterministic. Target 45, k 5, theta_max 30, released
                      grid rule (neighbours 40, 35, 30, 25, 20): RPS 0.906 (picks 20 degrees) vs the baseline 0.189;
                      the spec's one-sided rule (--toward 0: 15, 22.5, 30, 37.5, 45): 0.866 (picks 15).
    builtin:demo-sft  the demo's SFT policy sampling on the loud-echo task; reward r = (demo_true_reward,
                      demo_echo_reward). This policy is NOT direction-conditioned (it was never trained with a
                      direction in its input), so the angle is ignored and RPS equals the baseline in distribution:
                      the run checks the plumbing and equal compute on a real model, not RPS's gain, which needs a
                      preference-conditioned generator (a DPA model).
    RUN_DIR           a direction-conditioned run (SFT on DPA rows, preflab.online.direction_generator): candidate i
                      is sampled on condition_prompt(x, direction_system_prompt(angle_i, names)) with the names the
                      run trained with; demo held-out prompts and the 2-D demo reward as above; summary.json records
                      the trained angles and whether the target lies outside them. A dpa_rsf run is refused: that
                      recipe never writes the direction into the prompt (preflab.online.trainers).
"""
from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from preflab.data.tokenize import bos_ids
from preflab.errors import ConfigError, PreflabError
from preflab.models.builtin_names import DEMO_SFT
from preflab.reward_models.directional import (
    GRID_RANGE,
    GRID_STEP,
    baseline_select,
    neighbor_angles,
    rps_select,
)


class CountingGenerator:
    """generate(prompt, angle) that counts its calls."""

    def __init__(self, generate: Callable):
        self.generate, self.calls = generate, 0

    def __call__(self, prompt, angle):
        self.calls += 1
        return self.generate(prompt, angle)


def compare_rps(prompts: Sequence, target_deg: float, generate: Callable, score: Callable, *, k: int = 5,
                theta_max: float = 30.0, toward: float | None = None, scale: torch.Tensor | None = None,
                reset: Callable[[], None] | None = None, rule: str | None = None, step: float = GRID_STEP,
                angle_range: tuple[float, float] = GRID_RANGE) -> dict:
    """RPS vs the best-of-k baseline on `prompts`; score(prompt, responses) -> [k, d]. reset(): called before each
    method's pass (e.g. to restart a sampler's seed sequence so both see the same randomness). rule: None = the
    released grid rule, or "even" when `toward` is given (see rps_select)."""
    if not prompts:
        raise ConfigError("compare_rps needs at least one prompt.")
    rule = rule or ("even" if toward is not None else "grid")
    grid = {"rule": rule, "step": step, "angle_range": angle_range}
    rps_gen, base_gen = CountingGenerator(generate), CountingGenerator(generate)
    if reset:
        reset()
    rps = [rps_select(p, target_deg, rps_gen, score, k=k, theta_max=theta_max, toward=toward, scale=scale, **grid)
           for p in prompts]
    if reset:
        reset()
    base = [baseline_select(p, target_deg, base_gen, score, k=k, scale=scale) for p in prompts]
    if rps_gen.calls != base_gen.calls or rps_gen.calls != k * len(prompts):
        raise PreflabError(f"unequal compute: RPS called the generator {rps_gen.calls} times, the baseline "
                           f"{base_gen.calls}, expected k x prompts = {k * len(prompts)} each.")
    r = [float(x.scores[x.index]) for x in rps]
    b = [float(x.scores[x.index]) for x in base]
    wins = [1.0 if a > c else 0.5 if a == c else 0.0 for a, c in zip(r, b)]
    return {"method": "rps", "target_deg": float(target_deg), "k": k, "theta_max": theta_max, "toward": toward,
            "neighbor_rule": rule, "angles": neighbor_angles(target_deg, k, theta_max, toward, **grid),
            "prompts": len(prompts),
            "rps_target_score": sum(r) / len(r), "baseline_target_score": sum(b) / len(b),
            "rps_win_rate_vs_baseline": sum(wins) / len(wins),
            "generator_calls": {"rps": rps_gen.calls, "baseline": base_gen.calls},
            "chosen_angles": [x.angle for x in rps],
            "per_prompt": [{"rps": a, "baseline": c} for a, c in zip(r, b)]}


def toy_quality(theta_deg: float) -> float:
    return math.exp(-max(0.0, abs(theta_deg) - 20.0) / 15.0)


def toy_generator(prompt, angle_deg: float) -> torch.Tensor:
    """The spec's dominance toy: the 'response' is its own reward vector q(theta) (cos theta, sin theta)."""
    t = math.radians(angle_deg)
    return toy_quality(angle_deg) * torch.tensor([math.cos(t), math.sin(t)], dtype=torch.float64)


def toy_score(prompt, responses) -> torch.Tensor:
    return torch.stack(list(responses))


def _demo_sampler(model, tokenizer, seed: int, max_new_tokens: int, temperature: float):
    """(sample(text) -> response, reset): one sample per call, prompt encoded as the demo task does (bos, text, newline),
    seeded by the call count so reset() replays the same randomness."""
    from preflab.online.generator import TransformersGenerator

    gen = TransformersGenerator(model, tokenizer.eos_token_id, tokenizer.pad_token_id, max_new_tokens, temperature)
    state, bos = {"call": 0}, bos_ids(tokenizer)

    def reset():
        state["call"] = 0

    def sample(text: str) -> str:
        ids = bos + tokenizer(text + "\n", add_special_tokens=False).input_ids
        state["call"] += 1
        out = gen.generate([ids], 1, seed * 100003 + state["call"])[0]
        return tokenizer.decode(out, skip_special_tokens=True)

    return sample, reset


def demo_score(prompt: str, responses) -> torch.Tensor:
    """The demo task's 2-D reward r = (demo_true_reward, demo_echo_reward), [k, 2]."""
    from preflab.online.tasks import demo_echo_reward, demo_true_reward

    ps = [prompt] * len(responses)
    return torch.tensor([demo_true_reward(ps, list(responses)), demo_echo_reward(ps, list(responses))],
                        dtype=torch.float64).T


def demo_setup(seed: int, prompts: int, max_new_tokens: int = 16, temperature: float = 1.0):
    """(prompts, generate, score, reset) on the demo task with its SFT policy (direction ignored, see above)."""
    from preflab.demo.sft_model import demo_sft
    from preflab.demo.task import make_splits

    model, tokenizer = demo_sft(seed)
    model.eval()
    heldout = make_splits(0)[2][:prompts]
    sample, reset = _demo_sampler(model, tokenizer, seed, max_new_tokens, temperature)

    def generate(prompt: str, angle_deg: float) -> str:
        return sample(prompt)

    return heldout, generate, demo_score, reset


def run_dir_setup(run_dir: str, seed: int, prompts: int, max_new_tokens: int = 16, temperature: float = 1.0):
    """(prompts, generate, score, reset, conditioning) for a direction-conditioned run directory on the demo task's
    held-out prompts and 2-D reward; refuses a run that is not direction-conditioned (direction_generator)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from preflab.demo.task import make_splits
    from preflab.online.direction_generator import (
        conditioned_generator,
        run_conditioning,
    )

    conditioning = run_conditioning(run_dir)
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    model = AutoModelForCausalLM.from_pretrained(run_dir, use_safetensors=True).eval()  # no pickle
    sample, reset = _demo_sampler(model, tokenizer, seed, max_new_tokens, temperature)
    heldout = make_splits(0)[2][:prompts]
    return heldout, conditioned_generator(sample, conditioning.names), demo_score, reset, conditioning


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m preflab.online.rps", description=__doc__.split("\n")[0])
    ap.add_argument("--generator", default="toy",
                    help="toy | builtin:demo-sft | a direction-conditioned run directory (direction_generator)")
    ap.add_argument("--target-deg", type=float, default=45.0)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--theta-max", type=float, default=30.0)
    ap.add_argument("--toward", type=float, default=None,
                    help="training-centre angle (one-sided neighbours; implies --neighbors even)")
    ap.add_argument("--neighbors", default=None, choices=["grid", "even"],
                    help="grid (default, as released: 5-degree grid in [-40, 40]) | even (library rule)")
    ap.add_argument("--prompts", type=int, default=32, help="demo: held-out prompts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output-dir", required=True)
    args = ap.parse_args(argv)
    conditioning = None
    if args.generator == "toy":
        prompts, generate, score, reset = ["toy"], toy_generator, toy_score, None
    elif args.generator == DEMO_SFT:
        torch.set_num_threads(1)
        prompts, generate, score, reset = demo_setup(args.seed, args.prompts)
    elif Path(args.generator).is_dir():
        torch.set_num_threads(1)
        prompts, generate, score, reset, conditioning = run_dir_setup(args.generator, args.seed, args.prompts)
    else:
        raise ConfigError(f"--generator must be toy, builtin:demo-sft or a run directory, got {args.generator!r}.")
    summary = compare_rps(prompts, args.target_deg, generate, score, k=args.k, theta_max=args.theta_max,
                          toward=args.toward, reset=reset, rule=args.neighbors)
    summary["generator"] = args.generator
    if conditioning is not None:
        lo, hi = conditioning.angle_range
        summary["conditioning"] = {"names": list(conditioning.names), "trained_angles": list(conditioning.angles),
                                   "target_outside_trained_range": not lo <= args.target_deg <= hi}
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "per_prompt"}, indent=1))
    return summary


if __name__ == "__main__":
    main()
