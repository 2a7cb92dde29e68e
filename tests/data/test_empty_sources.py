"""An empty data file is refused as empty by every run kind (preflab.data.report.refuse_empty), not as "every row
was skipped" (reward, vlm) or "online loops need at least one prompt" (online) as in the chaos trial."""
import pytest

from preflab.cli import main

KINDS = {
    "reward": ["task=reward", "model_name_or_path=builtin:tiny-gpt2", "max_length=64"],
    "reward_multi_objective": ["task=reward", "model_name_or_path=builtin:tiny-gpt2", "max_length=64",
                               "reward_head=multi_objective", "reward_head_params={attributes: [helpfulness]}"],
    "vlm": ["task=vlm", "model_name_or_path=builtin:tiny-qwen2-vl"],
    "online": ["task=online", "online_task=dataset", "trainer=grpo", "model_name_or_path=builtin:tiny-llama",
               "reward_funcs=preflab.online.tasks:demo_true_reward", "beta=0.0"],
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_an_empty_data_file_is_refused_as_empty_by_each_run_kind(tmp_path, capsys, kind):
    data = tmp_path / "empty.jsonl"
    data.write_text("")
    rc = main(["train", *KINDS[kind], f"dataset_name={data}", "max_steps=1", "use_cpu=true", "disable_tqdm=true",
               f"output_dir={tmp_path / 'out'}"])
    assert rc == 2
    assert (f"preflab: error: dataset_name='{data}' ({data}) is empty: it holds no rows."
            in capsys.readouterr().err)
