"""The micro-batch contract, run over every registered objective: an objective either splits (the sum of its
per-example losses over a micro-batch of 2k examples equals the sums over its two halves of k, in value and in
gradient) or declares `micro_batch_statistic` (preflab.objectives.base.couples_micro_batch), and a declaration is
not stale (the halves differ on a generic batch).

Why it matters: preflab.step backpropagates sum(out.losses) / (examples of the step) for every micro-batch, so a
loss that splits is the same on 2 processes x b rows, 1 process x 2b rows and accumulation 2 x b; one that holds a
statistic of its micro-batch (KTO's reference point, a token mean over the micro-batch) is the same only when the
micro-batches are, and preflab.resume_check keeps a resumed run's micro-batches only when it is declared.
"""
import dataclasses

import pytest
import torch

from preflab.objectives import ListBatch, PairBatch, SequenceLogps, UnpairedBatch, get_objective, objective_class
from preflab.objectives.base import couples_micro_batch
from preflab.objectives.contract import loss_sum_and_gradients, split_batch

from test_contract import NAMES, _policy_leaves, _seq, make_batch

# Parameter settings whose declaration differs from the defaults' (every objective runs with its defaults too), with
# the extras the trainer gives each micro-batch of the step for them (the same for the whole batch and its halves).
VARIANTS = [
    ("sft", {"token_mean": "step"}, ("examples_per_token",)),  # the offline Trainer's N / T of the whole step
    ("cpo", {"cpo_alpha": 0.0}, ()),                            # no NLL term: per pair
    ("simpo", {"cpo_alpha": 1.0}, ()),                          # the micro-batch's chosen-token NLL mean
    ("alphapo", {"cpo_alpha": 1.0}, ()),
    ("orpo", {"nll_scope": "response"}, ()),
    ("flex_dpo", {"sft_weight": 1.0, "nll_agg": "batch_token_mean"}, ()),
    ("flex_dpo", {"sft_weight": 1.0, "nll_agg": "seq_mean"}, ()),
    ("rpo", {"nll_agg": "batch_token_mean"}, ()),
    ("rpo", {"nll_agg": "sum"}, ()),
    ("grpo", {"loss_type": "grpo"}, ()),                        # per completion: splits on all-valid lists
    ("grpo", {"loss_type": "sapo"}, ()),
    ("grpo", {"loss_type": "luspo", "importance_sampling_level": "sequence"}, ()),
    ("grpo", {"loss_type": "bnpo"}, ()),                        # the micro-batch's completion tokens
    ("grpo", {"loss_type": "grpo", "scale_rewards": "batch"}, ()),  # the std of the micro-batch's rewards
    ("grpo", {"loss_type": "dr_grpo", "max_completion_length": 6}, ()),
    ("grpo", {"loss_type": "dr_grpo"}, ()),                     # the micro-batch's padded width
    ("grpo", {"loss_type": "grpo", "entropy_coef": 0.1}, ("token_entropy",)),  # the micro-batch's token entropy
    ("grpo", {"loss_type": "grpo", "top_entropy_quantile": 0.5}, ("token_entropy",)),  # its entropy quantile
    ("rloo", {"normalize_advantages": True}, ()),               # mean / std over the micro-batch
]

# Registered objectives that hold a statistic of the batch which is the same for any split, so they need no
# declaration; each with the reason. Empty today: every objective is either shown to split or declares it.
EXEMPT: dict[str, str] = {}

CASES = [(n, {}, ()) for n in NAMES] + VARIANTS


def _list_batch(cls):
    """A ListBatch of 4 prompts x 3 responses whose rows all differ (the contract's list batch repeats one row, on
    which a statistic of the batch equals that of any half)."""
    lens = torch.tensor([[3, 4, 2], [5, 2, 4], [1, 6, 3], [4, 4, 5]])
    pv = torch.tensor([[-4.0, -6.0, -5.0], [-2.0, -7.5, -3.0], [-1.0, -9.0, -4.5], [-6.0, -3.5, -8.0]])
    rv = pv + torch.tensor([[0.5, -0.5, 0.0], [0.3, 0.2, -0.6], [-0.4, 0.7, 0.1], [0.2, -0.3, 0.4]])
    scores = torch.tensor([[1.0, 0.0, 0.5], [0.2, 0.9, 0.4], [3.0, -1.0, 0.0], [0.7, 0.7, 0.1]])
    batch = ListBatch(_seq(pv, lens, requires_grad=True), scores, _seq(rv, lens))
    batch.extras.update(cls.example_extras(batch))
    return batch


def generic_batch(cls):
    """The contract's batch of 4 examples with every row different, so a statistic of 4 rows is not that of 2: pairs
    as the contract builds them, unpaired with labels (T, F, T, T) (halves with one and two desirable examples: a
    per-label mean of a micro-batch shows), lists with distinct rows."""
    if cls.batch_type is ListBatch:
        return _list_batch(cls)
    batch = make_batch(cls, requires_grad=True)
    if cls.batch_type is UnpairedBatch:
        batch.label = torch.tensor([True, False, True, True])
    return batch


def split(batch, index):
    """The micro-batch of rows `index` of `batch` (contract.split_batch), a ListBatch padded to its own longest
    response as the trainer pads each micro-batch."""
    part = split_batch(batch, index)
    return _trimmed(part) if isinstance(part, ListBatch) else part


def _trimmed(batch):
    """A ListBatch padded to its own longest response, as the trainer pads each micro-batch: every per-token
    tensor (log-probs [B, K, T], extras [B, K, T, ...]) cut to T' = the longest response of these rows."""
    T, width = batch.policy.mask.shape[-1], int(batch.policy.mask.sum(-1).max())
    cut = lambda v: v[:, :, :width] if torch.is_tensor(v) and v.dim() >= 3 and v.shape[2] == T else v  # noqa: E731
    sides = {f: SequenceLogps(cut(getattr(batch, f).token_logps), cut(getattr(batch, f).mask))
             for f in ("policy", "ref") if getattr(batch, f) is not None}
    return dataclasses.replace(batch, **sides, extras={k: cut(v) for k, v in batch.extras.items()})


def _step_extras(batch, wanted: tuple) -> dict:
    """The extras the trainer gives the micro-batches of the step (VARIANTS): numbers of the whole step, and the
    policy's token entropies (one per token: split with their rows)."""
    out = {}
    for key in wanted:
        if key == "examples_per_token":  # preflab.loops.offline: N pairs / T chosen tokens of the step
            out[key] = batch.size / batch.policy_chosen.mask.sum().item()
        elif key == "tokens_per_prompt":  # preflab.online.run: the step's trained tokens per prompt
            out[key] = (batch.policy.mask & batch.valid.unsqueeze(-1)).sum().item() / batch.size
        elif key == "token_entropy":  # preflab.scoring.lm.token_entropy [B, G, T]
            out[key] = torch.linspace(0.1, 2.0, batch.policy.mask.numel(), dtype=torch.float64).reshape(
                batch.policy.mask.shape).flip(-1) * batch.policy.mask
    return out


def whole_and_halves(objective, batch):
    """(whole, halves): the step's loss sum for the batch as one micro-batch and as two of k = size / 2 rows (what
    preflab.step backpropagates before dividing by the step's example count, the same in both), each with its
    gradients wrt the policy's token log-probs (contract.loss_sum_and_gradients)."""
    leaves, k, every = _policy_leaves(batch), batch.size // 2, torch.arange(batch.size)
    return tuple(loss_sum_and_gradients(objective, batch, leaves, parts, split=split)
                 for parts in ([every], [every[:k], every[k:]]))


def _splits(whole, halves) -> bool:
    (w, gw), (h, gh) = whole, halves
    return torch.allclose(w, h, rtol=1e-9, atol=1e-6) and all(
        torch.allclose(a, b, rtol=1e-9, atol=1e-6) for a, b in zip(gw, gh))


@pytest.mark.parametrize("name,params,trainer_extras", CASES,
                         ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in p.items()) or 'defaults'}" for n, p, _ in CASES])
def test_an_objective_splits_over_micro_batches_or_declares_it(name, params, trainer_extras):
    """Not declared: the loss sum and its gradient over 4 rows equal those of the halves of 2 (float64, 1e-6). Declared:
    they differ on the generic batch (a declaration nothing needs would refuse resumes for no reason)."""
    cls = objective_class(name)
    objective = get_objective(name, **params)
    batch = generic_batch(cls)
    batch.extras.update(_step_extras(batch, trainer_extras))
    whole, halves = whole_and_halves(objective, batch)
    if name in EXEMPT:
        pytest.skip(EXEMPT[name])  # pragma: no cover - the list is empty; kept for a reasoned exemption
    if couples_micro_batch(objective):
        assert not _splits(whole, halves), (
            f"{name} {params} declares micro_batch_statistic, but its loss splits over micro-batches: "
            f"{whole[0].item()} (4 rows) == {halves[0].item()} (2 + 2); remove the declaration")
    else:
        assert torch.allclose(whole[0], halves[0], rtol=1e-9, atol=1e-6), (
            f"{name} {params}: the loss sum of 4 rows {whole[0].item()} != {halves[0].item()} over its halves of 2: "
            "it holds a statistic of its micro-batch; declare micro_batch_statistic (with the reason) so that "
            "resume_check keeps the micro-batches")
        for a, b in zip(*(whole[1], halves[1])):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-6)


def test_every_registered_objective_is_checked_or_exempt_with_a_reason():
    """No silent skips: the cases above run every registered objective, and an exemption names a registered one
    and gives a reason."""
    assert {n for n, _, _ in CASES} == set(NAMES)
    assert set(EXEMPT) <= set(NAMES) and all(len(reason) > 20 for reason in EXEMPT.values())


def test_the_generic_batches_have_distinct_halves():
    """The check means something only when the halves differ from each other (a repeated row would hide a batch
    mean): for every kind of batch the first half's policy log-prob sums differ from the second's."""
    for name in ("dpo", "kto", "rrhf"):
        batch = generic_batch(objective_class(name))
        side = batch.policy_chosen if isinstance(batch, PairBatch) else batch.policy
        first, second = split(batch, torch.arange(0, 2)), split(batch, torch.arange(2, 4))
        get = (lambda b: b.policy_chosen.sum) if isinstance(batch, PairBatch) else (lambda b: b.policy.sum)
        assert not torch.allclose(get(first), get(second)), name
        assert side.token_logps.dtype == torch.float64


ONLINE = [("grpo", {}), ("grpo", {"scale_rewards": "batch"}), ("grpo", {"loss_type": "cispo"}),
          ("grpo", {"loss_type": "vespo"}), ("rloo", {}), ("rloo", {"normalize_advantages": True}),
          ("grpo", {"loss_type": "dr_grpo", "max_completion_length": 16}),
          # these still read each micro-batch online (base.micro_batch_statistic_parts(online=True)): they do not split
          ("grpo", {"loss_type": "bnpo"}), ("grpo", {"loss_type": "dr_grpo"}), ("grpo", {"entropy_coef": 0.1}),
          ("grpo", {"top_entropy_quantile": 0.5})]


@pytest.mark.parametrize("name,params", ONLINE)
def test_online_group_objectives_split_with_the_online_runs_step_extras(name, params):
    """preflab.online.run gives every micro-batch the round's advantages (normalised over the round, not the
    micro-batch) and the step's completion tokens per prompt (tokens_per_prompt); with them the GRPO family's losses
    split over micro-batches of whole prompt groups (a ListBatch row is one prompt's group of completions, and
    OnlineRun.micro_batches deals out whole examples), whatever micro_batch_statistic says of offline batches;
    except where micro_batch_statistic_parts(online=True) names a part (bnpo's normaliser, dr_grpo's padded width without
    max_completion_length, the entropy bonus and top_entropy_quantile: the micro-batch's tokens), which
    resume_check reads to refuse a resume on another number of processes."""
    from preflab.objectives.base import micro_batch_statistic_parts
    from preflab.objectives.grpo import group_advantages
    from preflab.objectives.rloo import rloo_advantages

    objective = get_objective(name, **params)
    batch = generic_batch(objective_class(name))
    scores = batch.scores.to(torch.float64)
    adv = group_advantages(scores, batch.valid, objective.scale_rewards)[0] if name == "grpo" else \
        rloo_advantages(scores, objective.normalize_advantages)
    batch.extras.update(advantages=adv, **_step_extras(batch, ("tokens_per_prompt", "token_entropy")))
    whole, halves = whole_and_halves(objective, batch)
    assert _splits(whole, halves) == (not micro_batch_statistic_parts(objective, online=True)), (
        whole[0].item(), halves[0].item())
    without = generic_batch(objective_class(name))  # the same objective on offline lists, for contrast
    without.extras.update(_step_extras(without, ("token_entropy",)))
    assert _splits(*whole_and_halves(objective, without)) == (not couples_micro_batch(objective))


def test_weighted_sums_and_wpo_weighting_split_as_their_parts():
    """A weighted sum adds its parts' per-example losses and WPO multiplies each pair's loss by its own weight:
    both split over micro-batches when every part does, and couples_micro_batch says so; with a part that declares
    the statistic (cpo's NLL term) the sum is declared and differs."""
    from preflab.objectives._wpo import WPOWeighted

    for parts, coupled in ((["sigmoid", "ipo"], False), (["sigmoid", "cpo"], True)):
        batch = generic_batch(objective_class("dpo"))
        batch.extras.update(objective_class("cpo").example_extras(batch))
        batch.extras["chosen_wpo"] = batch.policy_chosen.token_logps.detach() * 0.1 - 0.5
        batch.extras["rejected_wpo"] = batch.policy_rejected.token_logps.detach() * 0.2 - 0.3
        for objective in (get_objective(parts), WPOWeighted(get_objective(parts))):
            assert couples_micro_batch(objective) == coupled, (parts, objective)
            assert _splits(*whole_and_halves(objective, batch)) == (not coupled), (parts, objective)


def test_check_objective_refuses_a_user_objective_with_an_undeclared_micro_batch_statistic():
    """check_objective (the contract anyone runs on their own objective, `preflab lab check`) computes the batch's
    loss and its halves' too: a user's DPO variant that centres the margins on the batch's mean is refused with
    the declaration to add and the numbers; declared, it passes and says so; plain DPO splits."""
    from preflab.errors import PreflabError
    from preflab.objectives import check_objective

    dpo = objective_class("dpo")
    Centred = type(_centred_dpo())
    Declared = dataclasses.make_dataclass("DeclaredCentredDPO", [], bases=(Centred,), frozen=True,
                                          namespace={"micro_batch_statistic": True})
    with pytest.raises(PreflabError, match=r"CentredDPO: the losses of this batch of 4 sum to .* halves of 2 and 2 "
                                           r"\(sum .*micro_batch_statistic = True"):
        check_objective(Centred(), generic_batch(dpo))
    assert check_objective(Declared(), generic_batch(dpo))[-1] == "micro_batch_statistic (declared): loss not split"
    assert check_objective(dpo(), generic_batch(dpo))[-1].startswith("splits over micro-batches")


def _centred_dpo():
    """A user's DPO variant whose loss centres the margins on the batch mean (a statistic of its micro-batch)."""
    from preflab.objectives.base import ObjectiveOutput, logratios

    def centred(self, batch):
        h_w, h_l = logratios(batch)
        z = self.beta * (h_w - h_l)
        losses = -torch.nn.functional.logsigmoid(z - z.mean())
        return ObjectiveOutput(losses.mean(), losses)

    return dataclasses.make_dataclass("CentredDPO", [], bases=(objective_class("dpo"),), frozen=True,
                                      namespace={"compute": centred})()


def _pairs(rows: int):
    """The contract's pair batch cut to its first `rows` rows, with policy log-probs that are leaves again."""
    part = split_batch(generic_batch(objective_class("dpo")), torch.arange(rows))
    leaf = lambda s: SequenceLogps(s.token_logps.detach().clone().requires_grad_(True), s.mask)  # noqa: E731
    return dataclasses.replace(part, policy_chosen=leaf(part.policy_chosen),
                               policy_rejected=leaf(part.policy_rejected))


def test_check_objective_checks_batches_of_two_and_three_naming_each_half():
    """The smallest batch that has halves (2 rows: 1 + 1) is checked too, and an odd batch names halves of k and
    size - k: 3 rows are 1 + 2. Plain DPO passes both."""
    from preflab.errors import PreflabError
    from preflab.objectives import check_objective

    for rows, halves in ((2, "1 and 1"), (3, "1 and 2")):
        with pytest.raises(PreflabError, match=rf"CentredDPO: the losses of this batch of {rows} sum to .* halves of "
                                               rf"{halves} \(sum "):
            check_objective(_centred_dpo(), _pairs(rows))
        assert check_objective(objective_class("dpo")(), _pairs(rows))[-1].startswith("splits over micro-batches")


def test_check_objective_compares_gradients_as_well_as_loss_values():
    """A loss whose value is each pair's own (-logsigmoid(z_i)) but whose gradient flows through the batch mean
    (z_i + (z_i - mean z) - (z_i - mean z).detach()): the loss sums of the batch and of its halves are equal, the
    gradients are not, and preflab.step backpropagates the gradient. Refused."""
    from preflab.errors import PreflabError
    from preflab.objectives import check_objective
    from preflab.objectives.base import ObjectiveOutput, logratios

    def gradient_coupled(self, batch):
        h_w, h_l = logratios(batch)
        z = self.beta * (h_w - h_l)
        centred = z - z.mean()
        losses = -torch.nn.functional.logsigmoid(z + centred - centred.detach())
        return ObjectiveOutput(losses.mean(), losses)

    coupled = dataclasses.make_dataclass("GradientCoupledDPO", [], bases=(objective_class("dpo"),), frozen=True,
                                         namespace={"compute": gradient_coupled})()
    batch = generic_batch(objective_class("dpo"))
    (whole, whole_grads), (halves, half_grads) = whole_and_halves(coupled, batch)
    assert torch.allclose(whole, halves, rtol=1e-12, atol=0)  # the values split ...
    assert not all(torch.allclose(a, b) for a, b in zip(whole_grads, half_grads))  # ... the gradients do not
    with pytest.raises(PreflabError, match="GradientCoupledDPO: the losses of this batch of 4 sum to .* gradient is "
                                           "not the same over its halves of 2 and 2"):
        check_objective(coupled, batch)


def test_split_batch_keeps_the_steps_numbers_and_counts_each_halfs_labels_anew():
    """split_batch keeps a number of the whole step (a float or a 0-dim tensor extra) as it is, slices a per-example
    extra, and drops label_counts (the whole batch's): KTO's per-label metric means of a half are those of a batch
    built from the half's rows alone (its own counts), not divided by the whole batch's counts."""
    kto = get_objective("kto")
    batch = generic_batch(objective_class("kto"))
    batch.label_counts = (3, 1)  # labels T, F, T, T
    batch.extras.update(step_tokens=torch.tensor(7.0), weight=torch.tensor([1.0, 2.0, 3.0, 4.0]))
    half = split_batch(batch, torch.tensor([0, 1]))
    assert half.extras["step_tokens"] is batch.extras["step_tokens"]
    assert torch.equal(half.extras["weight"], torch.tensor([1.0, 2.0]))
    assert half.label_counts is None
    alone = dataclasses.replace(batch, **{f: SequenceLogps(getattr(batch, f).token_logps[:2], getattr(batch, f).mask[:2])
                                          for f in ("policy", "ref", "policy_kl", "ref_kl")
                                          if getattr(batch, f) is not None},
                                label=batch.label[:2], label_counts=None, extras={})
    ours, theirs = kto(half).metrics, kto(alone).metrics
    for name in ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"):
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-12, atol=0)
    assert float(theirs["logps/rejected"]) == pytest.approx(float(batch.policy.sum[1].detach()))  # the one undesirable row


def test_an_online_weighted_sum_reads_each_parts_online_declaration():
    """loss_type [grpo, rloo]: offline, GRPO's default dapo reads its micro-batch (no round advantages); online, with
    the step's extras, neither part does, as each part alone (micro_batch_statistic_parts(online=True))."""
    from preflab.objectives.base import micro_batch_statistic_parts

    both = get_objective(["grpo", "rloo"])
    assert micro_batch_statistic_parts(both) == ["GRPO"]
    assert micro_batch_statistic_parts(both, online=True) == [] == micro_batch_statistic_parts(
        get_objective("grpo"), online=True)
