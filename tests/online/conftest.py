"""A starting policy for the online-loop tests: the demo's tiny char-level Llama after SFT on the loud-echo task
(src/preflab/demo/run.py, stage 1, 300 steps). The SFT data echoes in capitals 40% of the time, so greedy
answers are mostly lower case (true reward about 0.2) while samples are often loud: room for online methods."""
import json
import os
from dataclasses import dataclass

import pytest
import torch
from filelock import FileLock
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from preflab.config import config_from_dict
from preflab.demo.run import SFT, heldout_reward
from preflab.demo.task import make_splits, true_reward
from preflab.loops.sft import SFTTrainer
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

SFT_STEPS = 300
RNG_KEY = "__torch_rng_state__"  # saved next to the weights by the first xdist worker


def true_reward_fn(prompts, completions, **kwargs):
    """The demo's true reward in TRL's reward-function signature."""
    return [true_reward(p, c) for p, c in zip(prompts, completions)]


@dataclass
class StartingPolicy:
    state: dict
    tokenizer: object
    train_prompts: list
    heldout: list
    reward_before: float

    judge = staticmethod(true_reward_fn)  # the demo's true reward, TRL signature

    def model(self):
        model = tiny_causal_lm(self.tokenizer, arch="llama", hidden_size=64, num_layers=2, num_heads=4, seed=0)
        model.load_state_dict(self.state)
        return model


def _train_sft_policy(out, tokenizer, sft_rows, heldout) -> tuple[dict, float]:
    """SFT_STEPS of the demo's stage 1 from seed 0: the policy's state and its held-out true reward."""
    torch.manual_seed(0)
    data = out / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r["chosen"]}) + "\n" for r in sft_rows))
    model = tiny_causal_lm(tokenizer, arch="llama", hidden_size=64, num_layers=2, num_heads=4, seed=0)
    cfg = config_from_dict({"model_name_or_path": "builtin:tiny-llama", "max_length": 64, "seed": 0,
                            "logging_steps": 50, "disable_tqdm": True, "use_cpu": True, **SFT,
                            "max_steps": SFT_STEPS, "dataset_name": str(data), "output_dir": str(out / "model")})
    SFTTrainer(cfg, policy=model, ref=None, tokenizer=tokenizer).train()
    before, _ = heldout_reward(model, tokenizer, heldout)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, before


@pytest.fixture(scope="session")
def sft_policy(tmp_path_factory) -> StartingPolicy:
    """Trained once per run. Under pytest-xdist each worker has its own session, so the workers of one run share one
    training through a file under the run's temporary folder (FileLock: the first trains and writes, the others wait
    and read): the same tensors, the same reward before, and the global torch RNG state the training left."""
    tokenizer = tiny_tokenizer("char")
    sft_rows, pair_rows, heldout = make_splits(0)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = tmp_path_factory.getbasetemp().parent  # this run's folder, above each worker's popen-gwN
        saved, lock = shared / "sft_policy.safetensors", str(shared / "sft_policy.lock")
        with FileLock(lock):
            if not saved.exists():
                state, before = _train_sft_policy(tmp_path_factory.mktemp("sft"), tokenizer, sft_rows, heldout)
                save_file({**state, RNG_KEY: torch.get_rng_state()}, str(saved.with_suffix(".tmp")),
                          metadata={"reward_before": repr(before)})
                saved.with_suffix(".tmp").replace(saved)
        state = load_file(str(saved))
        torch.set_rng_state(state.pop(RNG_KEY))
        with safe_open(str(saved), "pt") as f:
            before = float(f.metadata()["reward_before"])
    else:
        state, before = _train_sft_policy(tmp_path_factory.mktemp("sft"), tokenizer, sft_rows, heldout)
    return StartingPolicy(state, tokenizer, [r["prompt"] for r in pair_rows], heldout, before)
