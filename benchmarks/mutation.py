"""Planted-bug (mutation) runner: does the test suite catch plausible bugs in preflab's numerical core?

    python benchmarks/mutation.py                       # every mutant, one at a time
    python benchmarks/mutation.py --only dpo step      # mutants whose name contains one of the words
    python benchmarks/mutation.py --list                # names, files and the tests each mutant runs
    python benchmarks/mutation.py --timeout 300 --json out.json

Each mutant is one textual edit (or a few edits that make one bug) of a file under src/preflab: a sign, an
off-by-one, a `>` for `>=`, a dropped normalisation. For each, a temporary copy of src/ gets the edit and the tests
that cover that file run against it (PYTHONPATH = the copy, `pytest -x`, a time limit). A mutant is *caught* when
the tests fail (or time out, reported apart) and *survives* when they pass. Before the mutants, each distinct test
selection runs once on the unmodified copy: it must pass, or the run stops (a failing baseline catches everything).
An edit whose text is not found exactly once is reported as *stale* (the source changed: update the mutant).

Run by hand (not in CI); it takes a few minutes per mutant on 2 CPU cores. docs/testing.md gives the last
kill rate. Mutants that survive are either missing tests (add one) or equivalent edits (then drop them here).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# test selections (paths relative to the repository root, plus pytest options such as -k)
LAYOUT = ["tests/scoring/test_lm.py", "tests/perf/test_prefix_layout.py"]
HEAD = ["tests/scoring/test_heads.py", "-k", "granite or gemma2 or vaultgemma or cohere or hyperclovax or refused"]
STEP = ["tests/test_step_weights_and_fp16.py", "tests/loops/test_trainer.py", "-k",
        "uneven or fp16 or row_ids or accumulation or nonfinite"]
CKPT = ["tests/test_checkpoint_safety.py::test_resume_restores_the_rng_that_dropout_draws_from",
        "tests/test_checkpoint_safety.py::test_resume_and_save_total_limit_order_checkpoints_by_step_not_name",
        "tests/test_reliability.py", "tests/loops/test_trainer.py", "-k", "checkpoint or resume or latest or sigkill"]
TOKENIZE = ["tests/data/test_data_tokenize.py", "tests/data/test_data_boundary.py",
            "tests/data/test_truncation_trl_parity.py"]
EVAL = ["tests/eval/test_ranking.py", "tests/eval/test_metrics.py", "tests/eval/test_tie_rules.py"]
TRAIN_FEW = ["tests/loops/test_train_every_objective.py", "-k", "test_train_runs_objective and (sigmoid or ipo)"]
MAXMIN = ["tests/reward_models/test_maxmin_em_step_values.py", "tests/reward_models/test_pref_maxmin.py",
          "tests/reward_models/test_maxmin_matches_lab.py"]
MAXMIN_AGG = ["tests/reward_models/test_pref_maxmin_aggregate.py"]
FSPO = ["tests/reward_models/test_pref_fewshot.py", "tests/reward_models/test_fspo_episode_plan_values.py"]
PRO = ["tests/reward_models/test_pref_orchestrator.py", "tests/reward_models/test_pro_prompt_features.py",
       "tests/online/test_pro_orchestrator_recipe.py", "-k",
       "not online_run and not resume and not preflab_train"]
DPA = ["tests/reward_models/test_dpa_head_metrics.py", "tests/reward_models/test_multi_objective.py",
       "tests/reward_models/test_attribute_rm_train.py"]
FLOW = ["tests/diffusion/test_flow_sd3.py", "tests/diffusion/test_flux.py"]
DIFFUSION_LOSS = ["tests/objectives/test_diffusion_dpo.py", "tests/diffusion/test_flow_sd3.py"]
KTO = ["tests/objectives/test_kto.py", "tests/objectives/test_trl_parity.py", "-k", "kto"]
PAIRS = ["tests/online/test_judge.py"]
GRPO_ADV = ["tests/objectives/test_grpo.py"]
WINRATE = ["tests/eval/test_winrate.py", "tests/eval/test_winrate_failed_verdicts.py"]
RANKING_TIES = ["tests/eval/test_ranking_tie_boundaries.py", *EVAL]


def objective_tests(name: str) -> list[str]:
    return [f"tests/objectives/test_{name}.py", "tests/objectives/test_contract.py", "-k", name]


# mutation-text round: selections for the text objectives, the lab and the ranking diagnostics
TRL_PARITY = "tests/objectives/test_trl_parity.py"
SPARSE = ["tests/objectives/test_sparsepo.py", "tests/objectives/test_sparsepo_mapo.py", "tests/lab/test_dpo_3d.py",
          "-k", "sparsepo"]
FDIV = ["tests/objectives/test_f_sft.py", TRL_PARITY, "-k", "f_sft or f_divergence or fsft"]
WSUM = ["tests/objectives/test_weighted_sum_metrics.py", "tests/objectives/test_objective_parts.py",
        "tests/objectives/test_dpo.py", "tests/objectives/test_f_sft.py", "tests/objectives/test_sft.py", TRL_PARITY]
WPO = ["tests/objectives/test_wpo_weighting.py"]
LAB = ["tests/lab/test_closed_forms.py", "tests/lab/test_contrasts.py", "tests/lab/test_nash_loops.py",
       "tests/lab/test_dpo_3d.py", "tests/lab/test_population.py", "tests/lab/test_games.py",
       "tests/lab/test_iterative.py"]


def text_tests(name: str, *files: str, k: str | None = None) -> list[str]:
    """An objective's own tests, the contract checks of it and `files` (TRL parity, the lab), filtered by `k`."""
    return [f"tests/objectives/test_{name}.py", "tests/objectives/test_contract.py", *files, "-k", k or name]


@dataclass
class Mutant:
    name: str
    file: str                      # under src/preflab
    edits: list[tuple[str, str]]   # (old, new), each old must occur exactly once
    tests: list[str]
    why: str = ""


MUTANTS = [
    # data: layouts, prefix sharing, tokenization
    Mutant("layout-pred-off-by-one", "data/layout.py",
           [("pred[i, :k] = offset + start - 1 + torch.arange(k)", "pred[i, :k] = offset + start + torch.arange(k)")],
           LAYOUT, "each response token predicted from its own position instead of the one before"),
    Mutant("layout-pairs-swapped", "data/layout.py",
           [("return [(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids) for p in pairs]",
             "return [(p.prompt_ids, p.rejected_ids) for p in pairs] + [(p.prompt_ids, p.chosen_ids) for p in pairs]")],
           ["tests/perf/test_prefix_layout.py", "tests/loops/test_train_every_objective.py", "-k",
            "test_layout_equals_padded or sigmoid or ipo"],
           "chosen and rejected swapped on the way to the objective"),
    Mutant("prefix-positions-not-restarted", "data/prefix.py",
           [("pos[r, col:col + k] = p + torch.arange(k)", "pos[r, col:col + k] = col + torch.arange(k)")],
           LAYOUT, "the rejected response continues the chosen one's positions"),
    Mutant("prefix-rejected-sees-chosen", "data/prefix.py",
           [("((seg_k == seg_q) | (seg_k == root.unsqueeze(2)))", "((seg_k <= seg_q) & (seg_k >= root.unsqueeze(2)))")],
           LAYOUT, "a response attends to the responses before it in its block"),
    Mutant("prefix-first-token-predictor", "data/prefix.py",
           [("pred[n, 0] = last_prompt", "pred[n, 0] = last_prompt - 1")],
           LAYOUT, "the first response token predicted from the second-to-last prompt position"),
    Mutant("tokenize-keep-end-drops-one-more", "data/tokenize.py",
           [("return prompt_ids[:1] + prompt_ids[len(prompt_ids) - (limit - 1):]",
             "return prompt_ids[:1] + prompt_ids[len(prompt_ids) - (limit - 2):]")],
           TOKENIZE, "keep_end truncation with a leading bos keeps limit - 1 tokens"),
    Mutant("tokenize-room-off-by-one", "data/tokenize.py",
           [("room = settings.max_length - len(prompt_ids)", "room = settings.max_length - len(prompt_ids) + 1")],
           TOKENIZE, "prompt + response may exceed max_length by one token"),
    Mutant("tokenize-keep-start-short", "data/tokenize.py",
           [("return prompt_ids[:limit]", "return prompt_ids[:limit - 1]")],
           TOKENIZE, "keep_start truncation keeps one token too few"),
    Mutant("tokenize-keep-end-sequence-short", "data/tokenize.py",
           [("return prompt_ids[cut:], response", "return prompt_ids[cut + 1:], response")],
           TOKENIZE, "keep_end cuts one prompt token more than TRL 1.16's sequence[-max_length:]"),
    # scoring
    Mutant("lm-no-normaliser-gradient", "scoring/lm.py",
           [("logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logz",
             "logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logz.detach()")],
           LAYOUT, "the log-partition gets no gradient (values right, gradients wrong)"),
    Mutant("lm-kl-direction", "scoring/lm.py",
           [("kl = (ref_logprobs.exp() * (ref_logprobs - (logits - logz.unsqueeze(-1)))).sum(-1)",
             "kl = ((logits - logz.unsqueeze(-1)).exp() * ((logits - logz.unsqueeze(-1)) - ref_logprobs)).sum(-1)")],
           LAYOUT, "KL(pi_theta || pi_ref) instead of KL(pi_ref || pi_theta)"),
    Mutant("head-divide-as-multiply", "scoring/head.py",
           [("return logits / value", "return logits * value")], HEAD, "Granite's logits_scaling multiplied"),
    Mutant("head-softcap-unscaled", "scoring/head.py",
           [("return value * torch.tanh(logits / value)  # softcap", "return torch.tanh(logits / value)  # softcap")],
           HEAD, "soft-cap without the outer factor"),
    # the optimizer step
    Mutant("step-mean-per-micro-batch", "step.py",
           [("            total = out.losses.sum()\n", "            total = out.losses.mean() * (float(local_count) / len(micro_batches))\n")],
           STEP, "micro-batches weighted equally instead of examples"),
    Mutant("step-metrics-unweighted", "step.py",
           [("                     differences, n, piece)", "                     differences, len(micro_batches[0].row_ids), piece)")],
           STEP, "step metrics weighted by the first micro-batch's size"),
    Mutant("step-scheduler-on-overflow", "step.py",
           [("if scheduler is not None and not overflow:", "if scheduler is not None:")],
           STEP, "the schedule advances on an fp16 overflow step"),
    Mutant("step-clip-scaled-gradients", "step.py",
           [("if scaler is not None:  # the gradients carry the loss scale", "if False:  # the gradients carry")],
           STEP, "fp16: clipping sees the loss-scaled gradients"),
    Mutant("step-no-clipping", "step.py",
           [("max_grad_norm if max_grad_norm else math.inf", "math.inf")], STEP, "max_grad_norm ignored"),
    Mutant("step-nonfinite-not-skipped", "step.py",
           [("skipped = not math.isfinite(loss_total) or (scaler is None and not math.isfinite(norm_total))",
             "skipped = False")],
           STEP, "a non-finite loss or gradient norm is not detected"),
    # checkpoints
    Mutant("checkpoint-latest-by-name", "checkpoint.py",
           [("return [p for _, p in sorted(found)]", "return [p for _, p in sorted(found, key=lambda t: t[1].name)]")],
           CKPT, "checkpoint-9 after checkpoint-10 (sorted by name, not step)"),
    Mutant("checkpoint-rng-not-restored", "checkpoint.py",
           [('torch.set_rng_state(rng["torch"])', "pass")], CKPT, "torch RNG state not restored on resume"),
    # objectives
    Mutant("dpo-sign", "objectives/dpo.py",
           [("-F.logsigmoid(self.beta * (s(h_w) - s(h_l)))", "-F.logsigmoid(self.beta * (s(h_l) - s(h_w)))")],
           objective_tests("dpo"), "DPO prefers the rejected response"),
    Mutant("dpo-no-beta", "objectives/dpo.py",
           [("-F.logsigmoid(self.beta * (s(h_w) - s(h_l)))", "-F.logsigmoid(s(h_w) - s(h_l))")],
           objective_tests("dpo"), "beta dropped"),
    Mutant("ipo-target", "objectives/ipo.py",
           [("(s_w - s_l - 1 / (2 * self.beta)) ** 2", "(s_w - s_l - 1 / self.beta) ** 2")],
           objective_tests("ipo"), "IPO's target margin 1/beta instead of 1/(2 beta)"),
    Mutant("ipo-abs", "objectives/ipo.py",
           [("(s_w - s_l - 1 / (2 * self.beta)) ** 2", "(s_w - s_l - 1 / (2 * self.beta)).abs()")],
           objective_tests("ipo"), "absolute instead of squared error"),
    Mutant("kto-z0-unclamped", "objectives/kto.py",
           [("return kl.mean().clamp(min=0)", "return kl.mean()")], objective_tests("kto"),
           "the reference point may go negative"),
    Mutant("kto-undesirable-sign", "objectives/kto.py",
           [("(1 - torch.sigmoid(self.beta * (z0 - r)))", "(1 - torch.sigmoid(self.beta * (r - z0)))")],
           objective_tests("kto"), "undesirable examples pushed up"),
    Mutant("simpo-gamma-sign", "objectives/simpo.py",
           [("self.beta * (x_w - x_l) - self.gamma", "self.beta * (x_w - x_l) + self.gamma")],
           objective_tests("simpo"), "target margin added instead of subtracted"),
    Mutant("simpo-sum-not-mean", "objectives/simpo.py",
           [("return as_loss_dtype(batch.policy_chosen.mean), as_loss_dtype(batch.policy_rejected.mean)",
             "return as_loss_dtype(batch.policy_chosen.sum), as_loss_dtype(batch.policy_rejected.sum)")],
           objective_tests("simpo"), "no length normalisation"),
    Mutant("orpo-odds-sign", "objectives/orpo.py",
           [("(a_w - a_l) - (log1mexp(", "(a_w - a_l) + (log1mexp(")], objective_tests("orpo"),
           "log odds with the wrong sign of log(1 - p)"),
    Mutant("orpo-ratio-sign", "objectives/orpo.py",
           [("losses = nll - self.beta * ratio", "losses = nll + self.beta * ratio")], objective_tests("orpo"),
           "odds-ratio term rewarded instead of penalised"),
    Mutant("cdpo-smoothing-sign", "objectives/cdpo.py",
           [("losses = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)",
             "losses = -(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)")], objective_tests("cdpo"),
           "conservative DPO with robust DPO's sign"),
    Mutant("reward-accuracy-ties", "objectives/base.py",
           [('"rewards/accuracies": (chosen > rejected)', '"rewards/accuracies": (chosen >= rejected)')],
           EVAL + ["tests/objectives/test_dpo.py"], "TRL's rewards/accuracies counting ties as correct"),
    # evaluation
    Mutant("ranking-accuracy-strict", "eval/metrics.py",
           [("return (chosen_logps >= rejected_logps).double().mean()",
             "return (chosen_logps > rejected_logps).double().mean()")], EVAL, "R counting ties as wrong"),
    Mutant("idealized-ranking-ties", "eval/ranking.py",
           [("beta, eps) > 0).double().mean())", "beta, eps) >= 0).double().mean())")], EVAL,
           "R* counting a zero optimum margin as correct"),
    Mutant("idealized-alpha-unclipped", "eval/ranking.py",
           [("a = _f64(alpha).clamp(eps, 1.0 - eps)", "a = _f64(alpha)")], EVAL, "alpha = 1 not replaced by 1 - eps"),
    Mutant("eval-batches-unweighted", "loops/offline.py",
           [("sums[key] = sums.get(key, 0.0) + float(value) * len(chunk)",
             "sums[key] = sums.get(key, 0.0) + float(value)"),
            ("                n += len(chunk)", "                n += 1")],
           ["tests/loops/test_eval_weighting.py"], "eval metrics averaged per batch, not per example"),
    Mutant("rso-acceptance-min", "loops/rso.py",
           [("(r - r.max(-1, keepdim=True).values) / beta", "(r - r.min(-1, keepdim=True).values) / beta")],
           ["tests/online/test_rso.py", "tests/lab/test_closed_forms.py"], "acceptance relative to the worst reward"),
    # MaxMin-RLHF EM mixture (E-step responsibilities and priors, M-step weights) and its max-min aggregation
    Mutant("maxmin-estep-no-prior", "reward_models/maxmin.py",
           [("joint = priors.log().unsqueeze(0) + loglik", "joint = loglik")], MAXMIN,
           "the E-step ignores the group priors log w_k"),
    Mutant("maxmin-soft-softmax-over-users", "reward_models/maxmin.py",
           [("else torch.softmax(joint, 1)", "else torch.softmax(joint, 0)")], MAXMIN,
           "soft responsibilities normalised over users instead of groups"),
    Mutant("maxmin-priors-unnormalised", "reward_models/maxmin.py",
           [("return EMStep(new, new.mean(0).clamp_min(1e-8)", "return EMStep(new, new.sum(0).clamp_min(1e-8)")],
           MAXMIN, "the priors after the E-step are group sizes, not fractions"),
    Mutant("maxmin-estep-priors-sum", "reward_models/maxmin.py",
           [("priors = resp.mean(0).clamp_min(1e-8)", "priors = resp.sum(0).clamp_min(1e-8)")], MAXMIN,
           "the M-step's priors are counts (the mixture log-likelihood is off by U log U)"),
    Mutant("maxmin-mstep-unweighted", "reward_models/maxmin.py",
           [("-(w * F.logsigmoid(pair_margins(model, c, r))).sum() / w.sum()",
             "-F.logsigmoid(pair_margins(model, c, r)).mean()")], MAXMIN,
           "the M-step ignores the responsibilities gamma_{u,k} as row weights (soft EM)"),
    Mutant("maxmin-converged-inverted", "reward_models/maxmin.py",
           [("changed = not torch.equal(new.argmax(1), resp.argmax(1)) if hard",
             "changed = torch.equal(new.argmax(1), resp.argmax(1)) if hard")], MAXMIN,
           "EM stops as soon as the hard assignment changes"),
    Mutant("maxmin-reseed-best-fitting", "reward_models/maxmin.py",
           [("worst = int(fit.argmin())", "worst = int(fit.masked_fill(fit.isinf(), -math.inf).argmax())"),
            ("from collections.abc import Callable", "import math\nfrom collections.abc import Callable")], MAXMIN,
           "an empty cluster is re-seeded with the best-fitting user"),
    Mutant("maxmin-group-rule-best-group", "reward_models/maxmin_aggregate.py",
           [("k_min = int(utilities.argmin())", "k_min = int(utilities.argmax())")], MAXMIN_AGG,
           "the group rule rewards with the best-off group's model"),
    # FSPO episodes
    Mutant("fspo-shots-may-repeat-query-prompt", "reward_models/fewshot_episodes.py",
           [("chosen = [r for r in others if prompts[r] != prompts[query]][:shots]", "chosen = list(others)[:shots]")],
           FSPO, "a shot may carry the query's own prompt (the answer leaks into the context)"),
    Mutant("fspo-one-candidate-short", "reward_models/fewshot_episodes.py",
           [("for step in range(1, len(order)))", "for step in range(1, len(order) - 1))")], FSPO,
           "the last row before the query (cyclically) is never a shot"),
    Mutant("fspo-min-shots-strict", "reward_models/fewshot_episodes.py",
           [("if len(chosen) < min_shots:", "if len(chosen) <= min_shots:")], FSPO,
           "an episode with exactly min_shots shots is dropped"),
    Mutant("fspo-truncation-drops-last-shot", "reward_models/fewshot_episodes.py",
           [("            context = context[1:]", "            context = context[:-1]")], FSPO,
           "the token budget drops shots from the back (nearest the query) instead of the front"),
    Mutant("fspo-truncation-below-floor", "reward_models/fewshot_episodes.py",
           [("and len(context) > floor:", "and len(context) >= floor:")], FSPO,
           "truncation may leave fewer than min_shots shots"),
    # PRO's orchestrator (targets, KL loss, features, the aggregator's weighted reward)
    Mutant("pro-targets-no-std", "reward_models/orchestrator.py",
           [("torch.softmax((chosen_rewards - mean) / std / temperature, -1)",
             "torch.softmax((chosen_rewards - mean) / temperature, -1)")], PRO, "targets without the z-score scale"),
    Mutant("pro-targets-temperature-multiplied", "reward_models/orchestrator.py",
           [("torch.softmax((chosen_rewards - mean) / std / temperature, -1)",
             "torch.softmax((chosen_rewards - mean) / std * temperature, -1)")], PRO,
           "T multiplies instead of divides"),
    Mutant("pro-stats-bessel", "reward_models/orchestrator.py",
           [("chosen_rewards.std(0, correction=0)", "chosen_rewards.std(0)")], PRO,
           "sample instead of population std in the z-scores"),
    Mutant("pro-kl-reverse", "reward_models/orchestrator.py",
           [("return (targets * (targets.clamp_min(1e-30).log() - log_g)).sum(-1).mean()",
             "return (log_g.exp() * (log_g - targets.clamp_min(1e-30).log())).sum(-1).mean()")], PRO,
           "KL(g || w*) instead of KL(w* || g)"),
    Mutant("pro-features-presence", "reward_models/pro_orchestrator.py",
           [("x[i, self.index[w]] += 1", "x[i, self.index[w]] = 1")], PRO,
           "prompt features are word presence, not counts"),
    # DPA multi-objective regression head
    Mutant("dpa-loss-counts-unrated", "reward_models/multi_objective.py",
           [("losses = sq.sum(-1) / observed.sum(-1).clamp_min(1)", "losses = sq.mean(-1)")], DPA,
           "unrated attributes count in the per-example mean"),
    Mutant("dpa-metric-per-attribute-batch-mean", "reward_models/multi_objective.py",
           [("(sq[:, i].detach().sum() / counts[i])", "(sq[:, i].detach().mean())")], DPA,
           "mse/<attribute> divides by the batch size, not by the rows rating it"),
    Mutant("dpa-eval-mse-mean-of-means", "reward_models/multi_objective.py",
           [('metrics = {"mse": float(total[0].sum() / total[1].sum().clamp_min(1))}',
             'metrics = {"mse": float(per_attribute.mean())}')], DPA,
           "eval mse is the mean of the per-attribute means, not the pooled mean"),
    # SD3 / Flux flow matching, Diffusion-DPO's loss and pair noising
    Mutant("flow-noise-interpolation-swapped", "diffusion/flow.py",
           [("return (1.0 - sigma) * x0 + sigma * noise", "return sigma * x0 + (1.0 - sigma) * noise")], FLOW,
           "x_t interpolates the wrong way (sigma = 1 is clean)"),
    Mutant("flow-target-sign", "diffusion/flow.py",
           [("        return noise - x0\n", "        return x0 - noise\n")], FLOW, "velocity target x_0 - eps"),
    Mutant("flow-timestep-index-off-by-one", "diffusion/flow.py",
           [("index = (u * self.num_train_timesteps).long()", "index = (u * (self.num_train_timesteps - 1)).long()")],
           FLOW, "the timestep draw never reaches the last grid point and is shifted by one"),
    Mutant("flux-dynamic-shift-applied", "diffusion/flow.py",
           [('shift = 1.0 if getattr(config, "use_dynamic_shifting", False) else float(getattr(config, "shift", 1.0))',
             'shift = float(getattr(config, "shift", 1.0))')], FLOW,
           "Flux's training grid shifted although the scheduler shifts dynamically (only at inference)"),
    Mutant("flux-timestep-not-scaled", "diffusion/flux.py",
           [("timestep=t.to(x_t.dtype) / 1000", "timestep=t.to(x_t.dtype)")], FLOW,
           "the transformer gets t = 1000 sigma instead of sigma"),
    Mutant("noising-independent-noise", "diffusion/noising.py",
           [("s.add_noise(rejected, noise, t)", "s.add_noise(rejected, torch.randn_like(noise), t)")],
           FLOW + ["tests/diffusion/test_pair_scoring.py"], "winner and loser noised with different eps"),
    Mutant("diffusion-dpo-reference-sign", "objectives/_diffusion_loss.py",
           [("((err_w - err_l) - (ref_err_w - ref_err_l))", "((err_w - err_l) + (ref_err_w - ref_err_l))")],
           DIFFUSION_LOSS, "the reference's error difference added"),
    Mutant("diffusion-mse-sum", "objectives/_diffusion_loss.py",
           [("return diff.pow(2).reshape(diff.shape[0], -1).mean(-1)",
             "return diff.pow(2).reshape(diff.shape[0], -1).sum(-1)")],
           DIFFUSION_LOSS, "per-sample error summed over C, H, W instead of averaged"),
    Mutant("diffusion-accuracy-ties-correct", "objectives/_diffusion_loss.py",
           [("return (z > 0).to(z.dtype).mean() + 0.5 * (z == 0).to(z.dtype).mean()",
             "return (z >= 0).to(z.dtype).mean()")], DIFFUSION_LOSS, "implicit accuracy counts ties as 1, not 1/2"),
    # KTO and its reference point
    Mutant("kto-kl-not-detached", "objectives/kto.py",
           [("kl = as_loss_dtype(batch.policy_kl.sum.detach())", "kl = as_loss_dtype(batch.policy_kl.sum)")], KTO,
           "the reference point z0 carries gradient"),
    Mutant("kto-kl-direction", "objectives/kto.py",
           [("kl = as_loss_dtype(batch.policy_kl.sum.detach()) - as_loss_dtype(batch.ref_kl.sum.detach())",
             "kl = as_loss_dtype(batch.ref_kl.sum.detach()) - as_loss_dtype(batch.policy_kl.sum.detach())")], KTO,
           "z0 from log pi_ref - log pi_theta"),
    Mutant("kto-weights-swapped", "objectives/kto.py",
           [("losses = torch.where(label, self.desirable_weight *",
             "losses = torch.where(label, self.undesirable_weight *"),
            ("self.undesirable_weight * (1 - torch.sigmoid(self.beta * (z0 - r)))",
             "self.desirable_weight * (1 - torch.sigmoid(self.beta * (z0 - r)))")], KTO,
           "lambda_D and lambda_U swapped"),
    Mutant("kto-metrics-sides-swapped", "objectives/kto.py",
           [('(("chosen", label), ("rejected", ~label))', '(("chosen", ~label), ("rejected", label))')], KTO,
           "rewards/chosen reports the undesirable examples"),
    # online pair selection and GRPO advantages
    Mutant("pairs-best-vs-worst-swapped", "loops/pair_builders.py",
           [("            triples.append((p, chosen, rejected))", "            triples.append((p, rejected, chosen))")],
           PAIRS, "the worst completion is chosen"),
    Mutant("pairs-best-vs-worst-keeps-ties", "loops/pair_builders.py",
           [("            if top == bottom:", "            if top < bottom:")], PAIRS,
           "a group whose scores are all equal still gives a pair"),
    Mutant("pairs-first-of-tied-best", "loops/pair_builders.py",
           [("chosen = _pick(valid[s == top], generator)", "chosen = int(valid[s == top][0])")], PAIRS,
           "a shared top score always picks the first completion"),
    Mutant("grpo-adv-no-bessel", "objectives/grpo.py",
           [("std = ((dev ** 2).sum(-1) / (n - 1).clamp_min(1)).sqrt()",
             "std = ((dev ** 2).sum(-1) / n.clamp_min(1)).sqrt()")],
           GRPO_ADV, "group std without Bessel's correction (TRL uses torch.std)"),
    Mutant("grpo-adv-mean-over-invalid", "objectives/grpo.py",
           [("dev = (scores - (scores * v).sum(-1, keepdim=True) / n.clamp_min(1).unsqueeze(-1)) * v",
             "dev = (scores - scores.mean(-1, keepdim=True)) * v")], GRPO_ADV,
           "the group mean includes invalid (unscored) completions"),
    # eval ranking accuracy (tie rules of the paper, list-wise exact order)
    Mutant("ranking-tie-tolerance-inclusive", "eval/ranking.py",
           [("margins.abs() < tie_tolerance, ordered)", "margins.abs() <= tie_tolerance, ordered)")], RANKING_TIES,
           "a tie pair whose gap equals the tolerance counts as tied"),
    Mutant("ranking-listwise-model-ties-agree", "eval/ranking.py",
           [("model_agrees = lp.unsqueeze(-1) > lp.unsqueeze(-2)",
             "model_agrees = lp.unsqueeze(-1) >= lp.unsqueeze(-2)")],
           RANKING_TIES, "list-wise accuracy counts a model tie as agreeing with a strict rater preference"),
    # eval win rate
    Mutant("winrate-judge-index-inverted", "eval/winrate.py",
           [("else 1.0 if int(i) == 0 else 0.0 for i in picks]", "else 1.0 if int(i) == 1 else 0.0 for i in picks]")],
           WINRATE, "a TRL judge's index 0 (the policy) read as a loss"),
    Mutant("winrate-inf-is-a-verdict", "eval/winrate.py",
           [("return value if math.isfinite(value) else None", "return value if not math.isnan(value) else None")],
           WINRATE, "an infinite reward (a failed evaluation) is compared instead of counted as failed"),
    # mutation-text round: the rest of the text objective family, weighted sums, the lab's closed forms and exact
    # tabular experiments, and the ranking diagnostics beyond ties (docs/testing.md, "Planted bugs")
    Mutant("text-robust-dpo-denominator", "objectives/robust_dpo.py",
           [("/ (1 - 2 * eps)", "/ (1 - eps)")], text_tests("robust_dpo", TRL_PARITY, k="robust"),
           "rDPO divided by 1 - eps instead of 1 - 2 eps (biased under flips)"),
    Mutant("text-robust-dpo-cdpo-sign", "objectives/robust_dpo.py",
           [("+ eps * F.logsigmoid(-z)) / (1 - 2 * eps)", "- eps * F.logsigmoid(-z)) / (1 - 2 * eps)")],
           text_tests("robust_dpo", TRL_PARITY, k="robust"), "rDPO's flipped-label term with cDPO's sign"),
    Mutant("text-rpo-sum-without-beta", "objectives/rpo.py",
           [('coef = self.eta * self.beta if self.nll_agg == "sum" else self.eta', "coef = self.eta")],
           text_tests("rpo"), "cumulative RPO weights the summed NLL by eta, not eta * beta"),
    Mutant("text-rpo-nll-on-rejected", "objectives/rpo.py",
           [("sft = nll(batch.policy_chosen, self.nll_agg)", "sft = nll(batch.policy_rejected, self.nll_agg)")],
           text_tests("rpo"), "the SFT term on the rejected response"),
    Mutant("text-nll-batch-token-mean-per-sequence", "objectives/_nll.py",
           [("return (-total.sum() / length.sum().clamp_min(1)).expand_as(total)",
             "return -total / length.clamp_min(1)")],
           text_tests("rpo", "tests/objectives/test_flex_dpo.py", k="rpo or flex"),
           "batch_token_mean (TRL's sft) averages per sequence instead of over the batch's tokens"),
    Mutant("text-sparse-kl-sign", "objectives/_sparse.py",
           [("U, D = (mu_m * h).sum(-1), -(md_m * kl).sum(-1)", "U, D = (mu_m * h).sum(-1), (md_m * kl).sum(-1)")],
           SPARSE, "the masked KL term enters with TDPO's opposite sign"),
    Mutant("text-sparse-l1-counts-padding", "objectives/_sparse.py",
           [("mu_m = mf if mu is None else as_loss_dtype(mu).to(h) * mf",
             "mu_m = mf if mu is None else as_loss_dtype(mu).to(h)")],
           SPARSE, "the reward mask's L1 penalty counts padded positions"),
    Mutant("text-sparsepo-l1-not-halved", "objectives/sparsepo.py",
           [("scale = 0.5 if common else 1.0", "scale = 1.0")], SPARSE,
           "a common mask keeps the full L1 weights (the official trainer halves them)"),
    Mutant("text-spo-degree-mean-over-missing-variants", "objectives/spo_degree.py",
           [("degree = (ce.reshape(B, -1) * valid).sum(-1) / valid.sum(-1).clamp_min(1)",
             "degree = ce.reshape(B, -1).mean(-1)")],
           text_tests("spo_degree"), "the degree CE averaged over all variant slots, -100 (no variant) included"),
    Mutant("text-spo-degree-weights-swapped", "objectives/spo_degree.py",
           [("losses = self.align_weight * align + self.degree_weight * degree.to(align)",
             "losses = self.degree_weight * align + self.align_weight * degree.to(align)")],
           text_tests("spo_degree"), "lambda_deg weighs the alignment term"),
    Mutant("text-asft-rejected-sign", "objectives/asft.py",
           [("F.logsigmoid(-self.beta * odds(a_l))", "F.logsigmoid(self.beta * odds(a_l))")],
           text_tests("asft"), "the rejected response's log-odds pushed up"),
    Mutant("text-asft-summed-logps", "objectives/asft.py",
           [("a_w, a_l = as_loss_dtype(batch.policy_chosen.mean), as_loss_dtype(batch.policy_rejected.mean)",
             "a_w, a_l = as_loss_dtype(batch.policy_chosen.sum), as_loss_dtype(batch.policy_rejected.sum)")],
           text_tests("asft"), "absolute likelihood of the whole sequence, not the per-token mean"),
    Mutant("text-vpo-mode-sign", "objectives/vpo.py",
           [('sign = 1.0 if self.mode == "online" else -1.0', 'sign = -1.0 if self.mode == "online" else 1.0')],
           text_tests("vpo", "tests/lab/test_contrasts.py"), "online optimism and offline pessimism swapped"),
    Mutant("text-vpo-calibration-summed", "objectives/vpo.py",
           [("cal = cal.mean(-1) if cal.dim() == 2 else cal", "cal = cal.sum(-1) if cal.dim() == 2 else cal")],
           text_tests("vpo", "tests/lab/test_contrasts.py"), "n calibration samples summed instead of averaged"),
    Mutant("text-hypo-baseline-includes-self", "objectives/hypo.py",
           [("advantage = rho - (rho.sum(-1, keepdim=True) - rho) / (k - 1)",
             "advantage = rho - rho.mean(-1, keepdim=True)")],
           text_tests("hypo", "tests/lab/test_contrasts.py"),
           "the baseline includes the sample itself (RLOO gradient scaled by (k-1)/k)"),
    Mutant("text-hypo-kl-sign", "objectives/hypo.py",
           [("losses = -F.logsigmoid(self.beta * (h_w - h_l)) + self.lam * kl",
             "losses = -F.logsigmoid(self.beta * (h_w - h_l)) - self.lam * kl")],
           text_tests("hypo", "tests/lab/test_contrasts.py"), "the online KL rewarded instead of penalised"),
    Mutant("text-sem-dpo-similarity-as-distance", "objectives/sem_dpo.py",
           [("weight = torch.exp(-self.alpha * (1.0 - sim))", "weight = torch.exp(-self.alpha * sim)")],
           text_tests("sem_dpo"), "the weight decays with the cosine similarity instead of the distance"),
    Mutant("text-rrpo-shared-tokens-counted", "objectives/rrpo.py",
           [("torch.where(m & (ids > 0), h, torch.zeros_like(h))", "torch.where(m, h, torch.zeros_like(h))")],
           text_tests("rrpo", "tests/lab/test_dpo_3d.py", k="rrpo"), "phrase id 0 (text both responses share) counted"),
    Mutant("text-rrpo-kl-over-padding", "objectives/rrpo.py",
           [("kl = torch.where(batch.policy_chosen.mask, kl, torch.zeros_like(kl)).sum(-1)", "kl = kl.sum(-1)")],
           text_tests("rrpo", "tests/lab/test_dpo_3d.py", k="rrpo"), "the token KL summed over padded positions"),
    Mutant("text-tpo-steps-unnormalised", "objectives/tpo_tree.py",
           [("s = self.beta * (w * m).sum(-1) / w.sum(-1).clamp_min(1e-12)", "s = self.beta * (w * m).sum(-1)")],
           text_tests("tpo_tree"), "R_i is the weighted sum of step means, not their weighted average"),
    Mutant("text-tpo-last-step-dropped", "objectives/tpo_tree.py",
           [("torch.arange(1, int(step.max().clamp_min(1)) + 1, device=lr.device)",
             "torch.arange(1, int(step.max().clamp_min(1)), device=lr.device)")],
           text_tests("tpo_tree"), "off by one in the tree level: the deepest step never scored"),
    Mutant("text-tpo-cosine-to-worst", "objectives/tpo_tree.py",
           [("top = torch.where(valid, v, torch.full_like(v, -torch.inf)).argmax(-1)",
             "top = torch.where(valid, v, torch.full_like(v, torch.inf)).argmin(-1)")],
           text_tests("tpo_tree"), "adaptive step weights measured against the lowest-scored response"),
    Mutant("text-tpo-rank-ascending", "objectives/tpo_tree.py",
           [("rank = sd.argsort(-1, descending=True).argsort(-1)", "rank = sd.argsort(-1).argsort(-1)")],
           text_tests("tpo_tree"), "lambda weights rank the lowest implicit reward first"),
    Mutant("text-tpo-ties-make-pairs", "objectives/tpo_tree.py",
           [("pairs = (v.unsqueeze(-1) > v.unsqueeze(-2))", "pairs = (v.unsqueeze(-1) >= v.unsqueeze(-2))")],
           text_tests("tpo_tree"), "equal scores (and each response with itself) make pairs"),
    Mutant("text-fsft-mean-by-rejected-length", "objectives/f_sft.py",
           [("h = h / batch.policy_chosen.length.to(h.dtype).clamp_min(1)",
             "h = h / batch.policy_rejected.length.to(h.dtype).clamp_min(1)")],
           text_tests("f_sft"), "token_agg=mean divides by the rejected response's length"),
    Mutant("text-fsft-no-outer-beta", "objectives/f_sft.py",
           [("losses = -score_map(self.beta * h, self.f_divergence, self.f_alpha) / self.beta",
             "losses = -score_map(self.beta * h, self.f_divergence, self.f_alpha)")],
           text_tests("f_sft"), "the 1/beta outside s_f dropped (reverse_kl is no longer SFT's gradient)"),
    Mutant("text-fdiv-js-no-log2", "objectives/_fdiv.py",
           [("return math.log(2.0) + F.logsigmoid(h)", "return F.logsigmoid(h)")], FDIV,
           "the JS score map without ln 2 (cancels in pair losses, not in f-SFT)"),
    Mutant("text-fdiv-forward-kl-exponent-sign", "objectives/_fdiv.py",
           [("return 1 - torch.exp(-h.clamp(min=-80.0))", "return 1 - torch.exp(h.clamp(max=80.0))")], FDIV,
           "forward KL's score 1 - e^{h} instead of 1 - e^{-h}"),
    Mutant("text-rdpo-length-sign", "objectives/rdpo_length.py",
           [("+ self.alpha * length_gap)", "- self.alpha * length_gap)")], text_tests("rdpo_length"),
           "the length offset rewards a longer chosen response"),
    Mutant("text-bco-pair-rejected-sign", "objectives/bco_pair.py",
           [("- F.logsigmoid(-self.beta * h_l)", "- F.logsigmoid(self.beta * h_l)")],
           text_tests("bco_pair", TRL_PARITY), "the rejected reward classified as positive"),
    Mutant("text-nca-pair-rejected-full-weight", "objectives/nca_pair.py",
           [("- 0.5 * F.logsigmoid(-r_l)", "- F.logsigmoid(-r_l)")], text_tests("nca_pair", TRL_PARITY),
           "the rejected term without its 1/2"),
    Mutant("text-apo-zero-rejected-anchor", "objectives/apo_zero.py",
           [("+ torch.sigmoid(self.beta * h_l)", "+ (1 - torch.sigmoid(self.beta * h_l))")],
           text_tests("apo_zero", TRL_PARITY), "APO-zero pushes the rejected likelihood up"),
    Mutant("text-apo-down-margin-sign", "objectives/apo_down.py",
           [("(1 - torch.sigmoid(self.beta * (h_w - h_l)))", "(1 - torch.sigmoid(self.beta * (h_l - h_w)))")],
           text_tests("apo_down", TRL_PARITY), "APO-down's margin term prefers the rejected response"),
    Mutant("text-exo-eps-swapped", "objectives/exo_pair.py",
           [("(F.logsigmoid(z) - math.log1p(-eps))", "(F.logsigmoid(z) - math.log(eps))"),
            ("(F.logsigmoid(-z) - math.log(eps)))", "(F.logsigmoid(-z) - math.log1p(-eps)))")],
           text_tests("exo_pair", TRL_PARITY), "the label distribution puts 1 - eps on the rejected response"),
    Mutant("text-discopop-no-tau", "objectives/discopop.py",
           [("m = torch.sigmoid(z / self.discopop_tau)", "m = torch.sigmoid(z)")],
           text_tests("discopop", TRL_PARITY), "the mixing weight without its temperature"),
    Mutant("text-aot-reference-unsorted", "objectives/aot.py",
           [("d = sorted_tie_averaged(u) - sorted_tie_averaged(v)", "d = sorted_tie_averaged(u) - v")],
           text_tests("aot", TRL_PARITY), "only the policy's margins are sorted"),
    Mutant("text-aot-ties-not-averaged", "objectives/aot.py",
           [("return (sums / counts)[group]", "return values")], text_tests("aot", TRL_PARITY),
           "tied margins keep torch.sort's arbitrary gradient routing (values equal, gradients not)"),
    Mutant("text-sppo-hard-rejected-target", "objectives/sppo_hard.py",
           [("(h_l + 0.5 / self.beta) ** 2", "(h_l - 0.5 / self.beta) ** 2")], text_tests("sppo_hard", TRL_PARITY),
           "the rejected log-ratio pulled to +1/(2 beta)"),
    Mutant("text-hinge-margin-unscaled", "objectives/hinge_norm.py",
           [("torch.relu(1 - self.beta * (s_w - s_l))", "torch.relu(1 / self.beta - (s_w - s_l))")],
           text_tests("hinge_norm", TRL_PARITY, k="hinge"), "SLiC's unscaled margin form (loss times 1/beta)"),
    Mutant("text-length-norm-rejected-by-chosen-length", "objectives/dpo_length_norm.py",
           [("a_l = s_l / as_loss_dtype(batch.policy_rejected.length)",
             "a_l = s_l / as_loss_dtype(batch.policy_chosen.length)")],
           text_tests("dpo_length_norm", TRL_PARITY, k="length_norm"), "both sides divided by the chosen length"),
    Mutant("text-weighted-sum-loss-unweighted", "objectives/__init__.py",
           [("loss=sum(w * o.loss for w, o in zip(self.weights, outs))", "loss=sum(o.loss for o in outs)")], WSUM,
           "the weighted sum's loss ignores loss_weights (its per-example losses do not)"),
    Mutant("text-weighted-sum-losses-unweighted", "objectives/__init__.py",
           [("losses = sum(w * o.losses for w, o in zip(self.weights, outs))", "losses = sum(o.losses for o in outs)")],
           WSUM, "the per-example losses the step reads ignore loss_weights"),
    Mutant("text-dpo-gamma-reference-sign", "objectives/dpo_gamma.py",
           [("self.gamma * (s(batch.ref_rejected) - s(batch.ref_chosen))",
             "self.gamma * (s(batch.ref_chosen) - s(batch.ref_rejected))")], text_tests("dpo_gamma"),
           "DPO^gamma adds the reference margin instead of subtracting it"),
    Mutant("text-flex-dpo-betas-swapped", "objectives/flex_dpo.py",
           [("-F.logsigmoid(self.beta * h_w - self.beta_rejected * h_l)",
             "-F.logsigmoid(self.beta_rejected * h_w - self.beta * h_l)")], text_tests("flex_dpo"),
           "Flex-DPO's rejected temperature on the chosen side"),
    Mutant("text-sppo-not-halved", "objectives/sppo.py",
           [("losses = 0.5 * ((h_w - t_w) ** 2 + (h_l - t_l) ** 2)", "losses = (h_w - t_w) ** 2 + (h_l - t_l) ** 2")],
           text_tests("sppo"), "SPPO's squared loss without the official code's 1/2"),
    Mutant("text-online-ipo-target-sign", "objectives/online_ipo.py",
           [("target = (p_y - p_yp) / self.beta", "target = (p_yp - p_y) / self.beta")], text_tests("online_ipo"),
           "online IPO's target preference gap reversed"),
    Mutant("text-rrhf-sft-on-worst", "objectives/rrhf.py",
           [("best = torch.where(valid, r, torch.full_like(r, -torch.inf)).argmax(-1, keepdim=True)",
             "best = torch.where(valid, r, torch.full_like(r, torch.inf)).argmin(-1, keepdim=True)")],
           text_tests("rrhf"), "RRHF's SFT term on the lowest-scored response"),
    Mutant("text-rrhf-no-length-penalty", "objectives/rrhf.py",
           [("p = s / batch.policy.length.to(s.dtype).clamp_min(1) ** self.length_penalty", "p = s")],
           text_tests("rrhf"), "ranking on summed log-probs whatever length_penalty says"),
    Mutant("text-rc-dpo-intra-takes-inter-weight", "objectives/rc_dpo.py",
           [("torch.full_like(weight, self.intra_weight)", "torch.full_like(weight, self.inter_weight)")],
           text_tests("rc_dpo"), "intra rows weighted by inter_weight"),
    Mutant("text-simulpl-latency-sign", "objectives/simulpl.py",
           [("- self.latency_weight * (al_w - al_l)", "+ self.latency_weight * (al_w - al_l)")],
           text_tests("simulpl"), "a slower chosen translation raises the logit"),
    Mutant("text-mapo-mask-not-min-shifted", "objectives/sparsepo_mapo.py",
           [("(a - lo) / torch.where(flat, torch.ones_like(span), span)",
             "a / torch.where(flat, torch.ones_like(span), span)")], text_tests("sparsepo_mapo"),
           "MaPO's activation mask divided by the span without subtracting the minimum"),
    Mutant("text-cpo-nll-sign", "objectives/cpo.py",
           [("+ self.cpo_alpha * nll", "- self.cpo_alpha * nll")], text_tests("cpo", TRL_PARITY),
           "CPO's behaviour-cloning term rewarded"),
    Mutant("text-wpo-weight-unclamped", "objectives/_wpo.py",
           [(", max=1).detach()", ", max=float('inf')).detach()")], WPO, "WPO's weight may exceed 1"),
    Mutant("text-wpo-weight-not-detached", "objectives/_wpo.py",
           [(", max=1).detach()", ", max=1)")], WPO,
           "WPO's weight carries gradient (values equal, gradients not)"),
    # the lab: closed forms, the simplex numerics, the exact tabular experiments
    Mutant("text-lab-kl-optimum-beta-multiplies", "lab/closed_forms.py",
           [("return softmax(safe_log(ref) + np.asarray(reward, dtype=np.float64) / beta)",
             "return softmax(safe_log(ref) + np.asarray(reward, dtype=np.float64) * beta)")], LAB,
           "pi* = pi_ref exp(beta r) / Z"),
    Mutant("text-lab-best-of-n-ties-uniform", "lab/closed_forms.py",
           [("out[group] = p_best_in_group * pi[group] / mass", "out[group] = p_best_in_group / group.sum()")], LAB,
           "a tie group's best-of-n mass split evenly instead of in proportion to pi"),
    Mutant("text-lab-apo-extrapolates-from-extrapolated", "lab/closed_forms.py",
           [("c = (1.0 + alpha) * c_hat - alpha * c_hat_prev", "c = (1.0 + alpha) * c_hat - alpha * c")], LAB,
           "APO's momentum from the previous extrapolated iterate, not the unextrapolated one"),
    Mutant("text-lab-entropy-bits", "lab/closed_forms.py",
           [("return -np.where(p > 0, p * safe_log(p), 0.0).sum(axis)",
             "return -np.where(p > 0, p * safe_log(p) / np.log(2.0), 0.0).sum(axis)")], LAB,
           "entropy (and BALD) in bits instead of nats"),
    Mutant("text-lab-kl-reversed", "lab/simplex.py",
           [("terms = np.where(p > 0, p * (safe_log(p) - safe_log(q)), 0.0)",
             "terms = np.where(q > 0, q * (safe_log(q) - safe_log(p)), 0.0)")], LAB, "KL(q || p) for KL(p || q)"),
    Mutant("text-lab-geometric-mixture-swapped", "lab/simplex.py",
           [("softmax((1.0 - weight_q) * safe_log(p) + weight_q * safe_log(q))",
             "softmax(weight_q * safe_log(p) + (1.0 - weight_q) * safe_log(q))")], LAB,
           "Nash-MD's geometric mixture weighs the wrong end"),
    Mutant("text-lab-pairs-normalised-over-ordered", "lab/bandit.py",
           [("total = torch.triu(mu, diagonal=1).sum((-1, -2), keepdim=True)",
             "total = mu.sum((-1, -2), keepdim=True)")], LAB,
           "pair coverage normalised over ordered pairs (weights sum to 1/2)"),
    Mutant("text-lab-robust-loss-sign", "lab/lab_objectives.py",
           [("losses = ((1 - eps) * -F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)",
             "losses = ((1 - eps) * -F.logsigmoid(z) - eps * F.logsigmoid(-z)) / (1 - 2 * eps)")], LAB,
           "the lab's rDPO loss with cDPO's sign"),
    Mutant("text-lab-inpo-anchors-swapped", "lab/lab_objectives.py",
           [("h = policy - w * ref - (1 - w) * prev.to(policy)", "h = policy - (1 - w) * ref - w * prev.to(policy)")],
           LAB, "INPO's reference and previous-iterate weights swapped"),
    Mutant("text-lab-3d-sft-on-rejected", "lab/dpo_3d.py",
           [("chosen = torch.tensor([i for i, _ in pairs])\n    return lambda",
             "chosen = torch.tensor([j for _, j in pairs])\n    return lambda")], LAB,
           "the 3D remedy's SFT term on the rejected responses"),
    # eval: idealized ranking accuracy, Thm 4.1 difficulty, the ranking report
    Mutant("text-eval-proportion-logit-sign", "eval/ranking.py",
           [("return torch.log(a) - torch.log1p(-a)", "return torch.log1p(-a) - torch.log(a)")], RANKING_TIES,
           "the optimum's shift logit(1 - alpha)"),
    Mutant("text-eval-idealized-beta-multiplies", "eval/ranking.py",
           [("return (rc - rr) + proportion_logit(alpha, eps).expand_as(rc) / beta",
             "return (rc - rr) + proportion_logit(alpha, eps).expand_as(rc) * beta")], RANKING_TIES,
           "the optimum's shift beta logit(alpha)"),
    Mutant("text-eval-threshold-sign", "eval/ranking.py",
           [("return F.softplus(-beta * c)", "return F.softplus(beta * c)")], RANKING_TIES,
           "Thm 4.1's threshold l(-beta c)"),
    Mutant("text-eval-hard-margin-inclusive", "eval/ranking.py",
           [('"difficulty/hard_fraction": float((beta * c > hard_margin)',
             '"difficulty/hard_fraction": float((beta * c >= hard_margin)')], RANKING_TIES,
           "a pair exactly at the hard margin counted as hard"),
    Mutant("text-eval-flipped-over-all-pairs", "eval/ranking.py",
           [("float((right_now & wrong).double().sum() / wrong.double().sum())",
             "float((right_now & wrong).double().mean())")], RANKING_TIES,
           "flipped fraction over all pairs, not over the pairs the reference ranks wrongly"),
    Mutant("text-eval-lengths-swapped", "eval/ranking.py",
           [("lw, ll = _f64(chosen_length).clamp_min(1), _f64(rejected_length).clamp_min(1)",
             "lw, ll = _f64(rejected_length).clamp_min(1), _f64(chosen_length).clamp_min(1)")], RANKING_TIES,
           "R~* and R~ divide each side by the other side's length"),
    Mutant("text-eval-gap-norm-unnormalised-policy", "eval/ranking.py",
           [("float((pc / lw >= pr / ll)", "float((pc >= pr)")], RANKING_TIES,
           "the length-normalised gap compares R~* with the policy's unnormalised R"),
    Mutant("text-eval-listwise-padding-counts", "eval/ranking.py",
           [("rater_prefers = (sc.unsqueeze(-1) > sc.unsqueeze(-2)) & both",
             "rater_prefers = sc.unsqueeze(-1) > sc.unsqueeze(-2)")], RANKING_TIES,
           "padded (invalid) responses take part in the exact-order check"),
]

# mutation-loops round: the preference game's trainers (EGPO, INPO, APO, Nash-MD, SPPO, SPO), their objectives,
# iterative DPO's reference refresh, RSO's sampler and pairing, HyPO's online KL, UPO's uncertainty, GPM, the
# context-aware RM, Themis, OTC, DSTC, MCTS-DPO, GRPO's loss types, Vision-R1's rewards and the diffusion objectives
# beyond Diffusion-DPO (Self-NPO, SmPO, InPO, DCPO, PPD)


def game_tests(trainer: str, round_key: str) -> list[str]:
    """The end-to-end game test of one trainer on G3 (1200 steps: ~1-2 min on a loaded 2-core machine) and its
    one-round value test (tests/online/test_game_round_values.py, selected by round_key)."""
    return ["tests/online/test_game.py", "tests/online/test_game_round_values.py", "-k",
            f"(nash_trainers and g3 and {trainer}) or (round_values and {round_key})"]


GAME_SPPO = ["tests/online/test_game.py", "tests/online/test_game_round_values.py", "-k",
             "average_iterate or (round_values and sppo)"]
GAME_SPO = ["tests/online/test_game.py", "tests/online/test_game_round_values.py", "-k",
            "(spo and not two_processes and not round_values) or (round_values and spo_rewards)"]
NASH_OBJ = ["tests/objectives/test_inpo.py", "tests/objectives/test_sppo.py", "tests/objectives/test_online_ipo.py",
            "tests/objectives/test_gpo.py", "tests/lab/test_nash_loops.py", "tests/objectives/test_contract.py", "-k",
            "inpo or sppo or online_ipo or gpo or egpo"]
ITER_DPO = ["tests/online/test_online_dpo.py", "tests/online/test_online_trial2.py", "-k",
            "iterative_dpo_reference or refresh_reference_every_two or stateful"]
RSO = ["tests/online/test_rso.py", "tests/lab/test_iterative.py"]
HYPO = objective_tests("hypo")
UPO = ["tests/objectives/test_upo.py", "tests/reward_models/test_pref_uncertainty.py", "-k",
       "not tiny_transformer and not planted_label_noise"]
GPM = ["tests/reward_models/test_gpm.py", "-k", "not cyclic_triple"]
CONTEXT = ["tests/reward_models/test_context.py", "-k", "render or rpr or marginal"]
THEMIS = ["tests/reward_models/test_themis.py", "-k", "not tool_loop"]
OTC = ["tests/verifiers/test_otc_reward.py"]
DSTC = ["tests/verifiers/test_dstc_builder.py", "-k", "not sandboxed"]
MCTS = objective_tests("mcts_step_dpo")
GRPO_LOSS = ["tests/objectives/test_trl_parity.py", "tests/objectives/test_grpo.py", "-k", "grpo"]
VISION_R1 = ["tests/verifiers/test_vision_r1_rewards.py"]
SELF_NPO = ["tests/objectives/test_self_npo.py", "tests/diffusion/test_self_npo_and_guidance.py"]
SMPO = ["tests/objectives/test_smpo_diffusion.py", "tests/diffusion/test_pair_scoring.py", "-k", "smpo or smooth"]
INVERSION = ["tests/diffusion/test_inversion.py", "tests/objectives/test_diffusion_inpo.py"]
PPD = ["tests/diffusion/test_user_branch.py", "tests/objectives/test_ppd.py"]
DCPO = ["tests/objectives/test_dcpo.py", "tests/diffusion/test_image_data.py", "-k", "dcpo or caption"]

MUTANTS += [
    # the preference game's rounds (online/game.py)
    Mutant("game-inpo-weight-transposed", "online/game.py",
           [("weight=float(pi_t[i] * pi_t[j] * P[i, j])))", "weight=float(pi_t[i] * pi_t[j] * P[j, i])))")],
           game_tests("inpo", "inpo"),
           "INPO's ordered pair (i chosen over j) weighted by P(j > i)"),
    Mutant("game-ipo-win-transposed", "online/game.py",
           [("    win = run.task.P @ opponent\n", "    win = run.task.P.T @ opponent\n")],
           game_tests("egpo", "online_ipo"),
           "online IPO / EGPO / Nash-MD targets from the opponent's win rates against y"),
    Mutant("game-nash-md-mixture-eta", "online/game.py",
           [("mix = geometric_mixture(pi_t, ref, eta * cfg.beta)", "mix = geometric_mixture(pi_t, ref, cfg.beta)")],
           game_tests("nash_md", "nash_md"), "Nash-MD's mixture weight beta instead of eta * beta"),
    Mutant("game-nash-md-anchor-ref", "online/game.py",
           [("examples = _ipo_examples(run, mix, mix)", "examples = _ipo_examples(run, mix, ref)")],
           game_tests("nash_md", "nash_md"),
           "Nash-MD anchored at pi_ref instead of the mixture"),
    Mutant("game-egpo-opponent-pi-t", "online/game.py",
           [('opponent = _policy_step_copy(run, pi_t) if name == "egpo" else pi_t',
             'opponent = pi_t if _policy_step_copy(run, pi_t) is not None else pi_t')], game_tests("egpo", "egpo"),
           "EGPO takes its half step but plays against pi_t (plain online IPO)"),
    Mutant("game-apo-interpolates", "online/game.py",
           [("z = (1 + a) * log_pi - a * np.log(np.maximum(prev_pi, 1e-300))",
             "z = (1 - a) * log_pi + a * np.log(np.maximum(prev_pi, 1e-300))")], game_tests("apo", "apo"),
           "APO's Nesterov extrapolation pi_t^(1+a)/pi_{t-1}^a replaced by an interpolation"),
    Mutant("game-apo-previous-is-current", "online/game.py",
           [('prev_pi = np.array([run.pending.metrics[f"policy/p{i}"] for i in range(K)]) if run.pending else pi_t',
             "prev_pi = pi_t")], game_tests("apo", "apo"), "APO's previous iterate is never read (APO = INPO)"),
    Mutant("game-sppo-reference-pi-ref", "online/game.py",
           [("ref=[[float(log_pi[i])], [float(log_pi[j])]]) for i, j in _pairs(K)]",
             "ref=[[float(np.log(ref[i]))], [float(np.log(ref[j]))]]) for i, j in _pairs(K)]")], GAME_SPPO,
           "SPPO anchored at pi_0 instead of the round-start policy pi_t"),
    Mutant("game-sppo-scores-transposed", "online/game.py",
           [("        win = P @ pi_t\n", "        win = P.T @ pi_t\n")], GAME_SPPO,
           "SPPO's scores P(pi_t > y) instead of P(y > pi_t)"),
    Mutant("game-spo-win-proportion-transposed", "online/game.py",
           [("rewards = [sum(P[a, b] for n, b", "rewards = [sum(P[b, a] for n, b")], GAME_SPO,
           "SPO's reward is the other answers' win proportion against y"),
    # the game objectives (INPO, SPPO, online IPO)
    Mutant("inpo-anchor-weights-swapped", "objectives/inpo.py",
           [("h_t = w * (h_w - h_l) + (1 - w) * ((s_w - t_w) - (s_l - t_l))",
             "h_t = (1 - w) * (h_w - h_l) + w * ((s_w - t_w) - (s_l - t_l))")], NASH_OBJ,
           "pi_ref weighted 1 - eta*tau and pi_t weighted eta*tau"),
    Mutant("inpo-target-eta", "objectives/inpo.py",
           [("losses = (h_t - self.eta / 2) ** 2", "losses = (h_t - self.eta) ** 2")], NASH_OBJ,
           "INPO's target eta instead of eta/2"),
    Mutant("sppo-rejected-target-sign", "objectives/sppo.py",
           [("losses = 0.5 * ((h_w - t_w) ** 2 + (h_l - t_l) ** 2)",
             "losses = 0.5 * ((h_w - t_w) ** 2 + (h_l + t_l) ** 2)")],
           NASH_OBJ, "the rejected response regressed onto minus its centred win rate"),
    Mutant("online-ipo-target-no-beta", "objectives/online_ipo.py",
           [("target = (p_y - p_yp) / self.beta", "target = (p_y - p_yp)")], NASH_OBJ,
           "online IPO's targets without 1/beta"),
    # iterative DPO's reference refresh, RSO's sampler and pairing
    Mutant("iterative-dpo-refresh-off-by-one", "online/run.py",
           [("n_ref > 1 and r > 0 and r % n_ref == 0:", "n_ref > 1 and r > 0 and (r + 1) % n_ref == 0:")], ITER_DPO,
           "refresh_reference_every = n refreshes one round early"),
    Mutant("rso-accepted-stay-candidates", "loops/rso.py",
           [("        remaining = remaining[~torch.isin(remaining, hits)]\n", "")], RSO,
           "an accepted candidate may be accepted again (sampling with replacement)"),
    Mutant("rso-scan-not-stopped", "loops/rso.py",
           [("hits = remaining[u < probs][: num_samples - len(accepted)]", "hits = remaining[u < probs]")], RSO,
           "a round may accept more than the samples still wanted"),
    Mutant("rso-consecutive-skips-last-pair", "loops/rso.py",
           [("candidates = [(indices[i], indices[i + 1]) for i in range(0, len(indices) - 1, 2)]",
             "candidates = [(indices[i], indices[i + 1]) for i in range(0, len(indices) - 2, 2)]")], RSO,
           "consecutive pairing drops the last pair of an even sample"),
    # HyPO's online KL, UPO and its uncertainty estimates
    Mutant("hypo-kl-no-gradient", "objectives/hypo.py",
           [("kl = rho.mean(-1) + surrogate - surrogate.detach()", "kl = rho.mean(-1)")], HYPO,
           "the online KL term's value is right but it carries no gradient"),
    Mutant("hypo-baseline-includes-self", "objectives/hypo.py",
           [("advantage = rho - (rho.sum(-1, keepdim=True) - rho) / (k - 1)",
             "advantage = rho - rho.mean(-1, keepdim=True)")], HYPO,
           "the REINFORCE baseline includes the sample itself (gradient scaled by (k-1)/k)"),
    Mutant("upo-alpha-sides-swapped", "objectives/upo.py",
           [("losses = (1 - alpha) * -F.logsigmoid(z) + alpha * -F.logsigmoid(-z)",
             "losses = alpha * -F.logsigmoid(z) + (1 - alpha) * -F.logsigmoid(-z)")], UPO,
           "the smoothing alpha weights the preferred direction"),
    Mutant("upo-alpha-not-normalised", "objectives/upo.py",
           [("return alpha_max * torch.as_tensor(bald).clamp(0, math.log(2)) / math.log(2)",
             "return alpha_max * torch.as_tensor(bald).clamp(0, math.log(2))")], UPO,
           "alpha = alpha_max * B instead of alpha_max * B / ln 2"),
    Mutant("upo-reliable-weights-favour-uncertain", "reward_models/uncertainty.py",
           [("w = (1 - bald_scores).clamp_min(0) ** mu", "w = bald_scores.clamp_min(0) ** mu")], UPO,
           "reliable-pair sampling favours the most uncertain pairs"),
    Mutant("upo-vote-ties-go-to-first", "reward_models/uncertainty.py",
           [("return torch.where(tied, torch.full_like(top.indices, -1), top.indices)",
             "return torch.where(tied & False, torch.full_like(top.indices, -1), top.indices)")], UPO,
           "a tied MC-dropout vote counts as a vote for class 0"),
    # GPM, the context-aware RM, Themis
    Mutant("gpm-no-temperature", "reward_models/gpm.py",
           [("losses = -F.logsigmoid((s - (margin.to(s.dtype) if margin is not None else 0.0)) / self.tau)",
             "losses = -F.logsigmoid(s - (margin.to(s.dtype) if margin is not None else 0.0))")], GPM,
           "the GPM loss ignores tau"),
    Mutant("gpm-margin-added", "reward_models/gpm.py",
           [("losses = -F.logsigmoid((s - (margin.to(s.dtype) if margin is not None else 0.0)) / self.tau)",
             "losses = -F.logsigmoid((s + (margin.to(s.dtype) if margin is not None else 0.0)) / self.tau)")], GPM,
           "the pair's margin added to s instead of subtracted"),
    Mutant("gpm-skew-pairs-misaligned", "reward_models/gpm.py",
           [("terms = a0 * b1 - a1 * b0  # [..., k]", "terms = a0 * b0 - a1 * b1  # [..., k]")], GPM,
           "the 2x2 skew blocks written as a symmetric form"),
    Mutant("context-marginal-mean", "reward_models/context.py",
           [("return (p_context * p_given_context).sum(-1)", "return (p_context * p_given_context).mean(-1)")],
           CONTEXT, "the marginal preference averages instead of summing over contexts"),
    Mutant("context-rpr-second-row-unswapped", "reward_models/context.py",
           [('"context": row["criteria_y"], "chosen": row["response_b"], "rejected": row["response_a"]}',
             '"context": row["criteria_y"], "chosen": row["response_a"], "rejected": row["response_b"]}')],
           CONTEXT, "RPR's second criterion keeps the first one's winner"),
    Mutant("themis-lm-mean-of-means", "reward_models/themis.py",
           [("lm = (token_nll.sum(-1)[:n] + token_nll.sum(-1)[n:]) / (counts[:n] + counts[n:]).clamp(min=1)",
             "lm = token_nll.sum(-1)[:n] / counts[:n].clamp(min=1) + token_nll.sum(-1)[n:] / counts[n:].clamp(min=1)")],
           THEMIS, "CE_LM summed per side instead of one token mean over the pair"),
    Mutant("themis-bt-sign", "reward_models/themis.py",
           [("bt = F.softplus(-(rewards[:n] - rewards[n:]))", "bt = F.softplus(rewards[:n] - rewards[n:])")], THEMIS,
           "the BT term pushes the negative answer up"),
    Mutant("themis-reward-at-first-token", "reward_models/themis.py",
           [("return (attention_mask.long() * (positions + 1)).argmax(-1)",
             "return attention_mask.long().argmax(-1)")], THEMIS,
           "the reward is read at the first real token instead of the last"),
    # OTC, DSTC, MCTS-DPO
    Mutant("otc-optimum-running-max", "verifiers/otc.py",
           [("self.best[key] = min(self.best.get(key, m), m)", "self.best[key] = max(self.best.get(key, m), m)")],
           OTC, "the optimal tool-call count tracks the most calls of a correct rollout"),
    Mutant("otc-ppo-denominator", "verifiers/otc.py",
           [("return math.cos(m * math.pi / (2 * m + c))", "return math.cos(m * math.pi / (m + c))")], OTC,
           "OTC-PPO's cos(m pi / (m + c))"),
    Mutant("otc-correct-threshold-strict", "verifiers/otc.py",
           [("self.tracker.observe(key, m, r >= self.correct_threshold)",
             "self.tracker.observe(key, m, r > self.correct_threshold)")], OTC,
           "an exactly correct rollout (r = 1) never updates the optimum"),
    Mutant("dstc-chosen-test-easiest", "verifiers/dstc.py",
           [("chosen_test = int(passed[np.argmin(cols[passed])])",
             "chosen_test = int(passed[np.argmax(cols[passed])])")],
           DSTC, "the chosen test is the most-passed one"),
    Mutant("dstc-rejected-test-hardest", "verifiers/dstc.py",
           [("rejected_test = int(failed[np.argmax(cols[failed])])",
             "rejected_test = int(failed[np.argmin(cols[failed])])")], DSTC,
           "the rejected test is the least-passed one"),
    Mutant("mcts-visits-swapped", "objectives/mcts_step_dpo.py",
           [("eps = visit_smoothing(n_w, n_l) if self.use_visits",
             "eps = visit_smoothing(n_l, n_w) if self.use_visits")],
           MCTS, "label smoothing from the rejected step's visit share"),
    Mutant("mcts-suffix-skips-divergence-token", "objectives/mcts_step_dpo.py",
           [("(torch.arange(seq.mask.shape[-1], device=d.device) >= d.unsqueeze(-1))",
             "(torch.arange(seq.mask.shape[-1], device=d.device) > d.unsqueeze(-1))")], MCTS,
           "the first token after the shared prefix is left out of the step log-ratio"),
    # GRPO's loss types, KL estimator and clipping
    Mutant("grpo-k3-direction", "objectives/grpo.py",
           [("d = torch.where(mask, as_loss_dtype(batch.ref.masked()), 0.0) - lp",
             "d = lp - torch.where(mask, as_loss_dtype(batch.ref.masked()), 0.0)")], GRPO_LOSS,
           "k3 of KL(pi_ref || pi_theta) instead of KL(pi_theta || pi_ref)"),
    Mutant("grpo-epsilon-high-ignored", "objectives/grpo.py",
           [("high = self.epsilon if self.epsilon_high is None else self.epsilon_high", "high = self.epsilon")],
           GRPO_LOSS, "DAPO's clip-higher bound ignored"),
    Mutant("grpo-gspo-ratio-summed", "objectives/grpo.py",
           [("log_ratio = ((log_ratio * mf).sum(-1) / mf.sum(-1).clamp_min(1)).unsqueeze(-1).expand_as(lp)",
             "log_ratio = (log_ratio * mf).sum(-1).unsqueeze(-1).expand_as(lp)")], GRPO_LOSS,
           "GSPO's sequence ratio from the summed, not mean, token log-ratio"),
    Mutant("grpo-cispo-cap-relative", "objectives/_grpo_losses.py",
           [("return -ratio.clamp(max=epsilon_high).detach() * adv * lp",
             "return -ratio.clamp(max=1 + epsilon_high).detach() * adv * lp")], GRPO_LOSS,
           "CISPO's absolute cap read as 1 + epsilon_high"),
    Mutant("grpo-sapo-temperatures-swapped", "objectives/_grpo_losses.py",
           [("tau = torch.where(adv > 0, tau_pos, tau_neg)", "tau = torch.where(adv > 0, tau_neg, tau_pos)")],
           GRPO_LOSS, "SAPO's positive-advantage temperature used for negative advantages"),
    Mutant("grpo-vespo-no-normaliser", "objectives/_grpo_losses.py",
           [("torch.exp(lam + k * log_w - lam * torch.exp(log_w))", "torch.exp(k * log_w - lam * torch.exp(log_w))")],
           GRPO_LOSS, "VESPO's phi without e^lambda (phi(1) != 1)"),
    Mutant("grpo-dr-grpo-ignores-max-length", "objectives/grpo.py",
           [("per_prompt = completions / B * (self.max_completion_length or lp.shape[-1])",
             "per_prompt = completions / B * lp.shape[-1]")], GRPO_LOSS,
           "Dr. GRPO normalises by the padded width, not max_completion_length"),
    # Vision-R1 rule rewards and box matching
    Mutant("vision-r1-threshold-drops-boundary", "verifiers/vision_r1.py",
           [("return np.where(u < lo, 0.0, np.where(u > hi, 1.0, u))",
             "return np.where(u <= lo, 0.0, np.where(u > hi, 1.0, u))")], VISION_R1,
           "a value exactly at the lower threshold is zeroed"),
    Mutant("vision-r1-switch-late", "verifiers/vision_r1.py",
           [("late = step >= SWITCH_STEP", "late = step > SWITCH_STEP")], VISION_R1,
           "the adaptive thresholds switch one step late"),
    Mutant("vision-r1-giou-hull-term", "verifiers/boxes.py",
           [("return iou, iou - (hull - union) / hull", "return iou, iou - (hull - inter) / hull")], VISION_R1,
           "GIoU's enclosing-box penalty from the intersection instead of the union"),
    Mutant("vision-r1-precision-per-prediction", "verifiers/vision_r1.py",
           [("out.append(float(scores.sum() / (len(preds) if penalize_extra else len(u))))",
             "out.append(float(scores.sum() / len(preds)))")], VISION_R1,
           "extra boxes always penalised in the precision reward"),
    # diffusion objectives beyond Diffusion-DPO
    Mutant("self-npo-grid-off-by-one", "diffusion/self_npo.py",
           [("return torch.arange(1, num_ddim_steps + 1, dtype=torch.long) * gap - 1",
             "return torch.arange(1, num_ddim_steps + 1, dtype=torch.long) * gap")], SELF_NPO,
           "Self-NPO's DDIM grid (T/K)(i+1) instead of (T/K)(i+1) - 1"),
    Mutant("self-npo-renoise-from-x-not-x0", "diffusion/self_npo.py",
           [("return alpha_s * (x_e / alpha_e + extra * noise)", "return alpha_s * (x_e + extra * noise)")],
           SELF_NPO, "re-noising scales x_e by alpha_s without dividing by alpha_{t_e}"),
    Mutant("self-npo-renoise-may-stay", "diffusion/self_npo.py",
           [("s = (tgt.end + 1 + (u * (T - 1 - tgt.end).double()).floor().long()).clamp(max=T - 1)",
             "s = (tgt.end + (u * (T - 1 - tgt.end).double()).floor().long()).clamp(max=T - 1)")], SELF_NPO,
           "the re-noising step s may equal t_e (no re-noising)"),
    Mutant("self-npo-ema-weights-swapped", "diffusion/self_npo.py",
           [("t_param.mul_(decay).add_(s_param.detach().to(t_param.dtype), alpha=1 - decay)",
             "t_param.mul_(1 - decay).add_(s_param.detach().to(t_param.dtype), alpha=decay)")], SELF_NPO,
           "the EMA teacher follows the student at rate decay"),
    Mutant("smpo-kappa-half", "objectives/smpo_diffusion.py",
           [("kappa = self.kappa_scale * (2 * p - 1)", "kappa = self.kappa_scale * (p - 0.5)")], SMPO,
           "SmPO's kappa(p) = s (p - 1/2) instead of s (2p - 1)"),
    Mutant("smpo-scores-not-normalised", "diffusion/smoothing.py",
           [("return torch.sigmoid(norm(score_chosen) - norm(score_rejected))",
             "return torch.sigmoid(torch.as_tensor(score_chosen, dtype=torch.float64) - "
             "torch.as_tensor(score_rejected, dtype=torch.float64))")], SMPO,
           "p from raw PickScores without the min-max normalisation"),
    Mutant("inpo-ddim-variance-reversed", "diffusion/inversion.py",
           [("return (1 - b) / (1 - a) * (1 - a / b)", "return (1 - a) / (1 - b) * (1 - b / a)")], INVERSION,
           "DDIM-InPO's inversion noise variance with the timesteps swapped"),
    Mutant("inpo-inverse-grid-no-offset", "diffusion/inversion.py",
           [("return torch.arange(num_steps, dtype=torch.long) * (num_train_timesteps // num_steps) + steps_offset",
             "return torch.arange(num_steps, dtype=torch.long) * (num_train_timesteps // num_steps)")], INVERSION,
           "the inverse DDIM grid ignores steps_offset"),
    Mutant("ppd-user-branch-unscaled", "diffusion/user_branch.py",
           [("return out + self.scale * user / attn.rescale_output_factor",
             "return out + user / attn.rescale_output_factor")],
           PPD, "PPD's decoupled user attention ignores its scale"),
    Mutant("ppd-interpolation-reversed", "diffusion/user_branch.py",
           [("return (1 - gamma) * e_a + gamma * e_b", "return gamma * e_a + (1 - gamma) * e_b")], PPD,
           "user interpolation runs from e_b to e_a"),
    Mutant("dcpo-caption-perturbs-one-fewer", "diffusion/captions.py",
           [("k = min(len(words), max(1, round(STRENGTHS[strength] * len(words))))",
             "k = min(len(words), max(1, round(STRENGTHS[strength] * len(words)) - 1))")], DCPO,
           "DCPO's perturbed caption replaces one word fewer than the strength says"),
]


# mutation-core round: data loading, validation and truncation counts, config refusals, checkpoints and resume (RNG,
# optimizer, scheduler, callbacks, batch order), the step's accumulation and metric reduction, LR schedules, the
# best model, report numbers and eval metrics
CORE_OPTIM = ["tests/loops/test_lr_schedule_values.py", "tests/test_user_trial.py", "tests/test_checkpoint_safety.py",
              "tests/loops/test_trainer.py", "-k", "warmup_ratio_rounds_up or scheduler_does_not_advance "
              "or restores_the_rng_that_dropout or accumulation_equals or schedule or make_optimizer"]
CORE_BEST = ["tests/loops/test_best_model.py", "tests/loops/test_callbacks.py", "-k",
             "not two_processes and not every_offline and not online_run"]
CORE_RESUME = ["tests/test_checkpoint_safety.py", "tests/loops/test_trl_run_options.py", "tests/test_reliability.py",
               "tests/test_production_runs.py::"
               "test_a_finished_runs_folder_is_noted_not_refused_and_its_last_checkpoint_resumes",
               "-k", "resume or rng or rollback or latest or save_total_limit or half_written or data_seed"]
CORE_BATCHES = ["tests/loops/test_batch_plan.py", "tests/loops/test_unused_rows_note.py",
                "tests/loops/test_trl_run_options.py",
                "tests/perf/test_perf_options.py", "tests/data/test_truncation_trl_parity.py",
                "tests/loops/test_trainer.py",
                "-k", "not two_processes and not sigkill"]
CORE_STEP = ["tests/test_step_weights_and_fp16.py", "tests/test_step_metrics.py", "tests/loops/test_trainer.py", "-k",
             "not two_processes and not sigkill"]
CORE_REPORT = ["tests/report/test_report_headline.py", "tests/report/test_report.py"]
CORE_EVAL = ["tests/eval/test_metrics.py", "tests/eval/test_tie_rules.py", "tests/eval/test_winrate.py",
             "tests/eval/test_winrate_failed_verdicts.py"]
CORE_DATA = ["tests/data/test_data_tokenize.py", "tests/data/test_data_rows.py",
             "tests/data/test_truncation_trl_parity.py",
             "tests/data/test_data_sources.py", "tests/data/test_holdout_parent_groups.py",
             "tests/test_config_trl.py::test_dataset_num_proc_tokenizes_in_processes_with_the_same_result"]
CORE_CONFIG = ["tests/test_config_validation.py", "tests/test_options_read_or_refused.py",
               "tests/test_written_options.py"]

MUTANTS += [
    # LR schedules and the optimizer (loops/optimizer.py)
    Mutant("core-warmup-starts-at-zero", "loops/optimizer.py",
           [("return (step + 1) / warmup", "return step / warmup")], CORE_OPTIM,
           "the first warmup step trains at rate 0 (transformers' step / warmup read on preflab's 0-based step)"),
    Mutant("core-warmup-one-step-long", "loops/optimizer.py",
           [("if warmup and step < warmup:", "if warmup and step <= warmup:")], CORE_OPTIM,
           "warmup lasts one step more than warmup_steps"),
    Mutant("core-decay-ignores-warmup", "loops/optimizer.py",
           [("progress = (step - warmup) / max(1, total - warmup)", "progress = step / max(1, total)")], CORE_OPTIM,
           "the decay after warmup runs over all steps, not the steps after warmup"),
    Mutant("core-cosine-quarter-period", "loops/optimizer.py",
           [("return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))",
             "return 0.5 * (1.0 + math.cos(0.5 * math.pi * min(1.0, progress)))")], CORE_OPTIM,
           "cosine decay ends at half the rate instead of 0"),
    Mutant("core-warmup-ratio-floor", "loops/optimizer.py",
           [("math.ceil(cfg.warmup_ratio * total_steps)", "int(cfg.warmup_ratio * total_steps)")], CORE_OPTIM,
           "warmup_ratio rounds the warmup down (transformers rounds up)"),
    Mutant("core-adam-betas-swapped", "loops/optimizer.py",
           [("betas=(cfg.adam_beta1, cfg.adam_beta2)", "betas=(cfg.adam_beta2, cfg.adam_beta1)")], CORE_OPTIM,
           "adam_beta1 and adam_beta2 swapped"),
    Mutant("core-weight-decay-dropped", "loops/optimizer.py",
           [("weight_decay=cfg.weight_decay,", "weight_decay=0.0,")], CORE_OPTIM, "weight_decay ignored"),
    Mutant("core-follow-schedule-one-ahead", "loops/optimizer.py",
           [("group[\"lr\"] = base_lr * factor(inner.last_epoch)",
             "group[\"lr\"] = base_lr * factor(inner.last_epoch + 1)")],
           CORE_OPTIM, "after a resume the rate is the next step's"),
    # the best model (loops/best_model.py)
    Mutant("core-best-ties-replace", "loops/best_model.py",
           [("if (value > best) if self.greater else (value < best):",
             "if (value >= best) if self.greater else (value <= best):")], CORE_BEST,
           "an evaluation equal to the best so far becomes the best (transformers keeps the earlier)"),
    Mutant("core-best-greater-inverted", "loops/best_model.py",
           [("self.greater = bool(greater_is_better)", "self.greater = not greater_is_better")], CORE_BEST,
           "greater_is_better read the wrong way round"),
    Mutant("core-best-key-unprefixed", "loops/best_model.py",
           [("return self.metric if self.metric.startswith(\"eval_\") else f\"eval_{self.metric}\"",
             "return self.metric")], CORE_BEST, "metric_for_best_model: loss looked up as loss, not eval_loss"),
    Mutant("core-best-checkpoint-recorded-late", "loops/best_model.py",
           [("if self.best_global_step == step or path.is_dir():", "if path.is_dir():")], CORE_BEST,
           "the checkpoint being saved at the best step is not recorded as the best until a later save"),
    Mutant("core-best-state-keeps-missing-folder", "loops/best_model.py",
           [("self.best_model_checkpoint = path if path and Path(path).is_dir() else None",
             "self.best_model_checkpoint = path")], CORE_BEST,
           "a resumed best_model_checkpoint that was deleted is kept"),
    # callbacks' state (loops/callback_state.py)
    Mutant("core-callback-attributes-not-restored", "loops/callback_state.py",
           [("                setattr(cb, attribute, value)", "                pass")], CORE_BEST,
           "EarlyStoppingCallback's patience counter starts afresh on resume"),
    Mutant("core-callback-only-first-of-a-class", "loops/callback_state.py",
           [("            if i >= len(states):", "            if i >= min(len(states), 1):")], CORE_BEST,
           "of several callbacks of one class only the first is restored"),
    Mutant("core-callback-flags-not-cleared", "loops/callback_state.py",
           [("control.should_log = control.should_evaluate = control.should_save = False", "pass")], CORE_BEST,
           "a callback's should_save / should_evaluate stays set for every later step"),
    # the batch order and its counts (loops/batches.py)
    Mutant("core-batches-same-order-every-epoch", "loops/batches.py",
           [("manual_seed(self.seed + epoch)", "manual_seed(self.seed)")], CORE_BATCHES,
           "every epoch reads the rows in the same order"),
    Mutant("core-batches-steps-per-epoch-ceil", "loops/batches.py",
           [("return self.num_rows // self.global_batch", "return -(-self.num_rows // self.global_batch)")],
           CORE_BATCHES, "a last incomplete global batch is a step"),
    Mutant("core-batches-unused-note-one-epoch", "loops/batches.py",
           [("if plan.unused_rows_per_epoch and total >= plan.steps_per_epoch",
             "if plan.unused_rows_per_epoch and total > plan.steps_per_epoch")],
           CORE_BATCHES, "a run of exactly one epoch does not say the rows it left out"),
    Mutant("core-batches-epochs-floor", "loops/batches.py",
           [("math.ceil(cfg.num_train_epochs * plan.steps_per_epoch)",
             "int(cfg.num_train_epochs * plan.steps_per_epoch)")],
           CORE_BATCHES, "fractional num_train_epochs rounds the steps down (transformers: ceil)"),
    Mutant("core-batches-tokens-prompt-once", "loops/batches.py",
           [("return sum(len(p.prompt_ids) + len(rejected_prompt_of(p)) + len(p.chosen_ids) + len(p.rejected_ids)",
             "return sum(len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids)")], CORE_BATCHES,
           "tokens counted with the prompt once per pair, not once per sequence as TRL"),
    Mutant("core-batches-data-seed-ignored", "loops/batches.py",
           [("return cfg.seed if data_seed is None else int(data_seed)", "return cfg.seed")], CORE_BATCHES,
           "data_seed does not set the batch order"),
    Mutant("core-batches-window-shifted", "loops/batches.py",
           [("epoch, i = divmod(step, self.steps_per_epoch)", "epoch, i = divmod(step + 1, self.steps_per_epoch)")],
           CORE_BATCHES, "global step s reads window s + 1: an epoch's steps read windows of two permutations"),
    # the step's accumulation and reduction (step.py)
    Mutant("core-step-grad-divided-by-accumulation", "step.py",
           [("scaled = total / denom if world == 1", "scaled = total / (denom * len(micro_batches)) if world == 1")],
           CORE_STEP, "gradients divided by the accumulation steps on top of the example count"),
    Mutant("core-step-loss-per-micro-batch", "step.py",
           [("return StepResult(loss=loss_total / denom,",
             "return StepResult(loss=loss_total / denom * len(micro_batches),")],
           CORE_STEP, "the logged loss is the sum over micro-batches of their means"),
    Mutant("core-step-inf-norm-not-skipped", "step.py",
           [("skipped = not math.isfinite(loss_total) or (scaler is None and not math.isfinite(norm_total))",
             "skipped = not math.isfinite(loss_total)")], CORE_STEP,
           "a finite loss with an inf/NaN gradient norm still updates"),
    Mutant("core-step-difference-sign", "step.py",
           [("metrics[name] = metrics[a] - metrics[b]", "metrics[name] = metrics[b] - metrics[a]")], CORE_STEP,
           "a difference metric (rewards/margins) recomputed as b - a"),
    Mutant("core-step-tokens-max", "step.py",
           [("tokens = float(sum(tokens)) if tokens", "tokens = float(max(tokens)) if tokens")], CORE_STEP,
           "num_tokens counts the largest micro-batch only"),
    Mutant("core-step-counted-metric-unweighted", "step.py",
           [("counted[key] = value.to(like.dtype) * count\n", "counted[key] = value.to(like.dtype)\n")], CORE_STEP,
           "a metric with a host count (metric_counts) summed without its count"),
    # checkpoints (checkpoint.py)
    Mutant("core-ckpt-optimizer-not-restored", "checkpoint.py",
           [("    optimizer.load_state_dict(join_optimizer_state(opt_tensors, "
             "json.loads((path / \"optimizer.json\").read_text())))",
             "    pass")], CORE_RESUME, "Adam's moments start afresh on resume"),
    Mutant("core-ckpt-scheduler-not-restored", "checkpoint.py",
           [("        scheduler.load_state_dict(trainer_state[\"scheduler\"])", "        pass")], CORE_RESUME,
           "the LR schedule restarts on resume"),
    Mutant("core-ckpt-numpy-rng-not-restored", "checkpoint.py",
           [("np.random.set_state((npy[0], np.array(npy[1], dtype=np.uint32), npy[2], npy[3], npy[4]))", "pass")],
           CORE_RESUME, "numpy's RNG not restored on resume"),
    Mutant("core-ckpt-python-rng-not-restored", "checkpoint.py",
           [("random.setstate((py[0], tuple(py[1]), py[2]))", "pass")], CORE_RESUME,
           "python's RNG not restored on resume"),
    Mutant("core-ckpt-save-limit-keeps-one-more", "checkpoint.py",
           [("        if remaining <= keep:", "        if remaining <= keep + 1:")], CORE_RESUME,
           "save_total_limit keeps one checkpoint more than asked"),
    Mutant("core-ckpt-save-limit-deletes-best", "checkpoint.py",
           [("protected = {Path(final).resolve()} | ({Path(best).resolve()} if best else set())",
             "protected = {Path(final).resolve()}")], CORE_BEST, "save_total_limit deletes the best checkpoint"),
    Mutant("core-ckpt-timeline-start-step-excluded", "checkpoint.py",
           [("return i == len(runs) - 1 or checkpoint_step(path) <= int(timeline[i + 1][1])",
             "return i == len(runs) - 1 or checkpoint_step(path) < int(timeline[i + 1][1])")], CORE_RESUME,
           "the checkpoint a later run resumed from is not on its timeline"),
    Mutant("core-ckpt-unsealed-counts", "checkpoint.py",
           [("if step is not None and (path / MARKER).is_file() and (path / \"trainer_state.json\").is_file()",
             "if step is not None and (path / \"trainer_state.json\").is_file()")], CORE_RESUME,
           "a checkpoint without its COMPLETE marker is listed (and resumed)"),
    # resume (loops/resume.py, the driver)
    Mutant("core-resume-false-string-resumes", "loops/resume.py",
           [("return cfg.resume_from_checkpoint not in (None, False, \"\", \"false\")",
             "return cfg.resume_from_checkpoint not in (None, False, \"\")")], CORE_RESUME,
           "resume_from_checkpoint: \"false\" (a CLI override) asks for a resume"),
    Mutant("core-resume-finished-run-refused", "loops/resume.py",
           [("if not isinstance(step, int) and latest is not None "
             "and not getattr(cfg, \"overwrite_output_dir\", False):",
             "if latest is not None and not getattr(cfg, \"overwrite_output_dir\", False):")],
           ["tests/test_user_trial.py", "tests/test_production_runs.py", "-k",
            "finished_runs_folder_says or fresh_start_over_an_unfinished_run or finished_runs_folder_is_noted"],
           "a fresh start over a finished run with checkpoints is refused"),
    Mutant("core-resume-at-last-step-refused", "loops/driver.py",
           [("        if step > self.total_steps:\n", "        if step >= self.total_steps:\n")], CORE_RESUME,
           "resuming the checkpoint of the last step is refused"),
    # report numbers (report/headline.py, runs.py, margins.py)
    Mutant("core-headline-before-after-swapped", "report/headline.py",
           [("first, last = _at(run, key, 0), _at(run, key, -1)", "first, last = _at(run, key, -1), _at(run, key, 0)")],
           CORE_REPORT, "the headline's before is the last eval and after the first"),
    Mutant("core-headline-metric-before-is-a-baseline", "report/headline.py",
           [("k not in (\"metric_before\", \"metric_after\")", "k != \"metric_after\"")], CORE_REPORT,
           "a recipe's metric_before shown again as a baseline to compare with"),
    Mutant("core-headline-summary-pair-needs-one-number", "report/headline.py",
           [("if k.endswith(\"_before\") and number(summary[k]) "
             "and number(summary.get(k[:-len(\"_before\")] + \"_after\"))",
             "if k.endswith(\"_before\") and number(summary[k])")], CORE_REPORT,
           "an X_before without a numeric X_after makes a headline row"),
    Mutant("core-margins-sign", "report/margins.py",
           [("margin = batch.policy_chosen.sum.double() - batch.policy_rejected.sum.double()",
             "margin = batch.policy_rejected.sum.double() - batch.policy_chosen.sum.double()")], CORE_REPORT,
           "the per-pair margin is rejected minus chosen"),
    Mutant("core-margins-reference-added", "report/margins.py",
           [("margin = margin - (batch.ref_chosen.sum.double() - batch.ref_rejected.sum.double())",
             "margin = margin + (batch.ref_chosen.sum.double() - batch.ref_rejected.sum.double())")], CORE_REPORT,
           "the reference's margin added instead of subtracted"),
    Mutant("core-margins-rerun-step-appended", "report/margins.py",
           [("out[step] = [m for m in values if m is not None and math.isfinite(m)]",
             "out[step] = out.get(step, []) + [m for m in values if m is not None and math.isfinite(m)]")],
           CORE_REPORT, "a re-run step's margins are added to the older row's instead of replacing them"),
    Mutant("core-runs-series-first-value-wins", "report/runs.py",
           [("by_step[float(step)] = float(value)", "by_step.setdefault(float(step), float(value))")], CORE_REPORT,
           "a step logged twice keeps its first value"),
    Mutant("core-runs-nonfinite-pairs-count-kept", "report/runs.py",
           [("return [[c[i] for i in keep] for c in cols], len(cols[0]) - len(keep)",
             "return [[c[i] for i in keep] for c in cols], len(keep)")], CORE_REPORT,
           "the report's count of left-out eval pairs is the kept count"),
    # eval metrics (eval/winrate.py, eval/metrics.py)
    Mutant("core-winrate-ties-count-as-wins", "eval/winrate.py",
           [("1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs]",
             "1.0 if a >= b else 0.0 for a, b in pairs]")],
           CORE_EVAL, "a tie of rewards counts as a win"),
    Mutant("core-winrate-wilson-not-centred", "eval/winrate.py",
           [("center = (p_hat + z * z / (2 * n)) / denom", "center = p_hat")], CORE_EVAL,
           "the interval is centred on p_hat (Wald's centre with Wilson's width)"),
    Mutant("core-winrate-z-one-sided", "eval/winrate.py",
           [("z = NormalDist().inv_cdf((1.0 + confidence) / 2.0)", "z = NormalDist().inv_cdf(confidence)")],
           CORE_EVAL, "a one-sided quantile for a two-sided interval"),
    Mutant("core-winrate-fractional-as-ties", "eval/winrate.py",
           [("wins, ties, losses = (sum(v == x for v in values) for x in (1.0, 0.5, 0.0))",
             "wins, ties, losses = sum(v == 1.0 for v in values), sum(0.0 < v < 1.0 for v in values), "
              "sum(v == 0.0 for v in values)")],
           CORE_EVAL, "a judge's probability counted as a tie"),
    Mutant("core-metrics-drop-ratio-inverted", "eval/metrics.py",
           [("return drift_rejected.mean().abs() / drift_chosen.mean().abs().clamp_min(eps)",
             "return drift_chosen.mean().abs() / drift_rejected.mean().abs().clamp_min(eps)")], CORE_EVAL,
           "drop_ratio is chosen over rejected"),
    Mutant("core-metrics-suppression-either", "eval/metrics.py",
           [("return ((drift_chosen < 0) & (drift_rejected < 0)).double().mean()",
             "return ((drift_chosen < 0) | (drift_rejected < 0)).double().mean()")], CORE_EVAL,
           "suppression counts pairs where either side fell"),
    Mutant("core-metrics-longer-inclusive", "eval/metrics.py",
           [("(chosen_length > rejected_length).double().mean()}",
             "(chosen_length >= rejected_length).double().mean()}")],
           CORE_EVAL, "equal lengths count as chosen longer"),
    Mutant("core-metrics-norm-by-other-length", "eval/metrics.py",
           [("s.policy_rejected / s.rejected_length.clamp_min(1)),",
             "s.policy_rejected / s.chosen_length.clamp_min(1)),")],
           CORE_EVAL, "R~ divides the rejected log-prob by the chosen length"),
    Mutant("core-metrics-margin-unscaled", "eval/metrics.py",
           [("\"rewards/margins\": beta * (h_w - h_l).mean(),", "\"rewards/margins\": (h_w - h_l).mean(),")],
           CORE_EVAL, "rewards/margins without beta"),
    # data: tokenization counts, validation, holdout (data/*.py)
    Mutant("core-data-prompt-cut-not-counted", "data/tokenize.py",
           [("    report.prompt_truncated += 1\n    if settings.truncation_mode == \"keep_start\":",
             "    if settings.truncation_mode == \"keep_start\":")], CORE_DATA,
           "a prompt cut by max_prompt_length is not counted"),
    Mutant("core-data-response-truncated-every-row", "data/tokenize.py",
           [("report.response_truncated += cut", "report.response_truncated += 1")], CORE_DATA,
           "every row counted as response-truncated"),
    Mutant("core-data-keep-end-counts-twice", "data/tokenize.py",
           [("if len(prompt_ids) == uncut and any(len(p) < len(prompt_ids) for p in prompts):",
             "if any(len(p) < len(prompt_ids) for p in prompts):")], CORE_DATA,
           "a prompt cut by max_prompt_length and by keep_end counts twice"),
    Mutant("core-data-prompt-tokens-per-response", "data/tokenize.py",
           [("for one in {tuple(p): p for p in prompts}.values():", "for one in prompts:")], CORE_DATA,
           "prompt_tokens counts a shared prompt once per response"),
    Mutant("core-data-parallel-indices-not-offset", "data/tokenize.py",
           [("indices += [start + i for i in chunk_indices]", "indices += chunk_indices")], CORE_DATA,
           "dataset_num_proc: each chunk's positions are not offset by the chunk start"),
    Mutant("core-data-parallel-skips-not-merged", "data/tokenize.py",
           [("            report.skipped[reason] = report.skipped.get(reason, 0) + count\n"
             "        report.skipped_examples",
             "            report.skipped[reason] = count\n        report.skipped_examples")], CORE_DATA,
           "dataset_num_proc: the skipped count of a reason is the last chunk's"),
    Mutant("core-data-skip-examples-one-more", "data/report.py",
           [("if len(self.skipped_examples) < MAX_SKIPPED_EXAMPLES:",
             "if len(self.skipped_examples) <= MAX_SKIPPED_EXAMPLES:")],
           CORE_DATA, "one skipped example more than MAX_SKIPPED_EXAMPLES kept"),
    Mutant("core-data-implicit-split-empty-response", "data/validate.py",
           [("    for i in range(min(n, limit - 1), 0, -1):  # i < len of both",
             "    for i in range(min(n, limit), 0, -1):  # i < len of both")],
           CORE_DATA, "an implicit prompt may take a whole response"),
    Mutant("core-data-label-any-int", "data/validate.py",
           [("if isinstance(value, int) and value in (0, 1):", "if isinstance(value, int):")], CORE_DATA,
           "label 2 read as desirable"),
    Mutant("core-data-extra-bound-exclusive", "data/validate.py",
           [("if (low is not None and number < low) or (high is not None and number > high):",
             "if (low is not None and number <= low) or (high is not None and number >= high):")], CORE_DATA,
           "an extra equal to its bound is refused"),
    Mutant("core-data-extra-nan-accepted", "data/validate.py",
           [("        if not math.isfinite(number):\n", "        if False:\n")], CORE_DATA,
           "a NaN / inf extra accepted"),
    Mutant("core-data-holdout-rounds-down", "data/holdout.py",
           [("return set(perm[:max(1, int(round(fraction * n)))])", "return set(perm[:max(1, int(fraction * n))])")],
           CORE_DATA, "eval_fraction holds out floor(fraction n) rows, not round"),
    Mutant("core-data-repeated-prompt-names-last-row", "data/rows.py",
           [("                if report.prompt_repeated_first is None:\n", "                if True:\n")], CORE_DATA,
           "the note on repeated prompts names the last such row, not the first"),
    # config refusals (config.py, config_owners.py, config_defaults.py)
    Mutant("core-config-warmup-both-allowed", "config.py",
           [("if self.warmup_steps and self.warmup_ratio:", "if False:")], CORE_CONFIG,
           "warmup_steps and warmup_ratio together not refused"),
    Mutant("core-config-bf16-fp16-allowed", "config.py",
           [("        if self.bf16 and self.fp16:\n", "        if False:\n")], CORE_CONFIG,
           "bf16 and fp16 together not refused"),
    Mutant("core-config-eval-no-with-steps", "config.py",
           [("if self.eval_strategy == \"no\" and self.eval_steps:", "if False:")], CORE_CONFIG,
           "eval_strategy no with eval_steps not refused"),
    Mutant("core-config-ref-init-kwargs-unread", "config.py",
           [("if self.ref_model_init_kwargs and not self.ref_model_name_or_path:", "if False:")], CORE_CONFIG,
           "ref_model_init_kwargs without ref_model_name_or_path not refused"),
    Mutant("core-config-weighting-any-task", "config.py",
           [("if self.use_weighting and self.task != \"dpo\":", "if False:")], CORE_CONFIG,
           "use_weighting accepted (and ignored) outside task: dpo"),
    Mutant("core-config-written-default-not-refused", "config_defaults.py",
           [("return [n for n in names if n in written or n in changed]", "return [n for n in names if n in changed]")],
           CORE_CONFIG, "an unread option written at its default value is not refused"),
    Mutant("core-config-num-proc-sft", "config_owners.py",
           [("((\"dataset_num_proc\",), lambda cfg: cfg.task in (\"dpo\", \"reward\"),",
             "((\"dataset_num_proc\",), lambda cfg: cfg.task in (\"dpo\", \"reward\", \"sft\"),")], CORE_CONFIG,
           "dataset_num_proc accepted (and ignored) for task: sft"),
    Mutant("core-config-refused-value-condition-ignored", "config_owners.py",
           [("if cfg.task == task and getattr(cfg, option) == value and (when is None or when(cfg))]",
             "if cfg.task == task and getattr(cfg, option) == value]")], CORE_CONFIG,
           "vlm keep_end refused even with max_length: null, where it cuts nothing"),
]


@dataclass
class Outcome:
    name: str
    status: str  # caught | timeout | survived | stale
    seconds: float
    detail: str = ""
    tests: list[str] = field(default_factory=list)


def _copy_src(dst: Path, origin: Path = ROOT / "src") -> Path:
    src = dst / "src"
    shutil.copytree(origin / "preflab", src / "preflab", ignore=shutil.ignore_patterns("__pycache__"))
    return src


def _pytest(src: Path, tests: list[str], timeout: float) -> tuple[str, float, str]:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-W", "ignore", *tests]
    started = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - started, ""
    tail = (done.stdout.strip().splitlines() or [""])[-1]
    return ("passed" if done.returncode == 0 else "failed"), time.perf_counter() - started, tail


def run(mutants: list[Mutant], timeout: float, log) -> list[Outcome]:
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="preflab-mutation-") as tmp:
        clean = _copy_src(Path(tmp) / "clean")
        for tests in {tuple(m.tests) for m in mutants}:
            status, secs, tail = _pytest(clean, list(tests), timeout)
            log(f"baseline {' '.join(tests)}: {status} in {secs:.0f}s {tail}")
            if status != "passed":
                raise SystemExit(f"baseline tests do not pass unmodified: {' '.join(tests)} ({tail})")
        for m in mutants:
            work = Path(tmp) / m.name
            src = _copy_src(work, origin=clean)  # from the snapshot taken at the start, not the live tree
            path = src / "preflab" / m.file
            text = path.read_text()
            stale = [old for old, _ in m.edits if text.count(old) != 1]
            if stale:
                outcomes.append(Outcome(m.name, "stale", 0.0, f"not found exactly once: {stale[0][:60]!r}", m.tests))
            else:
                for old, new in m.edits:
                    text = text.replace(old, new)
                path.write_text(text)
                status, secs, tail = _pytest(src, m.tests, timeout)
                status = {"failed": "caught", "passed": "survived"}.get(status, status)
                outcomes.append(Outcome(m.name, status, secs, tail, m.tests))
            shutil.rmtree(work, ignore_errors=True)
            o = outcomes[-1]
            log(f"{o.status:9s} {o.name:34s} {o.seconds:6.0f}s  {o.detail}")
    return outcomes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help="run mutants whose name contains one of these")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per test run (default 300)")
    parser.add_argument("--json", default=None, help="write the outcomes here")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.only or any(w in m.name for w in args.only)]
    if args.list:
        for m in mutants:
            print(f"{m.name:34s} {m.file:22s} {m.why}\n{'':34s} tests: {' '.join(m.tests)}")
        return 0
    outcomes = run(mutants, args.timeout, lambda line: print(line, flush=True))
    counted = [o for o in outcomes if o.status != "stale"]
    killed = [o for o in counted if o.status in ("caught", "timeout")]
    print(f"\nkilled {len(killed)} of {len(counted)} mutants ({100 * len(killed) / max(len(counted), 1):.0f}%); "
          f"survived: {[o.name for o in counted if o.status == 'survived']}; "
          f"stale: {[o.name for o in outcomes if o.status == 'stale']}")
    if args.json:
        Path(args.json).write_text(json.dumps([o.__dict__ for o in outcomes], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
