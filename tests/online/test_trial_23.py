"""Findings of user trial 23 (a reasoning-RL user coming from TRL's GRPOTrainer and verl): each test fails on the
code before its fix."""
import json

import torch

from preflab.config import config_from_dict
from preflab.loops.judge import not_applicable_counts


def _loud(prompts, completions, **kwargs):
    return [float(sum(ch.isupper() for ch in c)) for c in completions]


def _never_applies(prompts, completions, **kwargs):  # e.g. a verifier reading a column the rows lack
    return [None] * len(completions)


def test_not_applicable_counts_are_per_judge_over_the_scored_completions():
    """Hand example: 4 completions, 3 judges; completion 3 is dropped (combined score NaN: a judge raised), so only
    completions 0-2 count. Judge 0 scored them all (0), judge 1 missed completions 1 and 2 (2), judge 2 all three (3):
    its NaN on the dropped completion 3 is not counted."""
    nan = float("nan")
    per_fn = torch.tensor([[1.0, 2.0, nan], [1.0, nan, nan], [0.0, nan, nan], [nan, 1.0, nan]], dtype=torch.float64)
    scores = torch.tensor([3.0, 1.0, 0.0, nan], dtype=torch.float64)
    assert not_applicable_counts(per_fn, scores) == [0, 2, 3]


def test_a_judge_that_applies_to_no_completion_is_counted_and_said(tmp_path, capsys):
    """With two reward functions, one returning None for every completion (a verifier on rows without its answer
    column) left every reward the other's alone: no completion dropped, judge/dropped 0, only a null
    rewards/<judge>/mean. Now summary.json online.judge_not_applicable counts each judge's None/NaN over the scored
    completions (here 2 rounds x 3 prompts x 2 completions = 12 for the silent judge, 0 for the other) and a note
    names the judge once."""
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.online.run import OnlineRun
    from preflab.online.tasks import Task

    cfg = config_from_dict(dict(task="online", trainer="grpo", online_task="dataset", dataset_name="unused",
                                reward_funcs="x", model_name_or_path="builtin:tiny-llama", max_steps=2,
                                num_generations=2, prompts_per_generation=3, per_device_train_batch_size=3,
                                max_completion_length=3, logging_steps=1, disable_tqdm=True, use_cpu=True,
                                output_dir=str(tmp_path)))
    tok = tiny_tokenizer("char")
    policy = tiny_causal_lm(tok, hidden_size=16, num_layers=1, seed=1)
    summary = OnlineRun(cfg, policy=policy, tokenizer=tok, task=Task(["say a\n", "say b\n", "say c\n"],
                                                                     [_loud, _never_applies])).train()
    assert summary["online"]["judge_dropped"] == 0
    assert summary["online"]["judge_not_applicable"] == {"_loud": 0, "_never_applies": 12}
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["rewards/_never_applies/mean"] for r in rows] == [None, None]  # NaN, as the note says
    out = capsys.readouterr().out
    assert out.count("judge '_never_applies' returned None or NaN for all 6 scored completions") == 1
    assert "judge '_loud' returned" not in out


def test_a_verifier_on_a_row_without_its_column_names_the_column_and_the_completion():
    """A grounding row without `solution` (or with null) among rows that have it reaches the Vision-R1 verifiers as
    None: they raised `TypeError: object of type 'NoneType' has no len()` (OTCReward: 'NoneType' object is not
    iterable), naming neither the column nor the completion. Now a DataError names both and what to do; the rows'
    complete entries still score (hand value: the box equals the gold box, precision 1)."""
    import pytest

    from preflab.errors import DataError
    from preflab.verifiers import OTCReward, vision_r1_format, vision_r1_precision

    box = '[{"bbox_2d": [13, 1, 26, 14], "label": "square"}]'
    gold = '[["square", [13, 1, 26, 14]]]'
    for reward in (vision_r1_format, vision_r1_precision):
        with pytest.raises(DataError) as err:
            reward(["p"] * 3, [box] * 3, solution=[gold, None, gold])
        assert str(err.value).startswith(f"{reward.__name__}: column 'solution' is None for completion 1 of the 3 "
                                         "in this call (1 in all): its prompt row lacks 'solution' or has null")
    assert vision_r1_precision(["p"] * 2, [box] * 2, solution=[gold, gold]) == [1.0, 1.0]
    with pytest.raises(DataError, match=r"^otc: column 'answer' is None for completion 0 of the 2 in this call \(2 in"):
        OTCReward(c=4.0)(["p"] * 2, ["<answer>a</answer>"] * 2, answer=[None, None])


def test_the_report_says_which_judges_did_not_apply():
    """preflab report showed a judge that applied to nothing only as "rewards/<judge>/mean was logged non-finite: the
    curve breaks there". It now names the judges and their counts (32 completions, 2 dropped: 30 scored)."""
    from preflab.report.data_notes import online_notes

    summary = {"online": {"completions": 32, "judge_dropped": 2, "rounds": 2,
                          "judge_not_applicable": {"exact": 0, "nan_all": 30, "half": 7}}}
    assert online_notes(summary) == [
        "generation: of 32 completions, 2 got no score from the judges and were left out of training (judge/dropped)",
        "judges: of 30 scored completions, some judges returned None or NaN (not applicable): 'nan_all' 30, 'half' 7; "
        "their rewards are the other judges' weighted sum (online.judge_not_applicable)"]
    summary["online"]["judge_not_applicable"] = {"exact": 0, "caps": 0}
    assert not any(n.startswith("judges:") for n in online_notes(summary))
