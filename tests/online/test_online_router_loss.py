"""A mixture-of-experts policy in task: online: the trainers TRL 1.16 runs as its GRPOTrainer add its router loss as
GRPOTrainer._compute_loss does (router_aux_loss_coef x the load-balancing loss of the micro-batch's training forward
over every [prompt | completion] token, logged as aux_loss): the same loss, aux_loss and policy gradients as TRL's
on the same completions and advantages; the other trainers add none (TRL's OnlineDPOTrainer adds none) and say so."""
import contextlib
import copy
import json
import sys
import types
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from preflab.config import config_from_dict
from preflab.models.load import moe_aux_loss_note
from preflab.online.run import OnlineRun
from preflab.online.tasks import Task

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "families"))
from families import family_style, family_tokenizer, tiny_family_model  # noqa: E402

grpo_trainer = pytest.importorskip("trl.trainer.grpo_trainer")


def _length_reward(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]  # distinct rewards: non-zero advantages


def _grads(model) -> dict:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def _run(family, tmp_path, trainer="grpo", **options):
    """(OnlineRun with a tiny `family` policy, its model, its tokenizer): one prompt x 4 completions a step."""
    torch.set_num_threads(1)
    tok = family_tokenizer(family_style(family))
    model = tiny_family_model(family, vocab_size=len(tok))
    model.config.pad_token_id, model.config.eos_token_id = tok.pad_token_id, tok.eos_token_id
    cfg = config_from_dict({**dict(task="online", trainer=trainer, online_task="dataset", max_steps=1,
                                   model_name_or_path="(in memory)", dataset_name="(in memory)", num_generations=4,
                                   prompts_per_generation=1, steps_per_generation=1, per_device_train_batch_size=4,
                                   max_completion_length=8, beta=0.0, learning_rate=1e-3, use_cpu=True,
                                   disable_tqdm=True, logging_steps=1, output_dir=str(tmp_path), seed=0), **options})
    policy = copy.deepcopy(model).train()
    return OnlineRun(cfg, policy=policy, tokenizer=tok, task=Task(["the cat sat on"], [_length_reward])), model, tok


def _trl_grpo(model, example, pad_id: int, coef: float):
    """TRL 1.16 GRPOTrainer._compute_loss (unbound, on a stand-in trainer; one process, no accumulation, on-policy,
    beta 0) with its own _get_per_token_logps_and_entropies and fused LM head on a copy of `model`: (loss, logged
    aux_loss, gradients)."""
    from trl.trainer.utils import add_fused_lm_head

    policy = copy.deepcopy(model).train()
    add_fused_lm_head(policy, outputs=("log_probs", "entropy"))
    G, C = len(example.completions), max(len(c) for c in example.completions)
    st = types.SimpleNamespace(
        model=policy, accelerator=types.SimpleNamespace(
            device=torch.device("cpu"), num_processes=1, sync_gradients=True, gather=lambda x: x,
            gather_for_metrics=lambda x: x, reduce=lambda x, reduction="sum": x, autocast=contextlib.nullcontext,
            is_main_process=True),
        aux_loss_enabled=True, router_aux_loss_coef=coef, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        importance_sampling_level="token", beta=0.0, loss_type="grpo", epsilon_low=0.2, epsilon_high=0.2,
        use_vllm=False, vllm_importance_sampling_correction=False, current_gradient_accumulation_steps=1,
        max_completion_length=8, _entropy_bonus_enabled=False,
        args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        _metrics={"train": defaultdict(list)})
    st._get_per_token_logps_and_entropies = types.MethodType(
        grpo_trainer.GRPOTrainer._get_per_token_logps_and_entropies, st)
    completion_ids = torch.full((G, C), pad_id, dtype=torch.long)
    completion_mask = torch.zeros(G, C, dtype=torch.long)
    for i, c in enumerate(example.completions):
        completion_ids[i, :len(c)], completion_mask[i, :len(c)] = torch.tensor(c), 1
    prompt_ids = torch.tensor([example.prompt_ids] * G)  # one prompt: no left padding
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": torch.ones_like(prompt_ids),
              "completion_ids": completion_ids, "completion_mask": completion_mask,
              "advantages": torch.tensor(example.extras["advantages"], dtype=torch.float32),
              "num_items_in_batch": completion_mask.sum().float()}
    loss = grpo_trainer.GRPOTrainer._compute_loss(st, policy, inputs)
    loss.backward()
    return float(loss), st._metrics["train"]["aux_loss"][-1], _grads(policy)


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
def test_grpo_on_a_moe_policy_adds_the_router_loss_as_trls_grpo_trainer(family, tmp_path):
    run, model, tok = _run(family, tmp_path)
    assert run.router_coef == 0.02  # the model config's, as TRL resolves it
    (mb,) = run.micro_batches(0)
    (example,) = mb.examples
    # completions of different lengths (the untrained policy ends none early): right padding in TRL's rows
    example.completions = [c[:n] for c, n in zip(example.completions, (8, 6, 5, 3))]
    out = run.forward(mb)
    out.loss.backward()
    grads = _grads(run.policy)
    trl_loss, trl_aux, trl_grads = _trl_grpo(model, example, tok.pad_token_id, 0.02)
    assert trl_aux > 1.0  # about top_k = 2 for a near-uniform router: a real term
    assert float(out.metrics["aux_loss"]) == pytest.approx(trl_aux, abs=1e-6)
    assert float(out.loss) == pytest.approx(trl_loss, abs=1e-6)
    assert grads.keys() == trl_grads.keys()
    for name, g in trl_grads.items():
        torch.testing.assert_close(grads[name], g, atol=1e-6, rtol=0, msg=name)
    # without it (router_aux_loss_coef 0): the loss is the objective's alone, coef x aux_loss less
    off, _, _ = _run(family, tmp_path / "off", router_aux_loss_coef=0)
    assert off.router_coef is None
    off_out = off.forward(off.micro_batches(0)[0])
    assert "aux_loss" not in off_out.metrics
    assert float(out.loss) - float(off_out.loss) == pytest.approx(0.02 * trl_aux, abs=1e-6)


def test_a_grpo_run_on_a_moe_policy_logs_aux_loss_and_online_dpo_adds_none(tmp_path, capsys):
    run, _, _ = _run("qwen2_moe", tmp_path / "grpo")
    run.train()
    rows = [json.loads(x) for x in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines() if "loss" in x]
    assert rows[0]["aux_loss"] > 1.0
    assert "adds no router load-balancing loss" not in capsys.readouterr().out
    dpo, _, _ = _run("qwen2_moe", tmp_path / "dpo", trainer="online_dpo", beta=0.1)
    assert dpo.router_coef is None
    said = capsys.readouterr().out
    assert "trainer online_dpo adds no router load-balancing loss, as TRL 1.16's OnlineDPOTrainer adds none" in said
    assert ("grpo, bnpo, dapo, dr_grpo, gspo, cispo, sapo, luspo, vespo, rloo (TRL's GRPOTrainer; rloo its "
            "RLOOTrainer)") in said
    assert "aux_loss" not in dpo.forward(dpo.micro_batches(0)[0]).metrics
    assert "TRL 1.16 has no trainer of that name" in moe_aux_loss_note(tiny_family_model("qwen2_moe"), "sppo")
