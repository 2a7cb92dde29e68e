"""What preflab's KTO row order changes against TRL 1.16's KTOTrainer (docs/objectives.md, "KTO's row order"):

TRL reads the rows sequentially (KTOConfig's train_sampling_strategy default) in its unpaired order, and each batch's
KL pairs are that batch's completions rotated by one (add_kl_completion_ids on chunks of per_device_train_batch_size).
preflab draws the seeded random order every task uses and rotates inside each micro-batch in TRL's unpaired order
(preflab.loops.kinds.UnpairedKind.mismatched). On the same micro-batch in the same order the pairing is TRL's (tests/
loops/test_kto_precompute.py, tests/loops/test_unpaired_trl_forward.py); what differs is which rows share a batch and
in which order, and that changes KTO's per-step loss through its reference point z0, never apo_zero_unpaired's (no
KL pairs). TRL's sequential order of a pairwise file puts up to 1000 rows' desirable completions before their
undesirable ones, so its first batches hold one label only."""
import torch

from preflab.data.mismatched import trl_unpaired_order
from preflab.data.tokenize import TokenizedUnpaired
from preflab.loops.kinds import UnpairedKind
from preflab.objectives import SequenceLogps, get_objective
from preflab.objectives.base import UnpairedBatch

# log pi(y_j | x_i) - log pi_ref(y_j | x_i) of prompt i with completion j: the KL pairs' policy-minus-reference
# log-ratio (the diagonal: each example's own completion)
RATIO = torch.tensor([[0.9, 0.1, 2.0, 0.4],
                      [0.3, -0.5, 0.2, 1.5],
                      [1.2, 0.0, 0.7, -0.2],
                      [0.6, 2.5, 0.1, 0.3]])


def _rows() -> list[TokenizedUnpaired]:
    """Four KTO rows (one example per row): prompt i = [i], completion i = [10 + i], labels T, F, T, F."""
    return [TokenizedUnpaired(i, [i], [10 + i], i % 2 == 0) for i in range(4)]


def _batch(items) -> UnpairedBatch:
    """The UnpairedBatch of `items` in this order with RATIO's log-ratios (reference log-probs 0), the KL sides
    paired as the micro-batch's collate pairs them."""
    def logps(values):
        return SequenceLogps(torch.tensor(values).unsqueeze(1), torch.ones(len(values), 1, dtype=torch.bool))

    prompts = [x.prompt_ids[0] for x in items]
    kl = [RATIO[p, m[0] - 10].item() for p, m in zip(prompts, UnpairedKind.mismatched(items))]
    own = [RATIO[p, p].item() for p in prompts]
    zeros = [0.0] * len(items)
    return UnpairedBatch(policy=logps(own), ref=logps(zeros), policy_kl=logps(kl), ref_kl=logps(zeros),
                         label=torch.tensor([x.label for x in items]))


def test_the_same_rows_in_another_order_change_ktos_loss_through_z0_only():
    rows = _rows()
    trl_order = [rows[i] for i in (0, 1, 2, 3)]  # TRL's batch: its own order, rotated by one
    other = [rows[i] for i in (0, 2, 1, 3)]      # the same rows drawn in another order
    # TRL's pairs: x_1 + y_4, x_2 + y_1, x_3 + y_2, x_4 + y_3 (0-based: prompt i takes completion i - 1)
    assert [m[0] - 10 for m in UnpairedKind.mismatched(trl_order)] == [3, 0, 1, 2]
    assert [m[0] - 10 for m in UnpairedKind.mismatched(other)] == [3, 0, 2, 1]  # prompt 2 takes 0, 1 takes 2
    kto = get_objective("kto", beta=0.1)
    a, b = kto(_batch(trl_order)), kto(_batch(other))
    z_trl = max(0.0, (0.4 + 0.3 + 0.0 + 0.1) / 4)  # RATIO[0,3], RATIO[1,0], RATIO[2,1], RATIO[3,2]: 0.2
    z_other = max(0.0, (0.4 + 1.2 + 0.2 + 2.5) / 4)  # RATIO[0,3], RATIO[2,0], RATIO[1,2], RATIO[3,1]: 1.075
    assert abs(a.metrics["kl"].item() - z_trl) < 1e-6 and abs(b.metrics["kl"].item() - z_other) < 1e-6
    # each example's loss by hand from z0 (desirable: 1 - sigmoid(beta (r - z0)), undesirable: 1 - sigmoid(beta
    # (z0 - r))), listed by row
    def by_hand(z):
        return torch.stack([1 - torch.sigmoid(0.1 * ((RATIO[i, i] - z) if i % 2 == 0 else (z - RATIO[i, i])))
                            for i in range(4)])

    trl_losses, other_losses = a.losses, b.losses[[0, 2, 1, 3]]  # by row
    assert torch.allclose(trl_losses, by_hand(z_trl), atol=1e-6)
    assert torch.allclose(other_losses, by_hand(z_other), atol=1e-6)
    # every row's loss (and so its gradient's weight) moves with the order: a higher z0 raises the desirable rows'
    # losses and lowers the undesirable rows'; with two of each here the batch means nearly cancel (2e-5 apart)
    assert ((other_losses - trl_losses) * torch.tensor([1.0, -1.0, 1.0, -1.0]) > 0.02).all()
    assert abs(a.loss.item() - b.loss.item()) > 1e-6
    # apo_zero_unpaired scores no KL pairs: the same rows give the same loss in any order
    apo = get_objective("apo_zero_unpaired", beta=0.1)
    assert abs(apo(_batch(trl_order)).loss.item() - apo(_batch(other)).loss.item()) < 1e-7


def test_trls_sequential_order_of_a_pairwise_file_puts_one_label_in_each_first_batch():
    """TRL's unpair_preference_dataset lists each block of up to 1000 rows' chosen completions, then their rejected
    ones; read sequentially with batch 8, the first 12 batches of 48 pairs are all desirable, the next 12 all
    undesirable (preflab's seeded random order mixes the labels in every batch)."""
    pairs = [TokenizedUnpaired(r, [r], [100 + 2 * r + side], side == 0) for r in range(48) for side in (0, 1)]
    order = trl_unpaired_order(pairs)
    labels = [pairs[p].label for p in order]
    batches = [labels[i:i + 8] for i in range(0, len(labels), 8)]
    assert [all(b) for b in batches] == [True] * 6 + [False] * 6
    assert [not any(b) for b in batches] == [False] * 6 + [True] * 6
