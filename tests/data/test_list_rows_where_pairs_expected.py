"""Ranked-list rows (the listwise form: prompt, completions, scores; RRHF's query, responses, scores) given where
pairs are expected (a pairwise loss_type, a reward model) are refused with what they are and the way out: a listwise
loss_type (rrhf) or pairs written from each list. Before, the error said only "'chosen': missing"."""
import json

import pytest

from preflab.errors import DataError

FIX = ("Pairwise objectives and reward models need 'chosen' and 'rejected'. Train ranked lists with a listwise "
       "loss_type (rrhf; `preflab objectives` marks it ListBatch){renamed}, or write pairs from each list (chosen: a "
       "higher-scored response, rejected: a lower-scored one) for a pairwise loss_type or a reward model.")


def test_a_reward_run_on_ranked_lists_says_they_are_lists_and_names_rrhf(tmp_path):
    from preflab.config import config_from_dict
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.data import load_reward_pairs

    data = tmp_path / "lists.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"p{i}", "completions": [" a", " b", " c"], "scores": [2, 0, 1]})
                            + "\n" for i in range(2)))
    cfg = config_from_dict({"task": "reward", "model_name_or_path": "builtin:tiny-llama", "dataset_name": str(data)})
    with pytest.raises(DataError) as err:
        load_reward_pairs(cfg, tiny_tokenizer("bytelevel"))
    said = str(err.value)
    assert ("field 'chosen': missing: the row is a ranked list (completions + scores: the listwise form), not a "
            "preference pair. " + FIX.format(renamed="")) in said
    assert said.startswith(f"{data} row 0 (line 1)")


def test_rrhfs_own_columns_are_named_with_the_renaming():
    from preflab.data.rows import load_rows

    with pytest.raises(DataError) as err:
        load_rows([{"query": "q", "responses": [" a", " b"], "scores": [1, 0]}], kind="pairwise")
    assert ("the row is a ranked list (responses + scores: the listwise form), not a preference pair. " + FIX.format(
        renamed=" (RRHF's own columns: dataset_columns: {prompt: query, completions: responses})")) in str(err.value)
    # a list without scores is no ranked list: the plain missing-field error, with the row's columns
    with pytest.raises(DataError) as err:
        load_rows([{"prompt": "q", "completions": [" a", " b"]}], kind="pairwise")
    assert "ranked list" not in str(err.value) and "the row's columns: 'prompt', 'completions'" in str(err.value)
