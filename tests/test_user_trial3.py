"""Third new-user trial: the silent failures and unclear errors a TRL user met, each pinned to its message."""
import json

import pytest

from preflab.cli import main
from preflab.errors import ConfigError


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_demo_judges_on_prompts_not_of_the_demo_task_are_refused_naming_the_row(tmp_path, capsys):
    """`online_task=dataset reward_funcs=demo_true_reward` on other prompts stopped the first round with "judge
    'demo_true_reward' raised IndexError: list index out of range"; it is now refused before any generation, naming
    the first row that is not a loud-echo prompt, how many are not, and what to use instead."""
    data = _jsonl(tmp_path / "p.jsonl", [{"prompt": "echo: sun cat\n"}, {"prompt": "What is 1 plus 1?"},
                                         {"prompt": "echo:"}])
    args = ["train", "examples/online/online_dpo.yaml", "online_task=dataset", f"dataset_name={data}",
            "model_name_or_path=builtin:tiny-llama", "reward_funcs=demo_true_reward", "max_steps=1",
            f"output_dir={tmp_path / 'o'}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert (f"reward_funcs: demo_true_reward scores only the demo task's prompts ('echo: ' and the words to echo, e.g. "
            f"'echo: sun cat map'), and 2 of 3 prompt row(s) of {data} are not: the first, row 1 ('What is 1 plus "
            "1?'): it does not start with 'echo:'. To train on the demo task use online_task: demo") in err, err
    assert not (tmp_path / "o" / "metrics.jsonl").exists()


def test_demo_judges_name_the_prompt_they_cannot_score():
    """Called directly (a Python reward function, `preflab eval --reward-fn`), the demo judges raised IndexError or
    ZeroDivisionError; they now raise a ValueError that says which prompts they score."""
    from preflab.online.tasks import demo_echo_reward, demo_true_reward

    assert demo_true_reward(["echo: sun cat\n"], ["SUN CAT"]) == [1.0]
    with pytest.raises(ValueError, match=r"^the demo task's true reward scores only its own prompts \('echo: ' and "
                                         r"the words to echo, e.g. 'echo: sun cat map'\); 'Hi: there': it does not "
                                         r"start with 'echo:'\.$"):
        demo_true_reward(["Hi: there"], ["THERE"])
    with pytest.raises(ValueError, match=r"'echo:  ': it has no words after 'echo:'"):
        demo_echo_reward(["echo:  "], [""])
    with pytest.raises(ValueError, match=r"a list, not a string"):
        demo_echo_reward([[{"role": "user", "content": "echo: a"}]], ["a"])
