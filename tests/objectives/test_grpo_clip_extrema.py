"""GRPO's clip_ratio/low_min and clip_ratio/high_max equal TRL 1.16's (trl/trainer/grpo_trainer.py,
GRPOTrainer._compute_loss, "Log the metrics": masked_seq_mean of is_low_clipped / is_high_clipped per completion,
accelerator.gather over the processes, nanmin / nanmax, one value per compute_loss call that log() averages, NaN values
left out). The oracle is TRL's own _compute_loss (tests/objectives/test_trl_parity.py's stand-in trainer) with a
recording `gather`, so the per-completion values and the nanmin / nanmax are TRL's code; the gather across processes is
the concatenation of the ranks' values, rank order, as accelerator.gather returns it.
"""
import math
from types import SimpleNamespace

import pytest
import torch

from preflab.objectives import ListBatch, SequenceLogps, get_objective

pytest.importorskip("trl.trainer.grpo_trainer")
from test_trl_parity import _grpo_trl_loss  # noqa: E402
from trl.trainer.utils import nanmax, nanmin  # noqa: E402

B, G, T = 2, 3, 5
OPTIONS = {"loss_type": "dapo", "epsilon": 0.2, "epsilon_high": 0.28}


def rank_data(rank: int, index: int, noise: float = 0.5):
    """(lp, old, mask, advantages) of micro-batch `index` of rank `rank`, off-policy (old log-probs far enough to
    clip), uneven lengths with one completion of length 0 (NaN in TRL's masked_seq_mean). Even micro-batches: every
    advantage negative and the old log-probs higher, so that every completion has low-clipped tokens (a low_min
    above 0); odd ones: mixed advantages (high_max). Rank 1's micro-batch 1 has every completion masked (no value
    there: the other rank's alone counts). `noise`: the old log-probs' spread."""
    g = torch.Generator().manual_seed(33 + 10 * rank + index)  # 33: the ranks' extrema differ
    lengths = torch.randint(2, T + 1, (B, G), generator=g)
    lengths[0, 0] = 0
    if rank == 1 and index == 1:
        lengths.zero_()
    mask = torch.arange(T) < lengths.unsqueeze(-1)
    lp = (-torch.rand(B, G, T, generator=g, dtype=torch.float64) * 2) * mask
    shift = 0.4 if index % 2 == 0 else 0.0
    old = (lp + shift + noise * torch.randn(B, G, T, generator=g, dtype=torch.float64)) * mask
    adv = torch.randn(B, G, generator=g, dtype=torch.float64)
    return lp, old, mask, -adv.abs() if index % 2 == 0 else adv


def preflab_output(lp, old, mask, adv, **options):
    batch = ListBatch(SequenceLogps(lp, mask), torch.zeros(B, G, dtype=torch.float64),
                      extras={"advantages": adv, "old_logps": old})
    return get_objective("grpo", **{**OPTIONS, **options})(batch)


def trl_gathered(lp, old, mask, adv, level="token", delta=None, loss_type="dapo"):
    """The two tensors TRL's _compute_loss passes to accelerator.gather (the low / high masked_seq_mean per
    completion), on this micro-batch of one rank."""
    seen = []
    flat = lambda x: x.reshape(B * G, *x.shape[2:])  # noqa: E731
    _grpo_trl_loss(flat(lp), flat(old), flat(lp), flat(mask), adv.reshape(-1), loss_type, 0.0, OPTIONS["epsilon"],
                   OPTIONS["epsilon_high"], level, T, delta=delta, metrics={},
                   gather=lambda x: seen.append(x.clone()) or x)
    low, high = seen
    return low, high


@pytest.mark.parametrize("loss_type,level,delta", [("dapo", "token", None), ("grpo", "token", 1.3),
                                                   ("bnpo", "token", None), ("dr_grpo", "token", None),
                                                   ("dapo", "sequence", None), ("luspo", "sequence", 1.5)])
def test_grpo_low_min_high_max_equal_trl_1_16_on_one_micro_batch(loss_type, level, delta):
    """One micro-batch, one process: the objective's clip_ratio/low_min (high_max) is TRL's nanmin (nanmax) of the
    per-completion clipped fractions, a completion of length 0 left out (token level), for every clipped-surrogate
    loss type, at token and sequence level, with and without delta."""
    highest = 0.0
    for index in range(4):
        lp, old, mask, adv = rank_data(0, index, noise=2.0 if level == "sequence" else 0.5)  # sequence: a mean
        out = preflab_output(lp, old, mask, adv, loss_type=loss_type, importance_sampling_level=level, delta=delta)
        low, high = trl_gathered(lp, old, mask, adv, level, delta, loss_type)
        assert out.metric_extrema == {"clip_ratio/low_min": "min", "clip_ratio/high_max": "max"}
        assert out.metrics["clip_ratio/low_min"].item() == pytest.approx(nanmin(low).item(), abs=1e-7)
        assert out.metrics["clip_ratio/high_max"].item() == pytest.approx(nanmax(high).item(), abs=1e-7)
        highest = max(highest, nanmin(low).item(), nanmax(high).item())
    assert math.isnan(low[0].item()) == (level == "token")  # the length-0 completion: NaN in TRL at token level
    assert 0 < highest  # some clipping on every completion (low_min) or on some (high_max)


def test_grpo_low_min_is_nan_when_no_completion_has_a_token():
    """Every completion masked: TRL's nanmin of all-NaN values is NaN (its log() then leaves the value out)."""
    lp, old, mask, adv = rank_data(1, 1)
    out = preflab_output(lp, old, mask, adv)
    low, high = trl_gathered(lp, old, mask, adv)
    assert math.isnan(nanmin(low).item()) and math.isnan(out.metrics["clip_ratio/low_min"].item())
    assert math.isnan(out.metrics["clip_ratio/high_max"].item())


def run_step(rank: int, micro_batches: int, accelerator=None, zero_index=None):
    """optimizer_step over this rank's micro-batches (rank_data); micro-batch `zero_index` is a weight-0 one (its
    examples scored, its losses dropped: the online loop's padding micro-batch). Returns the StepResult."""
    from preflab.step import optimizer_step

    weight = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
    opt = torch.optim.SGD([weight], lr=0.0)

    def forward(mb):
        lp, old, mask, adv = rank_data(rank, mb.index)
        out = preflab_output((lp + weight) * mask, old, mask, adv)
        if not mb.row_ids:
            out.losses, out.loss = out.losses[:0], out.loss * 0.0
        return out

    mbs = [SimpleNamespace(index=i, row_ids=[] if i == zero_index else list(range(B))) for i in range(micro_batches)]
    return optimizer_step(mbs, forward, [weight], opt, accelerator=accelerator)


def trl_window(ranks: int, micro_batches: int, zero=()):
    """TRL's logged value: per micro-batch, nanmin / nanmax of the ranks' gathered values (rank order; a rank's
    weight-0 micro-batch (rank, index) in `zero` has none), then log()'s mean of the non-NaN values."""
    values = {"clip_ratio/low_min": [], "clip_ratio/high_max": []}
    for i in range(micro_batches):
        parts = [trl_gathered(*rank_data(r, i)) for r in range(ranks) if (r, i) not in zero]
        if not parts:  # every rank's micro-batch has weight 0: no compute_loss call in TRL
            continue
        values["clip_ratio/low_min"].append(nanmin(torch.cat([low for low, _ in parts])).item())
        values["clip_ratio/high_max"].append(nanmax(torch.cat([high for _, high in parts])).item())
    return {k: (sum(x for x in v if not math.isnan(x)) / sum(not math.isnan(x) for x in v),
                sum(not math.isnan(x) for x in v)) for k, v in values.items()}


def test_grpo_step_logs_the_mean_of_the_micro_batches_extrema_as_trl():
    """One process, 4 micro-batches (gradient accumulation), one of them weight 0: the step's value is the mean of
    the other micro-batches' min / max (TRL's log() of one value per compute_loss call), its count their number; a
    logging window of two steps averages by those counts."""
    from preflab.runlog import average_results

    result = run_step(0, 4, zero_index=2)
    want = trl_window(1, 4, zero={(0, 2)})
    for name, (value, count) in want.items():
        assert result.metrics[name] == pytest.approx(value, abs=1e-7)
        assert result.metric_counts[name] == count == 3
    other = run_step(0, 2)  # micro-batches 0 and 1: every one counts
    window = average_results([result, other])
    want_other = trl_window(1, 2)
    for name in want:
        assert window[name] == pytest.approx((want[name][0] * 3 + want_other[name][0] * 2) / 5, abs=1e-7)
