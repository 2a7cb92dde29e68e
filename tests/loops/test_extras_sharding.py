"""Parameters trained outside the policy inside the module a sharding engine wraps (preflab.loops.engine_extras):
spo_degree's degree head under real FSDP2 (examples/accelerate/fsdp2.yaml, 2 CPU processes, gloo) against one
process with the doubled batch, and resumed from its sharded checkpoint. Before, spo_degree was refused under FSDP2
(and crashed inside accelerate's prepare before the refusal: KeyError, the head's parameters were not the model's)."""
import json
import os
import subprocess
import sys
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
RUN = ["train", "examples/spo_degree.yaml", "max_steps=4", "eval_fraction=0.1", "eval_steps=4", "logging_steps=1",
       "use_cpu=true"]


def _cli(tmp_path) -> Path:
    script = tmp_path / "cli.py"
    script.write_text("import sys\nfrom preflab.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    return script


def _run(cmd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _steps(out):
    return {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r}


@pytest.mark.slow
def test_spo_degree_under_fsdp2_equals_one_process_and_resumes_bit_exact(tmp_path, accelerate_launch):
    """2 FSDP2 processes x 4 pairs against 1 process x 8 pairs (examples/spo_degree.yaml, 4 steps, cosine):
    - losses (DPO + degree) and grad norms to 1e-6, the final model to 1e-6 and degree_head.safetensors to 1e-8
      (measured: losses 1.2e-7, model 2.8e-7, head 3.5e-10 for a head of max |w| 1.5e-3; float32, another reduction
      order), the same eval degree accuracy;
    - the sharded checkpoint holds the head and its Adam state (in the engine's module: extras.producer.*), no
      extra.safetensors;
    - resumed from checkpoint-2 on 2 processes: losses, grad norms, model and head bit for bit."""
    cli = _cli(tmp_path)
    two, resumed, one = tmp_path / "two", tmp_path / "resumed", tmp_path / "one"
    fsdp2 = ["--config_file", str(ROOT / "examples/accelerate/fsdp2.yaml"), "--num_processes", "2", str(cli)]
    _run(accelerate_launch(*fsdp2, *RUN, "save_steps=2", "per_device_train_batch_size=4", f"output_dir={two}"))
    _run(accelerate_launch(*fsdp2, *RUN, "save_steps=0", "per_device_train_batch_size=4", f"output_dir={resumed}",
                           f"resume_from_checkpoint={two / 'checkpoint-2'}"))
    _run([sys.executable, str(cli), *RUN, "save_steps=0", "per_device_train_batch_size=8", f"output_dir={one}"])

    summary = json.loads((two / "summary.json").read_text())
    assert (summary["environment"]["world_size"], summary["environment"]["distributed_type"]) == (2, "FSDP")
    a, b, c = _steps(two), _steps(resumed), _steps(one)
    for key in ("loss", "loss/degree", "grad_norm"):
        assert [a[s][key] for s in (1, 2, 3, 4)] == pytest.approx([c[s][key] for s in (1, 2, 3, 4)], abs=1e-6), key
    weights = {d: load_file(str(d / "model.safetensors")) for d in (two, resumed, one)}
    heads = {d: load_file(str(d / "degree_head.safetensors")) for d in (two, resumed, one)}
    assert sorted(heads[two]) == ["linear.bias", "linear.weight"] and heads[one]["linear.weight"].abs().max() > 1e-4
    for key in weights[one]:
        torch.testing.assert_close(weights[two][key], weights[one][key], rtol=0, atol=1e-6)
    for key in heads[one]:
        torch.testing.assert_close(heads[two][key], heads[one][key], rtol=0, atol=1e-8)
    final = (lambda d: json.loads((d / "summary.json").read_text())["final_metrics"]["eval_degree/accuracy"])
    assert final(two) == pytest.approx(final(one), abs=1e-6)

    ckpt = two / "checkpoint-2"
    assert not (ckpt / "extra.safetensors").exists()
    names = set()
    for folder in ("model", "optimizer"):
        for f in (ckpt / folder).glob("*.safetensors"):
            with safe_open(str(f), "pt") as g:
                names |= {k for k in g.keys() if k.startswith("extras.")}
    assert {"extras.producer.linear.weight", "extras.producer.linear.bias", "extras.producer.linear.weight.exp_avg",
            "extras.producer.linear.weight.exp_avg_sq"} <= names

    assert sorted(b) == [3, 4]
    for step in (3, 4):
        assert (b[step]["loss"], b[step]["grad_norm"]) == (a[step]["loss"], a[step]["grad_norm"])
    for got, want in ((weights[resumed], weights[two]), (heads[resumed], heads[two])):
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_spo_degree_producer_passes_under_fsdp2_and_stays_refused_under_deepspeed(tmp_path):
    """The check on accelerate's distributed_type: the degree head (a producer naming its module) trains under
    FSDP2; under DeepSpeed it is refused naming the engine and pointing at FSDP2; a producer with parameters but no
    module() is refused under FSDP2 too."""
    cfg = config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name=str(ROOT / "examples/data/"
                                "loud_echo_pairs.jsonl"), use_cpu=True, output_dir=str(tmp_path),
                                loss_type="spo_degree", objective_params={"degrees": 2}))
    producer = DegreeExtras(cfg.objective(), cfg)
    fsdp2 = SimpleNamespace(distributed_type="DistributedType.FSDP", is_fsdp2=True)
    deepspeed = SimpleNamespace(distributed_type="DistributedType.DEEPSPEED", is_fsdp2=False)
    refuse_sharded_engine(producer, cfg, fsdp2)
    with pytest.raises(ConfigError, match=r"^loss_type spo_degree trains parameters outside the model with the "
                                          r"policy \(its extras producer DegreeExtras\), which preflab does not "
                                          r"train under DEEPSPEED: .* one process\. Its extras producer trains "
                                          r"under FSDP2 as well \(examples/accelerate/fsdp2.yaml\)\.$"):
        refuse_sharded_engine(producer, cfg, deepspeed)

    class NoModule(ExtrasProducer):
        def parameters(self):
            return [torch.zeros(1, requires_grad=True)]

    with pytest.raises(ConfigError, match=r"\(its extras producer NoModule\), which preflab does not train under "
                                          r"FSDP2: .* one process\.$"):
        refuse_sharded_engine(NoModule(cfg.objective(), cfg), cfg, fsdp2)


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
