"""What each eval.json / eval-step metric means (the report prints these beside the values)."""
from __future__ import annotations

METRIC_DOCS: dict[str, str] = {
    "ranking_accuracy": "R: fraction of pairs with log pi(chosen) >= log pi(rejected), summed log-probs "
                        "(Chen et al. 2024)",
    "unpaired/auroc": "unpaired data (completion + label): P(r_desirable > r_undesirable) + 1/2 P(tie) over every "
                      "(desirable, undesirable) pair of completions, r = beta (log pi - log pi_ref); 0.5: no "
                      "separation (preflab.eval.unpaired)",
    "ranking_accuracy_norm": "R~: the same with per-token mean log-probs (length-normalized)",
    "ranking_accuracy_with_ties": "R with alpha = 0.5 pairs counted right when |S_1 - S_2| < 0.01 (log space)",
    "reference_ranking_accuracy": "R of the reference model (where DPO starts)",
    "reference_ranking_accuracy_norm": "R~ of the reference model",
    "rewards/accuracies": "implicit-reward accuracy: fraction with beta h(chosen) > beta h(rejected) (TRL's metric)",
    "rewards/chosen": "mean implicit reward beta (log pi - log pi_ref) of the chosen responses",
    "rewards/rejected": "mean implicit reward of the rejected responses",
    "rewards/margins": "mean implicit reward margin chosen - rejected",
    "logps/chosen": "mean summed log-prob of the chosen responses under the policy",
    "logps/rejected": "mean summed log-prob of the rejected responses under the policy",
    "logits/chosen": "mean logit over the vocabulary, averaged over chosen response tokens (TRL's metric)",
    "logits/rejected": "mean logit over the vocabulary, averaged over rejected response tokens",
    "entropy": "mean policy entropy over chosen and rejected response tokens (TRL's metric)",
    "mean_token_accuracy": "fraction of chosen response tokens whose argmax prediction is the target (TRL's)",
    "idealized_ranking_accuracy": "R*: ranking accuracy of the exact DPO/RLHF optimum at this beta (Cor. 3.3)",
    "idealized_ranking_accuracy_norm": "R~*: the same on length-normalized reference log-probs",
    "idealized_ranking_accuracy/min": "min of R* over beta in {0.01, 0.1, 1, 5, 10}",
    "idealized_ranking_accuracy/median": "median of R* over those betas",
    "idealized_ranking_accuracy/max": "max of R* over those betas",
    "idealized_ranking_accuracy_norm/min": "min of R~* over those betas",
    "idealized_ranking_accuracy_norm/median": "median of R~* over those betas",
    "idealized_ranking_accuracy_norm/max": "max of R~* over those betas",
    "idealized_ranking_accuracy_with_ties": "R* with the tie rule: the optimum's alpha = 0.5 pairs count when "
                                            "|log-ratio| < 0.01 (present when the data has ties)",
    "idealized_ranking_accuracy_norm_with_ties": "R~* with the tie rule (per-token means)",
    "ranking_accuracy_norm_with_ties": "R~ with the tie rule (per-token means)",
    "alignment_gap": "R* - R: how far the policy is from what perfect optimization would reach (with alpha = 0.5 "
                     "pairs: both with the tie rule)",
    "alignment_gap_norm": "R~* - R~ (with alpha = 0.5 pairs: both with the tie rule)",
    "difficulty/ref_incorrect_fraction": "pairs the reference ranks wrongly (c > 0): DPO must flip them (Thm 4.1)",
    "difficulty/hard_fraction": "pairs with beta c > --hard-margin (1: the DPO loss must fall below 0.313 to "
                                "flip them)",
    "difficulty/median_loss_threshold": "median of l(beta c), the DPO loss a pair must reach to be ranked right",
    "difficulty/flipped_fraction": "of the pairs the reference ranks wrongly, the fraction the policy ranks right",
    "logps_drift/chosen": "mean log pi(chosen) - log pi_ref(chosen): < 0 means chosen likelihood fell (3D)",
    "logps_drift/rejected": "mean log pi(rejected) - log pi_ref(rejected) (Drastic drop, 3D)",
    "logps_drift/drop_ratio": "|mean rejected drift| / |mean chosen drift|",
    "logps_drift/suppression_rate": "fraction of pairs where both chosen and rejected likelihood fell "
                                    "(Degradation, 3D)",
    "dispersion/unseen_logps_drift": "mean log-prob change on extra responses absent from training (Dispersion)",
    "dispersion/unseen_log_mass_drift": "mean log(mass on unseen responses under pi / under pi_ref) per prompt",
    "dispersion/unseen_mass_increased_fraction": "prompts whose unseen responses gained likelihood mass",
    "dispersion/num_unseen_responses": "extra responses scored",
    "length/chosen": "mean chosen length (tokens)",
    "length/rejected": "mean rejected length (tokens)",
    "length/chosen_longer_fraction": "fraction of pairs whose chosen response is longer",
    "length/policy_generation": "mean length of the policy's generations (tokens)",
    "length/reference_generation": "mean length of the reference model's generations (tokens)",
    "clipped_ratio/policy_generation": "fraction of the policy's generations cut at max_new_tokens without EOS "
                                       "(the judge scored unfinished text)",
    "clipped_ratio/reference_generation": "fraction of the reference model's generations cut at max_new_tokens "
                                          "without EOS",
    "reward/policy_generation": "mean reward of the policy's generations",
    "reward/reference_generation": "mean reward of the reference model's generations",
    "reward_model/accuracy": "reward model: fraction of pairs scored chosen over rejected (--task reward)",
    "reward_model/mean_logit": "reward model: mean log-odds of P(chosen > rejected)",
    "reward_model/ece": "reward model: expected calibration error of P(chosen > rejected), 10 confidence bins "
                        "(eval.json reward_eval.calibration_bins)",
    "reward_model/brier": "reward model: Brier score, mean (1 - P(chosen > rejected))^2",
    "reward_model/reversal_accuracy": "reward model: accuracy on context-reversal groups",
    # the head's own metrics on the pairs (preflab.reward_models.eval; the run's final eval_* on its eval set): they
    # had no meaning in the report's table, and `margin` is a different quantity for BT and GPM
    "reward_model/loss": "reward model: the head's training loss on these pairs, with the rows' margins (the run's "
                         "eval_loss on its eval set)",
    "reward_model/margin": "reward model: mean margin; BT: r(chosen) - r(rejected); GPM: its score s(chosen, "
                           "rejected), whose log-odds is s / tau (mean_logit); not comparable between the two",
    "reward_model/prob": "GPM: mean P(chosen > rejected) = sigmoid(s / tau)",
    "reward_model/min_reward": "BT: mean over batches of each batch's lowest reward (TRL's eval_min_reward)",
    "reward_model/mean_reward": "BT: mean reward of the chosen and rejected responses",
    "reward_model/max_reward": "BT: mean over batches of each batch's highest reward (TRL's eval_max_reward)",
    "reward_model/rewards/chosen": "BT: mean reward of the chosen responses",
    "reward_model/rewards/rejected": "BT: mean reward of the rejected responses",
    "win_rate": "fraction of prompts where the policy's answer beats the reference's (ties count 1/2)",
    "win_rate/ci_low": "lower end of Wilson's confidence interval of the win rate",
    "win_rate/ci_high": "upper end of Wilson's confidence interval of the win rate",
}

# the diffusion objectives `preflab eval --task diffusion` does not score, and why (its refusal and the report's note)
DIFFUSION_NOT_EVALUATED: dict[str, str] = {
    "self_npo": "a negative model for classifier-free guidance, trained without pairs",
}
# what to use instead, for the refusal (RUN: the run's folder); the refusal said only what was not supported
DIFFUSION_INSTEAD: dict[str, str] = {
    "self_npo": "its held-out numbers are the eval_* rows of RUN/metrics.jsonl (eval_loss, eval_x0/rmse; set "
                "eval_dataset_name), drawn by `preflab report RUN`; `preflab sample RUN --prompt TEXT` draws the "
                "negative model's images, and preflab.diffusion.guidance.npo_guidance samples a positive model "
                "guided by it",
}

# `preflab eval --task diffusion` (preflab.loops.diffusion_eval): the same keys mean other things on images, where a
# "log-prob" is minus the denoising error (Diffusion-DPO's score) and the win rate compares sampled images
DIFFUSION_METRIC_DOCS: dict[str, str] = {
    "implicit_accuracy": "fraction of pairs where the policy lowers the chosen image's denoising error relative to "
                         "the rejected one's more than the reference does (ties 1/2; the diffusers script's "
                         "implicit_acc)",
    "preference_accuracy/personalized": "ppd: fraction of pairs where the model with the user branch on the pair's "
                                        "user denoises the chosen image better than the rejected one (ties 1/2)",
    "preference_accuracy/base": "ppd: the same with the user branch off (the base model, the run's reference)",
    "rewards/accuracies": "fraction of pairs with implicit reward chosen > rejected",
    "rewards/chosen": "mean implicit reward b (MSE_ref - MSE_policy) of the chosen images (b: beta in the run's "
                      "convention)",
    "rewards/rejected": "mean implicit reward of the rejected images",
    "rewards/margins": "mean implicit reward margin chosen - rejected",
    "logps/chosen": "minus the policy's mean denoising error (MSE) on the chosen images: the score in place of a "
                    "log-prob",
    "logps/rejected": "minus the policy's mean denoising error on the rejected images",
    "mse/chosen": "the policy's mean denoising error on the chosen images (fixed timestep and noise per pair)",
    "mse/rejected": "the policy's mean denoising error on the rejected images",
    "loss": "the run's objective on the held-out pairs",
    "win_rate": "fraction of prompts where --reward-fn scores the trained pipeline's sample above the base "
                "model's (same prompt and seed; ties count 1/2)",
    "reward/policy": "mean --reward-fn score of the trained pipeline's samples",
    "reward/reference": "mean --reward-fn score of the reference pipeline's samples",
}

# metrics logged under another name by an earlier preflab -> today's name: a diffusion run logged the diffusers
# script's implicit_acc (eval_implicit_acc) while `preflab eval --task diffusion` wrote implicit_accuracy (and both
# keys in eval.json); training now logs implicit_accuracy too. Runs already on disk are read through
# current_metric_names (preflab report) and metric_for_best_model's refusal names the new one.
RENAMED_METRICS: dict[str, str] = {"implicit_acc": "implicit_accuracy"}


def renamed_metric(key: str) -> str | None:
    """Today's name of `key` when an earlier preflab logged the metric as `key` (RENAMED_METRICS, with or without the
    eval_ prefix), else None."""
    prefix = "eval_" if key.startswith("eval_") else ""
    new = RENAMED_METRICS.get(key[len(prefix):])
    return None if new is None else prefix + new


def current_metric_names(metrics: dict) -> dict:
    """`metrics` (a metrics.jsonl row, summary.json's final_metrics, eval.json's metrics) with every old name
    (renamed_metric) under today's, in place of the old key; where both are present (an eval.json written before the
    rename says both, with the same value) today's key is kept and the old one dropped."""
    out = {}
    for key, value in metrics.items():
        new = renamed_metric(key) if isinstance(key, str) else None
        if new is None:
            out[key] = value
        elif new not in metrics:
            out[new] = value
    return out


# metric names with a part a row set names (prefix, suffix) -> what each means
METRIC_FAMILY_DOCS: dict[tuple[str, str], str] = {
    ("reward_model/direction/", "/accuracy"): "DPA attribute model: fraction of the pairs judged along this direction "
                                              "with v^T r(chosen) > v^T r(rejected) (Ndeg: v = (cos N, sin N); "
                                              "[w1,w2,...]: the weights in the model's attribute order)",
}


def metric_doc(key: str, docs: dict[str, str]) -> str:
    """What metric `key` means: docs[key], else its family's (METRIC_FAMILY_DOCS), else ''."""
    if key in docs:
        return docs[key]
    return next((doc for (start, end), doc in METRIC_FAMILY_DOCS.items()
                 if key.startswith(start) and key.endswith(end)), "")
