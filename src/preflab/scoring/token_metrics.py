"""TRL 1.16's DPO token metrics from the scorer's per-token statistics (Scores.token_stats).

For a batch of [chosen_1..B, rejected_1..B] sequences, over response (completion) tokens only, each a ratio of sums
over all tokens of the micro-batch (a per-token mean, not a mean of per-sequence means), 0 without tokens, as
DPOTrainer.compute_loss logs them:

    logits/chosen        sum over chosen tokens of mean_v z_v / number of chosen tokens
    logits/rejected      the same over the rejected tokens
    entropy              sum over chosen and rejected tokens of -sum_v p_v log p_v / number of those tokens
    mean_token_accuracy  number of chosen tokens whose argmax_v z_v is the target / number of chosen tokens

TRL gathers the sums across processes before dividing, per micro-batch. preflab's trainer gives the step each
metric with its token count (`counts`, ObjectiveOutput.metric_counts), and the step sums value x count and count over
the micro-batches, ranks and logging window: the logged value is the ratio of the sums over all of the window's
tokens (TRL averages the micro-batches' ratios, the same value when the micro-batches hold as many tokens).
Evaluation divides the sums over the whole eval set (pair_token_sums), so its values do not depend on the eval
batch size. The values stay on the device (no host sync).

KTO (unpaired_token_sums) logs the same four with the same semantics on its layout [completion_1..B,
mismatched_1..B]: "chosen" are the desirable completions' tokens, "rejected" the undesirable ones', entropy is over
both; the mismatched completions (KTO's reference point only) are left out. A micro-batch without desirable
(undesirable) examples has logits/chosen and mean_token_accuracy (logits/rejected) 0 with a token count of 0, so it
adds nothing to the step's sums (and every micro-batch reports the same names).
"""
from __future__ import annotations

import torch
from torch import Tensor

TOKEN_METRICS = ("logits/chosen", "logits/rejected", "entropy", "mean_token_accuracy")


def _ratio(total: Tensor, count: Tensor) -> Tensor:
    return torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))


def pair_token_metrics(token_stats: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """The four metrics from token_stats [2B, L, 3] (Scores.token_stats: mean logit, entropy, target is argmax)
    and the response mask [2B, L] of [chosen_1..B, rejected_1..B]."""
    return ratios(pair_token_sums(token_stats, mask))


def pair_token_sums(token_stats: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Per metric, [sum over its tokens, number of its tokens] (a [2] tensor): sums of several batches add up."""
    b = mask.shape[0] // 2
    m = mask.to(torch.float32)
    stats = token_stats.detach().to(torch.float32) * m.unsqueeze(-1)
    chosen, rejected = stats[:b].sum((0, 1)), stats[b:].sum((0, 1))  # [3] each
    n_chosen, n_rejected = m[:b].sum(), m[b:].sum()
    return _sums(chosen, rejected, n_chosen, n_rejected)


def unpaired_token_sums(token_stats: Tensor, mask: Tensor, label: Tensor) -> dict[str, Tensor]:
    """pair_token_sums for the unpaired layouts: token_stats [R, L, 3] and mask [R, L] whose first B rows are the
    completions ([completion_1..B, mismatched_1..B] for KTO, R = 2B; the completions only, R = B, for
    apo_zero_unpaired), label [B] on the host (True: desirable, "chosen"). Only the B completions count; a key whose
    side has no example in the batch is left out (module docstring)."""
    b = label.shape[0]
    m = mask[:b].to(torch.float32)
    per_row = (token_stats[:b].detach().to(torch.float32) * m.unsqueeze(-1)).sum(1)  # [B, 3]
    tokens = m.sum(1)  # [B]
    desirable = label.to(device=m.device, dtype=torch.float32)  # [B]
    undesirable = 1.0 - desirable
    return _sums((per_row * desirable[:, None]).sum(0), (per_row * undesirable[:, None]).sum(0),
                 (tokens * desirable).sum(), (tokens * undesirable).sum())


def _sums(chosen: Tensor, rejected: Tensor, n_chosen: Tensor, n_rejected: Tensor) -> dict[str, Tensor]:
    """The four [sum, count] pairs from the chosen and rejected sides' [3] statistic sums and token counts."""
    return {
        "logits/chosen": torch.stack([chosen[0], n_chosen]),
        "logits/rejected": torch.stack([rejected[0], n_rejected]),
        "entropy": torch.stack([chosen[1] + rejected[1], n_chosen + n_rejected]),
        "mean_token_accuracy": torch.stack([chosen[2], n_chosen]),
    }


def ratios(sums: dict[str, Tensor]) -> dict[str, Tensor]:
    """The metrics from pair_token_sums (or their sum over batches)."""
    return {key: _ratio(value[0], value[1]) for key, value in sums.items()}


def counts(sums: dict[str, Tensor]) -> dict[str, Tensor]:
    """The token count behind each metric of `ratios(sums)` (ObjectiveOutput.metric_counts)."""
    return {key: value[1] for key, value in sums.items()}
