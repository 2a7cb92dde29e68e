"""Mixture-of-experts policies: the routers' load-balancing loss enters preflab's loss as TRL 1.16 adds it
(router_aux_loss_coef x aux_loss, from the policy's own forward, logged as aux_loss), equal to TRL's DPOTrainer and
KTOTrainer on the same batch, in every layout; coefficient 0 gives exactly the objective's loss; the online trainers
that do not add it (as TRL's OnlineDPOTrainer) say so."""
import copy
import sys
import types
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from preflab.config import config_from_dict
from preflab.data.layout import padded, pair_sequences
from preflab.data.tokenize import TokenizedPair
from preflab.errors import ConfigError
from preflab.loops.offline import Trainer
from preflab.models.load import frozen_copy, moe_aux_loss_note
from preflab.objectives import get_objective
from preflab.scoring.lm import LogProbScorer, split_pairs
from preflab.models.moe import router_loss_coef

sys.path.insert(0, str(Path(__file__).parent))
from families import family_tokenizer, tiny_family_model  # noqa: E402
from test_family_scoring import PAIRS  # noqa: E402

trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")
TOKENIZER = types.SimpleNamespace(pad_token_id=0, eos_token_id=2)  # the trainer reads the pad id only here
TRL_PAIRS = [TokenizedPair(i, p.prompt_ids, p.chosen_ids, p.rejected_ids) for i, p in enumerate(PAIRS)]


def _accelerator():
    return types.SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x)


def _grads(model) -> dict:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def _assert_equals_trl(out, grads: dict, st, trl_policy, trl_loss) -> float:
    """preflab's objective output `out` and policy gradients `grads` against a TRL trainer's loss (backward here),
    its logged aux_loss (on the stand-in trainer `st`) and its policy's gradients, each to 1e-6; TRL's aux_loss."""
    trl_loss.backward()
    trl_grads = _grads(trl_policy)
    trl_aux = next(v[-1] for mode in st._metrics.values() for k, v in mode.items() if k == "aux_loss")
    assert float(out.metrics["aux_loss"]) == pytest.approx(trl_aux, abs=1e-6)
    assert float(out.loss) == pytest.approx(float(trl_loss), abs=1e-6)
    for name, g in trl_grads.items():
        torch.testing.assert_close(grads[name], g, atol=1e-6, rtol=0, msg=name)
    return trl_aux


def trl_dpo_run(model, coef):
    """TRL 1.16's DPOTrainer._compute_loss (unbound, on a stand-in trainer) on TRL_PAIRS collated by its own
    DataCollatorForPreference, with its fused LM head on copies of `model` (policy) and of a frozen reference:
    (loss, metrics, gradients of the policy's parameters)."""
    from trl.trainer.utils import add_fused_lm_head

    policy, ref = copy.deepcopy(model), frozen_copy(model)
    add_fused_lm_head(policy, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    add_fused_lm_head(ref)
    st = types.SimpleNamespace(
        model=policy, ref_model=ref, accelerator=_accelerator(), aux_loss_enabled=coef is not None,
        router_aux_loss_coef=coef, ld_alpha=None, precompute_ref_logps=False, f_divergence_type="reverse_kl",
        loss_types=["sigmoid"], loss_weights=[1.0], beta=0.1, label_smoothing=0.0, use_weighting=False,
        args=types.SimpleNamespace(gradient_checkpointing_kwargs=None), _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0, _tp_size=1)
    collate = trl_dpo.DataCollatorForPreference(pad_token_id=0)
    batch = collate([{"prompt_ids": p.prompt_ids, "chosen_ids": p.chosen_ids, "rejected_ids": p.rejected_ids}
                     for p in TRL_PAIRS])
    loss = trl_dpo.DPOTrainer._compute_loss(st, policy, batch, return_outputs=False)
    loss.backward()
    metrics = {k: v[-1] for mode in st._metrics.values() for k, v in mode.items()}
    return float(loss), metrics, _grads(policy)


def preflab_run(model, tmp_path, layout="padded", **options):
    """preflab's Trainer.forward on the same pairs (one micro-batch): (loss, metrics, gradients, the layout used)."""
    cfg = config_from_dict(dict(model_name_or_path="unused", dataset_name="synthetic", output_dir=str(tmp_path),
                                layout=layout, per_device_train_batch_size=len(TRL_PAIRS), max_steps=1,
                                disable_tqdm=True, use_cpu=True, beta=0.1, **options))
    policy = copy.deepcopy(model)
    trainer = Trainer(cfg, policy=policy, ref=frozen_copy(model), tokenizer=TOKENIZER, train_data=TRL_PAIRS)
    out = trainer.forward(trainer.micro_batches(0)[0])
    # the step trains on the per-example losses (backward of their sum / N, preflab.step), not on out.loss: their
    # mean is the loss with the router term, and the gradients compared with TRL's are theirs
    assert float(out.losses.mean()) == pytest.approx(float(out.loss), abs=1e-6)
    out.losses.mean().backward()
    return float(out.loss), {k: float(v) for k, v in out.metrics.items()}, _grads(policy), trainer.layout


@pytest.fixture(scope="module", params=["mixtral", "qwen2_moe"])
def moe(request):
    """(family, model, TRL's loss, metrics and gradients with the model config's coefficient, 0.02)."""
    torch.set_num_threads(1)
    model = tiny_family_model(request.param)
    assert model.config.output_router_logits is False  # TRL adds the loss all the same: the attribute exists
    return (request.param, model, *trl_dpo_run(model, 0.02))


def test_moe_dpo_loss_and_gradients_equal_trls_with_the_router_loss(moe, tmp_path):
    _, model, trl_loss, trl_metrics, trl_grads = moe
    loss, metrics, grads, _ = preflab_run(model, tmp_path)
    assert trl_metrics["aux_loss"] > 1.0  # about top_k = 2 for a near-uniform router: a real term
    assert metrics["aux_loss"] == pytest.approx(trl_metrics["aux_loss"], abs=1e-6)
    assert loss == pytest.approx(trl_loss, abs=1e-6)
    assert grads.keys() == trl_grads.keys()
    for name, g in trl_grads.items():
        torch.testing.assert_close(grads[name], g, atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("layout,multiple", [("prefix_shared", None), ("packed", None), ("prefix_packed", None),
                                             ("prefix_shared", 16)])
def test_moe_router_loss_is_trls_in_every_layout(moe, layout, multiple, tmp_path):
    """Prompts shared by k responses count k times (LayoutBatch.token_multiplicity): the padded layout's tokens;
    rows padded to a multiple (pad_to_multiple_of) add positions that count 0."""
    family, model, trl_loss, trl_metrics, _ = moe
    loss, metrics, _, used = preflab_run(model, tmp_path, layout=layout, pad_to_multiple_of=multiple)
    assert used == (layout if family == "qwen2_moe" else "padded")  # Mixtral's sliding window: padded, with a reason
    assert metrics["aux_loss"] == pytest.approx(trl_metrics["aux_loss"], abs=1e-5)
    assert loss == pytest.approx(trl_loss, abs=1e-5)


def test_moe_router_loss_coefficient_from_the_config_and_zero_turns_it_off(moe, tmp_path):
    model = moe[1]
    trl_loss, trl_metrics, _ = trl_dpo_run(model, 0.5)
    loss, metrics, _, _ = preflab_run(model, tmp_path, router_aux_loss_coef=0.5)
    assert loss == pytest.approx(trl_loss, abs=1e-6)
    assert metrics["aux_loss"] == pytest.approx(trl_metrics["aux_loss"], abs=1e-6)
    off_loss, off_metrics, _, _ = preflab_run(model, tmp_path, router_aux_loss_coef=0)
    assert "aux_loss" not in off_metrics
    trl_off, _, _ = trl_dpo_run(model, None)
    assert off_loss == pytest.approx(trl_off, abs=1e-6)
    # exactly the objective's loss on the scorer's log-probs (the loss before the router loss existed)
    policy, ref = copy.deepcopy(model), frozen_copy(model)
    layout = padded(pair_sequences(TRL_PAIRS), pad_id=0)
    with torch.no_grad():
        ref_scores = LogProbScorer(ref)(layout)
    alone = get_objective("dpo", beta=0.1)(split_pairs(LogProbScorer(policy)(layout), ref_scores))
    assert off_loss == float(alone.loss)
    assert loss - off_loss == pytest.approx(0.5 * metrics["aux_loss"], abs=1e-6)


def test_router_aux_loss_coef_on_a_dense_model_is_refused_and_dense_models_add_nothing(tmp_path):
    dense = tiny_family_model("llama")
    assert router_loss_coef(dense) is None and router_loss_coef(dense, 0.0) is None
    with pytest.raises(ConfigError, match="not a mixture-of-experts model"):
        preflab_run(dense, tmp_path, router_aux_loss_coef=0.1)
    _, metrics, _, _ = preflab_run(dense, tmp_path)
    assert "aux_loss" not in metrics


def test_online_note_says_which_online_trainers_do_not_add_it():
    """The online trainers other than TRL's GRPOTrainer's (tests/online/test_online_router_loss.py) add none."""
    assert moe_aux_loss_note(tiny_family_model("llama")) is None
    moe = tiny_family_model("qwen2_moe")
    note = moe_aux_loss_note(moe, "online_dpo")
    assert "router_aux_loss_coef=0.02" in note and "trainer online_dpo adds no router load-balancing loss" in note
    moe.config.router_aux_loss_coef = 0.0  # TRL adds nothing either
    assert moe_aux_loss_note(moe) is None


def test_moe_kto_loss_equals_trls_kto_trainer_with_the_router_loss(tmp_path):
    """KTO: TRL's router loss comes from the completions' forward only (the mismatched KL completions run in a
    forward of their own); preflab scores both in one forward and counts the completions' tokens only."""
    from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference, KTOTrainer
    from trl.trainer.utils import add_fused_lm_head

    from preflab.data.tokenize import TokenizedUnpaired

    model = tiny_family_model("qwen2_moe")
    items = [TokenizedUnpaired(2 * i + k, p.prompt_ids, ids, k == 0)
             for i, p in enumerate(TRL_PAIRS) for k, ids in enumerate((p.chosen_ids, p.rejected_ids))]
    cfg = config_from_dict(dict(model_name_or_path="unused", dataset_name="synthetic", output_dir=str(tmp_path),
                                loss_type="kto", per_device_train_batch_size=len(items), max_steps=1,
                                disable_tqdm=True, use_cpu=True, beta=0.1))
    policy = copy.deepcopy(model)
    trainer = Trainer(cfg, policy=policy, ref=frozen_copy(model), tokenizer=TOKENIZER, train_data=items)
    mb = trainer.micro_batches(0)[0]
    out = trainer.forward(mb)
    out.loss.backward()
    grads = _grads(policy)

    order = [items[i] for i in mb.index]  # TRL's rotation of the completions in the micro-batch's own order
    examples = [{"prompt_ids": x.prompt_ids, "completion_ids": x.completion_ids, "label": x.label,
                 "KL_completion_ids": order[(i - 1) % len(order)].completion_ids} for i, x in enumerate(order)]
    trl_policy, trl_ref = copy.deepcopy(model), frozen_copy(model)
    add_fused_lm_head(trl_policy, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    add_fused_lm_head(trl_ref)
    st = types.SimpleNamespace(
        model=trl_policy, ref_model=trl_ref, accelerator=_accelerator(), aux_loss_enabled=True,
        router_aux_loss_coef=0.02, calculate_KL=True, loss_type="kto", beta=0.1, desirable_weight=1.0,
        undesirable_weight=1.0, precompute_ref_logps=False,
        args=types.SimpleNamespace(gradient_checkpointing_kwargs=None), _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1)
    st._compute_kl_logps = types.MethodType(KTOTrainer._compute_kl_logps, st)
    trl_loss = KTOTrainer._compute_loss(st, trl_policy, DataCollatorForUnpairedPreference(pad_token_id=0)(examples),
                                        return_outputs=False)
    _assert_equals_trl(out, grads, st, trl_policy, trl_loss)


@pytest.mark.parametrize("packing", [False, True])
def test_moe_sft_loss_equals_trls_sft_trainer_with_the_router_loss(packing, tmp_path):
    """task: sft: TRL's SFTTrainer.compute_loss (token-mean NLL + router_aux_loss_coef x aux_loss over every real
    token of its padded batch); packed rows count the same tokens."""
    from trl.trainer.sft_trainer import SFTTrainer as TRLSFTTrainer
    from trl.trainer.utils import add_fused_lm_head

    from preflab.loops.sft import SFTTrainer, TokenizedSFT

    model = tiny_family_model("qwen2_moe")
    items = [TokenizedSFT(i, p.prompt_ids, p.chosen_ids) for i, p in enumerate(TRL_PAIRS)]
    items += [TokenizedSFT(2 + i, p.prompt_ids, p.rejected_ids) for i, p in enumerate(TRL_PAIRS)]
    cfg = config_from_dict({"task": "sft", "model_name_or_path": "unused", "dataset_name": "synthetic",
                            "output_dir": str(tmp_path), "per_device_train_batch_size": len(items), "max_steps": 1,
                            "disable_tqdm": True, "use_cpu": True, "packing": packing})
    policy = copy.deepcopy(model)
    trainer = SFTTrainer(cfg, policy=policy, tokenizer=TOKENIZER, train_data=items, eval_data=items)
    assert trainer.router_coef == 0.02 and trainer.layout == ("packed" if packing else "padded")
    mb = trainer.micro_batches(0)[0]
    assert mb.layout.input_ids.shape[0] == (1 if packing else len(items))
    out = trainer.forward(mb)
    out.loss.backward()
    grads = _grads(policy)

    trl_policy = copy.deepcopy(model).train()
    add_fused_lm_head(trl_policy, outputs=("log_probs", "entropy", "is_top1"))
    width = max(len(x.prompt_ids) + len(x.completion_ids) for x in items)
    ids, attention, labels = (torch.zeros(len(items), width, dtype=torch.long) for _ in range(3))
    labels.fill_(-100)
    for i, x in enumerate(items):
        seq, p = x.prompt_ids + x.completion_ids, len(x.prompt_ids)
        ids[i, :len(seq)], attention[i, :len(seq)] = torch.tensor(seq), 1
        labels[i, p:len(seq)] = torch.tensor(x.completion_ids)
    st = types.SimpleNamespace(
        model=trl_policy, accelerator=types.SimpleNamespace(parallelism_config=None, **vars(_accelerator())),
        aux_loss_enabled=True, router_aux_loss_coef=0.02, compute_loss_func=None, label_smoother=None,
        args=types.SimpleNamespace(loss_type="nll", average_tokens_across_devices=False),
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1)
    trl_loss = TRLSFTTrainer.compute_loss(st, trl_policy, {"input_ids": ids, "attention_mask": attention,
                                                           "labels": labels})
    trl_aux = _assert_equals_trl(out, grads, st, trl_policy, trl_loss)
    trainer.step = 0  # evaluation: TRL's eval loss is the same compute_loss on the same batch (one eval batch)
    evaluated = trainer.evaluate()
    assert evaluated["eval_aux_loss"] == pytest.approx(trl_aux, abs=1e-6)
    assert evaluated["eval_loss"] == pytest.approx(float(trl_loss), abs=1e-6)


def test_moe_router_loss_adds_no_host_sync_and_reaches_the_logged_metrics(tmp_path, monkeypatch):
    """Steps 2-4 of a MoE DPO run (default layout, logging every step) make the same device-to-host syncs with the
    router loss as without it (tests/test_step_syncs.py's counter), and the run logs aux_loss each step."""
    import json

    import preflab.data.layout as layout_module

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from test_step_syncs import _fresh, counting

    moved = layout_module.to_device

    def to_device(t, device):  # the scorer moves the host-built token counts: new device tensors, as on a GPU
        with torch.utils._python_dispatch._disable_current_modes():
            return _fresh(moved(t, device))

    monkeypatch.setattr(layout_module, "to_device", to_device)

    tok = family_tokenizer("chatml")  # pad id 0; saved with the final model
    assert tok.pad_token_id == 0

    def run(out, **options):
        cfg = config_from_dict(dict(model_name_or_path="unused", dataset_name="synthetic", output_dir=str(out),
                                    per_device_train_batch_size=2, max_steps=4, logging_steps=1, learning_rate=1e-3,
                                    disable_tqdm=True, use_cpu=True, **options))
        model = tiny_family_model("qwen2_moe")
        with counting(Trainer, monkeypatch) as counter:
            trainer = Trainer(cfg, policy=model, ref=frozen_copy(model), tokenizer=tok, train_data=TRL_PAIRS)
            trainer.train()
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
        return counter.counts[1:4], counter.names[1:4], trainer.layout, rows

    with_loss, names, layout, rows = run(tmp_path / "on")
    without, names_off, _, rows_off = run(tmp_path / "off", router_aux_loss_coef=0)
    assert layout == "prefix_shared"
    assert with_loss == without, (names, names_off)
    logged = [r["aux_loss"] for r in rows if "aux_loss" in r]
    assert len(logged) == 4 and all(v > 1.0 for v in logged)
    assert not any("aux_loss" in r for r in rows_off)


def test_moe_eval_loss_holds_the_router_loss_as_trls(moe, tmp_path):
    """Evaluation adds it as training does (TRL's eval loss goes through the same _compute_loss): eval_loss is TRL's
    loss on the batch and eval_aux_loss its aux_loss."""
    _, model, trl_loss, trl_metrics, _ = moe
    cfg = config_from_dict(dict(model_name_or_path="unused", dataset_name="synthetic", output_dir=str(tmp_path),
                                layout="padded", per_device_train_batch_size=2, per_device_eval_batch_size=2,
                                max_steps=1, disable_tqdm=True, use_cpu=True, beta=0.1))
    trainer = Trainer(cfg, policy=copy.deepcopy(model), ref=frozen_copy(model), tokenizer=TOKENIZER,
                      train_data=TRL_PAIRS, eval_data=TRL_PAIRS)
    trainer.step = 0
    metrics = trainer.evaluate()
    assert metrics["eval_aux_loss"] == pytest.approx(trl_metrics["aux_loss"], abs=1e-6)
    assert metrics["eval_loss"] == pytest.approx(trl_loss, abs=1e-6)


def test_moe_router_loss_under_gradient_checkpointing_is_the_same(moe, tmp_path):
    """The decoder's layers recomputed in backward record no second set of router logits."""
    model = moe[1]
    plain, plain_metrics, plain_grads, _ = preflab_run(model, tmp_path / "plain")
    loss, metrics, grads, _ = preflab_run(model, tmp_path / "gc", gradient_checkpointing=True)
    assert (loss, metrics["aux_loss"]) == (plain, plain_metrics["aux_loss"])
    for name, g in plain_grads.items():
        torch.testing.assert_close(grads[name], g, atol=1e-7, rtol=0, msg=name)


def test_moe_config_without_the_router_shape_is_refused_at_start(tmp_path):
    model = tiny_family_model("qwen2_moe")
    object.__setattr__(model.config, "num_experts_per_tok", None)  # (past the strict check) the blocks keep theirs
    with pytest.raises(ConfigError, match="num_experts_per_tok"):
        preflab_run(model, tmp_path)
    preflab_run(model, tmp_path, router_aux_loss_coef=0)  # the way out the message names
