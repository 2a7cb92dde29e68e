"""A run built from Python that fails after locking its output_dir releases the lock (preflab.rundir
.claims_released_on_error, run by preflab.loops.driver.BuildReleasesClaim around every run kind's build). A notebook's
failed build left the folder locked by the notebook's process: every later run into it, from the shell or the
notebook, was refused for as long as the notebook lived.

Each case fails on a real refusal reached only after make_accelerator took the lock (asserted: the lock is held when
the error is raised), and the error comes out unchanged (its type and message)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from preflab.config import config_from_dict
from preflab.errors import ConfigError, DataError
from preflab.rundir import LOCK_FILE, holds_lock

SRC = str(Path(__file__).resolve().parents[2] / "src")
TEXT = dict(model_name_or_path="builtin:tiny-llama", per_device_train_batch_size=2, max_steps=1, disable_tqdm=True,
            use_cpu=True, report_to="none")


def _rows(n=4):
    return [{"prompt": f"say {i}", "chosen": f" yes {i}", "rejected": f" no {i}"} for i in range(n)]


def _dpo_without_reference(out):
    """The offline Trainer: a DPO policy given without a reference (refused in the build, after the lock)."""
    from preflab.loops.offline import Trainer
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer()
    Trainer(config_from_dict({**TEXT, "dataset_name": "in-memory", "output_dir": str(out)}),
            policy=tiny_causal_lm(tok, seed=0), tokenizer=tok, train_data=_rows())


def _hypo_rows_with_an_online_column(out):
    """HyPOTrainer: code after its super().__init__ (the parent's build succeeded and holds the lock) refuses a data
    column that the run computes at every step."""
    from preflab.online.hypo_offline import HyPOTrainer

    data = out.parent / "pairs.jsonl"
    data.write_text("".join(json.dumps({**row, "online_policy_logps": [-1.0]}) + "\n" for row in _rows()))
    HyPOTrainer(config_from_dict({**TEXT, "dataset_name": str(data), "loss_type": "hypo", "lam": 0.5,
                                  "hypo_online_samples": 2, "max_completion_length": 4, "output_dir": str(out)}))


def _online_aggregator_beside_reward_weights(out):
    """OnlineRun: a task's reward_aggregator beside reward_weights (checked after the lock)."""
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.online.run import OnlineRun
    from preflab.online.tasks import Task

    tok = tiny_tokenizer("char")
    judge = lambda prompts, completions, **kw: [1.0] * len(completions)  # noqa: E731
    task = Task(["say a\n", "say b\n"], [judge, judge], reward_aggregator=lambda prompts: None)
    cfg = config_from_dict(dict(task="online", trainer="online_dpo", online_task="dataset", dataset_name="unused",
                                reward_funcs="x", model_name_or_path="builtin:tiny-llama", max_steps=1,
                                num_generations=2, prompts_per_generation=2, max_completion_length=3,
                                reward_weights=[1.0, 2.0], disable_tqdm=True, use_cpu=True, output_dir=str(out)))
    OnlineRun(cfg, policy=tiny_causal_lm(tok, hidden_size=16, num_layers=1, seed=1), tokenizer=tok, task=task)


def _reward_without_training_pairs(out):
    """train_reward (RewardRun): no training pairs, refused by make_plan after the lock."""
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.heads import build_reward_model
    from preflab.reward_models.train import train_reward

    tok = tiny_tokenizer()
    cfg = config_from_dict({**TEXT, "task": "reward", "dataset_name": "in-memory", "output_dir": str(out)})
    train_reward(cfg, model=build_reward_model("builtin:tiny-llama", 1, tok, seed=0), tokenizer=tok, train_data=[])


def _diffusion_missing_data(out):
    """DiffusionRun: a dataset_name that does not exist (read after the lock)."""
    from preflab.diffusion.pipeline import tiny_text_to_image_pipeline
    from preflab.loops.diffusion import DiffusionRun

    DiffusionRun(config_from_dict(dict(task="diffusion", model_name_or_path="builtin:tiny-sd",
                                       dataset_name=str(out.parent / "no-such-data"), loss_type="diffusion_dpo",
                                       resolution=16, max_steps=1, use_cpu=True, disable_tqdm=True,
                                       output_dir=str(out))), pipeline=tiny_text_to_image_pipeline(0))


def _vlm_without_reference(out):
    """VisionTrainer: a DPO policy given without a reference (the offline build under it refuses, after the lock)."""
    from preflab.loops.vlm import VisionTrainer
    from preflab.models.tiny_vlm import tiny_vlm, tiny_vlm_processor

    import numpy as np
    from PIL import Image

    from preflab.data.vision import read_vision_pairs, tokenize_vision_pairs

    processor = tiny_vlm_processor("llava")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 24, 3)).astype("uint8"))
    rows = [{"images": [image], "prompt": [{"role": "user", "content": [{"type": "image"},
                                                                          {"type": "text", "text": "colour?"}]}],
             "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "red"}]}],
             "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "blue"}]}]} for _ in range(2)]
    pairs, _, _ = tokenize_vision_pairs(read_vision_pairs(rows)[0], processor)
    cfg = config_from_dict(dict(task="vlm", model_name_or_path="builtin:tiny-llava", dataset_name="unused",
                                output_dir=str(out), per_device_train_batch_size=2, max_steps=1, disable_tqdm=True,
                                report_to="none", use_cpu=True))
    VisionTrainer(cfg, policy=tiny_vlm(processor, "llava", seed=0), processor=processor, train_data=pairs)


CASES = {  # run kind -> (build that fails, the error's type, its message)
    "dpo": (_dpo_without_reference, ConfigError, "needs a reference model"),
    "hypo": (_hypo_rows_with_an_online_column, ConfigError, "column 'online_policy_logps' is what loss_type: hypo"),
    "online": (_online_aggregator_beside_reward_weights, ConfigError, "remove reward_weights"),
    "reward": (_reward_without_training_pairs, DataError, "no training rows are left"),
    "diffusion": (_diffusion_missing_data, DataError, "no-such-data' does not exist"),
    "vlm": (_vlm_without_reference, ConfigError, "needs a reference model"),
}


def _claim_in_another_process(out) -> str:
    """What a second Python process (the shell's `preflab train`) gets when it claims `out`: "claimed" or the
    refusal."""
    code = ("import sys; from preflab.rundir import claim_output_dir\ntry:\n    claim_output_dir(sys.argv[1])\n"
            "    print('claimed')\nexcept Exception as err:\n    print(err)")
    done = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"})
    return done.stdout.strip() or done.stderr


@pytest.mark.parametrize("kind", list(CASES))
def test_a_run_that_fails_to_build_after_locking_output_dir_unlocks_it(tmp_path, monkeypatch, kind):
    import preflab.rundir as rundir

    build, error, message = CASES[kind]
    out = tmp_path / "run"
    held_when_raised = []
    release = rundir.release_output_dir

    def spy(path):  # the lock was held when the build failed: the refusal came after the claim
        held_when_raised.append(holds_lock(path))
        release(path)

    monkeypatch.setattr(rundir, "release_output_dir", spy)
    with pytest.raises(error, match=message) as raised:
        build(out)
    assert type(raised.value) is error  # unchanged: not wrapped in another error
    assert held_when_raised == [True]  # released once, by the failed build
    assert not holds_lock(out) and not (out / LOCK_FILE).exists()
    assert _claim_in_another_process(out) == "claimed"
