"""ORPO through preflab's Trainer equals TRL 1.16's ORPOTrainer on the same tiny model and rows, NLL scope included.

TRL's own code runs end to end on one batch: `ORPOTrainer.tokenize_row` (BOS and EOS added as TRL adds them),
its `DPODataCollatorWithPadding`, and `ORPOTrainer.get_batch_loss_metrics` (`concatenated_forward`: the chosen NLL
over prompt + response, labels = input_ids where attention_mask == 1; `odds_ratio_loss`), called unbound on a
stand-in trainer. preflab trains on TRL's token ids, with the config a saved TRL ORPOConfig gives, in every layout.
CPOTrainer's NLL on the same batch (prompt-masked labels) is the response-only scope, which `nll_scope: response`
and preflab's `cpo` give. Skipped where trl is not installed.
"""
import types

import pytest
import torch

from preflab.config import config_from_dict
from preflab.data.tokenize import TokenizedPair
from preflab.loops.offline import Trainer
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

trl_orpo = pytest.importorskip("trl.experimental.orpo.orpo_trainer")

ROWS = [{"prompt": "what is 2+3?", "chosen": " five", "rejected": " six or seven"},
        {"prompt": "hi", "chosen": " hello there friend", "rejected": " go"},
        {"prompt": "name a colour:", "chosen": " red", "rejected": " a dog ran to the park"}]
# TRL's ORPO metrics that preflab's orpo reports under the same names
METRICS = ("nll_loss", "log_odds_ratio", "log_odds_chosen", "rewards/chosen", "rewards/rejected", "rewards/margins",
           "rewards/accuracies", "logps/chosen", "logps/rejected")


def _stand_in(cls, tok, **fields):
    """An unbound TRL trainer's methods on a namespace with the attributes they read (no Trainer init)."""
    acc = types.SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x)
    st = types.SimpleNamespace(processing_class=tok, is_encoder_decoder=False, max_length=512, accelerator=acc,
                               padding_value=tok.pad_token_id, pad_token_id=tok.pad_token_id, aux_loss_enabled=False,
                               **fields)
    for name in ("build_tokenized_answer", "odds_ratio_loss", "concatenated_forward", "cpo_loss"):
        if hasattr(cls, name):
            setattr(st, name, types.MethodType(getattr(cls, name), st))
    st.concatenated_inputs, st.get_batch_logps = cls.concatenated_inputs, cls.get_batch_logps
    return st


@pytest.fixture(scope="module")
def trl_run():
    """(model, tokenizer, TRL's tokenized pairs as TokenizedPair, TRL's ORPO loss and metrics, CPOTrainer's NLL,
    the gradient of TRL's loss wrt the LM head and the input embeddings)."""
    from trl.experimental.cpo.cpo_trainer import CPOTrainer
    from trl.experimental.utils import DPODataCollatorWithPadding

    ORPOTrainer = trl_orpo.ORPOTrainer
    tok = tiny_tokenizer("char")
    model = tiny_causal_lm(tok, arch="llama", seed=3)
    orpo = _stand_in(ORPOTrainer, tok, beta=0.1)
    features = [ORPOTrainer.tokenize_row(orpo, row) for row in ROWS]
    batch = DPODataCollatorWithPadding(pad_token_id=tok.pad_token_id)(features)
    loss, metrics = ORPOTrainer.get_batch_loss_metrics(orpo, model, batch)
    loss.backward()
    grads = _grads(model)
    with torch.no_grad():
        cpo = _stand_in(CPOTrainer, tok, beta=0.1, cpo_alpha=1.0, loss_type="sigmoid")
        cpo_nll = CPOTrainer.concatenated_forward(cpo, model, batch)[4]
    pairs = []
    for i, f in enumerate(features):
        prompt = f["prompt_input_ids"]
        assert f["chosen_input_ids"][:len(prompt)] == prompt == f["rejected_input_ids"][:len(prompt)]
        pairs.append(TokenizedPair(i, prompt, f["chosen_input_ids"][len(prompt):],
                                   f["rejected_input_ids"][len(prompt):]))
    assert all(p.prompt_ids[0] == tok.bos_token_id and len(p.prompt_ids) > 2 for p in pairs)  # prompts that count
    return model, tok, pairs, float(loss.detach()), metrics, float(cpo_nll), grads


def _grads(model):
    """The gradients of the LM head and the input embeddings (the prompt NLL reaches both), then zeroed."""
    out = [model.lm_head.weight.grad.clone(), model.get_input_embeddings().weight.grad.clone()]
    model.zero_grad(set_to_none=True)
    return out


def _preflab(trl_run, tmp_path, layout, grad=False, **raw):
    """preflab's loss and metrics on TRL's pairs, from the config of a saved TRL ORPOConfig plus `raw` (grad: and the
    gradients, as _grads)."""
    model, tok, pairs, *_ = trl_run
    dump = trl_orpo.ORPOConfig(output_dir=str(tmp_path / "run"), bf16=False, beta=0.1).to_dict()
    cfg = config_from_dict({**dump, "model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl",
                            "layout": layout, "per_device_train_batch_size": len(pairs), "use_cpu": True,
                            "disable_tqdm": True, "report_to": [], **raw})
    trainer = Trainer(cfg, policy=model, tokenizer=tok, train_data=pairs)
    assert trainer.layout == layout
    with torch.set_grad_enabled(grad):
        out = trainer.forward(trainer.micro_batches(0)[0])
    grads = None
    if grad:
        out.loss.backward()
        grads = _grads(model)
    return trainer.objective, float(out.loss.detach()), {k: float(v) for k, v in out.metrics.items()}, grads


@pytest.mark.parametrize("layout,chunk_tokens", [("padded", None), ("prefix_shared", None), ("packed", 5),
                                                 ("prefix_packed", None)])
def test_orpo_equals_trl_orpotrainer_with_its_prompt_and_response_nll(trl_run, tmp_path, layout, chunk_tokens):
    """Loss, TRL's logged metrics (nll_loss included) and gradients; chunk_tokens 5: the LM head in several
    checkpointed chunks for the prompt tokens too."""
    *_, trl_loss, trl_metrics, cpo_nll, trl_grads = trl_run
    objective, loss, metrics, grads = _preflab(trl_run, tmp_path, layout, grad=True, chunk_tokens=chunk_tokens)
    assert objective.nll_scope == "prompt_and_response" and "prompt_logps" in objective.token_needs
    assert loss == pytest.approx(trl_loss, abs=1e-6)
    for key in METRICS:
        assert metrics[key] == pytest.approx(trl_metrics[key], abs=1e-6), key
    for ours, theirs in zip(grads, trl_grads):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    assert abs(trl_metrics["nll_loss"] - cpo_nll) > 1e-2  # the two scopes differ on these rows


def test_response_scope_and_cpo_take_trls_prompt_masked_nll(trl_run, tmp_path):
    """nll_scope: response (the old orpo) is TRL's loss with CPOTrainer's NLL (prompt-masked labels) in place of
    ORPOTrainer's; preflab's cpo logs that NLL too. The response-only scope scores no prompt token."""
    *_, trl_loss, trl_metrics, cpo_nll, _ = trl_run
    objective, loss, metrics, _ = _preflab(trl_run, tmp_path, "prefix_shared", nll_scope="response")
    assert objective.token_needs == ()
    assert metrics["nll_loss"] == pytest.approx(cpo_nll, abs=1e-6)
    assert loss == pytest.approx(trl_loss - trl_metrics["nll_loss"] + cpo_nll, abs=1e-6)
    _, _, cpo_metrics, _ = _preflab(trl_run, tmp_path, "padded", loss_type="cpo", cpo_alpha=1.0)
    assert cpo_metrics["nll_loss"] == pytest.approx(cpo_nll, abs=1e-6)


def test_prompt_scope_beside_a_token_kl_is_refused_naming_the_fix(trl_run, tmp_path):
    """The reference scores response positions only, so orpo's prompt tokens cannot share a pass with rrpo's
    token-level KL: refused at start, not mid-run."""
    from preflab.errors import ConfigError

    with pytest.raises(ConfigError, match="nll_scope: response"):
        _preflab(trl_run, tmp_path, "padded", loss_type=["orpo", "rrpo"])


def test_logits_metrics_are_dpotrainers_token_means_not_orpotrainers_whole_batch_means(trl_run, tmp_path):
    """User trial 27: an orpo run logs `logits/chosen` / `logits/rejected` under TRL 1.16 DPOTrainer's definition (the
    mean over the response tokens of each position's mean logit), which is not TRL's experimental ORPOTrainer's
    (the mean over every position of the padded batch, prompt and padding included). The logged value equals the
    first by hand and differs from ORPOTrainer's own (docs/configuration.md, 'Coming from TRL')."""
    import copy
    import json

    model, tok, pairs, _, trl_metrics, *_ = trl_run
    policy = copy.deepcopy(model)  # trained in place; the fixture's model stays as it is
    hand = {}
    with torch.no_grad():
        for side in ("chosen", "rejected"):
            total, count = 0.0, 0
            for p in pairs:
                ids = p.prompt_ids + getattr(p, f"{side}_ids")
                logits = policy(torch.tensor([ids])).logits[0]
                at = logits[len(p.prompt_ids) - 1:len(ids) - 1]  # the positions that predict the response
                total, count = total + float(at.mean(-1).sum()), count + at.shape[0]
            hand[side] = total / count
    dump = trl_orpo.ORPOConfig(output_dir=str(tmp_path / "run"), bf16=False, beta=0.1).to_dict()
    cfg = config_from_dict({**dump, "model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl",
                            "per_device_train_batch_size": len(pairs), "max_steps": 1, "logging_steps": 1,
                            "use_cpu": True, "disable_tqdm": True, "report_to": [], "num_train_epochs": 1})
    Trainer(cfg, policy=policy, tokenizer=tok, train_data=pairs).train()
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    for side in ("chosen", "rejected"):
        assert row[f"logits/{side}"] == pytest.approx(hand[side], abs=1e-5)
        # ORPOTrainer's: another number (a tiny random model's logits are near 0, hence the relative test)
        assert row[f"logits/{side}"] != pytest.approx(float(trl_metrics[f"logits/{side}"]), rel=0.02)
