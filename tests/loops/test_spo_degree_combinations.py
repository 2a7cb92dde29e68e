"""spo_degree (preflab.loops.degree_head) with the run options that change how the policy is held or run: LoRA
(the head trains beside the adapters, is saved beside the adapter and restored on resume), bf16 autocast on CPU,
torch_compile (the hidden-only variant forward through the compiled scorer), and FSDP version 1, which is refused
before the models load (FSDP2 and DeepSpeed train it: tests/loops/test_deepspeed_multiprocess.py)."""
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.loops.degree_head import DegreeExtras
from preflab.loops.extras_producer import refuse_sharded_engine
from preflab.models.load import add_lora

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_spo_degree_run import DATA, J, make, reference_degree_logits  # noqa: E402

LORA = dict(use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules=["q_proj", "v_proj"])


def lora_make(out, **overrides):
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.loops.offline import Trainer

    torch.set_num_threads(1)
    params = dict(model_name_or_path="builtin:tiny-llama", dataset_name=str(DATA), output_dir=str(out),
                  learning_rate=1e-3, per_device_train_batch_size=8, max_steps=4, logging_steps=1, max_length=128,
                  disable_tqdm=True, use_cpu=True, seed=0, loss_type="spo_degree",
                  objective_params={"degrees": J, "degree_weight": 1.0}, **LORA)
    params.update(overrides)
    tok = tiny_tokenizer()
    policy = add_lora(tiny_causal_lm(tok, seed=0), 4, 8, 0.0, ["q_proj", "v_proj"])
    return Trainer(config_from_dict(params), policy=policy, ref=None, tokenizer=tok)  # reference: adapters off


def first_logged(out, key):
    return [json.loads(line)[key] for line in open(out / "metrics.jsonl") if f'"{key}"' in line][0]


def test_spo_degree_lora_head_trains_is_saved_beside_the_adapter_and_resumes(tmp_path):
    """use_peft: the policy trains its adapters only and the head with them; step 1's degree loss is log(J+1) (zero
    head); the head and the adapter get gradients; degree_head.safetensors lies beside adapter_model.safetensors and
    holds the trained head; a run resumed from checkpoint-2 (head restored from extra.safetensors) ends with the
    uninterrupted run's head and adapter."""
    trainer = lora_make(tmp_path / "full", save_steps=2)
    assert trainer.ref_is_base and all("lora_" in n for n, p in trainer.policy.named_parameters() if p.requires_grad)
    mb = trainer.micro_batches(0)[0]
    out = trainer.forward(mb)
    out.loss.backward()
    assert out.metrics["loss/degree"].item() == pytest.approx(math.log(J + 1), abs=1e-6)
    head_grads = [p.grad for p in trainer.producer.parameters()]
    assert head_grads[0].abs().sum() > 0 and head_grads[1].abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in trainer.policy.named_parameters()
               if "lora_B" in n)  # the DPO term moves the adapters (lora_B starts at zero)
    trainer.optimizer.zero_grad()
    for p in trainer.producer.parameters():
        p.grad = None
    trainer.train()
    full = tmp_path / "full"
    assert first_logged(full, "loss/degree") == pytest.approx(math.log(J + 1), abs=1e-6)
    assert (full / "adapter_model.safetensors").exists() and not (full / "model.safetensors").exists()
    head = load_file(str(full / "degree_head.safetensors"))
    live = {k: v.detach() for k, v in trainer.producer.head.state_dict().items()}
    assert sorted(head) == sorted(live) and all(torch.equal(head[k], live[k]) for k in head)
    assert head["linear.weight"].abs().sum() > 0
    resumed = lora_make(tmp_path / "resumed", resume_from_checkpoint=str(full / "checkpoint-2")).train()
    assert resumed["resumed_from_step"] == 2
    for name in ("adapter_model.safetensors", "degree_head.safetensors"):
        a, b = load_file(str(full / name)), load_file(str(tmp_path / "resumed" / name))
        assert sorted(a) == sorted(b)
        assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6, name


def test_spo_degree_bf16_autocast_on_cpu(tmp_path):
    """bf16: true on CPU: the pair and the variant forwards run under bfloat16 autocast; the degree logits equal
    each variant scored alone under the same autocast (to bfloat16's precision, and unlike float32's), and the
    zero head's degree loss is log(J+1) exactly."""
    trainer = make(tmp_path, bf16=True)
    with torch.no_grad():
        for p in trainer.producer.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    mb = trainer.micro_batches(0)[0]
    with torch.no_grad():
        ours = trainer.score(mb.layout, positions=mb.index).extras["degree_logits"].float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref_bf16 = reference_degree_logits(trainer, mb.index).float()
        ref_fp32 = reference_degree_logits(trainer, mb.index)
    assert (ours - ref_bf16).abs().max().item() <= 0.05
    assert (ours - ref_fp32).abs().max().item() > 1e-4  # autocast was on: not the float32 numbers
    zero = make(tmp_path / "zero", bf16=True)
    out = zero.forward(zero.micro_batches(0)[0])
    assert out.metrics["loss/degree"].item() == pytest.approx(math.log(J + 1), abs=1e-6)


def test_spo_degree_torch_compile_trains_like_eager(tmp_path):
    """torch_compile (backend eager: dynamo's graphs, no inductor build): the compiled scorer runs both the pair
    forward and the hidden-only variant forward; 3 steps log the eager run's losses and degree losses and end with
    its head."""
    compiled = make(tmp_path / "compiled", max_steps=3, torch_compile=True, torch_compile_backend="eager")
    summary = compiled.train()
    assert type(compiled.scorer).__name__ == "OptimizedModule" and summary["torch_compile"]["graphs"] >= 2
    make(tmp_path / "eager", max_steps=3).train()
    rows = {d: [json.loads(line) for line in open(tmp_path / d / "metrics.jsonl") if '"loss/degree"' in line]
            for d in ("compiled", "eager")}
    assert len(rows["compiled"]) == 3
    for a, b in zip(rows["compiled"], rows["eager"]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["loss/degree"] == pytest.approx(b["loss/degree"], abs=1e-5)
    a, b = (load_file(str(tmp_path / d / "degree_head.safetensors")) for d in ("compiled", "eager"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5


def test_spo_degree_refused_under_fsdp_version_1(tmp_path):
    """The check itself, on accelerate's distributed_type: FSDP version 1 (not FSDP2) is refused; FSDP2 and DeepSpeed
    train the head inside the engine's module (tests/loops/test_deepspeed_multiprocess.py), DDP outside any wrapper."""
    cfg = config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name=str(DATA), use_cpu=True,
                                output_dir=str(tmp_path), loss_type="spo_degree",
                                objective_params={"degrees": J}))
    producer = DegreeExtras(cfg.objective(), cfg)
    acc = SimpleNamespace(distributed_type="DistributedType.FSDP", is_fsdp2=False)
    with pytest.raises(ConfigError, match=r"loss_type spo_degree trains parameters outside the model .* under "
                                          r"FSDP: .* Train it with examples/accelerate/ddp.yaml or one process"):
        refuse_sharded_engine(producer, cfg, acc)
    refuse_sharded_engine(producer, cfg, SimpleNamespace(distributed_type="DistributedType.MULTI_CPU"))  # DDP: runs
    refuse_sharded_engine(None, cfg, acc)  # no producer: nothing to refuse
