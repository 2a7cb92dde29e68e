"""`preflab plan`: the sharding factors of every engine (ZeRO-1, FSDP SHARD_GRAD_OP), an offloaded FSDP2
reference, an accelerate FSDP config without fsdp_version (version 1), a reward-model run (no reference) and the
activation bytes under bf16 autocast, each by hand on the hand-counted model of tests/test_plan.py; and every
refusal of the run under a sharding engine that the config and the engine alone decide (an optim but AdamW,
load_best_model_at_end, save_only_model, activation_offloading, generate_during_eval, sync_ref_model, distillation,
parameters outside the model, token-level KL, DeepSpeed's accumulation, FSDP1's checkpoints): `preflab plan` stops
with the run's message, and the neighbour the run accepts is planned."""
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


def _run_refusal(cfg, distributed_type, fsdp2=False, monkeypatch=None):
    """The ConfigError text `preflab train` stops with for `cfg` under accelerate's `distributed_type` (is_fsdp2 for
    FSDP2), from the run's own checks in the run's order: make_accelerator's (check_deepspeed_settings' accumulation,
    check_sharded_checkpoints under FSDP1, generate_during_eval), the offline trainer's (refuse_sharded_engine,
    check_ref_sync, token-level KL under FSDP2, distillation), TrainingRun._check_engine_can_save and
    _training_forward; None where they all pass. Three are checked inside a real accelerator or trainer
    (generate_during_eval in make_accelerator, the token-level KL in Trainer.__init__, distillation in
    DistillTrainer.__init__): their text comes from the shared function the run raises with
    (preflab.sharding_options)."""
    from types import SimpleNamespace

    import torch

    from preflab.errors import ConfigError
    from preflab.loops.driver import TrainingRun
    from preflab.loops.extras_producer import make_producer, refuse_sharded_engine
    from preflab.loops.launch import check_deepspeed_settings, check_sharded_checkpoints, is_sharded, sharding_engine
    from preflab.loops.ref_sync import check_ref_sync
    from preflab.sharding_options import fsdp2_token_kl_problem, sharded_distill_problem, sharded_generation_problem

    acc = SimpleNamespace(distributed_type=f"DistributedType.{distributed_type}", is_fsdp2=fsdp2,
                          device=torch.device("cpu"))
    run = SimpleNamespace(cfg=cfg, accelerator=acc, main=False, forward=None, params=[], extra_params=[],
                          checkpoint_module=torch.nn.Linear(1, 1), checkpoint_extras=lambda: [],
                          _deepspeed_engine=lambda: None)
    run._check_sharded_extras = lambda: TrainingRun._check_sharded_extras(run)
    run._check_sharded_model_only = lambda: TrainingRun._check_sharded_model_only(run)
    acc.unwrap_model = lambda module: module
    engine = sharding_engine(acc) if is_sharded(acc) else None

    def accumulation():
        if distributed_type == "DEEPSPEED" and cfg.gradient_accumulation_steps != 1:  # the rest reads DeepSpeed's own
            monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")                   # settings: not this config's
            check_deepspeed_settings(cfg)

    def shared(said):
        if said:
            raise ConfigError(said)

    objective = cfg.objective()
    distill = cfg.task == "sft" and cfg.teacher_model_name_or_path and is_sharded(acc)
    checks = [accumulation, lambda: engine == "FSDP" and check_sharded_checkpoints(cfg, engine),
              lambda: shared(sharded_generation_problem(cfg, engine)),
              lambda: refuse_sharded_engine(make_producer(objective, cfg), cfg, acc, objective),
              lambda: check_ref_sync(cfg, objective, acc),
              lambda: shared(fsdp2_token_kl_problem(cfg, objective, "FSDP2" if acc.is_fsdp2 else None)),
              lambda: distill and shared(sharded_distill_problem(distributed_type)),
              lambda: TrainingRun._check_engine_can_save(run), lambda: TrainingRun._training_forward(run)]
    try:
        for check in checks:
            check()
    except ConfigError as err:
        return str(err)
    return None


EVAL = {"eval_strategy": "steps", "eval_steps": 5, "save_steps": 5, "eval_fraction": 0.1}


def test_plan_stops_with_the_runs_refusal_for_every_option_an_engine_refuses(tmp_path, model_dir, capsys,  # noqa: F811
                                                                           monkeypatch):
    """Each option `preflab train` refuses under a sharding engine (whatever the machine and data): `preflab plan`
    of the same config under the matching engine exits 2 with `preflab: error: <the run's refusal>`, and a
    neighbour config the run accepts under that engine is planned (exit 0). The run's text comes from its own
    checks (_run_refusal), not a copy."""
    from preflab.cli import main

    fsdp1 = tmp_path / "fsdp1.yaml"
    fsdp1.write_text((ROOT / "examples/accelerate/fsdp2.yaml").read_text().replace("  fsdp_version: 2", ""))
    plan_args = {"DEEPSPEED": ["--sharding", "zero2"], "FSDP2": ["--sharding", "fsdp"],
                 "FSDP": ["--accelerate-config", str(fsdp1)], "DDP": ["--sharding", "ddp"]}
    run_args = {"DEEPSPEED": ("DEEPSPEED", False), "FSDP2": ("FSDP", True), "FSDP": ("FSDP", False)}
    # (refused overrides, engine, an accepted neighbour under the same engine, words of the refusal)
    cases = [({"gradient_accumulation_steps": 2}, "DEEPSPEED", {"gradient_accumulation_steps": 1},
              "gradient_accumulation_steps=2 under DeepSpeed"),
             ({"save_steps": 5}, "FSDP", {"save_steps": 0}, "save_steps: preflab writes and resumes"),
             ({"resume_from_checkpoint": True}, "FSDP", {"resume_from_checkpoint": False},
              "resume_from_checkpoint: preflab writes"),
             ({"generate_during_eval": True}, "DEEPSPEED", {"generate_during_eval": False},
              "generate_during_eval: preflab generates"),
             ({"sync_ref_model": True}, "FSDP2", {"sync_ref_model": False}, "sync_ref_model: true is not supported"),
             ({"load_best_model_at_end": True, **EVAL}, "DEEPSPEED", {"load_best_model_at_end": False, **EVAL},
              "load_best_model_at_end is not supported under DEEPSPEED"),
             ({"save_only_model": True, "save_steps": 5}, "FSDP2", {"save_only_model": True, "save_steps": 0},
              "save_only_model: true is not supported under FSDP2"),
             ({"activation_offloading": True}, "FSDP2", {"activation_offloading": False, "gradient_checkpointing": True},
              "activation_offloading is not supported under FSDP2"),
             ({"loss_type": "sparsepo"}, "FSDP2", {"loss_type": "sigmoid"}, "the objective SparsePO's own parameters"),
             ({"loss_type": "spo_degree"}, "FSDP", {"loss_type": "sigmoid"}, "its extras producer DegreeExtras"),
             ({"loss_type": "rrpo"}, "FSDP2", {"loss_type": "sigmoid"}, "needs token-level KL through the reference"),
             ({"task": "sft", "teacher_model_name_or_path": "builtin:tiny-llama"}, "DEEPSPEED", {"task": "sft"},
              "distillation under DEEPSPEED"),
             ({"task": "sft", "teacher_model_name_or_path": "builtin:tiny-llama"}, "FSDP2", {"task": "sft"},
              "distillation under FSDP:")]

    def plan(overrides, engine):
        args = ["plan", f"model_name_or_path={model_dir}", "dataset_name=x.jsonl", "max_length=16",
                *(f"{k}={v}" for k, v in overrides.items()), *plan_args[engine], "--world-size", "2"]
        code = main(args)
        captured = capsys.readouterr()
        return code, captured.err.strip().splitlines()[-1] if captured.err.strip() else None, captured.out

    for refused, engine, neighbour, words in cases:
        said = _run_refusal(_cfg(model_dir, **refused), *run_args[engine], monkeypatch=monkeypatch)
        assert said is not None and words in said, (refused, said)
        assert plan(refused, engine)[:2] == (2, f"preflab: error: {said}"), refused
        assert _run_refusal(_cfg(model_dir, **neighbour), *run_args[engine], monkeypatch=monkeypatch) is None
        code, _, out = plan(neighbour, engine)
        assert code == 0 and "total" in out, neighbour
        # the refused config without sharding: the run goes on and the plan plans it (DeepSpeed owns sparsepo's
        # parameters and rrpo's token KL, FSDP2 spo_degree's head: planned there too)
        assert _run_refusal(_cfg(model_dir, **refused), "MULTI_GPU", monkeypatch=monkeypatch) is None, refused
        assert plan(refused, "DDP")[0] == 0, refused
        monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    for owned, engine in (({"loss_type": "sparsepo"}, "DEEPSPEED"), ({"loss_type": "spo_degree"}, "FSDP2"),
                          ({"loss_type": "rrpo"}, "DEEPSPEED")):
        assert _run_refusal(_cfg(model_dir, **owned), *run_args[engine], monkeypatch=monkeypatch) is None, owned
        assert plan(owned, engine)[0] == 0, owned


def test_sync_ref_model_with_a_reference_free_loss_is_refused_by_the_plan_as_by_the_run(model_dir, capsys):  # noqa: F811
    """check_ref_sync refuses a reference-free loss_type before it looks at the engine (under DDP too): the plan says
    the same, and a loss_type with a reference under DDP is planned."""
    from preflab.cli import main

    refused = _cfg(model_dir, sync_ref_model=True, loss_type="simpo")
    said = _run_refusal(refused, "MULTI_GPU")
    assert "reference-free" in said
    for engine in (["--sharding", "ddp"], ["--sharding", "zero3"]):
        assert main(["plan", f"model_name_or_path={model_dir}", "dataset_name=x.jsonl", "max_length=16",
                     "sync_ref_model=true", "loss_type=simpo", *engine]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == f"preflab: error: {said}"
    assert main(["plan", f"model_name_or_path={model_dir}", "dataset_name=x.jsonl", "max_length=16",
                 "sync_ref_model=true", "--sharding", "ddp"]) == 0


def test_engine_scoped_refusals_leave_the_other_engines_alone_and_the_plan_gives_the_runs_first(tmp_path, model_dir,  # noqa: F811
                                                                                              capsys, monkeypatch):
    """Each refusal belongs to its engine: gradient accumulation only to DeepSpeed (FSDP2 and FSDP version 1
    accumulate), intermediate checkpoints only to FSDP version 1 (FSDP2 and DeepSpeed write sharded ones): the run
    accepts those configs under the other engines and the plan plans them. save_strategy: epoch is one of FSDP
    version 1's refused checkpoint settings, named in the refusal. A config with two refusals (generate_during_eval,
    checked by make_accelerator, and optim sgd, checked when the run can save) gets the run's first from the plan,
    not the other."""
    from preflab.cli import main

    fsdp1 = tmp_path / "fsdp1.yaml"
    fsdp1.write_text((ROOT / "examples/accelerate/fsdp2.yaml").read_text().replace("  fsdp_version: 2", ""))
    engines = {"DEEPSPEED": (["--sharding", "zero2"], ("DEEPSPEED", False)),
               "FSDP2": (["--sharding", "fsdp"], ("FSDP", True)),
               "FSDP": (["--accelerate-config", str(fsdp1)], ("FSDP", False))}

    def plan(overrides, engine):
        code = main(["plan", f"model_name_or_path={model_dir}", "dataset_name=x.jsonl", "max_length=16",
                     *(f"{k}={v}" for k, v in overrides.items()), *engines[engine][0], "--world-size", "2"])
        err = capsys.readouterr().err.strip()
        return code, err.splitlines()[-1] if err else None

    for accepted, engine in (({"gradient_accumulation_steps": 2}, "FSDP2"), ({"gradient_accumulation_steps": 2}, "FSDP"),
                             ({"save_steps": 5}, "FSDP2"), ({"save_steps": 5}, "DEEPSPEED")):
        assert _run_refusal(_cfg(model_dir, **accepted), *engines[engine][1], monkeypatch=monkeypatch) is None
        assert plan(accepted, engine)[0] == 0, (accepted, engine)
    epoch = {"save_strategy": "epoch"}
    said = _run_refusal(_cfg(model_dir, **epoch), *engines["FSDP"][1], monkeypatch=monkeypatch)
    assert said.startswith("save_strategy: epoch: preflab writes and resumes sharded checkpoints")
    assert plan(epoch, "FSDP") == (2, f"preflab: error: {said}")
    assert _run_refusal(_cfg(model_dir, **epoch), *engines["FSDP2"][1], monkeypatch=monkeypatch) is None
    both = {"generate_during_eval": True, "optim": "sgd"}
    said = _run_refusal(_cfg(model_dir, **both), *engines["DEEPSPEED"][1], monkeypatch=monkeypatch)
    assert said.startswith("generate_during_eval: preflab generates eval samples")
    assert plan(both, "DEEPSPEED") == (2, f"preflab: error: {said}")
