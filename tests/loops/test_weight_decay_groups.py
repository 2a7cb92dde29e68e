"""weight_decay as transformers' Trainer.create_optimizer applies it: two parameter groups, weight_decay on most
parameters and 0.0 on biases and norm weights (Trainer.get_decay_parameter_names). preflab's groups hold the same
parameters for llama / qwen2 / gpt2 / LoRA models; a DPO run at weight_decay 0.1 steps as transformers' optimizer
replayed on its gradients; a resume with two groups is exact; a checkpoint of a preflab that put every parameter
in one group (full-tensor or sharded) resumes into the two groups exactly, with a note; a one-group ZeRO partition
and a layout that does not map are refused."""
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


class Shouting(torch.nn.Module):
    """Upper-case names: transformers searches the lower-cased name, so Final_Norm, RMSNorm and Head_Bias do not
    decay (none is a LayerNorm module) and Proj does."""

    def __init__(self):
        super().__init__()
        self.Final_Norm = torch.nn.Linear(3, 3, bias=False)
        self.RMSNorm = torch.nn.Linear(3, 3, bias=False)
        self.Head_Bias = torch.nn.Parameter(torch.zeros(3))
        self.Proj = torch.nn.Parameter(torch.zeros(3, 3))


def test_names_are_matched_lower_cased_as_transformers_matches_them():
    model = Shouting()
    (decayed, kept), decays = _our_groups(model)
    assert decays == [True, False] and decayed == _transformers_decayed(model) == {"Proj"}
    assert kept == {"Final_Norm.weight", "RMSNorm.weight", "Head_Bias"}


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


def _as_an_earlier_preflab_wrote_it(checkpoint: Path, order: list[int]) -> None:
    """Rewrite `checkpoint` (two groups) as a preflab before the weight-decay groups wrote it: one group over the
    parameters in their model order (order[i]: the model-order position of group-order index i), weight_decay on
    all, the scheduler over one group, no WEIGHT_DECAY_GROUPS marker; sealed again."""
    meta = json.loads((checkpoint / "optimizer.json").read_text())
    tensors = load_file(str(checkpoint / "optimizer.safetensors"))
    first = meta["param_groups"][0]
    meta = {"param_groups": [{**first, "params": list(range(len(order)))}],
            "state": {str(order[int(i)]): values for i, values in meta["state"].items()},
            "optimizer": meta["optimizer"]}
    moved = {}
    for key, value in tensors.items():
        index, _, name = key.partition(".")
        moved[f"{order[int(index)]}.{name}"] = value
    save_file(moved, str(checkpoint / "optimizer.safetensors"))
    (checkpoint / "optimizer.json").write_text(json.dumps(meta))
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    state["scheduler"] = {k: v[:1] if k in ("base_lrs", "_last_lr") else v for k, v in state["scheduler"].items()}
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    marker = json.loads((checkpoint / ck.MARKER).read_text())
    marker["files"] = ck.file_records(checkpoint)
    (checkpoint / ck.MARKER).write_text(json.dumps(marker))


def test_an_earlier_preflabs_one_group_checkpoint_resumes_into_the_two_groups_exactly(tmp_path, monkeypatch, capsys):
    """The state is per parameter: moved from its one-group index to its two-group index, with the saved group's
    settings on both groups and 0.0 on the second, the resumed run is the run that had the two groups from the
    start (its weights at the end equal bit for bit; a wrong move would put one tensor's moments on another). The
    resume says what changed."""
    record, built = [], []
    _recording(monkeypatch, record, built)
    _, full = run(tmp_path / "full", optim="adamw_torch", **OPTIONS)
    order = built[0].preflab_single_group_order
    assert sorted(order) == list(range(21)) and order != sorted(order)  # the norms moved behind
    legacy = tmp_path / "legacy"
    (tmp_path / "full/checkpoint-3").rename(legacy)
    _as_an_earlier_preflab_wrote_it(legacy, order)
    capsys.readouterr()
    _, resumed = run(tmp_path / "resumed", optim="adamw_torch", **OPTIONS, resume_from_checkpoint=str(legacy))
    assert "put every trainable parameter in one weight-decay group; its optimizer state is read into the groups " \
           "transformers' Trainer builds (16 parameters at weight_decay 0.1, 5 biases and norm weights at 0.0), so " \
           "the run continues with the new grouping (those 5 parameters are no longer decayed from here on)." \
           in " ".join(capsys.readouterr().out.split())
    assert [g["weight_decay"] for g in resumed.optimizer.param_groups] == [0.1, 0.0]
    assert len(resumed.scheduler.scheduler.base_lrs if hasattr(resumed.scheduler, "scheduler")
               else resumed.scheduler.base_lrs) == 2
    for (name, p), q in zip(full.policy.named_parameters(), resumed.policy.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_a_one_group_state_that_does_not_map_is_refused():
    from preflab.errors import ConfigError

    model = Odd()
    optimizer = build_optimizer(SimpleNamespace(optim="adamw_torch", learning_rate=0.1, weight_decay=0.1,
                                                adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8),
                                list(model.parameters()), [model])
    assert [len(g["params"]) for g in optimizer.param_groups] == [2, 5]
    sd = {"state": {}, "param_groups": [{**{k: v for k, v in optimizer.param_groups[0].items() if k != "params"},
                                         "params": [0, 1, 2]}]}
    with pytest.raises(ConfigError, match=r"old holds optimizer state of 1 parameter group\(s\) over 3 parameters, "
                                          r"written by an earlier preflab, and this run's optimizer has 2 group\(s\) "
                                          "over 7; that state does not map"):
        ck.regroup_state("old", sd, optimizer, legacy=True)
    assert ck.regroup_state("new", sd, optimizer, legacy=False) is sd  # a checkpoint with the marker: as saved


def test_a_sharded_one_group_checkpoint_is_regrouped_by_name(capsys):
    """The sharded (FSDP2) checkpoint names its parameters: the one saved group's names are split as this run's
    groups name them, the saved settings on both, weight_decay 0.0 on the second."""
    from preflab.errors import ConfigError
    from preflab.sharded_checkpoint import regroup_named

    optimizer = SimpleNamespace(preflab_group_decays=[True, False])
    saved = [{"lr": 0.5, "weight_decay": 0.1, "params": ["a.weight", "a.bias", "norm.weight"]}]
    current = [{"lr": 0.0, "weight_decay": 0.1, "params": ["a.weight"]},
               {"lr": 0.0, "weight_decay": 0.0, "params": ["a.bias", "norm.weight"]}]
    assert regroup_named("ck", saved, current, optimizer, legacy=True) == [
        {"lr": 0.5, "weight_decay": 0.1, "params": ["a.weight"]},
        {"lr": 0.5, "weight_decay": 0.0, "params": ["a.bias", "norm.weight"]}]
    assert "(2 biases and norm weights now at weight_decay 0.0)" in capsys.readouterr().out
    assert regroup_named("ck", current, current, optimizer, legacy=False) is current
    with pytest.raises(ConfigError, match="ck holds optimizer state of 1 parameter group"):
        regroup_named("ck", [{**saved[0], "params": ["a.weight"]}], current, optimizer, legacy=True)


def test_a_zero_partition_of_one_group_is_refused_in_a_run_of_two():
    """DeepSpeed flattens each param group into a partition of its own: an earlier preflab's one-group ZeRO state
    is refused with the reason (check_group_count), a partition of as many groups passes."""
    from preflab.deepspeed_checkpoint import check_group_count
    from preflab.errors import ConfigError

    two = SimpleNamespace(param_groups=[{"params": []}, {"params": []}])
    check_group_count("ck", {"base_optimizer_state": {"state": {}, "param_groups": [{}, {}]}, "zero_stage": 2}, two)
    with pytest.raises(ConfigError, match=r"ck holds ZeRO optimizer state in 1 parameter group\(s\) and this run "
                                          r"has 2: written by a preflab that put every trainable parameter in one"):
        check_group_count("ck", {"optimizer_state_dict": {"state": {}, "param_groups": [{}]}}, two)


def test_a_sharded_checkpoint_holds_the_two_groups_and_an_earlier_one_group_one_resumes_into_them(tmp_path):
    """One process (DCP without a process group): a tiny llama scorer with AdamW over the two groups at weight_decay
    0.1, two steps, saved with save_sharded_checkpoint; loaded into a fresh scorer + optimizer it takes the same
    next step. The same checkpoint rewritten as an earlier preflab wrote it (one group naming every parameter, no
    marker) loads into the two groups (the saved settings, 0.0 on the second) and takes that step too."""
    from preflab.scoring.lm import LogProbScorer
    from preflab.sharded_checkpoint import load_sharded_checkpoint, save_sharded_checkpoint

    cfg = SimpleNamespace(optim="adamw_torch", learning_rate=1e-2, weight_decay=0.1, adam_beta1=0.9,
                          adam_beta2=0.999, adam_epsilon=1e-8)

    def build():
        model = LogProbScorer(tiny_causal_lm(tiny_tokenizer(), arch="llama", seed=0))
        return model, build_optimizer(cfg, [p for p in model.parameters() if p.requires_grad], [model])

    def step(model, optimizer):
        ids = torch.arange(5, 37).reshape(2, 16)
        model.model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return [p.detach().clone() for p in model.parameters()]

    model, optimizer = build()
    step(model, optimizer)
    step(model, optimizer)
    path = save_sharded_checkpoint(tmp_path, 2, model, optimizer, None, {"timeline": [["r", 0]]}, True)
    meta = json.loads((path / "optimizer.json").read_text())
    assert [g["weight_decay"] for g in meta["param_groups"]] == [0.1, 0.0] and meta[ck.WEIGHT_DECAY_GROUPS]
    after = step(model, optimizer)
    fresh, fresh_opt = build()
    load_sharded_checkpoint(path, fresh, fresh_opt, None)
    assert all(torch.equal(a, b) for a, b in zip(step(fresh, fresh_opt), after, strict=True))

    names = [n for g in meta["param_groups"] for n in g["params"]]
    legacy = {"param_groups": [{**meta["param_groups"][0], "params": names}], "state": meta["state"]}
    (path / "optimizer.json").write_text(json.dumps(legacy))
    marker = json.loads((path / ck.MARKER).read_text())
    marker["files"] = ck.file_records(path)
    (path / ck.MARKER).write_text(json.dumps(marker))
    fresh, fresh_opt = build()
    load_sharded_checkpoint(path, fresh, fresh_opt, None)
    assert [g["weight_decay"] for g in fresh_opt.param_groups] == [0.1, 0.0]
    assert all(torch.equal(a, b) for a, b in zip(step(fresh, fresh_opt), after, strict=True))
