"""TRL GRPOConfig's shuffle_dataset: false (task: online): each generation round takes the next prompts in dataset
order, exactly the prompts TRL's RepeatSampler(shuffle=False) hands to one generation batch (rounds of
prompts_per_generation consecutive prompts; an epoch's last incomplete round dropped; then from the start again).
The default (true) keeps preflab's seeded draw; the game, which has no prompts to draw, refuses it."""
import sys
from pathlib import Path

import pytest
import torch

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.online.run import OnlineRun, round_prompt_indices

sys.path.insert(0, str(Path(__file__).parent))
from test_online_run import PROMPTS, e_judge, tiny_cfg  # noqa: E402


def _trl_rounds(total: int, n: int, group: int, epochs: int) -> list[list[int]]:
    """The unique prompts of each generation batch TRL's RepeatSampler(shuffle=False) yields, epoch after epoch (the
    Trainer iterates the sampler once per epoch)."""
    from trl.trainer.utils import RepeatSampler

    sampler = RepeatSampler(data_source=range(total), mini_repeat_count=group, batch_size=n, repeat_count=1,
                            shuffle=False)
    out = []
    for _ in range(epochs):
        flat = list(sampler)
        out += [list(dict.fromkeys(flat[i:i + n * group])) for i in range(0, len(flat), n * group)]
    return out


@pytest.mark.parametrize("total, n", [(10, 4), (8, 4), (7, 7), (9, 2)])
def test_rounds_follow_trls_sequential_sampler(total, n):
    pytest.importorskip("trl")
    trl = _trl_rounds(total, n, group=3, epochs=3)
    ours = [round_prompt_indices(total, n, r, False, torch.Generator()) for r in range(len(trl))]
    assert ours == trl
    if total % n:  # the tail of each epoch is never drawn, as in TRL
        assert not any(i >= total - total % n for rnd in ours for i in rnd)


def test_a_run_draws_its_rounds_in_dataset_order(tmp_path):
    """The rounds of a built run (prompts_per_generation 3 of 8 prompts): rows 0-2, 3-5, then 0-2 again."""
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.online.tasks import Task

    cfg = tiny_cfg(tmp_path, trainer="grpo", shuffle_dataset=False, prompts_per_generation=3, num_generations=2,
                   per_device_train_batch_size=1, gradient_accumulation_steps=3, steps_per_generation=1)
    tok = tiny_tokenizer("char")
    torch.set_num_threads(1)
    run = OnlineRun(cfg, policy=tiny_causal_lm(tok, hidden_size=32, seed=1), tokenizer=tok,
                    task=Task(PROMPTS, [e_judge]))
    rounds = [sorted({e.row_id for e in run._new_round(r).examples}) for r in range(3)]
    assert rounds == [[0, 1, 2], [3, 4, 5], [0, 1, 2]]
    shuffled = tiny_cfg(tmp_path / "s", trainer="grpo", prompts_per_generation=3, num_generations=2,
                        per_device_train_batch_size=1, gradient_accumulation_steps=3, steps_per_generation=1)
    assert shuffled.shuffle_dataset is True  # TRL's default: preflab's seeded draw


def test_refused_without_prompts_and_accepted_elsewhere():
    base = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl"}
    with pytest.raises(ConfigError, match="shuffle_dataset"):
        config_from_dict({**base, "task": "online", "online_task": "game", "max_steps": 2, "shuffle_dataset": False})
    # SFTConfig's shuffle_dataset (default false) stays accepted: SFT batches are drawn in seeded random order
    assert config_from_dict({**base, "task": "sft", "shuffle_dataset": False}).task == "sft"
