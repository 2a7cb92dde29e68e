"""optim / optim_args checks (preflab.optimizer_options): optim_args is read as transformers' _parse_optim_args and
get_optimizer_cls_and_kwargs read it (float values, true/1/yes bools), and what transformers would silently ignore
(a key the optimizer does not read, optim_args on AdamW / Adafactor, an optim_args weight_decay, which the param
group's weight_decay overrides) or torch would refuse at the first step is a config error naming it."""
import pytest

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.optimizer_options import optim_arg_values, parse_optim_args, sharded_optimizer_refusal

BASE = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "pairs.jsonl"}


def test_optim_args_are_read_as_transformers_reads_them():
    from transformers import Trainer, TrainingArguments

    text = " momentum = 0.9,dampening=0, nesterov=YES"
    assert parse_optim_args(text) == {"momentum": "0.9", "dampening": "0", "nesterov": "YES"}
    args = TrainingArguments(output_dir="unused", optim="sgd", optim_args=text, learning_rate=0.1, use_cpu=True,
                             report_to=[])
    _, theirs = Trainer.get_optimizer_cls_and_kwargs(args)
    assert {"lr": 0.1, **optim_arg_values("sgd", text)} == theirs == {"lr": 0.1, "momentum": 0.9, "dampening": 0.0,
                                                                      "nesterov": True}
    assert optim_arg_values("rmsprop", "centered=0,alpha=0.5") == {"centered": False, "alpha": 0.5}
    assert optim_arg_values("adagrad", None) == {} == optim_arg_values("adafactor", "")


@pytest.mark.parametrize("optim, optim_args, said", [
    ("adamw_torch", "amsgrad=true", "optim adamw_torch does not read 'amsgrad' \\(it reads no optim_args; "
                                    "transformers would ignore it\\)"),
    ("adafactor", "beta1=0.9", "optim adafactor does not read 'beta1'"),
    ("adagrad", "momentum=0.9", "optim adagrad does not read 'momentum' \\(it reads lr_decay, eps"),
    ("sgd", "momentum=0.9,weight_decay=0.01", "overridden by the weight_decay option"),
    ("sgd", "nesterov=true", "nesterov=true needs momentum > 0 and dampening 0"),
    ("sgd", "momentum=0.9,nesterov=ture", "nesterov='ture' is not a bool"),
    ("rmsprop", "alpha=-1", "alpha='-1' must be a finite number >= 0"),
    ("adagrad", "eps=-1e-10", "eps='-1e-10' must be a finite number >= 0"),
    ("sgd", "momentum=inf", "momentum='inf' must be a finite number >= 0"),  # float() reads inf and nan
    ("sgd", "momentum=0.9,dampening=nan", "dampening='nan' must be a finite number\\.$"),
    ("sgd", "momentum=0.9,dampening=0.1,nesterov=true", "nesterov=true needs momentum > 0 and dampening 0"),
    ("sgd", "momentum=0.9,weight_decay=0", "weight_decay in optim_args is overridden by the weight_decay option"),
    ("rmsprop", "eps", "'eps' is not key=value"),
    ("sgd", {"momentum": 0.9}, "optim_args must be str"),
])
def test_what_transformers_would_ignore_or_torch_refuse_is_an_error_naming_it(optim, optim_args, said):
    with pytest.raises(ConfigError, match=said):
        config_from_dict({**BASE, "optim": optim, "optim_args": optim_args})


def test_a_trl_config_with_adafactor_and_sgd_optim_args_reaches_the_config():
    cfg = config_from_dict({**BASE, "optim": "adafactor", "optim_args": None, "optim_target_modules": None})
    assert (cfg.optim, cfg.optim_args) == ("adafactor", None)
    cfg = config_from_dict({**BASE, "optim": "sgd", "optim_args": "momentum=0.9"})
    assert (cfg.optim, cfg.optim_args) == ("sgd", "momentum=0.9")
    assert config_from_dict(BASE).optim == "adamw_torch_fused"  # transformers 5's default, preflab's before
    with pytest.raises(ConfigError, match="optim_target_modules is not supported: .*GaLore / APOLLO are not"):
        config_from_dict({**BASE, "optim_target_modules": ["q_proj"]})


@pytest.mark.parametrize("optim", ["galore_adamw", "schedule_free_adamw", "lomo", "adamw_torch_xla", "stable_adamw"])
def test_optimizers_of_other_packages_are_refused_naming_the_ones_preflab_builds(optim):
    with pytest.raises(ConfigError, match=f"optim='{optim}' is not supported: preflab builds transformers' optimizers "
                                          "that need no other package: adamw_torch_fused, adamw_torch, adamw_hf, "
                                          "adafactor, sgd, adagrad, rmsprop"):
        config_from_dict({**BASE, "optim": optim})


@pytest.mark.parametrize("optim", ["adafactor", "sgd", "adagrad", "rmsprop"])
@pytest.mark.parametrize("engine, fsdp2, named", [("DistributedType.DEEPSPEED", False, "DEEPSPEED"),
                                                  ("DistributedType.FSDP", True, "FSDP2")])
def test_sharded_engines_refuse_optimizers_other_than_adamw_before_the_first_step(optim, engine, fsdp2, named):
    """The run's start-of-training check (TrainingRun._check_engine_can_save) under FSDP2 / DeepSpeed: a non-AdamW
    optim stops with the reason; AdamW passes it (and DDP / one process any optim)."""
    from types import SimpleNamespace

    from preflab.loops.driver import TrainingRun

    def check(optim_name, distributed_type=engine):
        cfg = config_from_dict({**BASE, "optim": optim_name})
        run = SimpleNamespace(cfg=cfg, accelerator=SimpleNamespace(distributed_type=distributed_type, is_fsdp2=fsdp2))
        TrainingRun._check_engine_can_save(run)

    with pytest.raises(ConfigError) as err:
        check(optim)
    assert str(err.value) == sharded_optimizer_refusal(optim, named)
    assert str(err.value).startswith(f"optim: {optim} is not supported under {named}: it shards every parameter")
    assert "examples/accelerate/ddp.yaml" in str(err.value)
    check("adamw_torch_fused")
    check(optim, "DistributedType.MULTI_CPU")


@pytest.mark.parametrize("optim, optim_args", [
    ("adamw_torch", None), ("adafactor", None), ("sgd", None), ("sgd", "momentum=0.9"), ("adagrad", None),
    ("rmsprop", None), ("rmsprop", "momentum=0.5,centered=true")])
def test_the_plans_state_count_is_what_transformers_optimizer_keeps_after_a_step(optim, optim_args):
    """optimizer_state_values (preflab plan's optimizer term) over a 3-d tensor, a matrix and a vector equals the
    values of the per-tensor state transformers' optimizer (Trainer.get_optimizer_cls_and_kwargs) holds after one
    step, scalars (step counters, Adafactor's RMS) left out: for Adafactor a 3-d tensor keeps its row means over all
    dims but the last (2 x 3) and its column means over all but the second-to-last (2 x 4), not a matrix's."""
    import torch
    from transformers import Trainer, TrainingArguments

    from preflab.optimizer_options import optimizer_state_values

    shapes = [(2, 3, 4), (4, 3), (5,)]
    params = [torch.nn.Parameter(torch.randn(s, generator=torch.Generator().manual_seed(i))) for i, s in
              enumerate(shapes)]
    args = TrainingArguments(output_dir="unused", optim=optim, optim_args=optim_args, learning_rate=0.01,
                             use_cpu=True, report_to=[])
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    opt = cls(params, **kwargs)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    held = sum(v.numel() for state in opt.state.values() for v in state.values()
               if isinstance(v, torch.Tensor) and v.dim() > 0)
    assert optimizer_state_values(optim, optim_args, shapes) == held
    if optim == "adafactor":
        assert held == 2 * 3 + 2 * 4 + (4 + 3) + 5


def test_a_mapping_given_from_python_is_refused_with_the_string_form_optim_args_takes():
    """TrainConfig built from Python (no YAML type check before it) with optim_args as a mapping: a ConfigError
    giving TrainingArguments' string form, not an AttributeError from reading it."""
    from preflab.config import TrainConfig

    with pytest.raises(ConfigError, match="optim_args must be a string key=value,key=value .* got dict"):
        TrainConfig(**BASE, optim="sgd", optim_args={"momentum": 0.9})
