"""transformers' save_only_model and data_seed in preflab's training loop (TRL 1.16 / transformers 5.25 meaning):
checkpoints without optimizer, scheduler and RNG state, which a resume refuses; the data order seeded by data_seed
alone, initialisation and dropout by seed."""
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.loops.offline import Trainer
from preflab.models.load import frozen_copy
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_run import run, synthetic_pairs  # noqa: E402


def _run_recording_rows(out_dir, **overrides) -> tuple[list[list[int]], dict]:
    """A tiny run with dropout (gpt2 arch); returns the row ids of each step's batch and the final weights."""
    torch.set_num_threads(1)
    cfg = config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name="synthetic",
                                output_dir=str(out_dir), per_device_train_batch_size=4,
                                max_steps=5, logging_steps=1, disable_tqdm=True, use_cpu=True, disable_dropout=False,
                                learning_rate=1e-2, **overrides))
    tok = tiny_tokenizer()
    policy = tiny_causal_lm(tok, arch="gpt2", seed=0)
    trainer = Trainer(cfg, policy=policy, ref=frozen_copy(policy), tokenizer=tok, train_data=synthetic_pairs(16))
    seen, forward = [], trainer.forward

    def recording(mb):
        seen.append(list(mb.row_ids))
        return forward(mb)

    trainer.forward = recording
    trainer.train()
    return seen, load_file(str(Path(out_dir) / "model.safetensors"))


def test_data_seed_alone_sets_the_batch_order_and_seed_still_sets_dropout(tmp_path):
    order_a, weights_a = _run_recording_rows(tmp_path / "a", seed=1, data_seed=7)
    order_b, weights_b = _run_recording_rows(tmp_path / "b", seed=2, data_seed=7)
    order_c, _ = _run_recording_rows(tmp_path / "c", seed=1, data_seed=8)
    order_seed7, _ = _run_recording_rows(tmp_path / "d", seed=7)
    assert order_a == order_b == order_seed7  # the order is data_seed's, as seed's would be without data_seed
    assert order_c != order_a
    assert max((weights_a[k] - weights_b[k]).abs().max().item() for k in weights_a) > 1e-6  # dropout follows seed


def test_data_seed_resume_is_exact_and_a_changed_data_seed_is_refused(tmp_path):
    kw = dict(max_steps=6, save_steps=3, seed=3, data_seed=11)
    run(tmp_path, **kw)
    straight = load_file(str(tmp_path / "model.safetensors"))
    run(tmp_path, resume_from_checkpoint=str(tmp_path / "checkpoint-3"), **kw)
    resumed = load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    with pytest.raises(ConfigError, match=r"data_seed \(11 -> 12\)"):
        run(tmp_path, resume_from_checkpoint=str(tmp_path / "checkpoint-3"), **{**kw, "data_seed": 12})


def test_save_only_model_checkpoints_lack_the_optimizer_and_refuse_a_resume(tmp_path):
    kw = dict(max_steps=4, save_steps=2, save_only_model=True)
    run(tmp_path, **kw)
    checkpoint = tmp_path / "checkpoint-2"
    assert sorted(p.name for p in checkpoint.iterdir()) == ["COMPLETE", "model.safetensors", "trainer_state.json"]
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["save_only_model"] is True and state["scheduler"] is None and state["global_step"] == 2
    final = load_file(str(tmp_path / "model.safetensors"))
    run(tmp_path / "full", **{**kw, "save_only_model": False})  # the final model does not depend on the option
    assert all(torch.equal(final[k], v) for k, v in load_file(str(tmp_path / "full" / "model.safetensors")).items())
    for spec in (str(checkpoint), True):
        with pytest.raises(ConfigError, match="save_only_model: true and holds the model weights only"):
            run(tmp_path, resume_from_checkpoint=spec, **kw)


def test_data_seed_is_refused_where_no_batch_plan_reads_it():
    with pytest.raises(ConfigError, match="data_seed only applies to the tasks whose batch order is preflab's"):
        config_from_dict({"task": "online", "model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl",
                          "data_seed": 3})


def test_an_interrupted_save_only_model_run_says_its_checkpoint_cannot_be_resumed(tmp_path):
    from preflab.cli import interrupted_message
    from preflab.checkpoint import what_is_kept

    run(tmp_path, max_steps=2, save_steps=2, save_only_model=True)
    err = KeyboardInterrupt()
    err.preflab_output_dir = tmp_path
    for said in (interrupted_message(err), what_is_kept(tmp_path)):
        assert "checkpoint-2" in said and "save_only_model: true), so training cannot resume" in said
        assert "resume_from_checkpoint: true" not in said


def test_save_only_model_is_refused_under_a_sharding_engine():
    """FSDP2 / DeepSpeed checkpoints (preflab.sharded_checkpoint, preflab.deepspeed_checkpoint) always hold the
    optimizer state: the combination is refused before the first step (TrainingRun._train), not ignored."""
    from types import SimpleNamespace

    from preflab.loops.driver import TrainingRun

    fsdp2 = SimpleNamespace(distributed_type="DistributedType.FSDP", is_fsdp2=True)
    base = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl", "save_only_model": True}
    stub = SimpleNamespace(cfg=config_from_dict({**base, "save_steps": 2}), accelerator=fsdp2)
    with pytest.raises(ConfigError, match="save_only_model: true is not supported under FSDP2"):
        TrainingRun._check_sharded_model_only(stub)
    TrainingRun._check_sharded_model_only(SimpleNamespace(cfg=config_from_dict(base), accelerator=fsdp2))  # no saves
