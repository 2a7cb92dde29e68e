"""`preflab lab check SPEC`: the checks preflab can run on a user's own objective (SPEC: path/to/file.py:Class,
package.module:Class, or a built-in name), with a verdict and an exit status (0: every check passed, 1: one failed).

- The objective contract (preflab.objectives.check_objective on example_batch: 4 examples of different lengths;
  extras from the class's example_extras): a scalar differentiable loss equal to the mean of the per-example losses,
  detached metrics, a loss that depends on the policy, each declared extra named when missing, a truthful
  needs_reference, and for a pairwise objective the sense checks of preflab.objectives._pair_checks (it reads the
  chosen, prefers the chosen, and uses the reference it declares).
- `reduces_to=NAME` (a reduction): on that batch its per-example losses equal NAME's, built with the parameters the
  two share (e.g. its beta), to 1e-9; e.g. `--param gamma=0 --reduces-to dpo` for a DPO variant whose extra term is
  switched off.
- `kl_optimum` (a closed form): its population minimiser on the bandit B4 (preflab.lab.b4: Bradley-Terry preferences
  from r = (0, 1, 2, 3), pi_ref = (0.4, 0.3, 0.2, 0.1)), found exactly by preflab.lab.solve, equals the
  KL-regularised optimum pi* = pi_ref exp(r / beta) / Z (Rafailov et al. 2023, DPO, Eq. 4; lab.kl_optimum), to 1e-6.
  DPO's optimum; IPO, SimPO and others have other optima and fail it by design.
"""
from __future__ import annotations

import dataclasses

import torch

from preflab.errors import PreflabError

REDUCTION_ATOL = 1e-9
KL_OPTIMUM_ATOL = 1e-6


def check_user_objective(spec: str, params: dict | None = None, reduces_to: str | None = None,
                         kl_optimum: bool = False) -> tuple[list[str], str | None]:
    """(the checks passed, the failure or None). A spec or parameter that does not build an objective is a
    ConfigError (not a failed check)."""
    from preflab.objectives import check_objective, example_batch, get_objective

    objective = get_objective(spec, **(params or {}))
    if reduces_to:  # a misspelt target is an error in the command (exit 2), not a failed check after the contract
        from preflab.objectives import resolve_name

        resolve_name(reduces_to)
    passed: list[str] = []
    try:
        batch = example_batch(objective)
        passed += [f"contract: {name}" for name in check_objective(objective, batch)]
        if reduces_to:
            passed.append(_reduction(objective, batch, reduces_to))
        if kl_optimum:
            passed.append(_kl_optimum(objective))
    except PreflabError as err:
        return passed, str(err)
    return passed, None


def _reduction(objective, batch, name: str) -> str:
    from preflab.objectives import get_objective, objective_class, resolve_name

    target = objective_class(resolve_name(name))
    shared = {f.name for f in dataclasses.fields(target)} & {f.name for f in dataclasses.fields(objective)}
    other = get_objective(name, **{k: getattr(objective, k) for k in shared})
    with torch.no_grad():
        mine, theirs = objective(batch).losses.double(), other(batch).losses.double()
    gap = float((mine - theirs).abs().max())
    said = ", ".join(f"{k}={getattr(objective, k)!r}" for k in sorted(shared)) or "its defaults"
    if not gap <= REDUCTION_ATOL:
        raise PreflabError(f"does not reduce to {name} ({said}): per-example losses {mine.tolist()} vs "
                           f"{theirs.tolist()}, max |difference| {gap:.3g} > {REDUCTION_ATOL:g}.")
    return f"reduces to {name} ({said}): the same per-example losses (max |difference| {gap:.1e})"


def _kl_optimum(objective) -> str:
    import numpy as np

    from preflab.lab.bandit import b4
    from preflab.lab.closed_forms import kl_optimum
    from preflab.lab.population import solve
    from preflab.objectives import PairBatch

    name = type(objective).__name__
    if objective.batch_type is not PairBatch:
        raise PreflabError(f"kl-optimum: {name} takes {objective.batch_type.__name__}es; the B4 check trains on "
                           "preference pairs (PairBatch).")
    beta = getattr(objective, "beta", None)
    if not isinstance(beta, (int, float)) or beta <= 0:
        raise PreflabError(f"kl-optimum: {name} has no beta > 0 (the optimum pi_ref exp(r / beta) / Z needs the "
                           "objective's KL temperature as a field named beta).")
    if objective.required_extras:
        raise PreflabError(f"kl-optimum: {name} reads the extras {list(objective.required_extras)}, which the bandit "
                           "cannot make up; run preflab.lab.solve(objective, b4(), extras_fn=...) from Python "
                           "(docs/extending.md).")
    env = b4()
    found = solve(objective, env)
    want = kl_optimum(env.ref.numpy(), env.reward.numpy(), float(beta))
    gap = float(np.abs(found - want).max())
    if not gap <= KL_OPTIMUM_ATOL:
        raise PreflabError(f"kl-optimum: on B4 with beta={beta:g} the population minimiser is "
                           f"{np.round(found, 6).tolist()}, not pi_ref exp(r / beta) / Z = "
                           f"{np.round(want, 6).tolist()} (max |difference| {gap:.3g} > {KL_OPTIMUM_ATOL:g}).")
    return (f"kl-optimum: on B4 with beta={beta:g} its population minimiser is pi_ref exp(r / beta) / Z (max "
            f"|difference| {gap:.1e})")
