"""preflab.lab: an exact laboratory. Every objective and online / self-play / iterative loop runs on a tabular
policy with infinite (population) data or exact sampling, and is compared with the answer theory gives.

Environments   Bandit (prompts x K responses, pi_ref, BT or general preferences, pair coverage), TokenEnv
               (tiny vocabulary, length L, autoregressive tabular policy; token-level batches with exact token KL)
Closed forms   kl_optimum, idealized_ranking_accuracy, best_of_n_law, rso_accepted_law, apo_coefficients, bald;
               games: nash (LP), reg_nash (fixed point), dual_gap, PreferenceGame
Training       population_train / solve: any registered pairwise objective minimized exactly (float64)
Loops          iterative_dpo, online_dpo, apo, rso_draws; mwu, spo_selfplay, inpo, inpo_update, nash_md,
               nash_md_update, egpo, egpo_step, online_ipo; hypo_vs_dpo, vpo_solutions, rdpo_vs_dpo;
               bt_fit, em_mixture, maxmin_policy; compare_methods (on-policy bandit); likelihood_trajectory (3D)
Experiments    `preflab lab list`, `preflab lab run NAME [--out DIR]` (registry.run_experiment)

Names are resolved lazily, so `import preflab.lab` (done by the CLI) stays cheap.
"""
from __future__ import annotations

from preflab._lazy import lazy_exports

_EXPORTS = {
    "Bandit": "bandit", "b4": "bandit", "dpo_fixture": "bandit",
    "TokenEnv": "token_env",
    "kl_optimum": "closed_forms", "idealized_ranking_accuracy": "closed_forms",
    "idealized_ranking_accuracy_range": "closed_forms", "ranking_accuracy": "closed_forms",
    "best_of_n_law": "closed_forms", "rso_accepted_law": "closed_forms", "apo_coefficients": "closed_forms",
    "bald": "closed_forms",
    "PreferenceGame": "games", "nash": "games", "reg_nash": "games", "dual_gap": "games", "g3": "games",
    "rock_paper_scissors": "games",
    "population_train": "population", "population_loss": "population", "solve": "population",
    "SoftmaxPolicy": "population", "Trajectory": "population",
    "iterative_dpo": "iterative", "online_dpo": "iterative", "apo": "iterative", "rso_draws": "iterative",
    "rso_pairs": "iterative",
    "mwu": "nash_loops", "spo_selfplay": "nash_loops", "win_proportion": "nash_loops", "inpo": "nash_loops",
    "inpo_update": "nash_loops", "nash_md": "nash_loops", "nash_md_update": "nash_loops",
    "egpo": "egpo", "egpo_step": "egpo", "online_ipo": "egpo",
    "hypo_vs_dpo": "contrasts", "vpo_solutions": "contrasts", "rdpo_vs_dpo": "contrasts",
    "bt_fit": "maxmin", "em_mixture": "maxmin", "maxmin_policy": "maxmin", "purity": "maxmin",
    "compare_methods": "onpolicy", "cauchy_reference": "onpolicy",
    "likelihood_trajectory": "dpo_3d",
    "run_experiment": "registry", "list_experiments": "registry",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
