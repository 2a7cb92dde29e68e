"""GRPO: the clipped token-level policy-gradient loss with group-normalised advantages (TRL GRPOTrainer).

Paper: Shao et al., 2024, "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models"
(arXiv:2402.03300), Eq. 3 (objective) and Eq. 4 (KL estimator). On a ListBatch: B prompts, G completions each,
rewards r = batch.scores [B, G], token log-probs lp (policy), lp_old (sampling policy), lp_ref:

    A_bi   = (r_bi - mean_i r_bi) / (std_i r_bi + 1e-4)     scale_rewards="group" (std with Bessel's correction,
             as TRL's torch.std); "batch": std over all the batch's rewards; "none": no division
    rho    = exp(lp - lp_old)                                per token
    l_t    = -min(min(rho, delta) A, clip(rho, 1 - epsilon, 1 + epsilon_high) A) + beta rho KL3_t
    KL3_t  = exp(lp_ref - lp) - (lp_ref - lp) - 1            (Schulman's k3; computed only when beta > 0)
    delta: TRL's two-sided clipping (INTELLECT-2, arXiv:2505.07291): None (the default) leaves the unclipped term
    alone. The factor rho on the KL term is TRL 1.16's use_bias_correction_kl (default true; DeepSeek-V3.2,
    arXiv:2512.02556): rho's value is 1 on-policy, but its gradient adds KL3_t grad lp (the unbiased reverse-KL
    gradient); use_bias_correction_kl: false drops the factor (TRL <= 1.15's KL term).

Aggregation (loss_type, TRL 1.16 names), m = completion-token mask:
    grpo     mean over completions of sum_t m l_t / |y|                      (Shao et al.)
    bnpo     sum of m l_t / number of completion tokens in the batch
    dapo     sum of m l_t / completion tokens of the whole generation batch   (Yu et al., 2025, arXiv:2503.14476)
    dr_grpo  sum of m l_t / (completions x max_completion_length)            (Liu et al., 2025, arXiv:2503.20783)
    cispo, sapo, luspo, vespo: TRL 1.16's other loss types, each with its own per-token loss and aggregation
             (preflab.objectives._grpo_losses: formulas and papers). luspo needs importance_sampling_level sequence
             and vespo token (TRL warns, preflab refuses); delta applies to the clipped surrogate only (grpo, bnpo,
             dapo, dr_grpo, luspo), sapo_* and vespo_* to their loss type only: another is refused.
losses[b] is prompt b's share, so that loss = losses.mean() is the aggregate above.
importance_sampling_level="sequence" (GSPO, Zheng et al., 2025, arXiv:2507.18071, Eq. 7; TRL's option): every token of
completion i uses the sequence ratio s_i = exp((1/|y_i|) sum_t (lp_t - lp_old_t)) in place of rho_t.

Extras (all optional): "old_logps" [B, G, T] sampling-policy token log-probs (default: lp detached, so rho = 1 and
the gradient is the on-policy -A grad lp, TRL's num_iterations = 1); "advantages" [B, G] precomputed (default: from
scores as above); "tokens_per_prompt" scalar for dapo, the generation batch's completion tokens per prompt, so that
micro-batches add up to the global token mean (default: this batch's); "scored" [B, G] bool, the completions a
reward function scored (default: valid): an unscored one (every reward function returned None, TRL 1.16's
"unscorable") stays in the loss with advantage 0, its tokens in the normaliser and its KL term trained, but is left
out of the group baseline, the std and the reward metrics, as TRL's GRPOTrainer. needs_reference is True iff beta > 0.
Metrics (TRL names): reward, reward_std (mean group std), frac_reward_zero_std, kl, clip_ratio/{low,high,region}_mean
and clip_ratio/low_min, clip_ratio/high_max (clipped-surrogate losses; the min / max over the micro-batch's completions
of each one's clipped-token fraction, then over ranks: ObjectiveOutput.metric_extrema), cispo_clip_ratio (cispo:
rho > epsilon_high with A > 0), vespo/phi_seq_mean (vespo);
reward is a mean over the valid completions, kl and the ratios over completion tokens (at importance_sampling_level
sequence the ratios, and vespo/phi_seq_mean always, over completions, as TRL), each with its count
(ObjectiveOutput.metric_counts: the step logs the exact mean over all micro-batches and ranks; TRL averages the
micro-batches' means).

TRL 1.16's masks and bonus (every loss type; preflab.objectives._grpo_losses), applied to the policy term before the
KL term is added, the normaliser unchanged:
    top_entropy_quantile rho < 1   l_t times 1[H_t >= quantile_{1-rho}(H over the trained tokens)]  (extra
                                   "token_entropy" [B, G, T]; "entropy_threshold": the cut over every process)
    off_policy_mask_threshold d    l_t times 1[A >= 0 or mean_t (lp_old - lp) <= d] per completion
    entropy_coef c                 loss - c H, H the mean token entropy over the trained (kept) tokens, with its
                                   gradient; use_adaptive_entropy: c is the extra "entropy_coef" the run's controller
                                   applies (preflab.online.entropy_control)

Deviation from the paper: the paper's grpo aggregation is the default of TRL <= 0.14; TRL 1.16 defaults to dapo
(used here too). beta defaults to TRL 1.16's 0.0 (the paper uses 0.04).
"""
from dataclasses import dataclass

import torch

from preflab.errors import ConfigError, PreflabError
from preflab.objectives.base import ListBatch, NeedsByParams, Objective, ObjectiveOutput, as_loss_dtype
from preflab.objectives._grpo_losses import (cispo_per_token, high_entropy_mask, off_policy_sequence_mask,
                                             sapo_per_token, vespo_weights)
from preflab.option_types import is_number

LOSS_TYPES = ("grpo", "bnpo", "dapo", "dr_grpo", "cispo", "sapo", "luspo", "vespo")
CLIPPED = ("grpo", "bnpo", "dapo", "dr_grpo", "luspo")          # the loss types of the clipped surrogate
SAPO_DEFAULTS = {"sapo_temperature_pos": 1.0, "sapo_temperature_neg": 1.05}   # TRL 1.16 GRPOConfig
VESPO_DEFAULTS = {"vespo_k_pos": 2.0, "vespo_lambda_pos": 3.0, "vespo_k_neg": 3.0, "vespo_lambda_neg": 2.0}
SCALE_REWARDS = ("group", "batch", "none")


def completion_ratios(low: torch.Tensor, high: torch.Tensor, m: torch.Tensor, valid: torch.Tensor,
                      sequence_level: bool) -> torch.Tensor:
    """[2, B, G]: each completion's fraction of low- / high-clipped tokens, TRL 1.16 GRPOTrainer._compute_loss's
    masked_seq_mean (sum over its completion tokens / their number, NaN for a completion without one: 0 / 0, as
    TRL, which its nanmin / nanmax leave out); at importance_sampling_level sequence the completion's one flag
    (TRL: every completion, a masked-out one too; preflab's invalid padding completions are NaN)."""
    flags = torch.stack([low, high]).to(m.dtype)
    if sequence_level:
        return torch.where(valid, flags[..., 0], torch.nan)
    return (flags * m).sum(-1) / m.sum(-1)


def nan_extremum(values: torch.Tensor, kind: str) -> torch.Tensor:
    """min / max of the non-NaN values, NaN when all are NaN (TRL's nanmin / nanmax), on the device (no host
    read: masked with +-inf instead of indexing)."""
    fill = torch.inf if kind == "min" else -torch.inf
    picked = torch.where(values.isnan(), fill, values)
    picked = picked.amin() if kind == "min" else picked.amax()
    return torch.where(picked.isinf(), torch.nan, picked)


def group_advantages(scores: torch.Tensor, valid: torch.Tensor, scale_rewards: str = "group",
                     eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages [B, G], group std [B]) of rewards [B, G]; invalid entries get advantage 0."""
    v = valid.to(scores.dtype)
    n = v.sum(-1)
    dev = (scores - (scores * v).sum(-1, keepdim=True) / n.clamp_min(1).unsqueeze(-1)) * v
    std = ((dev ** 2).sum(-1) / (n - 1).clamp_min(1)).sqrt()
    if scale_rewards == "group":
        return dev / (std.unsqueeze(-1) + eps), std
    if scale_rewards == "batch":
        flat = scores[valid]
        return dev / ((flat.std() if flat.numel() > 1 else flat.new_zeros(())) + eps), std
    return dev, std


def nan_std(values: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """Standard deviation of the non-NaN values with Bessel's correction, NaN where fewer than two (TRL's nanstd);
    dim None: over all values."""
    if dim is None:
        values, dim = values.flatten(), 0
    mean = torch.nanmean(values, dim=dim, keepdim=True)
    count = (~values.isnan()).sum(dim=dim, keepdim=True)
    var = torch.nanmean((values - mean) ** 2, dim=dim, keepdim=True)
    std = (var * torch.where(count > 1, count / (count - 1), torch.nan)).sqrt()
    return std if keepdim else std.squeeze(dim)


def normalize_then_sum_advantages(per_judge: torch.Tensor, weights: torch.Tensor, scored: torch.Tensor,
                                  eps: float = 1e-4) -> torch.Tensor:
    """[P, G] advantages of multi_objective_aggregation: normalize_then_sum (TRL 1.16 GRPOTrainer; GDPO, Liu et al.,
    2026, arXiv:2601.05242): each judge k's rewards r^k [P, G, J] (NaN: that judge gave none) are normalised within
    the prompt's group first, then weighted and summed, and the sum is normalised over the whole round:

        n^k_i = (r^k_i - nanmean_group r^k) / (nanstd_group r^k + eps)     (nanstd: Bessel; NaN with < 2 values)
        s_i   = nansum_k w_k n^k_i                 (NaN where `scored` is False: every judge None, or one raised)
        A_i   = (s_i - nanmean_round s) / (nanstd_round s + eps),   0 where s_i is NaN

    scale_rewards is not read (TRL ignores it here). The default sum_then_normalize is group_advantages of the
    weighted sum."""
    normed = (per_judge - torch.nanmean(per_judge, dim=1, keepdim=True)) / (nan_std(per_judge, 1, keepdim=True) + eps)
    summed = (normed * weights.to(normed)).nansum(-1)
    summed = torch.where(scored, summed, torch.nan)
    flat = summed.flatten()
    spread = nan_std(flat) if flat.numel() > 1 else flat.new_zeros(())
    return ((summed - torch.nanmean(flat)) / (spread + eps)).nan_to_num(0.0)


@dataclass(frozen=True)
class GRPO(Objective):
    beta: float = 0.0                    # KL coefficient (TRL 1.16 default; 0 = no reference model)
    epsilon: float = 0.2                 # clip range, lower side (and upper when epsilon_high is None)
    epsilon_high: float | None = None    # DAPO's clip-higher upper range (TRL epsilon_high)
    loss_type: str = "dapo"              # grpo | bnpo | dapo | dr_grpo | cispo | sapo | luspo | vespo
    scale_rewards: str = "group"         # group | batch | none
    max_completion_length: int | None = None  # dr_grpo normaliser (None: the batch's padded width)
    importance_sampling_level: str = "token"  # token | sequence (GSPO: one ratio per completion, TRL's name)
    delta: float | None = None           # two-sided clipping: upper bound of the unclipped ratio (TRL delta)
    use_bias_correction_kl: bool = True  # KL term times the importance ratio (TRL 1.16's default)
    sapo_temperature_pos: float = 1.0    # sapo's gate temperature where A > 0 (TRL's option and default)
    sapo_temperature_neg: float = 1.05   # ... where A <= 0
    vespo_k_pos: float = 2.0             # vespo's gamma weight phi(w) = e^lambda w^k e^(-lambda w): k where A >= 0
    vespo_lambda_pos: float = 3.0        # lambda where A >= 0
    vespo_k_neg: float = 3.0             # k where A < 0
    vespo_lambda_neg: float = 2.0        # lambda where A < 0
    top_entropy_quantile: float = 1.0    # rho: only the top-rho entropy tokens in the policy term (TRL; 1: all)
    off_policy_mask_threshold: float | None = None  # delta: drop A < 0 completions with mean KL > delta (TRL)
    entropy_coef: float = 0.0            # entropy bonus: loss - coef x mean token entropy (TRL; 0: none)
    use_adaptive_entropy: bool = False   # Skywork-OR1's controller moves the coefficient (extra "entropy_coef")
    entropy_coef_min: float = 0.0        # the controller's bounds and step, and the entropy it aims at (nats)
    entropy_coef_max: float = 1.0
    entropy_coef_delta: float = 0.005
    entropy_target: float = 0.2

    batch_type = ListBatch
    needs_reference = False              # per instance: True when beta > 0
    # the policy's per-token entropy, extra "token_entropy" [B, G, T]: with gradient for the entropy bonus
    # ("token_entropy_grad"), without for entropy masking alone ("token_entropy")
    token_needs = NeedsByParams(("token_entropy", "token_entropy_grad"), lambda self: (
        ("token_entropy_grad",) if self.entropy_bonus else ("token_entropy",) if self.top_entropy_quantile < 1 else ()))

    @property
    def entropy_bonus(self) -> bool:
        """The entropy bonus is in the loss (TRL's _entropy_bonus_enabled: a coefficient, or the adaptive
        controller, which may bring a coefficient of 0 back up)."""
        return self.entropy_coef != 0 or self.use_adaptive_entropy
    paper = "Shao et al. 2024, DeepSeekMath (arXiv:2402.03300), GRPO"
    checked_against = ("reference code: TRL 1.16 GRPOTrainer._compute_loss, grpo/bnpo/dr_grpo/dapo, token and sequence "
                       "IS, beta 0 / 0.04, given advantages; use_bias_correction_kl and delta in loss and gradient; cispo, "
                       "sapo, luspo, vespo in loss, gradient and metrics; unscorable completions "
                       "(tests/objectives/test_trl_parity.py, 1e-9); top_entropy_quantile, off_policy_mask_threshold, "
                       "entropy_coef and the adaptive coefficient; normalize_then_sum advantages "
                       "(tests/online/test_grpo_trl_options.py, 1e-12)")
    tags = {"data": ("list-wise",), "framework": ("online",), "constraint": ("reference",), "property": ()}
    online_trainer = "grpo"  # a policy gradient on sampled completions: task: online only (check_online_only)

    def __post_init__(self):
        self.validate()
        object.__setattr__(self, "needs_reference", self.beta > 0)

    @property
    def micro_batch_statistic(self) -> bool:
        """bnpo divides by the micro-batch's completion tokens (TRL's, online too); on a batch without the online
        run's step extras (offline lists: no advantages, no tokens_per_prompt) dapo / cispo / vespo do too, dr_grpo
        without max_completion_length divides by its padded width, scale_rewards batch by its rewards' std; the
        entropy bonus and top_entropy_quantile read its token entropies (base.couples_micro_batch)."""
        return (self.loss_type in ("bnpo", "dapo", "cispo", "vespo") or self.scale_rewards == "batch"
                or (self.loss_type == "dr_grpo" and self.max_completion_length is None)
                or self.entropy_bonus or self.top_entropy_quantile < 1)

    @property
    def online_micro_batch_statistic(self) -> bool:
        """What still reads the micro-batch with the online run's step extras (base.online_micro_batch_statistic_
        parts): bnpo's normaliser, its completion tokens; dr_grpo's padded width without max_completion_length; the
        entropy bonus's mean token entropy; top_entropy_quantile's cut over the micro-batch's tokens (TRL's, per
        micro-batch). The round's advantages and tokens_per_prompt make the rest (dapo, cispo, vespo, scale_rewards
        batch) the step's (tests/objectives/test_micro_batch_coupling.py's online check)."""
        return (self.loss_type == "bnpo" or (self.max_completion_length is None and self.loss_type == "dr_grpo")
                or self.top_entropy_quantile < 1 or self.entropy_bonus)

    def validate(self):  # beta = 0 is valid here, unlike the base class's check
        if self.beta < 0 or self.epsilon < 0 or (self.epsilon_high is not None and self.epsilon_high < 0):
            raise ConfigError(f"GRPO: beta, epsilon and epsilon_high must be >= 0, got {self.beta}, {self.epsilon}, "
                              f"{self.epsilon_high}.")
        numbers = ("top_entropy_quantile", "entropy_coef", "entropy_coef_min", "entropy_coef_max", "entropy_coef_delta",
                   "entropy_target") + (("off_policy_mask_threshold",) if self.off_policy_mask_threshold is not None
                                        else ())
        for name in numbers:
            value = getattr(self, name)
            if not is_number(value) or value != value:
                raise ConfigError(f"GRPO: {name} must be a number, got {value!r}.")
        if not isinstance(self.use_adaptive_entropy, bool):
            raise ConfigError(f"GRPO: use_adaptive_entropy must be true or false, got {self.use_adaptive_entropy!r}.")
        if not 0 <= self.top_entropy_quantile <= 1:
            raise ConfigError(f"GRPO: top_entropy_quantile (the share rho of highest-entropy tokens kept in the policy "
                              f"loss) must be in [0, 1], got {self.top_entropy_quantile}.")
        if self.off_policy_mask_threshold is not None and not self.off_policy_mask_threshold >= 0:
            raise ConfigError(f"GRPO: off_policy_mask_threshold (delta, a mean KL per token) must be >= 0 or null, "
                              f"got {self.off_policy_mask_threshold}.")
        self._validate_entropy_options()
        if self.delta is not None and self.delta <= 0:
            raise ConfigError(f"GRPO: delta (two-sided clipping bound) must be > 0 or null, got {self.delta}.")
        if self.importance_sampling_level not in ("token", "sequence"):
            raise ConfigError(f"GRPO: importance_sampling_level must be 'token' or 'sequence', got "
                              f"{self.importance_sampling_level!r}.")
        if self.loss_type not in LOSS_TYPES or self.scale_rewards not in SCALE_REWARDS:
            raise ConfigError(f"GRPO: loss_type must be one of {LOSS_TYPES} and scale_rewards one of "
                              f"{SCALE_REWARDS}, got {self.loss_type!r}, {self.scale_rewards!r}.")
        self._validate_loss_type_options()

    def _validate_entropy_options(self):
        """The adaptive controller's options are read with use_adaptive_entropy only (TRL ignores them otherwise:
        refused here); its bounds must hold the starting coefficient's range."""
        adaptive = {"entropy_coef_min": 0.0, "entropy_coef_max": 1.0, "entropy_coef_delta": 0.005, "entropy_target": 0.2}
        changed = [n for n, d in adaptive.items() if getattr(self, n) != d]
        if changed and not self.use_adaptive_entropy:
            raise ConfigError(f"GRPO: {', '.join(changed)} {'is' if len(changed) == 1 else 'are'} read by the adaptive "
                              "entropy controller only; set use_adaptive_entropy: true or remove "
                              f"{'it' if len(changed) == 1 else 'them'}.")
        if self.use_adaptive_entropy and not (self.entropy_coef_min <= self.entropy_coef_max and
                                              self.entropy_coef_delta >= 0):
            raise ConfigError(f"GRPO: use_adaptive_entropy needs entropy_coef_min <= entropy_coef_max and "
                              f"entropy_coef_delta >= 0, got {self.entropy_coef_min}, {self.entropy_coef_max}, "
                              f"{self.entropy_coef_delta}.")

    def _validate_loss_type_options(self):
        """TRL 1.16 warns (GRPOTrainer.__init__) where luspo runs without sequence ratios and vespo with them;
        preflab refuses both, and an option the chosen loss type does not read."""
        if self.loss_type == "luspo" and self.importance_sampling_level != "sequence":
            raise ConfigError("GRPO: loss_type luspo (Length-Unbiased Sequence Policy Optimization) scales the "
                              "sequence-level (GSPO) loss by the completion's length and needs "
                              "importance_sampling_level: sequence (TRL 1.16 warns and runs token ratios); set it.")
        if self.loss_type == "vespo" and self.importance_sampling_level != "token":
            raise ConfigError("GRPO: loss_type vespo computes its own sequence-level weight from the token ratios; "
                              "importance_sampling_level must be token (the default; TRL 1.16 warns otherwise).")
        if self.delta is not None and self.loss_type not in CLIPPED:
            raise ConfigError(f"GRPO: delta bounds the clipped surrogate's ratio (loss_type {', '.join(CLIPPED)}); "
                              f"loss_type {self.loss_type} does not read it. Remove delta.")
        for names, owner in ((SAPO_DEFAULTS, "sapo"), (VESPO_DEFAULTS, "vespo")):
            changed = [n for n, d in names.items() if getattr(self, n) != d]
            if changed and self.loss_type != owner:
                raise ConfigError(f"GRPO: {', '.join(changed)} {'is' if len(changed) == 1 else 'are'} read by "
                                  f"loss_type {owner} only, not {self.loss_type}; remove it or set loss_type {owner}.")
        if self.loss_type == "sapo" and min(self.sapo_temperature_pos, self.sapo_temperature_neg) <= 0:
            raise ConfigError(f"GRPO: sapo_temperature_pos and sapo_temperature_neg must be > 0, got "
                              f"{self.sapo_temperature_pos}, {self.sapo_temperature_neg}.")

    def compute(self, batch: ListBatch) -> ObjectiveOutput:
        lp = as_loss_dtype(batch.policy.masked())                                  # [B, G, T]
        mask = batch.policy.mask & batch.valid.unsqueeze(-1)
        # "scored" [B, G]: the completions a reward function scored (default: valid); an unscored one stays in the
        # loss with advantage 0 but out of the baseline and the reward metrics (TRL 1.16's unscorable completions)
        scored = batch.valid & torch.as_tensor(batch.extras.get("scored", batch.valid), device=lp.device).bool()
        scores = torch.where(scored, batch.scores.to(lp.dtype), 0.0)                 # NaN-free off `scored`
        adv, std = group_advantages(scores, scored, self.scale_rewards)
        if "advantages" in batch.extras:
            adv = torch.as_tensor(batch.extras["advantages"], dtype=lp.dtype, device=lp.device)
        old = batch.extras.get("old_logps")
        old = lp.detach() if old is None else torch.where(mask, torch.as_tensor(old).to(lp), 0.0)
        log_ratio = token_log_ratio = lp - old
        sequence_level = self.importance_sampling_level == "sequence"
        if sequence_level:  # GSPO: s_i = exp(mean_t (lp - lp_old)) for every token
            mf = mask.to(lp.dtype)
            log_ratio = ((log_ratio * mf).sum(-1) / mf.sum(-1).clamp_min(1)).unsqueeze(-1).expand_as(lp)
        ratio = torch.exp(log_ratio)
        a = adv.unsqueeze(-1)
        high = self.epsilon if self.epsilon_high is None else self.epsilon_high
        unclipped = ratio if self.delta is None else ratio.clamp(max=self.delta)
        m = mask.to(lp.dtype)
        if self.loss_type in CLIPPED:
            per_token = -torch.minimum(unclipped * a, ratio.clamp(1 - self.epsilon, 1 + high) * a)
        elif self.loss_type == "cispo":
            per_token = cispo_per_token(ratio, lp, a, high)
        elif self.loss_type == "sapo":
            per_token = sapo_per_token(ratio, a, self.sapo_temperature_pos, self.sapo_temperature_neg)
        else:  # vespo
            phi = vespo_weights(token_log_ratio, m, a, self.vespo_k_pos, self.vespo_lambda_pos, self.vespo_k_neg,
                                self.vespo_lambda_neg)
            per_token = -phi * a * lp
        per_token, entropy_mask = self._masked_policy_term(per_token, batch, lp, old, a, mask)
        tokens = m.sum().clamp_min(1)
        completions = batch.valid.sum().to(lp.dtype).clamp_min(1)
        metrics = {"reward": (scores * scored).sum() / scored.sum().clamp_min(1), "reward_std": std.mean(),
                   "frac_reward_zero_std": (std < 1e-8).to(lp.dtype).mean()}
        if self.beta > 0 or batch.ref is not None:
            d = torch.where(mask, as_loss_dtype(batch.ref.masked()), 0.0) - lp
            kl3 = torch.exp(d) - d - 1
            kl_term = kl3 * ratio if self.beta > 0 and self.use_bias_correction_kl else kl3
            metrics["kl"] = (kl_term * m).sum() / tokens         # TRL logs the KL term (times the ratio)
            if self.beta > 0:
                per_token = per_token + self.beta * kl_term

        def ratio_mean(flag):  # TRL's global_masked_mean: over tokens, or over completions for sequence ratios
            if sequence_level:
                return (flag[..., 0].to(lp.dtype) * batch.valid).sum() / completions
            return (flag.to(lp.dtype) * m).sum() / tokens

        extrema = {}
        if self.loss_type in CLIPPED:
            low_clip = (unclipped < 1 - self.epsilon) & (a < 0)   # TRL: the ratio after the delta bound
            high_clip = (unclipped > 1 + high) & (a > 0)
            for name, flag in (("low", low_clip), ("high", high_clip), ("region", low_clip | high_clip)):
                metrics[f"clip_ratio/{name}_mean"] = ratio_mean(flag)
            per_completion = completion_ratios(low_clip, high_clip, m, batch.valid, sequence_level)
            metrics["clip_ratio/low_min"] = nan_extremum(per_completion[0], "min")
            metrics["clip_ratio/high_max"] = nan_extremum(per_completion[1], "max")
            extrema = {"clip_ratio/low_min": "min", "clip_ratio/high_max": "max"}
        elif self.loss_type == "cispo":
            metrics["cispo_clip_ratio"] = ratio_mean((ratio > high) & (a > 0))
        elif self.loss_type == "vespo":
            metrics["vespo/phi_seq_mean"] = (phi[..., 0] * batch.valid).sum() / completions
        per_token = per_token * m
        B = lp.shape[0]
        if self.loss_type in ("grpo", "sapo"):
            group_sum = (per_token.sum(-1) / m.sum(-1).clamp_min(1)).sum(-1)
            per_prompt = completions / B                                   # completions per prompt
        elif self.loss_type == "luspo":
            group_sum = per_token.sum((-1, -2))                            # sum over tokens, mean over completions
            per_prompt = completions / B
        else:
            group_sum = per_token.sum((-1, -2))
            per_prompt = tokens / B                                        # completion tokens per prompt
            if self.loss_type in ("dapo", "cispo", "vespo") and "tokens_per_prompt" in batch.extras:
                # clamped as TRL clamps num_items_in_batch: a batch with no trained token (all masked) gives 0, not
                # 0 / 0 (a NaN loss, and a step skipped as non-finite)
                per_prompt = torch.as_tensor(batch.extras["tokens_per_prompt"], dtype=lp.dtype,
                                             device=lp.device).clamp_min(1e-6)
            if self.loss_type == "dr_grpo":
                per_prompt = completions / B * (self.max_completion_length or lp.shape[-1])
        losses = group_sum / per_prompt
        counts_extra = {}
        if self.entropy_bonus:
            losses = self._minus_entropy_bonus(losses, batch, m, entropy_mask, metrics, counts_extra)
        # reward averages the valid completions, kl and the clip ratios the completion tokens: their counts, so that
        # the step's mean over micro-batches and ranks is the exact one (ObjectiveOutput.metric_counts)
        valid_tokens, n_valid = m.sum(), batch.valid.sum().to(lp.dtype)
        ratio_count = n_valid if sequence_level else valid_tokens
        counts = {"reward": scored.sum().to(lp.dtype), "kl": valid_tokens, "vespo/phi_seq_mean": n_valid,
                  **{k: ratio_count for k in metrics if k.startswith("clip_ratio/") or k == "cispo_clip_ratio"}}
        counts = {**{k: v for k, v in counts.items() if k in metrics}, **counts_extra}
        return ObjectiveOutput(losses.mean(), losses, {k: v.detach() for k, v in metrics.items()}, counts,
                               metric_extrema=extrema)

    def _masked_policy_term(self, per_token, batch, lp, old, a, mask):
        """The policy term times TRL 1.16's two masks, before the KL term is added (TRL's order): the off-policy
        sequence mask (off_policy_mask_threshold; the sampling policy's log-probs are old_logps, lp detached without
        them, as TRL's without vLLM) and the high-entropy token mask (top_entropy_quantile < 1; extras
        "token_entropy" [B, G, T], and "entropy_threshold", the cut over every process's tokens, when the trainer
        gathers them: preflab.objectives._grpo_losses). The tokens' normaliser is unchanged: a masked token still
        counts in it (TRL's)."""
        if self.off_policy_mask_threshold is not None:
            per_token = per_token * off_policy_sequence_mask(a, lp, old, mask.to(lp.dtype),
                                                             self.off_policy_mask_threshold)
        entropy_mask = None
        if self.top_entropy_quantile < 1:
            entropy = torch.as_tensor(batch.extras["token_entropy"], device=lp.device).detach()
            threshold = batch.extras.get("entropy_threshold")
            entropy_mask = high_entropy_mask(entropy, mask, 1 - self.top_entropy_quantile,
                                             None if threshold is None else torch.as_tensor(threshold))
            per_token = per_token * entropy_mask
        return per_token, entropy_mask

    def _minus_entropy_bonus(self, losses, batch, m, entropy_mask, metrics, counts):
        """losses - c H (TRL 1.16's entropy bonus, L = L_policy - c H, whatever the loss type's normalisation):
        H = sum_t H_t m'_t / max(sum_t m'_t, 1), the mean token entropy over the trained tokens m' (the high-entropy
        ones with top_entropy_quantile), with gradient (extra "token_entropy"); c = entropy_coef, or with
        use_adaptive_entropy the extra "entropy_coef" the trainer's controller applies this step (preflab.online.
        entropy_control). Every prompt's loss gets -c H, so their mean does; H is logged as entropy_bonus/entropy
        (with its token count: the step's exact mean is what the controller compares with entropy_target)."""
        entropy = torch.as_tensor(batch.extras["token_entropy"], device=losses.device).to(losses.dtype)
        used = m if entropy_mask is None else m * entropy_mask
        count = used.sum()
        H = (entropy * used).sum() / count.clamp(min=1.0)
        if self.use_adaptive_entropy and "entropy_coef" not in batch.extras:
            raise PreflabError("GRPO with use_adaptive_entropy needs batch.extras['entropy_coef'], the coefficient "
                               "its controller applies this step (preflab.online.entropy_control); the online run "
                               "gives it.")
        coef = batch.extras.get("entropy_coef", self.entropy_coef)
        metrics["entropy_bonus/entropy"] = H
        counts["entropy_bonus/entropy"] = count.detach()
        return losses - coef * H

    @classmethod
    def example_extras(cls, batch) -> dict:
        # fixed sampling-policy log-probs: with the default (lp detached) the loss value does not move with lp
        # while its gradient does (the surrogate's purpose), which a finite-difference check cannot follow
        return {"old_logps": batch.policy.token_logps.detach().clone()}


OBJECTIVE = GRPO
