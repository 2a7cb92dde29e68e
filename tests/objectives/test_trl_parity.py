"""Equality with TRL 1.16's own DPOTrainer loss code, for every DPO loss_type preflab aliases or re-implements.

TRL's `DPOTrainer._compute_loss` is called unbound with a stand-in trainer and a stand-in model that returns fixed
per-token log-probs (TRL 1.16 reads `outputs.log_probs` from its fused LM head), and reference log-probs passed as
precomputed columns. preflab's objective gets the same log-probs; the two losses must agree to 1e-9 in float64.
This pins preflab to TRL's numbers, not to a re-derivation of TRL's formulas. Skipped where trl is not installed
(`pip install trl==1.16.0`, no extra dependencies needed).
"""
import types
from collections import defaultdict

import pytest
import torch

from preflab.objectives import PairBatch, SequenceLogps, get_objective

trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")

B, T = 4, 7
LENGTHS_W = torch.tensor([3, 5, 2, 6])
LENGTHS_L = torch.tensor([4, 2, 6, 1])


def _token_logps(seed: int, lengths: torch.Tensor) -> torch.Tensor:
    """[B, T-1] negative per-token log-probs, zero after each response's length."""
    g = torch.Generator().manual_seed(seed)
    values = -torch.rand(B, T - 1, generator=g, dtype=torch.float64) * 3.0
    return values * (torch.arange(T - 1) < lengths.unsqueeze(1))


def _completion_mask(lengths: torch.Tensor) -> torch.Tensor:
    """[B, T]: a one-token prompt, then `length` completion tokens (TRL shifts it by one)."""
    pos = torch.arange(T)
    return ((pos >= 1) & (pos <= lengths.unsqueeze(1))).long()


class _Model(torch.nn.Module):
    """Stands in for TRL 1.16's fused-LM-head model output: per-token log-probs of the labels."""

    def __init__(self, log_probs):
        super().__init__()
        self.log_probs = log_probs

    def forward(self, **kwargs):
        zeros = torch.zeros_like(self.log_probs)
        return types.SimpleNamespace(log_probs=self.log_probs, entropy=zeros, mean_logits=zeros,
                                     is_top1=zeros.bool())


def _accelerator():
    return types.SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x)


def trl_loss(loss_type, policy_w, policy_l, ref_w, ref_l, beta=0.1, label_smoothing=0.0,
             f_divergence_type="reverse_kl", f_alpha=0.5, discopop_tau=0.05, ld_alpha=None, loss_weights=None):
    """TRL 1.16's loss and logged metrics for one batch (loss_type: one name or TRL's list, with loss_weights). With
    ld_alpha the reference runs through a stand-in reference model (TRL weights its tokens itself); otherwise its
    sums come in as precomputed columns."""
    loss_types = list(loss_type) if isinstance(loss_type, list) else [loss_type]
    log_probs = torch.cat([policy_w, policy_l]).requires_grad_(True)
    model = _Model(log_probs)
    model.is_gradient_checkpointing = False
    trainer = types.SimpleNamespace(
        model=model, accelerator=_accelerator(), aux_loss_enabled=False, ld_alpha=ld_alpha,
        precompute_ref_logps=ld_alpha is None, ref_model=_Model(torch.cat([ref_w, ref_l])),
        f_divergence_type=f_divergence_type, f_alpha_divergence_coef=f_alpha, loss_types=loss_types,
        loss_weights=loss_weights or [1.0] * len(loss_types), beta=beta, label_smoothing=label_smoothing, use_weighting=False,
        args=types.SimpleNamespace(discopop_tau=discopop_tau, gradient_checkpointing_kwargs=None),
        _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    completion_mask = torch.cat([_completion_mask(LENGTHS_W), _completion_mask(LENGTHS_L)])
    inputs = {"input_ids": torch.ones(2 * B, T, dtype=torch.long), "attention_mask": torch.ones(2 * B, T),
              "completion_mask": completion_mask, "ref_chosen_logps": ref_w.sum(1), "ref_rejected_logps": ref_l.sum(1)}
    loss = trl_dpo.DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return loss, metrics


def preflab_loss(name, policy_w, policy_l, ref_w, ref_l, **params):
    mask_w = torch.arange(T - 1) < LENGTHS_W.unsqueeze(1)
    mask_l = torch.arange(T - 1) < LENGTHS_L.unsqueeze(1)
    batch = PairBatch(SequenceLogps(policy_w, mask_w), SequenceLogps(policy_l, mask_l),
                      SequenceLogps(ref_w, mask_w), SequenceLogps(ref_l, mask_l))
    return get_objective(name, **params)(batch)


def _sides(shift=0):
    return (_token_logps(1 + shift, LENGTHS_W), _token_logps(2 + shift, LENGTHS_L),
            _token_logps(3 + shift, LENGTHS_W), _token_logps(4 + shift, LENGTHS_L))


def _rel(loss_type):
    """1e-9, except exo_pair: TRL holds eps in a float32 tensor, so log(eps) differs from float64 by ~1e-8."""
    return 1e-7 if loss_type == "exo_pair" else 1e-9


# (TRL loss_type, preflab name, TRL keyword arguments, preflab parameters)
CASES = [
    ("sigmoid", "dpo", {}, {}),
    ("sigmoid", "dpo", {"beta": 0.5}, {"beta": 0.5}),
    ("hinge", "hinge_norm", {}, {}),
    ("ipo", "ipo", {}, {}),
    ("exo_pair", "exo_pair", {"label_smoothing": 1e-3}, {}),
    ("nca_pair", "nca_pair", {}, {}),
    ("robust", "robust_dpo", {"label_smoothing": 0.1}, {"label_smoothing": 0.1}),
    ("bco_pair", "bco_pair", {}, {}),
    ("sppo_hard", "sppo_hard", {}, {}),
    ("aot", "aot", {}, {}),
    ("aot", "aot", {"label_smoothing": 0.2}, {"label_smoothing": 0.2}),
    ("aot_unpaired", "aot_unpaired", {}, {}),
    ("apo_zero", "apo_zero", {}, {}),
    ("apo_down", "apo_down", {}, {}),
    ("discopop", "discopop", {}, {}),
    ("sft", "sft", {}, {}),
    ("sigmoid_norm", "dpo_length_norm", {}, {}),
]
F_DIVERGENCE_CASES = [
    (loss_type, name, f_div)
    for loss_type, name in [("sigmoid", "dpo"), ("hinge", "hinge_norm"), ("ipo", "ipo"), ("robust", "robust_dpo"),
                            ("exo_pair", "exo_pair"), ("discopop", "discopop"), ("sigmoid_norm", "dpo_length_norm")]
    for f_div in ("forward_kl", "js_divergence", "alpha_divergence")
]


@pytest.mark.parametrize("loss_type,name,trl_kwargs,params", CASES,
                         ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_loss_equals_trl_1_16(loss_type, name, trl_kwargs, params):
    for shift in (0, 10):  # two batches: margins of both signs and several sizes
        sides = _sides(shift)
        expected, trl_metrics = trl_loss(loss_type, *sides, **trl_kwargs)
        out = preflab_loss(name, *sides, **params)
        assert out.loss.item() == pytest.approx(expected.item(), abs=1e-9, rel=_rel(loss_type))
        if name not in ("sft",) and "rewards/margins" in out.metrics:
            assert out.metrics["rewards/margins"].item() == pytest.approx(trl_metrics["rewards/margins"], abs=1e-9)


@pytest.mark.parametrize("ld_alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("loss_type,name", [("sigmoid", "dpo")])
def test_ld_alpha_equals_trl_1_16(loss_type, name, ld_alpha):
    """LD-DPO: tokens past the pair's shared length weighted by ld_alpha, on policy and reference alike."""
    for shift in (0, 10):
        sides = _sides(shift)
        expected, _ = trl_loss(loss_type, *sides, ld_alpha=ld_alpha)
        out = preflab_loss(name, *sides, ld_alpha=ld_alpha)
        assert out.loss.item() == pytest.approx(expected.item(), abs=1e-9, rel=1e-9)


# TRL config keys: TRL weights the summed log-probs for every loss type (sft reads them unweighted)
LD_CONFIGS = [
    {"loss_type": "ipo"}, {"loss_type": "apo_zero"}, {"loss_type": "sigmoid_norm"}, {"loss_type": "bco_pair"},
    {"loss_type": ["sigmoid", "apo_zero"]}, {"loss_type": ["sigmoid", "sft"]},
    {"loss_type": ["hinge", "nca_pair", "sft"], "loss_weights": [0.7, 0.2, 1.0]},
]


@pytest.mark.parametrize("config", LD_CONFIGS, ids=[str(c["loss_type"]) for c in LD_CONFIGS])
def test_ld_alpha_on_every_trl_loss_type_equals_trl_1_16(config):
    """A TRL YAML's ld_alpha with any DPO loss_type (or list of them): the loss of preflab's config equals TRL 1.16's.
    Before: a list weighted only its sigmoid part (['sigmoid', 'apo_zero']: 1.754 against TRL's 1.726) and a lone
    ipo / apo_zero / sigmoid_norm / bco_pair refused ld_alpha as an unknown key."""
    from preflab.config import config_from_dict

    cfg = config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl", "beta": 0.2,
                            "ld_alpha": 0.5, **config})
    for shift in (0, 10):
        sides = _sides(shift)
        expected, _ = trl_loss(config["loss_type"], *sides, beta=0.2, ld_alpha=0.5,
                               loss_weights=config.get("loss_weights"))
        mask_w = torch.arange(T - 1) < LENGTHS_W.unsqueeze(1)
        mask_l = torch.arange(T - 1) < LENGTHS_L.unsqueeze(1)
        batch = PairBatch(*(SequenceLogps(s, m) for s, m in zip(sides, (mask_w, mask_l, mask_w, mask_l))))
        assert cfg.objective()(batch).loss.item() == pytest.approx(expected.item(), abs=1e-9, rel=1e-9)


def test_ld_weighted_objective_survives_copy_and_pickle():
    """The LD wrapper forwards unknown attributes to its inner objective; copy.deepcopy and pickle (which look up
    dunders on an instance whose `inner` is not set yet) must not recurse, and the copy computes the same loss."""
    import copy
    import pickle

    from preflab.config import config_from_dict

    cfg = config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl", "beta": 0.2,
                            "ld_alpha": 0.5, "loss_type": ["ipo", "apo_zero"]})
    objective = cfg.objective()
    sides = _sides(10)
    mask_w = torch.arange(T - 1) < LENGTHS_W.unsqueeze(1)
    mask_l = torch.arange(T - 1) < LENGTHS_L.unsqueeze(1)
    batch = PairBatch(*(SequenceLogps(s, m) for s, m in zip(sides, (mask_w, mask_l, mask_w, mask_l))))
    for clone in (copy.deepcopy(objective), pickle.loads(pickle.dumps(objective))):
        assert clone(batch).loss.item() == objective(batch).loss.item()


def test_ld_alpha_with_a_loss_trl_does_not_weight_is_refused():
    """ld_alpha beside a part that is not one of TRL's DPO loss types: refused naming it (before: that part ran
    unweighted while the sigmoid part was weighted)."""
    from preflab.config import config_from_dict
    from preflab.errors import ConfigError

    with pytest.raises(ConfigError, match="ld_alpha .*loss_type part 'simpo' is not one. Remove ld_alpha, or that"):
        config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl",
                          "loss_type": ["sigmoid", "simpo"], "ld_alpha": 0.5})


@pytest.mark.parametrize("loss_type,name,f_div", F_DIVERGENCE_CASES)
def test_f_divergence_scores_equal_trl_1_16(loss_type, name, f_div):
    sides = _sides(5)
    rel = _rel(loss_type)
    if f_div == "alpha_divergence":  # TRL's clamp table has no float64 entry: compare in float32
        sides, rel = tuple(s.float() for s in sides), 1e-6
    kwargs = {"label_smoothing": 1e-3} if loss_type == "exo_pair" else {}
    if loss_type == "robust":
        kwargs = {"label_smoothing": 0.1}
    expected, _ = trl_loss(loss_type, *sides, f_divergence_type=f_div, **kwargs)
    out = preflab_loss(name, *sides, f_divergence=f_div, **kwargs)
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-9, rel=rel)


def test_gradients_equal_trl_1_16():
    """The gradient wrt the policy's token log-probs agrees too (DPO and IPO)."""
    for loss_type, name in (("sigmoid", "dpo"), ("ipo", "ipo"), ("apo_down", "apo_down")):
        pw, pl, rw, rl = _sides(3)
        lp = torch.cat([pw, pl]).requires_grad_(True)
        model = _Model(lp)
        trainer = types.SimpleNamespace(
            model=model, accelerator=_accelerator(), aux_loss_enabled=False, ld_alpha=None,
            precompute_ref_logps=True, f_divergence_type="reverse_kl", f_alpha_divergence_coef=0.5,
            loss_types=[loss_type], loss_weights=[1.0], beta=0.1, label_smoothing=0.0, use_weighting=False,
            args=types.SimpleNamespace(discopop_tau=0.05), _metrics={"train": defaultdict(list)},
            _total_train_tokens=0, _tp_size=1)
        completion_mask = torch.cat([_completion_mask(LENGTHS_W), _completion_mask(LENGTHS_L)])
        inputs = {"input_ids": torch.ones(2 * B, T, dtype=torch.long), "attention_mask": torch.ones(2 * B, T),
                  "completion_mask": completion_mask, "ref_chosen_logps": rw.sum(1), "ref_rejected_logps": rl.sum(1)}
        trl_dpo.DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False).backward()
        pw2, pl2 = pw.clone().requires_grad_(True), pl.clone().requires_grad_(True)
        preflab_loss(name, pw2, pl2, rw, rl).loss.backward()
        mask = torch.cat([_completion_mask(LENGTHS_W), _completion_mask(LENGTHS_L)])[:, 1:].bool()
        ours = torch.cat([pw2.grad, pl2.grad])
        assert torch.allclose(ours[mask], lp.grad[mask], atol=1e-12, rtol=1e-9)


# ----- KTOTrainer (kto, apo_zero_unpaired) -----

def _kto_trl_loss(loss_type, policy, ref, labels, policy_kl, ref_kl, desirable_weight=1.0, undesirable_weight=1.0):
    """TRL 1.16 KTOTrainer._compute_loss; the mismatched-completion log-probs come in through `_compute_kl_logps`."""
    model = _Model(policy)
    trainer = types.SimpleNamespace(
        model=model, accelerator=_accelerator(), aux_loss_enabled=False, precompute_ref_logps=True,
        calculate_KL=loss_type == "kto", loss_type=loss_type, beta=0.1, desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight, _compute_kl_logps=lambda model, batch: policy_kl.sum(1),
        _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.ones(B, T, dtype=torch.long), "attention_mask": torch.ones(B, T),
              "completion_mask": _completion_mask(LENGTHS_W), "label": labels, "ref_logps": ref.sum(1),
              "ref_KL_logps": ref_kl.sum(1)}
    from trl.trainer.kto_trainer import KTOTrainer

    return KTOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)


@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.0, 1.3)])
def test_unpaired_loss_equals_trl_1_16_kto_trainer(loss_type, weights):
    from preflab.objectives import UnpairedBatch

    mask = torch.arange(T - 1) < LENGTHS_W.unsqueeze(1)
    labels = torch.tensor([True, False, True, False])
    for shift in (0, 20):
        policy, ref = _token_logps(31 + shift, LENGTHS_W), _token_logps(32 + shift, LENGTHS_W)
        policy_kl, ref_kl = _token_logps(33 + shift, LENGTHS_W), _token_logps(34 + shift, LENGTHS_W)
        expected = _kto_trl_loss(loss_type, policy, ref, labels, policy_kl, ref_kl, *weights)
        batch = UnpairedBatch(SequenceLogps(policy, mask), labels, SequenceLogps(ref, mask),
                              SequenceLogps(policy_kl, mask), SequenceLogps(ref_kl, mask))
        out = get_objective(loss_type, desirable_weight=weights[0], undesirable_weight=weights[1])(batch)
        assert out.loss.item() == pytest.approx(expected.item(), abs=1e-9, rel=1e-9)


# ----- CPOTrainer (cpo, simpo, alphapo) and ORPOTrainer (orpo) -----

def _policy_pair(shift=0):
    mask_w = torch.arange(T - 1) < LENGTHS_W.unsqueeze(1)
    mask_l = torch.arange(T - 1) < LENGTHS_L.unsqueeze(1)
    pw, pl = _token_logps(41 + shift, LENGTHS_W) * 0.3, _token_logps(42 + shift, LENGTHS_L) * 0.3
    return PairBatch(SequenceLogps(pw, mask_w), SequenceLogps(pl, mask_l))


def _batch_token_mean_nll(batch):
    """TRL's CrossEntropyLoss over every chosen completion token of the batch."""
    return -batch.policy_chosen.sum.sum() / batch.policy_chosen.length.sum()


@pytest.mark.parametrize("name,trl_loss_type,params", [
    ("cpo", "sigmoid", {"beta": 0.1, "cpo_alpha": 0.0}),
    ("cpo", "sigmoid", {"beta": 0.1, "cpo_alpha": 1.0, "label_smoothing": 0.1}),
    ("simpo", "simpo", {"beta": 2.0, "simpo_gamma": 0.5, "cpo_alpha": 0.0}),
    ("simpo", "simpo", {"beta": 2.5, "simpo_gamma": 1.0, "cpo_alpha": 0.5, "label_smoothing": 0.2}),
    ("alphapo", "simpo", {"beta": 2.5, "simpo_gamma": 0.1, "alpha": 0.25, "cpo_alpha": 0.0}),
    ("alphapo", "simpo", {"beta": 2.5, "simpo_gamma": 0.1, "alpha": -0.5, "cpo_alpha": 0.0}),
])
def test_reference_free_loss_equals_trl_1_16_cpo_trainer(name, trl_loss_type, params):
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    for shift in (0, 7):
        batch = _policy_pair(shift)
        mean_form = trl_loss_type == "simpo"  # TRL's get_batch_logps(average_log_prob=True) for simpo
        chosen = batch.policy_chosen.mean if mean_form else batch.policy_chosen.sum
        rejected = batch.policy_rejected.mean if mean_form else batch.policy_rejected.sum
        trainer = types.SimpleNamespace(
            accelerator=_accelerator(), alpha=params.get("alpha", 0.0), loss_type=trl_loss_type, beta=params["beta"],
            simpo_gamma=params.get("simpo_gamma", 0.5), label_smoothing=params.get("label_smoothing", 0.0))
        losses, _, _ = CPOTrainer.cpo_loss(trainer, chosen, rejected)
        expected = losses.mean() + params["cpo_alpha"] * _batch_token_mean_nll(batch)
        out = get_objective(name, **params)(batch)
        assert out.loss.item() == pytest.approx(expected.item(), abs=1e-9, rel=1e-9)


@pytest.mark.parametrize("name,trl_loss_type,params", [
    ("cpo", "sigmoid", {"beta": 0.1, "cpo_alpha": 0.0}), ("cpo", "sigmoid", {"beta": 0.1, "cpo_alpha": 1.0}),
    ("simpo", "simpo", {"beta": 2.0, "simpo_gamma": 0.5, "cpo_alpha": 0.0}),
    ("simpo", "simpo", {"beta": 2.5, "simpo_gamma": 1.0, "cpo_alpha": 0.5}),
    ("alphapo", "simpo", {"beta": 2.5, "simpo_gamma": 0.1, "alpha": 0.25, "cpo_alpha": 0.0}),
])
def test_reference_free_metrics_equal_trl_1_16_cpo_trainer(name, trl_loss_type, params):
    """rewards/*, logps/* and nll_loss as TRL 1.16 CPOTrainer.get_batch_loss_metrics logs them (its lines, one
    process): rewards from cpo_loss (AlphaPO: beta x the shaped reward), logps/* the policy log-probs it was given
    (simpo, alphapo: the mean per token, not the shaped reward), nll_loss 0.0 when cpo_alpha is 0 (was: AlphaPO's
    logps/* held the shaped reward; SimPO and AlphaPO left nll_loss out at cpo_alpha 0)."""
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    batch = _policy_pair(3)
    mean_form = trl_loss_type == "simpo"
    policy_chosen_logps = batch.policy_chosen.mean if mean_form else batch.policy_chosen.sum
    policy_rejected_logps = batch.policy_rejected.mean if mean_form else batch.policy_rejected.sum
    trainer = types.SimpleNamespace(
        accelerator=_accelerator(), alpha=params.get("alpha", 0.0), loss_type=trl_loss_type, beta=params["beta"],
        simpo_gamma=params.get("simpo_gamma", 0.5), label_smoothing=0.0)
    _, chosen_rewards, rejected_rewards = CPOTrainer.cpo_loss(trainer, policy_chosen_logps, policy_rejected_logps)
    policy_nll_loss = _batch_token_mean_nll(batch) if params["cpo_alpha"] else torch.tensor(0.0)
    reward_accuracies = (chosen_rewards > rejected_rewards).float()
    expected = {"rewards/chosen": chosen_rewards.mean(), "rewards/rejected": rejected_rewards.mean(),
                "rewards/accuracies": reward_accuracies.mean(),
                "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
                "logps/rejected": policy_rejected_logps.detach().mean(),
                "logps/chosen": policy_chosen_logps.detach().mean(), "nll_loss": policy_nll_loss.detach().mean()}
    out = get_objective(name, **params)(batch)
    for key, value in expected.items():
        assert out.metrics[key].item() == pytest.approx(value.item(), abs=1e-9, rel=1e-9), key


def test_orpo_equals_trl_1_16_orpo_trainer():
    """The odds-ratio term, on these response-only batches with nll_scope: response; TRL's NLL over prompt +
    response (the default scope) is compared with ORPOTrainer's whole forward in test_orpo_trl_trainer.py."""
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    for shift in (0, 7):
        batch = _policy_pair(shift)
        trainer = types.SimpleNamespace(accelerator=_accelerator(), beta=0.1)
        # ORPOTrainer casts the mean log-probs to float32 before the odds ratio
        losses, *_ = ORPOTrainer.odds_ratio_loss(trainer, batch.policy_chosen.mean, batch.policy_rejected.mean)
        expected = _batch_token_mean_nll(batch) - losses.mean().double()
        out = get_objective("orpo", beta=0.1, nll_scope="response")(batch)
        assert out.loss.item() == pytest.approx(expected.item(), abs=1e-6, rel=1e-6)


def test_cdpo_equals_trl_1_16_aot_on_a_constant_batch():
    """cDPO has no TRL 1.16 loss_type of its own (TRL >= 0.29 ignores label_smoothing for sigmoid), but TRL's `aot`
    with label_smoothing eps on a batch of B copies of one pair sorts nothing and is exactly cDPO on that pair."""
    pw, pl, rw, rl = (s.sum(1) for s in _sides(2))
    for i in range(B):
        def copies(v):  # every row carries pair i's sum on its first completion token
            out = torch.zeros(B, T - 1, dtype=torch.float64)
            out[:, 0] = v[i]
            return out
        expected, _ = trl_loss("aot", copies(pw), copies(pl), copies(rw), copies(rl), label_smoothing=0.1)
        batch = PairBatch.from_sums(pw[i:i + 1], pl[i:i + 1], rw[i:i + 1], rl[i:i + 1])
        out = get_objective("cdpo", label_smoothing=0.1)(batch)
        assert out.loss.item() == pytest.approx(expected.item(), abs=1e-9, rel=1e-9)


# ----- GRPOTrainer (grpo): the clipped surrogate + k3 KL and the four aggregations, given the advantages -----

def _grpo_trl_loss(lp, old, ref, mask, advantages, loss_type, beta, epsilon, epsilon_high, level, max_len,
                   use_bias_correction_kl=True, delta=None, extra_args=None, metrics=None, gather=None):
    """TRL 1.16 GRPOTrainer._compute_loss on flattened [B*G, T] completions; the model's per-token log-probs come
    in through `_get_per_token_logps_and_entropies` (one process, no gradient accumulation; `gather` stands in for
    accelerator.gather, identity by default)."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    model = torch.nn.Linear(1, 1)
    model.train()
    trainer = types.SimpleNamespace(
        model=model, accelerator=types.SimpleNamespace(
            device=torch.device("cpu"), num_processes=1, sync_gradients=True, gather=gather or (lambda x: x),
            gather_for_metrics=lambda x: x, reduce=lambda x, reduction="sum": x),
        _get_per_token_logps_and_entropies=lambda *a, **k: (lp, torch.zeros_like(lp), None),
        aux_loss_enabled=False, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        importance_sampling_level=level, beta=beta, loss_type=loss_type, epsilon_low=epsilon,
        epsilon_high=epsilon_high, use_vllm=False, vllm_importance_sampling_correction=False,
        current_gradient_accumulation_steps=1, max_completion_length=max_len, _entropy_bonus_enabled=False,
        args=types.SimpleNamespace(use_bias_correction_kl=use_bias_correction_kl, delta=delta, steps_per_generation=1,
                                   **(extra_args or {})),
        _metrics={"train": defaultdict(list)}, get_gamma_weights=GRPOTrainer.get_gamma_weights)
    n, T = lp.shape
    inputs = {"prompt_ids": torch.ones(n, 1, dtype=torch.long), "prompt_mask": torch.ones(n, 1, dtype=torch.long),
              "completion_ids": torch.ones(n, T, dtype=torch.long), "completion_mask": mask.long(),
              "advantages": advantages, "old_per_token_logps": old, "ref_per_token_logps": ref,
              "num_items_in_batch": mask.sum().to(lp.dtype)}
    loss = GRPOTrainer._compute_loss(trainer, None, inputs)
    if metrics is not None:
        metrics.update({k: v[-1] for k, v in trainer._metrics["train"].items()})
    return loss


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta,level", [(0.0, "token"), (0.04, "token"), (0.04, "sequence")])
def test_grpo_loss_equals_trl_1_16_grpo_trainer(loss_type, beta, level):
    from preflab.objectives import ListBatch

    B, G, T = 2, 3, 5
    g = torch.Generator().manual_seed(7)
    lengths = torch.tensor([[5, 3, 4], [2, 5, 1]])
    mask = torch.arange(T) < lengths.unsqueeze(-1)
    lp = (-torch.rand(B, G, T, generator=g, dtype=torch.float64) * 2) * mask
    old = (lp + 0.4 * torch.randn(B, G, T, generator=g, dtype=torch.float64)) * mask  # ratios far enough to clip
    ref = (lp + 0.3 * torch.randn(B, G, T, generator=g, dtype=torch.float64)) * mask
    adv = torch.randn(B, G, generator=g, dtype=torch.float64)
    flat = lambda x: x.reshape(B * G, *x.shape[2:])  # noqa: E731
    expected = _grpo_trl_loss(flat(lp), flat(old), flat(ref), flat(mask), adv.reshape(-1), loss_type, beta, 0.2, 0.28,
                              level, T, use_bias_correction_kl=False)
    batch = ListBatch(SequenceLogps(lp, mask), torch.zeros(B, G, dtype=torch.float64), SequenceLogps(ref, mask),
                      extras={"advantages": adv, "old_logps": old})
    out = get_objective("grpo", loss_type=loss_type, beta=beta, epsilon=0.2, epsilon_high=0.28,
                        importance_sampling_level=level, max_completion_length=T, use_bias_correction_kl=False)(batch)
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-9, rel=1e-9)


def test_dr_grpo_divides_by_max_completion_length_not_the_padded_width():
    """Dr. GRPO's constant normaliser is completions x max_completion_length (TRL 1.16: self.max_completion_length),
    the generation cap, which exceeds the batch's padded width whenever every completion stopped early: with
    max_completion_length 8 on a width-5 batch the loss equals TRL's at max_len 8, i.e. 5/8 of the loss at 5."""
    from preflab.objectives import ListBatch

    B, G, T = 2, 3, 5
    g = torch.Generator().manual_seed(11)
    mask = torch.arange(T) < torch.tensor([[5, 3, 4], [2, 5, 1]]).unsqueeze(-1)
    lp = (-torch.rand(B, G, T, generator=g, dtype=torch.float64) * 2) * mask
    old = (lp + 0.4 * torch.randn(B, G, T, generator=g, dtype=torch.float64)) * mask
    adv = torch.randn(B, G, generator=g, dtype=torch.float64)
    flat = lambda x: x.reshape(B * G, *x.shape[2:])  # noqa: E731
    batch = ListBatch(SequenceLogps(lp, mask), torch.zeros(B, G, dtype=torch.float64), None,
                      extras={"advantages": adv, "old_logps": old})
    losses = {n: get_objective("grpo", loss_type="dr_grpo", max_completion_length=n)(batch).loss.item() for n in (5, 8)}
    expected = _grpo_trl_loss(flat(lp), flat(old), flat(lp), flat(mask), adv.reshape(-1), "dr_grpo", 0.0, 0.2, 0.2,
                              "token", 8)
    assert losses[8] == pytest.approx(expected.item(), abs=1e-12, rel=1e-9)
    assert losses[8] == pytest.approx(losses[5] * 5 / 8, rel=1e-12) and abs(losses[5]) > 1e-3


@pytest.mark.parametrize("on_policy", [True, False], ids=["on_policy", "off_policy"])
@pytest.mark.parametrize("bias_correction,delta", [(True, None), (False, None), (True, 1.1)])
def test_grpo_kl_bias_correction_and_delta_equal_trl_1_16(bias_correction, delta, on_policy):
    """TRL 1.16's GRPOConfig defaults to use_bias_correction_kl=True (the KL term times the differentiable ratio:
    another gradient even on-policy, where the ratio's value is 1); preflab's KL term had no ratio, accepted that
    default without a word and refused `false`, its own behaviour. `delta` (two-sided clipping) was refused as
    "a parameter of the objective(s) slic". Loss and gradient against TRL's _compute_loss."""
    from preflab.objectives import ListBatch

    B, G, T = 2, 3, 5
    g = torch.Generator().manual_seed(3)
    mask = torch.arange(T) < torch.tensor([[5, 3, 4], [2, 5, 1]]).unsqueeze(-1)
    base = (-torch.rand(B, G, T, generator=g, dtype=torch.float64) * 2) * mask
    old = base if on_policy else (base + 0.4 * torch.randn(B, G, T, generator=g, dtype=torch.float64)) * mask
    ref = (base + 0.3 * torch.randn(B, G, T, generator=g, dtype=torch.float64)) * mask
    adv = torch.randn(B, G, generator=g, dtype=torch.float64)
    grads = []
    for side in ("trl", "preflab"):
        lp = base.clone().requires_grad_(True)
        if side == "trl":
            flat = lambda x: x.reshape(B * G, T)  # noqa: E731
            loss = _grpo_trl_loss(flat(lp), flat(old), flat(ref), flat(mask), adv.reshape(-1), "dapo", 0.04, 0.2,
                                  0.28, "token", T, use_bias_correction_kl=bias_correction, delta=delta)
        else:
            batch = ListBatch(SequenceLogps(lp, mask), torch.zeros(B, G, dtype=torch.float64),
                              SequenceLogps(ref, mask), extras={"advantages": adv, "old_logps": old})
            params = {} if bias_correction else {"use_bias_correction_kl": False}  # true is the default, as TRL's
            loss = get_objective("grpo", beta=0.04, epsilon=0.2, epsilon_high=0.28, delta=delta, **params)(batch).loss
        loss.backward()
        grads.append((loss.item(), lp.grad.clone()))
    assert grads[1][0] == pytest.approx(grads[0][0], abs=1e-9, rel=1e-9)
    assert torch.allclose(grads[1][1], grads[0][1], atol=1e-9, rtol=1e-9)


# ----- GRPOTrainer's cispo, sapo, luspo and vespo loss types: loss, gradient and logged metrics -----

_NEW_GRPO_CASES = [  # (loss_type, level, options): each level TRL 1.16 runs without its warning
    ("cispo", "token", {"epsilon_high": 1.1}), ("cispo", "sequence", {"epsilon_high": 1.05}),
    ("cispo", "token", {}),                                      # epsilon_high unset: TRL caps at epsilon (0.2)
    ("sapo", "token", {}), ("sapo", "sequence", {}),
    ("sapo", "token", {"sapo_temperature_pos": 0.5, "sapo_temperature_neg": 2.0}),
    ("luspo", "sequence", {"epsilon_high": 0.05}), ("luspo", "sequence", {"delta": 1.1, "epsilon_high": 0.05}),
    ("vespo", "token", {}),
    ("vespo", "token", {"vespo_k_pos": 1.5, "vespo_lambda_pos": 2.0, "vespo_k_neg": 2.5, "vespo_lambda_neg": 1.0}),
]


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("loss_type,level,options", _NEW_GRPO_CASES)
def test_grpo_new_loss_types_equal_trl_1_16(loss_type, level, options, beta):
    """Loss, gradient and logged metrics (clip ratios, cispo_clip_ratio, vespo/phi_seq_mean, kl) against TRL's
    _compute_loss, off-policy (old log-probs far enough from the policy's to clip) with masked tokens."""
    from preflab.objectives import ListBatch
    from preflab.objectives.grpo import SAPO_DEFAULTS, VESPO_DEFAULTS

    B, G, T = 2, 3, 5
    g = torch.Generator().manual_seed(11)
    mask = torch.arange(T) < torch.tensor([[5, 3, 4], [2, 5, 1]]).unsqueeze(-1)
    base = (-torch.rand(B, G, T, generator=g, dtype=torch.float64) * 2) * mask
    old = (base + 0.4 * torch.randn(B, G, T, generator=g, dtype=torch.float64)) * mask
    ref = (base + 0.3 * torch.randn(B, G, T, generator=g, dtype=torch.float64)) * mask
    adv = torch.randn(B, G, generator=g, dtype=torch.float64)
    epsilon_high = options.get("epsilon_high")
    results = []
    for side in ("trl", "preflab"):
        lp = base.clone().requires_grad_(True)
        metrics = {}
        if side == "trl":
            flat = lambda x: x.reshape(B * G, T)  # noqa: E731
            extra = {**SAPO_DEFAULTS, **VESPO_DEFAULTS, **{k: v for k, v in options.items() if k in
                                                           {**SAPO_DEFAULTS, **VESPO_DEFAULTS}}}
            loss = _grpo_trl_loss(flat(lp), flat(old), flat(ref), flat(mask), adv.reshape(-1), loss_type, beta, 0.2,
                                  0.2 if epsilon_high is None else epsilon_high, level, T,
                                  delta=options.get("delta"), extra_args=extra, metrics=metrics)
        else:
            batch = ListBatch(SequenceLogps(lp, mask), torch.zeros(B, G, dtype=torch.float64),
                              SequenceLogps(ref, mask), extras={"advantages": adv, "old_logps": old})
            out = get_objective("grpo", loss_type=loss_type, beta=beta, epsilon=0.2, importance_sampling_level=level,
                                max_completion_length=T, **options)(batch)
            loss, metrics = out.loss, {k: v.item() for k, v in out.metrics.items()}
        loss.backward()
        results.append((loss.item(), lp.grad.clone(), metrics))
    (trl_value, trl_grad, trl_metrics), (value, grad, ours) = results
    assert value == pytest.approx(trl_value, abs=1e-9, rel=1e-9)
    assert torch.allclose(grad, trl_grad, atol=1e-9, rtol=1e-9)
    logged = [k for k in trl_metrics if k.endswith("_mean") or k in ("kl", "cispo_clip_ratio")]
    # TRL's ratios are .float() (float32) means
    assert (logged or (loss_type == "sapo" and not beta)) and all(ours[k] == pytest.approx(trl_metrics[k], abs=1e-7) for k in logged), (trl_metrics, ours)
    if loss_type == "cispo" or loss_type == "luspo":  # the clipping branches are exercised, not only the identity
        assert max(v for k, v in ours.items() if "clip_ratio" in k) > 0


def test_grpo_new_loss_types_reduce_on_policy():
    """On-policy (rho = 1, phi(1) = 1, the gradient of sapo's gate 4/tau sigmoid(tau (rho - 1)) at rho = 1 is 1):
    cispo (cap above 1) and vespo have dapo's gradient, sapo grpo's; luspo's is dapo's times tokens / completions."""
    from preflab.objectives import ListBatch

    B, G, T = 2, 3, 5
    g = torch.Generator().manual_seed(5)
    mask = torch.arange(T) < torch.tensor([[5, 3, 4], [2, 5, 1]]).unsqueeze(-1)
    base = (-torch.rand(B, G, T, generator=g, dtype=torch.float64) * 2) * mask
    adv = torch.randn(B, G, generator=g, dtype=torch.float64)

    def grad(loss_type, **params):
        lp = base.clone().requires_grad_(True)
        batch = ListBatch(SequenceLogps(lp, mask), torch.zeros(B, G, dtype=torch.float64),
                          extras={"advantages": adv, "old_logps": base})
        get_objective("grpo", loss_type=loss_type, **params)(batch).loss.backward()
        return lp.grad
    assert torch.allclose(grad("cispo", epsilon_high=5.0), grad("dapo"), atol=1e-12)
    assert torch.allclose(grad("vespo"), grad("dapo"), atol=1e-12)
    assert torch.allclose(grad("sapo"), grad("grpo"), atol=1e-12)
    # luspo: sum over each completion's tokens, mean over completions = dapo's token sum / completions
    luspo = grad("luspo", importance_sampling_level="sequence")
    assert torch.allclose(luspo, grad("dapo", importance_sampling_level="sequence") * mask.sum() / (B * G), atol=1e-12)
    assert luspo.abs().sum() > 0


@pytest.mark.parametrize("params,match", [
    ({"loss_type": "luspo"}, "luspo .* needs importance_sampling_level: sequence"),
    ({"loss_type": "vespo", "importance_sampling_level": "sequence"}, "vespo .* must be token"),
    ({"loss_type": "sapo", "delta": 1.5}, "loss_type sapo does not read it"),
    ({"loss_type": "dapo", "sapo_temperature_neg": 2.0}, "read by loss_type sapo only"),
    ({"loss_type": "cispo", "vespo_k_pos": 1.0}, "read by loss_type vespo only"),
    ({"loss_type": "sapo", "sapo_temperature_pos": 0.0}, "must be > 0"),
])
def test_grpo_new_loss_type_options_refused(params, match):
    from preflab.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        get_objective("grpo", **params)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo", "vespo"])
def test_grpo_unscorable_completions_equal_trl_1_16(loss_type):
    """A completion no reward function scored (every one returned None: NaN) is, in TRL 1.16's
    _generate_and_score_completions, left out of its group's nanmean / nanstd and given advantage 0, but it stays in
    _compute_loss: its tokens count in the normaliser and its KL term trains. Before, preflab dropped it from the loss
    (valid false). TRL's advantage lines (sum_then_normalize, scale_rewards group) with its own nanstd, then its
    _compute_loss; preflab's objective computes the advantages itself from the scores and `scored`."""
    from trl.trainer.utils import nanstd

    from preflab.objectives import ListBatch

    B, G, T = 2, 4, 5
    g = torch.Generator().manual_seed(2)
    mask = torch.arange(T) < torch.tensor([[5, 3, 4, 2], [2, 5, 1, 4]]).unsqueeze(-1)
    base = (-torch.rand(B, G, T, generator=g, dtype=torch.float64) * 2) * mask
    old = (base + 0.3 * torch.randn(B, G, T, generator=g, dtype=torch.float64)) * mask
    ref = (base + 0.3 * torch.randn(B, G, T, generator=g, dtype=torch.float64)) * mask
    scores = torch.rand(B, G, generator=g, dtype=torch.float64)
    scores[0, 1] = scores[1, 3] = float("nan")                     # unscorable
    rewards = scores.reshape(-1).clone()                           # TRL: rewards[unscorable_mask] = nan
    mean = torch.nanmean(rewards.view(-1, G), dim=1).repeat_interleave(G)
    std = nanstd(rewards.view(-1, G), dim=1).repeat_interleave(G)
    adv = torch.nan_to_num((rewards - mean) / (std + 1e-4), nan=0.0)
    results = []
    for side in ("trl", "preflab"):
        lp = base.clone().requires_grad_(True)
        if side == "trl":
            flat = lambda x: x.reshape(B * G, T)  # noqa: E731
            loss = _grpo_trl_loss(flat(lp), flat(old), flat(ref), flat(mask), adv, loss_type, 0.04, 0.2, 0.28,
                                  "token", T, extra_args={"vespo_k_pos": 2.0, "vespo_lambda_pos": 3.0,
                                                          "vespo_k_neg": 3.0, "vespo_lambda_neg": 2.0})
            reward = torch.nanmean(rewards).item()
        else:
            batch = ListBatch(SequenceLogps(lp, mask), scores, SequenceLogps(ref, mask),
                              torch.ones(B, G, dtype=torch.bool),
                              extras={"old_logps": old, "scored": ~scores.isnan()})
            out = get_objective("grpo", loss_type=loss_type, beta=0.04, epsilon=0.2, epsilon_high=0.28,
                                max_completion_length=T)(batch)
            loss, reward = out.loss, out.metrics["reward"].item()
        loss.backward()
        results.append((loss.item(), lp.grad.clone(), reward))
    (trl_value, trl_grad, trl_reward), (value, grad, ours) = results
    assert value == pytest.approx(trl_value, abs=1e-9, rel=1e-9)
    assert torch.allclose(grad, trl_grad, atol=1e-9, rtol=1e-9)
    assert ours == pytest.approx(trl_reward, abs=1e-12)
    assert grad[0, 1].abs().sum() > 0                              # the unscored completion's KL term trains
