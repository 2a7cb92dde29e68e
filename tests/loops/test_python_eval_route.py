"""TRL's `DPOConfig(eval_strategy="steps", eval_steps=N)` with `eval_dataset=` ported to Python: the config cannot see
Trainer's eval_data, so eval_strategy: steps without a named eval set is refused; the refusal names the route that
works (eval_steps without eval_strategy; since user trial 27 also any eval_dataset_name naming the rows,
tests/test_user_trial_27.py), and that route evaluates at TRL's steps."""
import json
import sys
from pathlib import Path

import pytest

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.loops.offline import Trainer
from preflab.models.load import frozen_copy
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

sys.path.insert(0, str(Path(__file__).parent))
from tiny_run import synthetic_pairs  # noqa: E402

BASE = dict(model_name_or_path="builtin:tiny-llama", dataset_name="synthetic", learning_rate=1e-3,
            per_device_train_batch_size=4, max_steps=4, logging_steps=1, disable_tqdm=True, use_cpu=True)


def test_eval_strategy_refusal_names_the_python_route_and_the_route_evaluates_at_trls_steps(tmp_path):
    with pytest.raises(ConfigError, match=r"From Python \(TRL's eval_dataset=\): add eval_dataset_name: NAME .* or "
                                          r"write eval_steps: N without eval_strategy"):
        config_from_dict({**BASE, "output_dir": str(tmp_path / "a"), "eval_strategy": "steps", "eval_steps": 2})
    cfg = config_from_dict({**BASE, "output_dir": str(tmp_path / "b"), "eval_steps": 2})
    tok = tiny_tokenizer()
    policy = tiny_causal_lm(tok, seed=0)
    Trainer(cfg, policy=policy, ref=frozen_copy(policy), tokenizer=tok, train_data=synthetic_pairs(16),
            eval_data=synthetic_pairs(4, seed=1)).train()
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    # transformers' eval_strategy "steps", eval_steps 2, max_steps 4: evaluations at steps 2 and 4
    assert [r["step"] for r in rows if "eval_loss" in r] == [2, 4]
