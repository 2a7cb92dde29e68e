"""FSDP2 on CPU (gloo, 2 processes) through accelerate's own FSDP2 path: equal to one process with the same global
batch, sharded checkpoints (torch distributed checkpointing, safetensors) that resume exactly on the same world size
and reshard to one process, a gathered final model plain transformers loads, a sharded frozen reference; and the
settings that cannot run stop before anything loads (issue 16, items 3 and 4). The 2-process run
(test_fsdp2_equals_one_process_resumes_exactly_reshards_and_saves_a_transformers_model) is in
tests/loops/test_scale_matrix.py's FSDP2 launch."""
import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.loops import launch
from preflab.resume_check import saved_config_on_this_world

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
FSDP2 = ROOT / "examples/accelerate/fsdp2.yaml"


def _cfg(tmp_path, **extra):
    return config_from_dict({"output_dir": str(tmp_path), "use_cpu": True, "model_name_or_path": "builtin:tiny-llama",
                             "dataset_name": "examples/data/loud_echo_pairs.jsonl", **extra})


def test_fsdp_version_1_on_cpu_names_the_setting_before_anything_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ConfigError, match=r"FSDP version 1 .*fsdp_version: 1.*on CPU.*fsdp_version: 2"):
        launch.make_accelerator(_cfg(tmp_path))
    assert not any(tmp_path.iterdir())  # stopped before claiming the output_dir or loading anything


def test_deepspeed_on_cpu_outside_a_launcher_or_on_another_deepspeed_accelerator_is_refused(tmp_path, monkeypatch):
    """DeepSpeed on the CPU path (use_cpu, or several processes without a device) runs on the gloo group preflab
    forms (test_deepspeed_multiprocess.py). Refused before anything loads: a process no launcher started (no
    LOCAL_RANK: no group would form), DS_ACCELERATOR naming another device, and DeepSpeed having already chosen a GPU
    accelerator in this process (its engine would move the model to the GPU use_cpu asked not to use)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "deepspeed" else
                        real(name, *a))
    monkeypatch.setattr(launch, "_has_accelerator_device", lambda: False)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(ConfigError, match=r"on CPU \(use_cpu: true.*but this process was not started by a launcher"):
        launch.make_accelerator(_cfg(tmp_path / "a"))
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # accelerate's --cpu counts as use_cpu
    with pytest.raises(ConfigError, match=r"not started by a launcher"):
        launch.make_accelerator(_cfg(tmp_path / "a", use_cpu=False))
    monkeypatch.setenv("ACCELERATE_USE_CPU", "false")
    monkeypatch.setenv("WORLD_SIZE", "2")  # several processes without a device take the CPU path without use_cpu
    with pytest.raises(ConfigError, match=r"not started by a launcher \(no LOCAL_RANK\)"):
        launch.make_accelerator(_cfg(tmp_path / "b", use_cpu=False))
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("DS_ACCELERATOR", "cuda")
    with pytest.raises(ConfigError, match=r"DS_ACCELERATOR=cuda but this DeepSpeed run is on CPU"):
        launch.make_accelerator(_cfg(tmp_path / "c"))
    if real("deepspeed") is not None:
        import deepspeed.accelerator

        monkeypatch.setenv("DS_ACCELERATOR", "cpu")
        monkeypatch.setattr(deepspeed.accelerator, "get_accelerator",
                            lambda: SimpleNamespace(device_name=lambda: "cuda"))
        with pytest.raises(ConfigError, match=r"DeepSpeed already chose its cuda accelerator"):
            launch.make_accelerator(_cfg(tmp_path / "d"))
    assert not any((tmp_path / d).exists() for d in "abcd")


def test_bf16_on_a_gpu_without_bf16_names_the_setting(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "_has_accelerator_device", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100")
    with pytest.raises(ConfigError, match=r"bf16: true: this GPU \(Tesla V100\) does not support bfloat16"):
        launch.make_accelerator(_cfg(tmp_path / "a", bf16=True, use_cpu=False))
    with pytest.raises(ConfigError, match=r"dtype: bfloat16.*does not support bfloat16"):
        launch.make_accelerator(_cfg(tmp_path / "b", dtype="bfloat16", use_cpu=False))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_fsdp_version_1_refuses_save_steps_and_resume_fsdp2_and_deepspeed_checkpoint(tmp_path):
    """FSDP version 1: checkpoints and resume refused (the final model is still gathered); FSDP2 and DeepSpeed write
    them (DeepSpeed's: tests/loops/test_deepspeed_checkpoint.py)."""
    for engine in ("FSDP2", "DEEPSPEED", "MULTI_GPU"):
        launch.check_sharded_checkpoints(_cfg(tmp_path, save_steps=5, resume_from_checkpoint=True), engine)
    launch.check_sharded_checkpoints(_cfg(tmp_path, save_steps=0), "FSDP")  # no checkpoints asked: fine
    with pytest.raises(ConfigError, match=r"save_steps.*FSDP version 2 and DeepSpeed, not under FSDP version 1"):
        launch.check_sharded_checkpoints(_cfg(tmp_path, save_steps=5), "FSDP")
    with pytest.raises(ConfigError, match=r"resume_from_checkpoint.*not under FSDP version 1"):
        launch.check_sharded_checkpoints(_cfg(tmp_path, save_steps=0, resume_from_checkpoint=True), "FSDP")


@pytest.mark.parametrize("torch_version", ["2.8", "2.7"])
def test_fsdp2_checkpoints_are_refused_on_a_torch_without_distributed_hf_storage(tmp_path, monkeypatch, torch_version):
    """torch 2.8's HuggingFaceStorageWriter has no save_distributed (2.9 added it), torch 2.7 has no writer: FSDP2
    checkpoints are refused before the first step, naming the torch needed; without checkpoints the run goes on."""
    import torch.distributed.checkpoint as dcp

    class WriterOfTorch28:  # torch 2.8.0's signature
        def __init__(self, path, fqn_to_index_mapping=None, token=None, save_sharded=False):
            pass

    if torch_version == "2.8":
        monkeypatch.setattr(dcp, "HuggingFaceStorageWriter", WriterOfTorch28)
    else:
        monkeypatch.delattr(dcp, "HuggingFaceStorageWriter")
    for asked in ({"save_steps": 5}, {"save_steps": 0, "resume_from_checkpoint": True}):
        with pytest.raises(ConfigError, match=r"sharded checkpoints under FSDP2 .*need torch>=2\.9.*save_steps: 0"):
            launch.check_sharded_checkpoints(_cfg(tmp_path, **asked), "FSDP2")
    launch.check_sharded_checkpoints(_cfg(tmp_path, save_steps=0), "FSDP2")
    launch.check_sharded_checkpoints(_cfg(tmp_path, save_steps=5), "DEEPSPEED")  # DeepSpeed writes its own


def test_a_checkpoint_from_another_world_size_keeps_its_global_batch(tmp_path):
    """2 processes x 4 rows = 1 process x 8 rows: the same run; per_device_train_batch_size is then no config
    change. Another global batch is left to the config check (a meaning change)."""
    cfg = _cfg(tmp_path, per_device_train_batch_size=8)
    saved = {**cfg.to_dict(), "per_device_train_batch_size": 4}
    assert saved_config_on_this_world(saved, {"world_size": 2}, cfg, 1) == cfg.to_dict()
    assert saved_config_on_this_world(saved, {"world_size": 4}, cfg, 1) == saved
    assert saved_config_on_this_world(saved, {}, cfg, 1) == saved


def test_deepspeed_settings_preflab_cannot_honour_are_refused_before_loading(tmp_path, monkeypatch):
    """DeepSpeed steps inside accelerator.backward: one micro-batch per step, its clipping equal to max_grad_norm."""
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_GRADIENT_CLIPPING", "1.0")
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1")
    launch.check_deepspeed_settings(_cfg(tmp_path))  # the shipped zero2/zero3 values with the defaults: fine
    with pytest.raises(ConfigError, match=r"gradient_accumulation_steps=4 under DeepSpeed.*gradient_accumulation_st"
                                          r"eps: 1"):
        launch.check_deepspeed_settings(_cfg(tmp_path, gradient_accumulation_steps=4))
    with pytest.raises(ConfigError, match=r"gradient_clipping is 1.0 but max_grad_norm is 0.5"):
        launch.check_deepspeed_settings(_cfg(tmp_path, max_grad_norm=0.5))
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "8")
    with pytest.raises(ConfigError, match=r"deepspeed_config.gradient_accumulation_steps is 8"):
        launch.check_deepspeed_settings(_cfg(tmp_path))


def test_plan_counts_the_reference_sharded_under_fsdp2_only(tmp_path):
    """preflab plan: under FSDP2 (examples/accelerate/fsdp2.yaml) the reference is 1/N per rank, as the policy's
    weights; under ZeRO-3 and FSDP version 1 it stays a full copy on every rank."""
    from preflab.plan import Sharding, memory_plan, model_config_of, sharding_from_accelerate

    from transformers import LlamaConfig

    llama = str(tmp_path / "llama")
    LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=2).save_pretrained(llama)
    cfg = _cfg(Path("/nonexistent"), model_name_or_path=llama, max_length=16)
    config = model_config_of(llama)
    fsdp2 = sharding_from_accelerate(str(FSDP2), world=4)
    assert (fsdp2.engine, fsdp2.fsdp_version) == ("fsdp", 2)
    sharded, zero3 = memory_plan(cfg, config, fsdp2), memory_plan(cfg, config, Sharding("zero3", 4))
    assert sharded["reference"] * 4 == zero3["reference"] == sharded["weights"] * 4 > 0
    assert memory_plan(cfg, config, Sharding("fsdp", 4, fsdp_version=1))["reference"] == zero3["reference"]


@pytest.mark.parametrize("lora_options", [{}, {"use_rslora": True, "use_dora": True, "modules_to_save": ["lm_head"]}],
                         ids=["lora", "rslora-dora-modules_to_save"])
def test_sharded_checkpoint_of_a_lora_policy_holds_the_adapters_and_restores_them_and_adam(tmp_path, lora_options):
    """One process (DCP without a process group): a LoRA scorer after two AdamW steps saved with
    save_sharded_checkpoint and loaded into a fresh LoRA scorer + optimizer gives the same adapters, the same AdamW
    state and the same next step; the checkpoint holds every trainable tensor and only those (the frozen base is not
    saved): the adapters, and with DoRA / modules_to_save (TRL's ModelConfig options) the magnitudes and the lm_head
    copy. (A multi-process FSDP2 run with those options is not run here.)"""
    from safetensors import safe_open

    from preflab.checkpoint import verify_checkpoint
    from preflab.models.load import add_lora
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.scoring.lm import LogProbScorer
    from preflab.sharded_checkpoint import is_sharded_checkpoint, load_sharded_checkpoint, save_sharded_checkpoint

    def build():
        torch.manual_seed(0)
        model = LogProbScorer(add_lora(tiny_causal_lm(tiny_tokenizer(), arch="llama", seed=0), 4, 8, 0.0,
                                       "all-linear", **lora_options))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        return model, optimizer

    def step(model, optimizer):
        ids = torch.arange(5, 37).reshape(2, 16)
        loss = model.model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return float(loss)

    model, optimizer = build()
    step(model, optimizer)
    step(model, optimizer)
    path = save_sharded_checkpoint(tmp_path, 2, model, optimizer, None, {"timeline": [["r", 0]]}, True)
    verify_checkpoint(path)
    assert is_sharded_checkpoint(path)
    with safe_open(str(next((path / "model").glob("*.safetensors"))), "pt") as f:
        names = list(f.keys())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(names) == sorted(trainable)
    if lora_options:
        assert any("lora_magnitude_vector" in n for n in names) and any("modules_to_save" in n for n in names)
    else:
        assert all("lora_" in n for n in names)
    after = step(model, optimizer)

    fresh, fresh_opt = build()
    state = load_sharded_checkpoint(path, fresh, fresh_opt, None)
    assert state["global_step"] == 2 and state["checkpoint_format"] == "sharded"
    assert step(fresh, fresh_opt) == after
    for (name, a), b in zip(model.named_parameters(), fresh.parameters()):
        assert torch.equal(a, b), name


def test_sharded_checkpoint_restores_each_ranks_rng_on_the_same_world_size_only(tmp_path, monkeypatch):
    """Every rank saves its own RNG (dropout draws differ between ranks); on the same world size rank r gets its
    own back, on another world size every rank takes the main rank's (rng.safetensors). One process plays rank 1 of
    2: each meeting of the ranks (ranks_agree) draws here, between its own save and the main's, so the two states
    differ."""
    from contextlib import contextmanager

    from preflab import sharded_checkpoint as sc

    @contextmanager
    def drawing_agreement(what):
        yield
        torch.rand(3)

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    monkeypatch.setattr(sc, "_rank_world", lambda: (1, 2))
    monkeypatch.setattr(sc, "ranks_agree", drawing_agreement)
    torch.manual_seed(5)
    torch.rand(3)  # the first meeting's draw, before the rank saves its own state
    own_next = torch.rand(4)
    torch.manual_seed(5)
    path = sc.save_sharded_checkpoint(tmp_path, 1, model, optimizer, None, {}, True)
    main_next = torch.rand(4)  # the main's state was written after the second meeting's draw, as it is now
    assert not torch.equal(own_next, main_next)
    assert {"rng-rank1.safetensors", "rng-rank1.json", "rng.safetensors"} <= {p.name for p in path.iterdir()}
    sc.load_sharded_checkpoint(path, model, optimizer, None)
    assert torch.equal(torch.rand(4), own_next)
    monkeypatch.setattr(sc, "_rank_world", lambda: (1, 4))
    sc.load_sharded_checkpoint(path, model, optimizer, None)
    assert torch.equal(torch.rand(4), main_next)


def test_a_lora_reward_model_under_a_sharded_engine_is_refused_before_training(tmp_path, monkeypatch):
    """Reward models are saved merged (LoRA folded in), which preflab does not do from shards: refused at the
    start under an engine that shards parameters (FSDP, ZeRO-3), not after training (a full reward model under FSDP2
    saves the gathered weights; ZeRO-2 keeps whole weights and is allowed, tests/loops/test_scale_matrix.py)."""
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models import reward_run, train
    from preflab.reward_models.heads import build_reward_model

    sys.path.insert(0, str(ROOT / "tests/reward_models"))
    from reward_synthetic import marker_rows

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in marker_rows(16, seed=0)))
    tok = tiny_tokenizer()
    cfg = config_from_dict(dict(task="reward", model_name_or_path="builtin:tiny-llama", dataset_name=str(data),
                                output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, max_steps=2,
                                max_length=64, disable_tqdm=True, use_cpu=True, use_peft=True, lora_r=4))
    monkeypatch.setattr(reward_run, "parameter_sharding", lambda accelerator: "FSDP2")  # RewardRun's module
    with pytest.raises(ConfigError, match=r"use_peft: a LoRA reward model is saved merged.*FSDP2 leaves each rank "
                                          r"only a shard.*ddp.yaml or zero2.yaml"):
        train.train_reward(cfg, model=build_reward_model("builtin:tiny-llama", 1, tok, seed=0), tokenizer=tok)
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_reference_scoring_in_lockstep_runs_as_many_forwards_on_every_rank():
    """17 pairs over 2 ranks in batches of 8: rank 0 has 9 (2 forwards), rank 1 has 8 (1). In lockstep (a sharded
    reference: every forward is a collective) rank 1 runs a second, dropped forward; its rows are unchanged."""
    from preflab.scoring.ref_cache import score_rows

    calls = []

    def score(batch):
        calls.append(list(batch))
        n = len(batch)
        logps = torch.arange(2 * n * 3, dtype=torch.float32).reshape(2 * n, 3) + 100 * torch.tensor(
            batch + batch, dtype=torch.float32)[:, None]
        return SimpleNamespace(token_logps=logps, mask=torch.ones(2 * n, 3, dtype=torch.bool))

    pairs = list(range(17))
    plain = score_rows(score, pairs, lambda items: items, 8, rank=1, world=2)
    assert len(calls) == 1
    calls.clear()
    assert score_rows(score, pairs, lambda items: items, 8, rank=1, world=2, lockstep=True) == plain
    assert len(calls) == 2 and calls[1] == calls[0]  # the padding forward repeats the last batch
    calls.clear()
    assert len(score_rows(score, pairs, lambda items: items, 8, rank=0, world=2, lockstep=True)) == 9
    assert len(calls) == 2
    calls.clear()
    score_rows(score, pairs[:1], lambda items: items, 8, rank=1, world=2, lockstep=True)  # no pair of its own
    assert calls == [[0]]


def test_generate_during_eval_under_a_sharded_engine_is_refused_before_loading(tmp_path, monkeypatch):
    """Eval samples are generated on the main process alone from the unwrapped policy: with sharded weights that
    would hang or fail mid-run, so the setting is refused at the start."""
    monkeypatch.setattr(launch, "is_sharded", lambda accelerator: True)
    with pytest.raises(ConfigError, match=r"generate_during_eval: .*sharded"):
        launch.make_accelerator(_cfg(tmp_path, generate_during_eval=True, eval_fraction=0.1))
    assert not any(tmp_path.iterdir())


def test_a_token_kl_objective_under_fsdp2_is_refused_before_training(tmp_path, monkeypatch):
    """SparsePO reads the reference's LM head outside the reference's forward, where FSDP2 keeps it sharded."""
    from accelerate import Accelerator

    sys.path.insert(0, str(HERE))
    from tiny_run import run

    monkeypatch.setattr(Accelerator, "is_fsdp2", property(lambda self: True))
    with pytest.raises(ConfigError, match=r"objective 'sparsepo' needs token-level KL.*FSDP2"):
        run(tmp_path / "out", loss_type="sparsepo")
    assert not (tmp_path / "out" / "metrics.jsonl").exists()
