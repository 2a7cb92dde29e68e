"""`preflab plan`: the sharding factors of every engine (ZeRO-1, FSDP SHARD_GRAD_OP), an offloaded FSDP2
reference, an accelerate FSDP config without fsdp_version (version 1), a reward-model run (no reference) and the
activation bytes under bf16 autocast, each by hand on the hand-counted model of tests/test_plan.py; and every
engine's refusal of an optim but AdamW, equal to the run's."""
from pathlib import Path

from test_plan import H, L, P, _cfg, model_dir  # noqa: F401  (model_dir: the fixture)

from preflab.plan import Sharding, memory_plan, model_config_of, sharding_from_accelerate

ROOT = Path(__file__).resolve().parents[1]


def test_zero1_shards_only_the_optimizer_and_grad_op_the_gradients_and_optimizer(model_dir):  # noqa: F811
    cfg = _cfg(model_dir, load_dtype="bfloat16", bf16=True)
    z1 = memory_plan(cfg, model_config_of(model_dir), Sharding("zero1", 4))
    assert (z1["weights"], z1["gradients"], z1["optimizer"]) == (P * 2, P * 2, P * 4 / 4)
    op = memory_plan(cfg, model_config_of(model_dir), Sharding("fsdp_grad_op", 4))
    assert (op["weights"], op["gradients"], op["optimizer"]) == (P * 2, P * 2 / 4, P * 4 / 4)
    assert op["reference"] == P * 2 / 4  # FSDP2 shards the reference like the policy


def test_an_offloaded_fsdp2_reference_is_off_the_gpu(model_dir):  # noqa: F811
    cfg = _cfg(model_dir, load_dtype="bfloat16", bf16=True)
    off = memory_plan(cfg, model_config_of(model_dir), Sharding("fsdp", 4, offload_optimizer=True,
                                                                offload_params=True))
    assert (off["weights"], off["reference"], off["optimizer"]) == (0.0, 0.0, 0.0)
    assert off["gradients"] == P * 2 / 4


def test_an_fsdp_config_without_fsdp_version_is_version_1_with_a_full_reference(tmp_path, model_dir):  # noqa: F811
    text = (ROOT / "examples/accelerate/fsdp2.yaml").read_text().replace("  fsdp_version: 2", "  # (no version)")
    path = tmp_path / "fsdp1.yaml"
    path.write_text(text)
    sharding = sharding_from_accelerate(str(path), world=4)
    assert (sharding.engine, sharding.fsdp_version) == ("fsdp", 1)
    cfg = _cfg(model_dir, load_dtype="bfloat16", bf16=True)
    assert memory_plan(cfg, model_config_of(model_dir), sharding)["reference"] == P * 2  # not sharded by FSDP1


def test_a_reward_model_run_has_no_reference_and_autocast_halves_the_activation_bytes(model_dir):  # noqa: F811
    reward = memory_plan(_cfg(model_dir, task="reward"), model_config_of(model_dir), Sharding())
    assert reward["reference"] == 0.0 and reward["weights"] == P * 4
    autocast = memory_plan(_cfg(model_dir, bf16=True), model_config_of(model_dir), Sharding())
    tokens = 16 * 2 * 2  # max_length x batch x (chosen, rejected)
    assert autocast["weights"] == P * 4 and autocast["activations"] == L * tokens * H * 34 * 2 / 2


def test_the_plan_refuses_an_optim_with_the_runs_message_under_every_sharding_engine(tmp_path, model_dir):  # noqa: F811
    """Every optim but AdamW stops `preflab train` under DeepSpeed / FSDP (TrainingRun._check_engine_can_save, with
    accelerate's distributed_type and is_fsdp2); the plan of the same config under the matching sharding raises the
    same ConfigError text: ZeRO 1-3 and an accelerate DeepSpeed config of stage 0 (planned as ddp, still DeepSpeed),
    FSDP2 and FSDP version 1. DDP and AdamW are planned."""
    from types import SimpleNamespace

    import pytest

    from preflab.errors import ConfigError
    from preflab.loops.driver import TrainingRun

    def run_refusal(cfg, distributed_type, fsdp2=False):
        accelerator = SimpleNamespace(distributed_type=f"DistributedType.{distributed_type}", is_fsdp2=fsdp2)
        try:
            TrainingRun._check_engine_can_save(SimpleNamespace(cfg=cfg, accelerator=accelerator))
        except ConfigError as err:
            return str(err)
        return None

    def plan_refusal(cfg, sharding):
        try:
            memory_plan(cfg, model_config_of(model_dir), sharding)
        except ConfigError as err:
            return str(err)
        return None

    stage0 = tmp_path / "zero0.yaml"
    stage0.write_text((ROOT / "examples/accelerate/zero2.yaml").read_text().replace("zero_stage: 2", "zero_stage: 0"))
    assert sharding_from_accelerate(str(stage0)).engine == "ddp"
    cases = [(Sharding("zero1", 2), "DEEPSPEED", False), (Sharding("zero2", 2), "DEEPSPEED", False),
             (Sharding("zero3", 2), "DEEPSPEED", False), (sharding_from_accelerate(str(stage0)), "DEEPSPEED", False),
             (Sharding("fsdp", 2), "FSDP", True), (Sharding("fsdp_grad_op", 2, fsdp_version=1), "FSDP", False),
             (Sharding("ddp", 2), "MULTI_GPU", False)]
    for optim in ("adafactor", "sgd", "adamw_torch"):
        cfg = _cfg(model_dir, optim=optim)
        for sharding, engine, fsdp2 in cases:
            said = run_refusal(cfg, engine, fsdp2)
            assert plan_refusal(cfg, sharding) == said, (optim, sharding)
            assert (said is None) == (optim == "adamw_torch" or engine == "MULTI_GPU"), (optim, sharding)
    assert "not supported under FSDP2" in plan_refusal(_cfg(model_dir, optim="sgd"), Sharding("fsdp", 2))
    with pytest.raises(ConfigError, match="not supported under FSDP:"):
        memory_plan(_cfg(model_dir, optim="sgd"), model_config_of(model_dir), Sharding("fsdp", 2, fsdp_version=1))
