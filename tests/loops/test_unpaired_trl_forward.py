"""Unpaired objectives score what TRL 1.16's KTOTrainer scores: KTO the completions and the mismatched (KL)
completions, apo_zero_unpaired (TRL's calculate_KL = False) the completions only. Loss, gradients, the logged kl and
num_tokens equal TRL's _compute_loss on the same micro-batch; num_tokens counts the completions' sequences only, as
TRL counts its completions' attention mask (preflab counted the mismatched sequences too)."""
import copy
import sys
import types
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from preflab.config import config_from_dict
from preflab.data.tokenize import TokenizedUnpaired
from preflab.loops.offline import Trainer
from preflab.models.load import frozen_copy

sys.path.insert(0, str(Path(__file__).parents[1] / "families"))
from families import tiny_family_model  # noqa: E402
from test_family_scoring import PAIRS  # noqa: E402

kto_trainer = pytest.importorskip("trl.trainer.kto_trainer")
TOKENIZER = types.SimpleNamespace(pad_token_id=0, eos_token_id=2)


def _grads(model) -> dict:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
def test_unpaired_step_equals_trls_kto_trainer_and_scores_only_what_it_scores(loss_type, tmp_path):
    from trl.trainer.utils import add_fused_lm_head

    model = tiny_family_model("llama")
    items = [TokenizedUnpaired(2 * i + k, p.prompt_ids, ids, k == 0)
             for i, p in enumerate(PAIRS) for k, ids in enumerate((p.chosen_ids, p.rejected_ids))]
    cfg = config_from_dict(dict(model_name_or_path="unused", dataset_name="synthetic", output_dir=str(tmp_path),
                                loss_type=loss_type, per_device_train_batch_size=len(items), max_steps=1,
                                disable_tqdm=True, use_cpu=True, beta=0.1))
    policy = copy.deepcopy(model)
    trainer = Trainer(cfg, policy=policy, ref=frozen_copy(model), tokenizer=TOKENIZER, train_data=items)
    mb = trainer.micro_batches(0)[0]
    calculate_kl = loss_type == "kto"
    # KTO scores each completion and one mismatched completion per example; apo_zero_unpaired the completions only
    assert mb.layout.input_ids.shape[0] == len(items) * (2 if calculate_kl else 1)
    out = trainer.forward(mb)
    out.loss.backward()
    grads = _grads(policy)

    order = [items[i] for i in mb.index]
    examples = [{"prompt_ids": x.prompt_ids, "completion_ids": x.completion_ids, "label": x.label}
                for x in order]
    if calculate_kl:  # TRL's rotation of the completions in the micro-batch's own order
        for i, e in enumerate(examples):
            e["KL_completion_ids"] = order[(i - 1) % len(order)].completion_ids
    trl_policy, trl_ref = copy.deepcopy(model).train(), frozen_copy(model)
    add_fused_lm_head(trl_policy, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    add_fused_lm_head(trl_ref)
    st = types.SimpleNamespace(
        model=trl_policy, ref_model=trl_ref, aux_loss_enabled=False, calculate_KL=calculate_kl,
        accelerator=types.SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x),
        loss_type=loss_type, beta=0.1, desirable_weight=1.0, undesirable_weight=1.0, precompute_ref_logps=False,
        args=types.SimpleNamespace(gradient_checkpointing_kwargs=None),
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1)
    st._compute_kl_logps = types.MethodType(kto_trainer.KTOTrainer._compute_kl_logps, st)
    collate = kto_trainer.DataCollatorForUnpairedPreference(pad_token_id=0)
    trl_loss = kto_trainer.KTOTrainer._compute_loss(st, trl_policy, collate(examples), return_outputs=False)
    trl_loss.backward()
    trl_metrics = st._metrics["train"]

    assert float(out.loss) == pytest.approx(float(trl_loss), abs=1e-6)
    for name, g in _grads(trl_policy).items():
        torch.testing.assert_close(grads[name], g, atol=1e-6, rtol=0, msg=name)
    assert float(out.metrics["kl"]) == pytest.approx(trl_metrics["kl"][-1], abs=1e-6)
    assert mb.num_tokens == trl_metrics["num_tokens"][-1] == st._total_train_tokens
