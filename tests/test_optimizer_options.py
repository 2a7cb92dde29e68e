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
