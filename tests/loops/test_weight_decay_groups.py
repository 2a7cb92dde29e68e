"""weight_decay as transformers' Trainer.create_optimizer applies it: two parameter groups, weight_decay on most
parameters and 0.0 on biases and norm weights (Trainer.get_decay_parameter_names). preflab's groups hold the same
parameters for llama / qwen2 / gpt2 / LoRA models; a DPO run at weight_decay 0.1 steps as transformers' optimizer
replayed on its gradients; a resume with two groups is exact; a checkpoint of a preflab that put every parameter
in one group resumes into the two groups exactly, with a note."""
import copy
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from preflab import checkpoint as ck
from preflab.loops import optimizer as optimizer_module
from preflab.loops.optimizer import build_optimizer, decays_weight, weight_decay_groups
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

sys.path.insert(0, str(Path(__file__).parent))
from tiny_run import run  # noqa: E402


def _transformers_decayed(model) -> set[str]:
    from transformers import Trainer

    return set(Trainer.get_decay_parameter_names(None, model))


def _our_groups(model):
    params = [p for p in model.parameters() if p.requires_grad]
    groups, decays = weight_decay_groups(params, [model], 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    return [{names[id(p)] for p in group["params"]} for group in groups], decays


class Odd(torch.nn.Module):
    """Names and types the rule reads: a LayerNorm under a name without "norm" (excluded by type), a "q_norm", a
    "norm" component, a bare bias-named root parameter, "normal" (not a norm component) and a plain matrix."""

    def __init__(self):
        super().__init__()
        self.ln = torch.nn.LayerNorm(3)
        self.block = torch.nn.ModuleDict({"q_norm": torch.nn.Linear(3, 3, bias=False),
                                          "norm": torch.nn.Linear(3, 3, bias=False),
                                          "normal": torch.nn.Linear(3, 3, bias=False)})
        self.my_bias = torch.nn.Parameter(torch.zeros(3))
        self.proj = torch.nn.Parameter(torch.zeros(3, 3))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2", "odd"])
def test_the_groups_hold_what_transformers_decays_and_what_it_does_not(arch):
    model = Odd() if arch == "odd" else tiny_causal_lm(tiny_tokenizer(), arch=arch, seed=0)
    theirs = _transformers_decayed(model)
    (decayed, kept), decays = _our_groups(model)
    assert decays == [True, False]
    names = {n for n, _ in model.named_parameters()}
    assert decayed == names & theirs and kept == names - theirs
    assert kept and decayed  # both kinds present: every architecture has norms (gpt2 also biases)
    if arch == "odd":
        assert decayed == {"block.normal.weight", "proj"}
        assert kept == {"ln.weight", "ln.bias", "block.q_norm.weight", "block.norm.weight", "my_bias"}


def test_a_lora_models_trainable_parameters_all_decay_in_one_group():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_causal_lm(tiny_tokenizer(), arch="qwen2", seed=0),
                           LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    (decayed,), decays = _our_groups(model)
    assert decays == [True] and decayed == trainable == trainable & _transformers_decayed(model)
    model.base_model.model.model.norm.weight.requires_grad_(True)  # a norm made trainable joins the 0.0 group
    (decayed, kept), _ = _our_groups(model)
    assert kept == {"base_model.model.model.norm.weight"} and decayed == trainable


def test_parameters_no_module_names_are_refused_and_a_bare_list_decays():
    model, stray = Odd(), torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="1 of the 8 parameters to optimize belong to none of the modules"):
        weight_decay_groups([*model.parameters(), stray], [model], 0.1)
    groups, decays = weight_decay_groups([stray], None, 0.1)
    assert decays == [True] and groups[0]["params"] == [stray] and groups[0]["weight_decay"] == 0.1
    assert not decays_weight(model, "ln.weight") and decays_weight(model, "block.normal.weight")


def _recording(monkeypatch, record: list, built: list):
    """build_optimizer wrapped: each optimizer step records (parameters, gradients, rate) before it and the
    parameters after it; `built` gets the optimizer."""
    real = optimizer_module.build_optimizer

    def build(cfg, params, owners=None):
        opt = real(cfg, params, owners)
        built.append(opt)
        opt.register_step_pre_hook(lambda o, a, k: record.append({
            "params": [p.detach().clone() for p in params], "lr": o.param_groups[0]["lr"],
            "grads": [p.grad.clone() for p in params]}))
        opt.register_step_post_hook(lambda o, a, k: record[-1].update(after=[p.detach().clone() for p in params]))
        return opt

    monkeypatch.setattr(optimizer_module, "build_optimizer", build)


def _replay(record, optim, tmp_path, decayed_by_transformers: bool = True):
    """transformers' optimizer over a tiny llama holding the run's first weights, its groups by its own rule
    (get_decay_parameter_names; decayed_by_transformers False: every parameter in the decay group, as preflab
    built it before), stepped on each recorded gradient at the recorded rate: per step, whether it lands on the
    run's weights."""
    from transformers import Trainer, TrainingArguments

    model = tiny_causal_lm(tiny_tokenizer(), seed=0)
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        for p, q in zip(params, record[0]["params"], strict=True):
            p.copy_(q)
    decay = _transformers_decayed(model) if decayed_by_transformers else {n for n, _ in model.named_parameters()}
    groups = [{"params": [p for n, p in model.named_parameters() if n in decay], "weight_decay": 0.1},
              {"params": [p for n, p in model.named_parameters() if n not in decay], "weight_decay": 0.0}]
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), optim=optim, learning_rate=3e-3, weight_decay=0.1,
                             use_cpu=True, report_to=[])
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    reference = cls(groups, **kwargs)
    equal = []
    for step in record:
        for p, g in zip(params, step["grads"], strict=True):
            p.grad = g.clone()
        for group in reference.param_groups:
            group["lr"] = step["lr"]
        reference.step()
        equal.append(all(torch.equal(p, q) for p, q in zip(params, step["after"], strict=True)))
        with torch.no_grad():  # the next step from the run's weights, so each step is compared on its own
            for p, q in zip(params, step["after"], strict=True):
                p.copy_(q)
    return equal


OPTIONS = dict(learning_rate=3e-3, warmup_steps=1, max_steps=5, save_steps=3, max_grad_norm=0.5, weight_decay=0.1)


@pytest.mark.parametrize("optim", ["adamw_torch", "sgd"])
def test_a_dpo_run_at_weight_decay_steps_as_transformers_and_resumes_exactly(tmp_path, monkeypatch, optim):
    """Every step of a 5-step DPO run at weight_decay 0.1 equals transformers' optimizer (its two groups) replayed
    on the step's gradients; the same replay with every parameter decayed (preflab's former single group) differs
    at every step with a nonzero rate. The checkpoint holds the two groups; resumed from step 3, the run ends on the
    uninterrupted run's weights."""
    record, built = [], []
    _recording(monkeypatch, record, built)
    _, full = run(tmp_path / "full", optim=optim, **OPTIONS)
    # 2 layers of 7 matrices, embeddings and head decay; 2 x 2 layer norms and the final norm do not
    assert len(record) == 5 and [len(g["params"]) for g in built[0].param_groups] == [16, 5]
    assert all(_replay(record, optim, tmp_path))
    assert record[0]["lr"] == 0.0 and _replay(record, optim, tmp_path, decayed_by_transformers=False) == \
        [True] + [False] * 4
    saved = json.loads((tmp_path / "full/checkpoint-3/optimizer.json").read_text())
    assert [g["weight_decay"] for g in saved["param_groups"]] == [0.1, 0.0] and saved[ck.WEIGHT_DECAY_GROUPS]
    _, resumed = run(tmp_path / "resumed", optim=optim, **OPTIONS,
                     resume_from_checkpoint=str(tmp_path / "full/checkpoint-3"))
    for (name, p), q in zip(full.policy.named_parameters(), resumed.policy.parameters(), strict=True):
        assert torch.equal(p, q), name
