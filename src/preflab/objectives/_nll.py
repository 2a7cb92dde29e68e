"""SFT / NLL terms on the chosen side, with the aggregation over tokens made explicit (methods/objectives.md §C #6).

    sum               -S_theta(y_w)                                   per example (token sum)
    seq_mean          -S_theta(y_w) / |y_w|                           per example (token mean), then batch mean
    batch_token_mean  -sum_i S_theta(y_w,i) / sum_i |y_w,i|           one value for the batch (TRL's `sft`), broadcast
"""
from torch import Tensor

from preflab.errors import ConfigError
from preflab.objectives.base import SequenceLogps, as_loss_dtype

NLL_AGGS = ("sum", "seq_mean", "batch_token_mean")


def check_agg(agg: str, owner: str) -> None:
    if agg not in NLL_AGGS:
        raise ConfigError(f"{owner}: nll_agg must be one of {NLL_AGGS}, got {agg!r}.")


def nll(seq: SequenceLogps, agg: str) -> Tensor:
    """[B] negative log-likelihood of each response under `agg`; its batch mean is the NLL term."""
    total = as_loss_dtype(seq.sum)
    if agg == "sum":
        return -total
    length = seq.length.to(total.dtype)
    if agg == "seq_mean":
        return -total / length.clamp_min(1)
    return (-total.sum() / length.sum().clamp_min(1)).expand_as(total)
