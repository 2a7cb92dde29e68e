"""activation_offloading (TRL's option; preflab.models.activation_offload): the tensors a training forward saves for
backward are copied to host memory and back, parameters left alone, so the loss and the gradients are bit for bit
those without it, with and without gradient_checkpointing; a run with it ends with the same weights."""
from pathlib import Path

import pytest
import torch

from preflab.models.activation_offload import ActivationOffload, module_tensors
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[2]


def _loss_and_grads(checkpointing: bool, offload: bool):
    torch.manual_seed(0)
    model = tiny_causal_lm(tiny_tokenizer(), arch="llama", seed=0)
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids = torch.randint(5, 250, (3, 40), generator=torch.Generator().manual_seed(1))
    hooks = ActivationOffload(module_tensors(model)) if offload else None
    with hooks.hooks() if hooks else torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, hooks


@pytest.mark.parametrize("checkpointing", [False, True])
def test_offloaded_activations_give_bit_equal_loss_and_gradients(checkpointing):
    """The loss and every gradient equal the run without offloading exactly; tensors were moved (the copies are what
    the backward read), and no parameter was: a parameter's pack returns the parameter itself."""
    loss, grads, _ = _loss_and_grads(checkpointing, offload=False)
    loss_off, grads_off, hooks = _loss_and_grads(checkpointing, offload=True)
    assert torch.equal(loss_off, loss)
    for name, grad in grads.items():
        assert torch.equal(grads_off[name], grad), name
    assert hooks.offloaded > 0
    model = tiny_causal_lm(tiny_tokenizer(), arch="llama", seed=0)
    probe = ActivationOffload(module_tensors(model))
    weight = model.model.layers[0].mlp.up_proj.weight
    assert probe.pack(weight) is weight and probe.pack(weight.t()).data_ptr() == weight.data_ptr()
    assert probe.offloaded == 0  # a view of a parameter (its transpose) stays too
    broadcast = torch.randn(1, 64).expand(16, 64)  # 4 KiB as a view of 256 bytes: not materialised on the host
    assert probe.pack(broadcast) is broadcast and probe.pack(torch.randn(8)) is not None and probe.offloaded == 0
    hidden = torch.randn(8, 64)
    device, host = probe.pack(hidden)
    assert probe.offloaded == 1 and host.data_ptr() != hidden.data_ptr() and torch.equal(probe.unpack((device, host)),
                                                                                          hidden)


def test_checkpointing_leaves_fewer_tensors_to_offload():
    """With gradient_checkpointing the checkpointed layers' saved tensors go through the checkpoint's own hooks, so
    fewer reach the offload (they compose, as in TRL)."""
    assert 0 < _loss_and_grads(True, True)[2].offloaded < _loss_and_grads(False, True)[2].offloaded


def test_sft_run_with_activation_offloading_ends_with_the_same_weights(tmp_path, capsys):
    """Two optimizer steps of task: sft without, and with activation_offloading and gradient_checkpointing:
    the saved weights are bit-equal; the CPU note is said. Turning it on for a resume is a harmless change (as
    gradient_checkpointing): the resumed run ends with the same weights."""
    from safetensors.torch import load_file

    from preflab.config import config_from_dict
    from preflab.loops.sft import SFTTrainer

    torch.set_num_threads(1)
    weights = {}

    def run(name, **extra):
        cfg = config_from_dict({"task": "sft", "model_name_or_path": "builtin:tiny-llama", "learning_rate": 1e-3,
                                "dataset_name": str(ROOT / "examples/data/loud_echo_sft.jsonl"), "max_steps": 2,
                                "per_device_train_batch_size": 4, "max_length": 128, "disable_tqdm": True,
                                "lr_scheduler_type": "constant", "warmup_steps": 0, "save_steps": 1,
                                "use_cpu": True, "output_dir": str(tmp_path / name), **extra})
        SFTTrainer(cfg).train()
        return load_file(tmp_path / name / "model.safetensors")

    for name, extra in (("plain", {}), ("both", {"activation_offloading": True, "gradient_checkpointing": True})):
        weights[name] = run(name, **extra)
    assert "activation_offloading on the CPU copies" in capsys.readouterr().out
    resumed = run("plain", activation_offloading=True, overwrite_output_dir=True,
                  resume_from_checkpoint=str(tmp_path / "plain/checkpoint-1"))
    for key, value in weights["plain"].items():
        assert torch.equal(weights["both"][key], value), key
        assert torch.equal(resumed[key], value), key
