"""bitsandbytes' optimizers as `optim` (adamw_8bit, paged_adamw_8bit, lion_8bit, rmsprop_bnb, ademamix, ...): the
class and keyword arguments of transformers' Trainer.get_optimizer_cls_and_kwargs for every name; for every name
that runs on the CPU (all but the paged ones) preflab's optimizer equals the one transformers' Trainer.create_optimizer
builds (its two weight-decay groups and its 32-bit state for nn.Embedding weights under 8-bit optimizers) and steps
to bit-equal parameters and state; a DPO run with adamw_8bit steps as transformers' optimizer replayed on its
gradients and a stop-and-resume ends on the uninterrupted run's weights bit for bit (8-bit state: uint8 tensors,
quantization maps and block maxima through safetensors + JSON); the refusals (no bitsandbytes, paged off CUDA,
optim_args transformers would pass to bitsandbytes' RMSprop as strings, FSDP2 / DeepSpeed, in the run and in
`preflab plan`), the plan's state bytes, and that nothing but building one of its optimizers imports bitsandbytes.
On 2 DDP processes (equal to 1, exact resume): tests/loops/test_multiprocess_features.py, in its shared launch."""
import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.loops import optimizer as optimizer_module
from preflab.loops.optimizer import build_optimizer
from preflab.optimizer_options import BNB_OPTIMIZERS, optimizer_errors, sharded_optimizer_refusal

sys.path.insert(0, str(Path(__file__).parent))
from optimizer_state_files import assert_restored_state_steps_exactly  # noqa: E402
from tiny_run import run  # noqa: E402

needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                               reason="bitsandbytes is not installed (pip install \"preflab[bnb]\")")
CPU_NAMES = [name for name in BNB_OPTIMIZERS if "paged" not in name]
BASE = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "pairs.jsonl"}


@pytest.fixture(autouse=True)
def fresh_bnb_manager():
    """transformers' Trainer registers its 32-bit embedding override with bitsandbytes' process-wide manager, which
    later optimizers of the process would read by parameter position: each test starts and ends with it empty."""
    if importlib.util.find_spec("bitsandbytes") is None:
        yield
        return
    from bitsandbytes.optim import GlobalOptimManager

    GlobalOptimManager.get_instance().initialize()
    yield
    GlobalOptimManager.get_instance().initialize()


class Net(torch.nn.Module):
    """An embedding and a Linear weight of >= 4096 values (8-bit state unless overridden), a bias and a LayerNorm
    (transformers' no-decay group), a bias-free small Linear (32-bit state: under bitsandbytes' min_8bit_size)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(300, 16)
        self.proj = torch.nn.Linear(16, 320)
        self.norm = torch.nn.LayerNorm(320)
        self.out = torch.nn.Linear(320, 2, bias=False)


def _args(optim, optim_args=None, output_dir="unused"):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(output_dir), optim=optim, optim_args=optim_args, learning_rate=0.05,
                             weight_decay=0.1, adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-6, use_cpu=True,
                             report_to=[])


def _config(optim, optim_args=None):
    return SimpleNamespace(optim=optim, optim_args=optim_args, learning_rate=0.05, weight_decay=0.1, adam_beta1=0.8,
                           adam_beta2=0.95, adam_epsilon=1e-6)


@needs_bnb
@pytest.mark.parametrize("optim, optim_args", [(name, None) for name in BNB_OPTIMIZERS] + [
    ("ademamix_8bit", "beta1=0.7,beta2=0.9,beta3=0.99,alpha=2,eps=1e-7,t_alpha=10,t_beta3=20"),
    ("paged_ademamix_32bit", "beta3=0.999")])
def test_class_and_kwargs_are_transformers_get_optimizer_cls_and_kwargs(optim, optim_args):
    from transformers import Trainer

    from preflab.loops.bnb_optimizers import bnb_class_and_kwargs

    theirs = Trainer.get_optimizer_cls_and_kwargs(_args(optim, optim_args))
    ours = bnb_class_and_kwargs(_config(optim, optim_args), optim)
    assert ours == theirs
    assert ours[1]["optim_bits"] == (8 if "8bit" in optim else 32)
    assert ours[1].get("is_paged", False) == optim.startswith("paged_")


@needs_bnb
@pytest.mark.parametrize("optim, optim_args", [(name, None) for name in CPU_NAMES] + [
    ("ademamix_8bit", "beta3=0.99,alpha=2,t_alpha=2,t_beta3=3")])
def test_optimizer_equals_transformers_trainers_and_steps_bit_equal(tmp_path, optim, optim_args):
    """transformers' own Trainer.create_optimizer on an equal model: the same class and group settings; after 3
    steps on the same gradients every parameter and every state tensor is equal, the embedding's state is float32
    (the 32-bit override) and, for an 8-bit optimizer, the large Linear weight's uint8."""
    from transformers import Trainer

    ours_model, theirs_model, start = Net(), Net(), Net()
    ours = build_optimizer(_config(optim, optim_args), list(ours_model.parameters()), [ours_model])
    theirs = Trainer(model=theirs_model, args=_args(optim, optim_args, tmp_path)).create_optimizer()
    assert type(ours) is type(theirs)
    assert [len(g["params"]) for g in ours.param_groups] == [len(g["params"]) for g in theirs.param_groups] == [3, 3]
    for mine, their in zip(ours.param_groups, theirs.param_groups, strict=True):
        assert {k: v for k, v in mine.items() if k != "params"} == {k: v for k, v in their.items() if k != "params"}
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        for p, q in zip(ours_model.parameters(), theirs_model.parameters(), strict=True):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        ours.step()
        theirs.step()
    for (name, p), q, s in zip(ours_model.named_parameters(), theirs_model.parameters(), start.parameters(),
                               strict=True):
        assert torch.equal(p, q) and not torch.equal(p, s), name
        mine, their = ours.state[p], theirs.state[q]
        assert mine.keys() == their.keys(), name
        for key in mine:
            assert (torch.equal(mine[key], their[key]) if torch.is_tensor(mine[key]) else mine[key] == their[key]), key
    assert ours.state[ours_model.embed.weight]["state1"].dtype == torch.float32
    eight = "8bit" in optim
    assert ours.state[ours_model.proj.weight]["state1"].dtype == (torch.uint8 if eight else torch.float32)


@needs_bnb
def test_without_the_override_the_embedding_would_step_differently():
    """The 32-bit embedding state is what makes the steps transformers': the same optimizer without it (8-bit
    embedding state) moves the embedding to other values."""
    from preflab.loops import bnb_optimizers

    models = Net(), Net()
    optimizers = [build_optimizer(_config("adamw_8bit"), list(models[0].parameters()), [models[0]]),
                  build_optimizer(_config("adamw_8bit"), list(models[1].parameters()), None)]
    assert bnb_optimizers.embedding_weights([models[0]], list(models[0].parameters())) == [models[0].embed.weight]
    gen = torch.Generator().manual_seed(2)
    for _ in range(2):
        grads = [torch.randn(p.shape, generator=gen) for p in models[0].parameters()]
        for model, opt in zip(models, optimizers):
            for p, g in zip(model.parameters(), grads):
                p.grad = g.clone()
            opt.step()
    assert optimizers[1].state[models[1].embed.weight]["state1"].dtype == torch.uint8
    assert not torch.equal(models[0].embed.weight, models[1].embed.weight)
    assert torch.equal(models[0].out.weight, models[1].out.weight)  # 32-bit in both (under min_8bit_size)


def _recording(monkeypatch, record: list):
    """build_optimizer wrapped: each step records (parameters, gradients, rate) before and parameters after it, and
    the groups as positions in the parameter list."""
    real = optimizer_module.build_optimizer

    def build(cfg, params, owners=None):
        opt = real(cfg, params, owners)
        where = {id(p): i for i, p in enumerate(params)}
        groups = [[where[id(p)] for p in g["params"]] for g in opt.param_groups]

        def before(optimizer, args, kwargs):
            record.append({"params": [p.detach().clone() for p in params], "lr": optimizer.param_groups[0]["lr"],
                           "grads": [p.grad.clone() for p in params], "groups": groups})

        def after(optimizer, args, kwargs):
            record[-1]["after"] = [p.detach().clone() for p in params]

        opt.register_step_pre_hook(before)
        opt.register_step_post_hook(after)
        return opt

    monkeypatch.setattr(optimizer_module, "build_optimizer", build)


@needs_bnb
def test_an_adamw_8bit_run_steps_as_transformers_and_resumes_bit_exactly(tmp_path, monkeypatch):
    """A 6-step DPO run on tiny-llama with adamw_8bit (lm_head [300, 32]: 8-bit state; embed_tokens: 32-bit; the rest
    under min_8bit_size): each step equals transformers' optimizer (its class and kwargs, the run's two groups, the
    embedding override) replayed on the run's gradients and rates; the step-3 checkpoint holds the uint8 state and
    names the optimizer; resumed from it the run ends on the same weights bit for bit."""
    from bitsandbytes.optim import GlobalOptimManager
    from transformers import Trainer

    record = []
    _recording(monkeypatch, record)
    options = dict(optim="adamw_8bit", learning_rate=3e-3, warmup_steps=2, max_steps=6, save_steps=3,
                   max_grad_norm=0.5, weight_decay=0.1)
    _, full = run(tmp_path / "full", **options)
    assert len(record) == 6 and record[2]["lr"] == 3e-3
    from transformers import TrainingArguments

    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(TrainingArguments(
        output_dir=str(tmp_path / "hf"), optim="adamw_8bit", learning_rate=3e-3, weight_decay=0.1, use_cpu=True,
        report_to=[]))  # TRL's / preflab's adam_beta1, adam_beta2, adam_epsilon defaults
    params = [torch.nn.Parameter(p.clone()) for p in record[0]["params"]]
    names = [n for n, _ in full.policy.named_parameters()]
    assert names[0] == "model.embed_tokens.weight" and len(params) == len(names)
    reference = cls([{"params": [params[i] for i in group], "weight_decay": wd}
                     for group, wd in zip(record[0]["groups"], (0.1, 0.0), strict=True)], **kwargs)
    GlobalOptimManager.get_instance().override_config(params[0], key_value_dict={"optim_bits": 32})
    for k, step in enumerate(record):
        assert all(torch.equal(p, q) for p, q in zip(params, step["params"], strict=True)), k
        for p, g in zip(params, step["grads"], strict=True):
            p.grad = g.clone()
        for group in reference.param_groups:
            group["lr"] = step["lr"]
        reference.step()
        assert all(torch.equal(p, q) for p, q in zip(params, step["after"], strict=True)), k
    saved = load_file(str(tmp_path / "full/checkpoint-3/optimizer.safetensors"))
    meta = json.loads((tmp_path / "full/checkpoint-3/optimizer.json").read_text())
    assert meta["optimizer"] == "bitsandbytes AdamW 8-bit"
    head = names.index("lm_head.weight")
    index = [i for group in record[0]["groups"] for i in group].index(head)  # the state_dict's position
    wrapped = "__bnb_optimizer_quant_state__"
    assert saved[f"{index}.{wrapped}.state1"].dtype == torch.uint8 and saved[f"{index}.{wrapped}.absmax1"].numel() == 38
    assert saved[f"{0}.{wrapped}.state1"].dtype == torch.float32  # the embedding, first in the decay group
    record.clear()
    _, resumed = run(tmp_path / "resumed", **options, resume_from_checkpoint=str(tmp_path / "full/checkpoint-3"))
    assert len(record) == 3
    for (name, p), q in zip(full.policy.named_parameters(), resumed.policy.parameters(), strict=True):
        assert torch.equal(p, q), name


@needs_bnb
def test_a_resume_across_optimizers_of_other_state_is_refused(tmp_path):
    """torch AdamW and bitsandbytes' AdamW share a class name but not their state (exp_avg vs state1 / state2, uint8
    at 8 bits): a checkpoint of one is refused by the other, even with allow_config_change."""
    options = dict(learning_rate=3e-3, max_steps=2, save_steps=1)
    run(tmp_path / "torch", optim="adamw_torch", **options)
    with pytest.raises(ConfigError, match=r"holds AdamW optimizer state, and this run's optim builds bitsandbytes "
                                          r"AdamW 8-bit"):
        run(tmp_path / "a", optim="adamw_8bit", allow_config_change=True,
            resume_from_checkpoint=str(tmp_path / "torch/checkpoint-1"), **options)
    run(tmp_path / "bnb32", optim="lion_32bit", **options)
    with pytest.raises(ConfigError, match=r"holds bitsandbytes Lion 32-bit optimizer state, and this run's optim "
                                          r"builds bitsandbytes Lion 8-bit"):
        run(tmp_path / "b", optim="lion_8bit", allow_config_change=True,
            resume_from_checkpoint=str(tmp_path / "bnb32/checkpoint-1"), **options)


@needs_bnb
def test_bitsandbytes_is_imported_only_by_a_run_that_builds_one_of_its_optimizers(tmp_path):
    """Importing bitsandbytes costs seconds (and a kernel lookup on the Hub on some CPUs): `import preflab`, the CLI,
    loading a default config (YAML file and overrides) and a bitsandbytes one (which checks the package is there
    without importing it) and building the default optimizer leave it unimported; building adamw_8bit imports it
    (the probe can fail). In a fresh interpreter: this process's other tests import it. (`preflab plan` counts its
    state without it: optimizer_options.bnb_state_bytes; running memory_plan here would add seconds.)"""
    import os
    import subprocess

    import preflab

    (tmp_path / "run.yaml").write_text("model_name_or_path: builtin:tiny-llama\ndataset_name: pairs.jsonl\n")
    script = f"""
import sys
import torch
import preflab, preflab.cli, preflab.plan
from preflab.config import load_config
from preflab.loops.optimizer import build_optimizer
cfg = load_config({str(tmp_path / "run.yaml")!r}, ["learning_rate=0.01"])
assert cfg.optim == "adamw_torch_fused"
net = torch.nn.Linear(8, 8)
assert type(build_optimizer(cfg, list(net.parameters()), [net])).__name__ == "AdamW"
bnb = load_config({str(tmp_path / "run.yaml")!r}, ["optim=adamw_8bit"])
assert "bitsandbytes" not in sys.modules, sorted(m for m in sys.modules if "bitsandbytes" in m)
build_optimizer(bnb, list(net.parameters()), [net])
assert "bitsandbytes" in sys.modules
"""
    path = os.pathsep.join([str(Path(preflab.__file__).parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_without_bitsandbytes_the_config_and_the_build_say_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else
                        real(name, *a))
    with pytest.raises(ConfigError, match=r"optim='adamw_8bit' is a bitsandbytes optimizer and the bitsandbytes "
                                          r"package is not installed: pip install \"preflab\[bnb\]\""):
        config_from_dict({**BASE, "optim": "adamw_8bit"})
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes.optim raises ImportError
    monkeypatch.setitem(sys.modules, "bitsandbytes.optim", None)
    with pytest.raises(ConfigError, match=r"pip install \"preflab\[bnb\]\""):
        build_optimizer(_config("lion_8bit"), list(Net().parameters()))


@needs_bnb
@pytest.mark.parametrize("optim", [name for name in BNB_OPTIMIZERS if "paged" in name])
def test_paged_optimizers_are_refused_off_cuda(optim, monkeypatch):
    """bitsandbytes would run a paged optimizer unpaged on the CPU (with a warning); preflab refuses it, at the config
    with use_cpu and at the build where no CUDA GPU is visible, naming the unpaged optim. With a GPU visible the
    build is not refused for parameters still on the CPU (online and reward runs move the model after it)."""
    unpaged = {"paged_ademamix_32bit": "ademamix"}.get(optim, optim.replace("paged_", ""))
    use = (r"adamw_torch \(transformers has no unpaged bitsandbytes 32-bit AdamW name\)"
           if optim == "paged_adamw_32bit" else rf"{unpaged} \(the same steps, unpaged\)")
    with pytest.raises(ConfigError, match=rf"optim: {optim} needs a CUDA GPU .* use_cpu: true is set; .*Use optim: "
                                          rf"{use} or run on a CUDA GPU"):
        config_from_dict({**BASE, "optim": optim, "use_cpu": True})
    assert not optimizer_errors(config_from_dict({**BASE, "optim": optim}))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=rf"optim: {optim} needs a CUDA GPU .* no CUDA GPU is visible"):
        build_optimizer(_config(optim), list(Net().parameters()))
    assert optim == "paged_adamw_32bit" or unpaged in BNB_OPTIMIZERS
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the parameters may move to the GPU after the build
    with pytest.raises(ConfigError, match=rf"optim: {optim} needs a CUDA GPU .* use_cpu: true is set"):  # the run's
        build_optimizer(SimpleNamespace(**vars(_config(optim)), use_cpu=True), list(Net().parameters()))  # device
    assert build_optimizer(_config(optim), list(Net().parameters())).is_paged


@needs_bnb
@pytest.mark.parametrize("optim, optim_args, said", [
    ("rmsprop_bnb", "alpha=0.9", "optim rmsprop_bnb takes no optim_args: transformers passes them to bitsandbytes' "
                                 "RMSprop as unconverted strings"),
    ("adamw_8bit", "amsgrad=true", "optim adamw_8bit does not read 'amsgrad' \\(it reads no optim_args"),
    ("lion_8bit", "beta1=0.9", "optim lion_8bit does not read 'beta1'"),
    ("ademamix", "beta3=1", "beta3=1.0 must be in \\[0, 1\\)"),
    ("ademamix_8bit", "t_alpha=2.5", "t_alpha='2.5' is not an integer"),
    ("ademamix_8bit", "t_beta3=0", "t_beta3='0' must be an integer >= 1"),
    ("ademamix", "gamma=1", "optim ademamix does not read 'gamma' \\(it reads beta1, beta2, beta3, alpha, eps, "
                            "t_alpha, t_beta3"),
])
def test_optim_args_transformers_would_ignore_or_bitsandbytes_reject_are_refused(optim, optim_args, said):
    with pytest.raises(ConfigError, match=said):
        config_from_dict({**BASE, "optim": optim, "optim_args": optim_args})


def test_rmsprop_bnb_rejects_the_strings_transformers_would_hand_it():
    """The reason for refusing rmsprop_bnb's optim_args: transformers' kwargs carry the strings, which
    bitsandbytes' RMSprop cannot take."""
    pytest.importorskip("bitsandbytes")
    from transformers import Trainer

    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(_args("rmsprop_bnb", "alpha=0.9"))
    assert kwargs["alpha"] == "0.9"
    with pytest.raises(TypeError):
        cls(list(Net().parameters()), **kwargs)


ACCELERATE = Path(__file__).resolve().parents[2] / "examples/accelerate"


@needs_bnb
@pytest.mark.parametrize("engine, fsdp2, named, plan_with", [
    ("DistributedType.DEEPSPEED", False, "DEEPSPEED", ["--sharding", "zero2"]),
    ("DistributedType.DEEPSPEED", False, "DEEPSPEED", ["--accelerate-config", str(ACCELERATE / "zero3.yaml")]),
    ("DistributedType.FSDP", True, "FSDP2", ["--accelerate-config", str(ACCELERATE / "fsdp2.yaml")])])
def test_sharded_engines_refuse_bitsandbytes_optimizers_and_ddp_takes_them(engine, fsdp2, named, plan_with, capsys):
    """The run refuses an 8-bit optimizer under DeepSpeed / FSDP2 before its first step, and `preflab plan` for the
    same config and engine stops with the run's message (exit 2), not a memory estimate; under DDP both go on."""
    from preflab.cli import main
    from preflab.loops.driver import TrainingRun

    def check(distributed_type, optim="adamw_8bit"):
        cfg = config_from_dict({**BASE, "optim": optim})
        run_ = SimpleNamespace(cfg=cfg, accelerator=SimpleNamespace(distributed_type=distributed_type, is_fsdp2=fsdp2))
        TrainingRun._check_engine_can_save(run_)

    def plan(*extra, optim="adamw_8bit"):
        capsys.readouterr()
        code = main(["plan", *(f"{k}={v}" for k, v in BASE.items()), f"optim={optim}", "max_length=64", *extra])
        return code, capsys.readouterr()

    with pytest.raises(ConfigError) as err:
        check(engine)
    assert str(err.value) == sharded_optimizer_refusal("adamw_8bit", named)
    assert "quantized in blocks of 256 values of the tensor they are handed" in str(err.value)
    code, said = plan(*plan_with)
    assert (code, said.out, said.err.strip()) == (2, "", f"preflab: error: {err.value}")
    with pytest.raises(ConfigError) as adafactor:  # any optim but AdamW, as the run refuses it
        check(engine, "adafactor")
    assert plan(*plan_with, optim="adafactor")[1].err.strip() == f"preflab: error: {adafactor.value}"
    check(engine, "adamw_torch")
    assert plan(*plan_with, optim="adamw_torch")[0] == 0
    check("DistributedType.MULTI_GPU")
    code, said = plan("--sharding", "ddp", "--world-size", "2")
    assert code == 0 and "ddp over 2 rank(s)" in said.out


@needs_bnb
def test_plan_refuses_a_paged_optimizer_with_use_cpu_as_train_does(capsys):
    """use_cpu: true with a paged optimizer stops `preflab train` at the config, and `preflab plan` with the same
    line; plan does not read whether this machine has a GPU (it plans runs for other machines), so a paged
    optimizer without use_cpu is planned."""
    from preflab.cli import main
    from preflab.optimizer_options import paged_refusal

    said = {}
    for command in ("plan", "train"):
        assert main([command, *(f"{k}={v}" for k, v in BASE.items()), "optim=paged_adamw_8bit", "use_cpu=true"]) == 2
        said[command] = capsys.readouterr().err.strip().splitlines()[-1]
    assert said["plan"] == said["train"] and paged_refusal("paged_adamw_8bit", "use_cpu: true is set") in said["plan"]
    assert main(["plan", *(f"{k}={v}" for k, v in BASE.items()), "optim=paged_adamw_8bit", "max_length=64"]) == 0


H, I, L, V = 64, 128, 2, 100  # the plan's model: q/k/v/o [64, 64] = 4096 values, gate/up/down 8192, head 6400


@needs_bnb
def test_the_plan_counts_8bit_state_with_its_block_maxima(tmp_path):
    """bitsandbytes' state by hand: 8-bit, a tensor of >= 4096 values keeps 1 byte a value and state plus a float32
    per 256 values; the embedding (transformers' 32-bit override), the norms and LoRA's small factors 4 bytes;
    32-bit ones 4 bytes whatever load_dtype. adamw_8bit on a model of 4096-value matrices is ~2 bytes a parameter."""
    from preflab.plan import Sharding, memory_plan, model_config_of

    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H, "intermediate_size": I,
        "num_hidden_layers": L, "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": V,
        "tie_word_embeddings": False}))

    def plan(**kw):
        cfg = config_from_dict({"model_name_or_path": str(tmp_path), "dataset_name": "x.jsonl", "max_length": 16,
                                "per_device_train_batch_size": 2, **kw})
        return memory_plan(cfg, model_config_of(str(tmp_path)), Sharding())["optimizer"]

    quantized = (V * H + 4 * 25) + L * (4 * (H * H + 4 * 16) + 3 * (H * I + 4 * 32))  # head, q/k/v/o, gate/up/down
    full = V * H + L * 2 * H + H  # embedding, norms
    assert plan(optim="adamw_8bit") == 2 * quantized + 2 * 4 * full
    assert plan(optim="paged_lion_8bit") == quantized + 4 * full
    assert plan(optim="ademamix_8bit", load_dtype="bfloat16", bf16=True) == 3 * quantized + 3 * 4 * full
    total = V * H * 2 + L * (4 * H * H + 3 * H * I + 2 * H) + H
    assert plan(optim="lion_32bit", load_dtype="bfloat16", bf16=True) == total * 4
    assert plan(optim="rmsprop_bnb_8bit") == quantized + 4 * full
    assert plan(optim="adamw_8bit") < plan(optim="adamw_torch") / 3
    lora = L * 8 * (4 * (H + H) + 2 * (H + I) + (I + H))  # every factor under 4096 values: float32
    assert plan(optim="adamw_8bit", use_peft=True, lora_r=8) == lora * 2 * 4
    from preflab.optimizer_options import bnb_state_bytes

    assert bnb_state_bytes("adamw_8bit", [(4096, 4096)]) / 4096 ** 2 == pytest.approx(2 * (1 + 4 / 256))


@needs_bnb
@pytest.mark.parametrize("optim", CPU_NAMES)
def test_the_weight_guards_bound_holds_at_every_step_and_spares_the_copy(optim):
    """preflab.weight_guard copies weights and optimizer state before a step only when its bound on max |p'| could
    overflow. For every CPU bitsandbytes optim (8-bit and 32-bit state, the embedding's 32-bit override): every
    step's largest weight, at gradient scales from 1e-3 to 1e3 with weight decay 0.1, is within the bound; a normal
    rate needs no copy, an absurd one (1e38) does."""
    from preflab.weight_guard import _group_bound, max_abs_bound, update_could_overflow

    net = Net()
    params = list(net.parameters())
    optimizer = build_optimizer(_config(optim), params, [net])
    gen = torch.Generator().manual_seed(3)
    for scale in (1e-3, 1.0, 1e3, 1.0, 1e-3, 1e3):
        for p in params:
            p.grad = scale * torch.randn(p.shape, generator=gen)
        w = max_abs_bound(params).item()
        grad_norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params])).item()
        bounds = [_group_bound(optimizer, group, w, grad_norm) for group in optimizer.param_groups]
        assert not update_could_overflow(optimizer, w, grad_norm)
        optimizer.step()
        for group, bound in zip(optimizer.param_groups, bounds, strict=True):
            assert max(p.abs().max().item() for p in group["params"]) <= bound
    if "8bit" in optim:
        assert optimizer.state[net.proj.weight]["state1"].dtype == torch.uint8
    optimizer.param_groups[0]["lr"] = 1e38
    assert update_could_overflow(optimizer, w, grad_norm)


@needs_bnb
@pytest.mark.parametrize("optim, reached", [("lion_8bit", lambda lr: lr), ("lion_32bit", lambda lr: lr),
                                            ("rmsprop_bnb_8bit", lambda lr: lr / 0.1),
                                            ("rmsprop_bnb", lambda lr: lr / 0.1)])
def test_lion_and_rmsprop_bounds_are_reached_from_zero_weights(optim, reached):
    """From zero weights without weight decay the first step of Lion moves every weight by exactly lr (the sign of
    a nonzero gradient), RMSprop's by lr |g| / (sqrt(0.01 g^2) + eps) ~ lr / sqrt(1 - 0.99): the step terms of the
    bounds, reached (to float rounding)."""
    from preflab.weight_guard import _group_bound

    net = Net()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    params = list(net.parameters())
    optimizer = build_optimizer(SimpleNamespace(**{**vars(_config(optim)), "weight_decay": 0.0}), params, [net])
    gen = torch.Generator().manual_seed(4)
    for p in params:
        p.grad = 10 * torch.randn(p.shape, generator=gen)
    bound = _group_bound(optimizer, optimizer.param_groups[0], 0.0, 1.0)
    assert bound == pytest.approx(reached(0.05))
    optimizer.step()
    largest = max(p.abs().max().item() for p in params)
    assert largest <= bound * (1 + 1e-6) and largest == pytest.approx(bound, rel=1e-4)


@needs_bnb
def test_adamw_8bit_bound_reads_the_block_maxima_and_eps_zero_copies_every_step():
    """bitsandbytes AdamW's bound grows with its first moments' block maxima (absmax1 of 8-bit state); with
    adam_epsilon 0 there is no bound and every step copies."""
    from preflab.weight_guard import _group_bound, update_could_overflow

    net = Net()
    optimizer = build_optimizer(_config("adamw_8bit"), list(net.parameters()), [net])
    group = optimizer.param_groups[0]
    before = _group_bound(optimizer, group, 1.0, 1.0)
    assert before == pytest.approx(abs(1 - 0.05 * 0.1) + 0.05 * 1.0 / 0.2 / 1e-6)
    for p in net.parameters():
        p.grad = torch.full(p.shape, 100.0)
    optimizer.step()
    absmax = optimizer.state[net.proj.weight]["absmax1"].max().item()
    assert absmax == pytest.approx(20.0)  # (1 - 0.8) * 100
    assert _group_bound(optimizer, group, 1.0, 1.0) == pytest.approx(abs(1 - 0.05 * 0.1) + 0.05 * 20.0 / 0.2 / 1e-6)
    zero = build_optimizer(SimpleNamespace(**{**vars(_config("adamw_8bit")), "adam_epsilon": 0.0}),
                           list(Net().parameters()))
    assert _group_bound(zero, zero.param_groups[0], 1.0, 1.0) is None and update_could_overflow(zero, 1.0, 1.0)


@needs_bnb
@pytest.mark.parametrize("optim", ["adamw_8bit", "ademamix_8bit", "lion_32bit"])
def test_the_state_of_several_8bit_tensors_goes_through_the_checkpoint_files_bit_exactly(tmp_path, optim):
    """bitsandbytes gives every 8-bit tensor's state the same quantization-map tensors (qmap1, qmap2), which
    safetensors refuses to write twice: split_optimizer_state clones the repeats. Saved as a checkpoint saves it
    (safetensors + JSON) and loaded into a new optimizer, the state is equal (uint8, maps, block maxima, int steps)
    and the next steps are the uninterrupted optimizer's, bit for bit."""
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(5)
            self.a = torch.nn.Linear(80, 64, bias=False)
            self.b = torch.nn.Linear(64, 80)

    model, again = Two(), Two()
    optimizer = build_optimizer(_config(optim), list(model.parameters()), [model])
    gen = torch.Generator().manual_seed(6)
    grads = [[torch.randn(p.shape, generator=gen) for p in model.parameters()] for _ in range(4)]

    def step(net, opt, k):
        for p, g in zip(net.parameters(), grads[k], strict=True):
            p.grad = g.clone()
        opt.step()

    for k in range(2):
        step(model, optimizer, k)
    if "8bit" in optim:
        first, second = optimizer.state[model.a.weight], optimizer.state[model.b.weight]
        assert first["qmap1"] is second["qmap1"] and first["state1"].dtype == torch.uint8
    assert_restored_state_steps_exactly(
        model, optimizer, again, lambda net: build_optimizer(_config(optim), list(net.parameters()), [net]),
        step, tmp_path)
