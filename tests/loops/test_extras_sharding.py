"""Parameters trained outside the policy inside the module a sharding engine wraps (preflab.loops.engine_extras),
in real 2-process CPU runs (gloo):
- spo_degree's degree head under FSDP2 (examples/accelerate/fsdp2.yaml), DeepSpeed ZeRO-2 and ZeRO-3 (zero2.yaml /
  zero3.yaml) against one process with the doubled batch, and resumed from the engine's checkpoint;
- sparsepo's token masks under ZeRO-2 and ZeRO-3 against 2-process DDP, and resumed.
Before, both were refused under FSDP2 and DeepSpeed (and crashed inside the engines before the refusal: accelerate's
KeyError under FSDP2, DeepSpeed's KeyError / AttributeError building its ZeRO optimizer: the extra parameters were in
the optimizer but not in the module the engine wrapped)."""
import importlib.util
import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.loops.degree_head import DegreeExtras
from preflab.loops.engine_extras import ScorerWithExtras, extra_modules
from preflab.loops.extras_producer import ExtrasProducer, refuse_sharded_engine

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RUN = ["train", "examples/spo_degree.yaml", "max_steps=4", "eval_fraction=0.1", "eval_steps=4", "logging_steps=1"]
NEEDS_DEEPSPEED = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="pip install preflab[deepspeed]")
# accelerate config, how it is launched on CPU (ZeRO-2 with use_cpu: true, ZeRO-3 without: both the CPU path)
ENGINES = {"fsdp2": ("fsdp2.yaml", "use_cpu=true"), "zero2": ("zero2.yaml", "use_cpu=true"),
           "zero3": ("zero3.yaml", "use_cpu=false")}


def _run(cmd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _steps(out):
    return {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r}


def _equal_files(a: Path, b: Path, names) -> None:
    for name in names:
        x, y = load_file(str(a / name)), load_file(str(b / name))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name


@pytest.fixture(scope="module")
def spo_degree_one_process(tmp_path_factory):
    """examples/spo_degree.yaml, 4 steps, one plain process x 8 pairs: `preflab train` in this process
    (preflab.cli.main; a subprocess cost an interpreter's imports)."""
    from preflab.cli import main

    tmp = tmp_path_factory.mktemp("spo_degree_one")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)  # the yaml's dataset path is relative to the repository
        assert main([*RUN, "use_cpu=true", "save_steps=0", "per_device_train_batch_size=8",
                     f"output_dir={tmp / 'one'}"]) == 0
    return tmp / "one"


SPARSEPO = ["loss_type=sparsepo", "max_steps=4", "lr_scheduler_type=cosine", "warmup_steps=1",
            "per_device_train_batch_size=4"]  # tests/loops/tiny_run.py's synthetic pairs


@pytest.fixture(scope="module")
def engine_launch(tmp_path_factory, accelerate_launch):
    """`engine_launch(engine)`: BASE, the folder of the one 2-process launch under that engine (ENGINES; launched on
    the first call, then shared by the tests below: a launch costs a launcher, two interpreters' imports and the
    process group), whose runs (tests/loops/scale_matrix_run.py, in order, in the same processes):
    - BASE/spo_degree/two: examples/spo_degree.yaml, 2 processes x 4 pairs, 4 steps, checkpoint-2;
      BASE/spo_degree/resumed: the same resumed from two/checkpoint-2;
    - DeepSpeed only: sparsepo on tests/loops/tiny_run.py's synthetic pairs (SPARSEPO): BASE/sparsepo/straight (no
      checkpoint), BASE/sparsepo/saved (checkpoint-2), BASE/sparsepo/resumed (from saved/checkpoint-2), as
      tests/loops/deepspeed_run.py runs them."""
    launched = {}

    def launch(engine: str) -> Path:
        if engine not in launched:
            config, how = ENGINES[engine]
            base = tmp_path_factory.mktemp(engine)
            two, resumed = base / "spo_degree" / "two", base / "spo_degree" / "resumed"
            runs = [["cli", two, *RUN[1:], how, "save_steps=2", "per_device_train_batch_size=4"],
                    ["cli", resumed, *RUN[1:], how, "save_steps=0", "per_device_train_batch_size=4",
                     f"resume_from_checkpoint={two / 'checkpoint-2'}"]]
            if engine != "fsdp2":
                sparsepo = base / "sparsepo"
                runs += [["tiny", sparsepo / "straight", *SPARSEPO, how, "save_steps=0"],
                         ["tiny", sparsepo / "saved", *SPARSEPO, how, "save_steps=2"],
                         ["tiny", sparsepo / "resumed", *SPARSEPO, how, "save_steps=0",
                          f"resume_from_checkpoint={sparsepo / 'saved' / 'checkpoint-2'}"]]
            args = [str(a) for r in runs for a in ["--", *r]][1:]
            _run(accelerate_launch("--config_file", str(ROOT / "examples/accelerate" / config), "--num_processes",
                                   "2", str(HERE / "scale_matrix_run.py"), *args))
            launched[engine] = base
        return launched[engine]

    return launch


@pytest.mark.slow
@pytest.mark.parametrize("engine", [pytest.param("fsdp2"), pytest.param("zero2", marks=NEEDS_DEEPSPEED),
                                    pytest.param("zero3", marks=NEEDS_DEEPSPEED)])
def test_spo_degree_under_a_sharding_engine_equals_one_process_and_resumes_bit_exact(
        tmp_path, engine_launch, spo_degree_one_process, engine, capsys):
    """2 processes x 4 pairs under the engine against 1 process x 8 pairs (examples/spo_degree.yaml, 4 steps,
    cosine):
    - losses (DPO + degree), degree losses and grad norms to 1e-6, the final model to 1e-6 and
      degree_head.safetensors to 1e-8 (measured: losses 1.2e-7, model 2.8e-7, head 3.5e-10 (FSDP2), 5.8e-10
      (ZeRO-2), 2.3e-10 (ZeRO-3), for a head of max |w| 1.5e-3; float32, another reduction order), and the same eval
      degree accuracy;
    - the engine's checkpoint holds the head and its Adam state (no extra.safetensors beside it; under FSDP2 the
      wrapper's names extras.producer.* in the model and optimizer shards);
    - resumed from checkpoint-2 on 2 processes: losses, grad norms, model and head bit for bit (a head restored
      without its Adam moments, or not at all, moves step 3 by about the learning rate);
    - FSDP2: the checkpoint resumed by one plain process (no engine, the head outside any wrapper) is refused
      naming the checkpoint and both sides, before any step (it would not restore the head)."""
    one = spo_degree_one_process
    # the engine's one launch (engine_launch), shared with the sparsepo test below: the straight run, then the
    # resumed one
    two, resumed = (engine_launch(engine) / "spo_degree" / name for name in ("two", "resumed"))

    env = json.loads((two / "summary.json").read_text())["environment"]
    assert (env["world_size"], env["distributed_type"]) == (2, "FSDP" if engine == "fsdp2" else "DEEPSPEED")
    a, b, c = _steps(two), _steps(resumed), _steps(one)
    for key in ("loss", "loss/degree", "grad_norm"):
        assert [a[s][key] for s in (1, 2, 3, 4)] == pytest.approx([c[s][key] for s in (1, 2, 3, 4)], abs=1e-6), key
    got, want = (load_file(str(d / "model.safetensors")) for d in (two, one))
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6)
    got, want = (load_file(str(d / "degree_head.safetensors")) for d in (two, one))
    assert sorted(got) == ["linear.bias", "linear.weight"] and want["linear.weight"].abs().max() > 1e-4
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-8)
    final = (lambda d: json.loads((d / "summary.json").read_text())["final_metrics"]["eval_degree/accuracy"])
    assert final(two) == pytest.approx(final(one), abs=1e-6)

    ckpt = two / "checkpoint-2"
    assert not (ckpt / "extra.safetensors").exists()
    if engine == "fsdp2":
        names = set()
        for folder in ("model", "optimizer"):
            for f in (ckpt / folder).glob("*.safetensors"):
                with safe_open(str(f), "pt") as g:
                    names |= {k for k in g.keys() if k.startswith("extras.")}
        assert {"extras.producer.linear.weight", "extras.producer.linear.bias",
                "extras.producer.linear.weight.exp_avg", "extras.producer.linear.weight.exp_avg_sq"} <= names

    assert sorted(b) == [3, 4]
    for step in (3, 4):
        assert (b[step]["loss"], b[step]["grad_norm"]) == (a[step]["loss"], a[step]["grad_norm"])
    _equal_files(resumed, two, ("model.safetensors", "degree_head.safetensors"))

    if engine == "fsdp2":  # one plain process keeps the head outside any engine: it could not restore it
        # `preflab train` in this process (preflab.cli.main, as spo_degree_one_process): a subprocess cost an
        # interpreter's imports; the 2-process launch above is the real multi-process run
        from preflab.cli import main

        capsys.readouterr()
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(ROOT)  # the yaml's dataset path is relative to the repository
            code = main([*RUN, "use_cpu=true", "save_steps=0", "per_device_train_batch_size=8",
                         f"output_dir={tmp_path / 'plain'}", f"resume_from_checkpoint={ckpt}"])
        stderr = capsys.readouterr().err
        assert code != 0
        assert (f"resume_from_checkpoint: {ckpt} was written under FSDP2, whose checkpoint holds spo_degree's "
                "parameters outside the model inside the engine's module (preflab.loops.engine_extras); this run "
                "(no sharding engine, 1 process(es)) keeps them outside it and would not restore them.") in \
            " ".join(stderr.split()), stderr[-3000:]
        assert not (tmp_path / "plain" / "metrics.jsonl").exists()


@pytest.mark.slow
@NEEDS_DEEPSPEED
def test_sparsepo_masks_under_deepspeed_equal_ddp_and_resume_bit_exact(tmp_path, accelerate_launch, engine_launch):
    """sparsepo (tiny llama, synthetic pairs, 4 steps, cosine) on 2 CPU processes x 4 pairs under ZeRO-2 and ZeRO-3
    (engine_launch: straight, saved at step 2, resumed, in the launch the spo_degree test above shares) against
    2-process DDP x 4 pairs:
    - losses and grad norms to 1e-6, model and sparsepo_masks.safetensors to 1e-6 (measured: ZeRO-2 equals DDP bit
      for bit, ZeRO-3 model 4.1e-7, masks 9.8e-9); the masks moved (bias of the last layer off its init 1);
    - the resumed run equals the straight one bit for bit, masks included.
    DDP, not one process, is the reference: the masks' step-1 gradients are 1e-8..1e-7 (the zero-initialised
    projection), and Adam's first steps turn their summation order into differences of up to 2 x lr (1.8e-3 between
    one process x 8 and DDP 2 x 4 on the old code already); the engines sum the same per-rank halves as DDP."""
    ddp = tmp_path / "ddp"
    _run(accelerate_launch("--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                           "--dynamo_backend", "no", str(HERE / "tiny_run.py"), str(ddp), *SPARSEPO))
    masks = load_file(str(ddp / "sparsepo_masks.safetensors"))
    assert abs(masks["nets.u.1.bias"].item() - 1.0) > 1e-4
    for engine in ("zero2", "zero3"):
        base = engine_launch(engine) / "sparsepo"
        run_env = json.loads((base / "straight/summary.json").read_text())["environment"]
        assert (run_env["world_size"], run_env["distributed_type"]) == (2, "DEEPSPEED")
        a, d = _steps(base / "straight"), _steps(ddp)
        for key in ("loss", "grad_norm"):
            assert [a[s][key] for s in (1, 2, 3, 4)] == pytest.approx([d[s][key] for s in (1, 2, 3, 4)], abs=1e-6)
        for name in ("model.safetensors", "sparsepo_masks.safetensors"):
            got, want = (load_file(str(x / name)) for x in (base / "straight", ddp))
            assert got.keys() == want.keys()
            for key in want:
                torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6, msg=f"{engine} {name} {key}")
        assert not (base / "saved/checkpoint-2/extra.safetensors").exists()
        s, r = _steps(base / "straight"), _steps(base / "resumed")
        assert sorted(r) == [3, 4] and all((r[k]["loss"], r[k]["grad_norm"]) == (s[k]["loss"], s[k]["grad_norm"])
                                           for k in (3, 4))
        _equal_files(base / "resumed", base / "straight", ("model.safetensors", "sparsepo_masks.safetensors"))


def test_extra_parameters_train_under_the_proven_engines_only(tmp_path):
    """The check on accelerate's distributed_type: the degree head (a producer naming its module) trains under FSDP2
    and DeepSpeed, and is refused under FSDP version 1; SparsePO's masks (an nn.Module objective) train under
    DeepSpeed and are refused under FSDP2; a producer with parameters but no module() is refused under every
    sharding engine."""
    from preflab.objectives.sparsepo import SparsePO

    cfg = config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name=str(ROOT / "examples/data/"
                                "loud_echo_pairs.jsonl"), use_cpu=True, output_dir=str(tmp_path),
                                loss_type="spo_degree", objective_params={"degrees": 2}))
    producer = DegreeExtras(cfg.objective(), cfg)
    fsdp2 = SimpleNamespace(distributed_type="DistributedType.FSDP", is_fsdp2=True)
    fsdp1 = SimpleNamespace(distributed_type="DistributedType.FSDP", is_fsdp2=False)
    deepspeed = SimpleNamespace(distributed_type="DistributedType.DEEPSPEED", is_fsdp2=False)
    refuse_sharded_engine(producer, cfg, fsdp2)
    refuse_sharded_engine(producer, cfg, deepspeed)
    refuse_sharded_engine(None, cfg, deepspeed, SparsePO())
    said = (r"which preflab does not train under {}: it trains them inside the engine's module only where a real "
            r"run proved it \(an extras producer's module under FSDP2 and DEEPSPEED, an objective's own parameters "
            r"under DEEPSPEED\)\. Train it with examples/accelerate/ddp.yaml or one process\.$")
    with pytest.raises(ConfigError, match=r"^loss_type spo_degree trains parameters outside the model with the "
                                          r"policy \(its extras producer DegreeExtras\), " + said.format("FSDP")):
        refuse_sharded_engine(producer, cfg, fsdp1)
    with pytest.raises(ConfigError, match=r"\(the objective SparsePO's own parameters\), " + said.format("FSDP2")):
        refuse_sharded_engine(None, cfg, fsdp2, SparsePO())

    class NoModule(ExtrasProducer):
        def parameters(self):
            return [torch.zeros(1, requires_grad=True)]

    for acc, name in ((fsdp2, "FSDP2"), (deepspeed, "DEEPSPEED")):
        with pytest.raises(ConfigError, match=r"\(its extras producer NoModule\), " + said.format(name)):
            refuse_sharded_engine(NoModule(cfg.objective(), cfg), cfg, acc)


def test_scorer_with_extras_forwards_to_the_scorer_and_holds_the_extra_modules():
    """The wrapper's forward is the scorer's (same output object), its parameters are the scorer's then the extra
    modules' (what the engine shards and the optimizer holds), and accelerate's auto-wrap sees the scorer's layer
    classes."""
    class Scorer(torch.nn.Module):
        _no_split_modules = ["Layer"]

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(2, 2)

        def forward(self, x, scale=1.0):
            return self.w(x) * scale

    scorer, head = Scorer(), torch.nn.Linear(2, 3)
    producer = SimpleNamespace(module=lambda: head)
    extras = extra_modules(object(), producer)
    assert list(extras) == ["producer"] and extras["producer"] is head
    wrapped = ScorerWithExtras(scorer, extras)
    x = torch.randn(4, 2)
    assert torch.equal(wrapped(x, scale=2.0), scorer(x, scale=2.0))
    assert [id(p) for p in wrapped.parameters()] == [id(p) for p in [*scorer.parameters(), *head.parameters()]]
    assert wrapped._no_split_modules == ["Layer"]
    assert extra_modules(object(), SimpleNamespace(module=lambda: torch.nn.ReLU())) == {}  # no parameters: nothing
