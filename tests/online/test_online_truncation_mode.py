"""truncation_mode under task: online. TRL's online trainers keep the end of a long prompt (TRL 0.x's GRPOTrainer
and its OnlineDPOTrainer cut from the left; TRL 1.16's GRPOTrainer cuts none), and so does preflab's
max_prompt_length online: keep_start, which online cannot honour, was accepted and ignored; it is refused now."""
import pytest

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.loops.rollout import prepare_prompts
from preflab.models.tiny import tiny_tokenizer

ONLINE = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl", "task": "online", "max_steps": 2}


@pytest.mark.parametrize("trainer", ["grpo", "online_dpo"])
def test_online_truncation_mode_keep_start_is_refused_not_ignored(trainer):
    for limit in (None, 8):
        with pytest.raises(ConfigError, match="truncation_mode: keep_start is not supported for task: online"):
            config_from_dict({**ONLINE, "trainer": trainer, "truncation_mode": "keep_start",
                              "max_prompt_length": limit})
    cfg = config_from_dict({**ONLINE, "trainer": trainer, "truncation_mode": "keep_end", "max_prompt_length": 8})
    # what keep_end (and unset) mean online: a prompt over max_prompt_length keeps its end, bos kept
    tok = tiny_tokenizer("char")
    (row,) = prepare_prompts(["0123456789abcdef"], tok, cfg.max_prompt_length)
    assert tok.decode(row.prompt_ids) == "<s>9abcdef"
