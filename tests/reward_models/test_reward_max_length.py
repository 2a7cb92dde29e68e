"""task: reward and max_length, as TRL 1.16's RewardTrainer: a pair whose prompt + chosen or prompt + rejected is
longer than max_length is dropped (not cut), and preflab counts it (`longer_than_max_length`) and says so."""
import json

import pytest

from preflab.errors import DataError

LONG = {"prompt": "the cat", "chosen": " sat on the mat" * 6, "rejected": " ran"}  # 40+ tokens
LONG_REJECTED = {"prompt": "a dog", "chosen": " ran", "rejected": " sat on the mat" * 6}  # the rejected side is long


def _short(i):
    return {"prompt": f"row {i}:", "chosen": " good dog" if i % 2 else " a cat", "rejected": " bad" if i % 2 else " no"}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tok():
    from preflab.models.tiny import tiny_tokenizer

    return tiny_tokenizer()


def _cfg(tmp_path, data, **kw):
    from preflab.config import config_from_dict

    return config_from_dict({"task": "reward", "model_name_or_path": "builtin:tiny-llama", "dataset_name": str(data),
                             "output_dir": str(tmp_path / "out"), "learning_rate": 1e-2, "per_device_train_batch_size": 4,
                             "max_steps": 1, "logging_steps": 1, "max_length": 16, "disable_tqdm": True,
                             "use_cpu": True, "seed": 0, **kw})


def _first_step(cfg, tok):
    from preflab.reward_models.heads import build_reward_model
    from preflab.reward_models.train import train_reward

    model = build_reward_model("builtin:tiny-llama", 1, tok, seed=0)
    return train_reward(cfg, model=model, tokenizer=tok)


def test_a_reward_run_trains_on_exactly_the_pairs_within_max_length(tmp_path, tok):
    """With over-long pairs (either side) in the file, step 1 (at the initial weights, the whole batch) has the loss
    and token count of a run on the file without them; they are counted in the run's data report."""
    mixed = _write(tmp_path / "mixed.jsonl", [LONG, _short(0), _short(1), LONG_REJECTED, _short(2), _short(3)])
    short = _write(tmp_path / "short.jsonl", [_short(i) for i in range(4)])
    on_mixed = _first_step(_cfg(tmp_path / "a", mixed), tok)
    on_short = _first_step(_cfg(tmp_path / "b", short), tok)
    assert on_mixed["final_metrics"]["num_tokens"] == on_short["final_metrics"]["num_tokens"]
    assert on_mixed["final_metrics"]["loss"] == pytest.approx(on_short["final_metrics"]["loss"], abs=1e-6)
    report = on_mixed["data"]["train_tokenize"]
    assert report["skipped"] == {"longer_than_max_length": 2} and report["kept"] == 4
    assert [e["row_id"] for e in report["skipped_examples"]] == [0, 3]


def test_every_pair_longer_than_max_length_is_a_data_error_naming_file_limit_and_lengths(tmp_path, tok):
    from preflab.reward_models.data import load_reward_pairs, pair_length, tokenize_reward_pairs
    from preflab.data.rows import load_rows

    data = _write(tmp_path / "long.jsonl", [LONG, LONG_REJECTED])
    with pytest.raises(DataError, match=r"long\.jsonl: every pair is longer than max_length=16 .*the longest is "
                                        r"(\d+) tokens.*Raise max_length") as err:
        load_reward_pairs(_cfg(tmp_path, data), tok)
    full, _ = tokenize_reward_pairs(load_rows(str(data))[0], tok, max_length=None)
    assert f"the longest is {max(map(pair_length, full))} tokens" in str(err.value)


def test_a_reward_max_length_that_is_not_a_positive_integer_is_refused(tok):
    """max_length is no longer handed to the tokenizer (which checked it); a bad value must still be refused."""
    from preflab.data.rows import load_rows
    from preflab.errors import ConfigError
    from preflab.reward_models.data import tokenize_reward_pairs

    for bad in (0, -3, 1.5, True):
        with pytest.raises(ConfigError, match="max_length=.* must be a positive integer or None"):
            tokenize_reward_pairs(load_rows([_short(0)])[0], tok, max_length=bad)


def test_the_eval_set_drops_pairs_longer_than_max_length_too(tmp_path, tok, capsys):
    from preflab.reward_models.data import load_reward_pairs

    train = _write(tmp_path / "train.jsonl", [_short(i) for i in range(4)])
    evals = _write(tmp_path / "eval.jsonl", [_short(5), LONG, _short(6)])
    _, eval_pairs, report, _ = load_reward_pairs(_cfg(tmp_path, train, eval_dataset_name=str(evals)), tok)
    assert [p.row_id for p in eval_pairs] == [0, 2]
    assert report["eval_tokenize"]["skipped"] == {"longer_than_max_length": 1}
    out = capsys.readouterr().out
    assert "1 pairs (training and eval sets) are longer than max_length=16 tokens and were dropped" in out
    all_long = _write(tmp_path / "eval_long.jsonl", [LONG])
    with pytest.raises(DataError, match=r"eval_long\.jsonl: every pair is longer than max_length=16"):
        load_reward_pairs(_cfg(tmp_path, train, eval_dataset_name=str(all_long)), tok)


def test_a_reward_data_line_has_no_boundary_shifted_note(tmp_path, tok, capsys):
    """Reward ids are the joint tokenization of prompt + response: the 'boundary shifted ... as TRL does' note of
    the DPO data line means nothing there (the report still counts it)."""
    from preflab.reward_models.data import load_reward_pairs

    data = _write(tmp_path / "d.jsonl", [{"prompt": "pick: ", "chosen": "apple", "rejected": "banana"}])
    _, _, report, _ = load_reward_pairs(_cfg(tmp_path, data, max_length=None), tok)
    assert report["train_tokenize"]["boundary_shifted"] == 1
    assert "boundary shifted" not in capsys.readouterr().out


def test_a_mapl_intra_row_is_measured_with_its_own_rejected_prompt(tok):
    """An intra row scores y after x_w and after x_l: a long x_l makes the rejected sequence over-long (dropped)."""
    from preflab.data.examples import PairExample
    from preflab.reward_models.data import pair_length, tokenize_reward_pairs

    rows = [PairExample(0, "short:", " yes", " yes", rejected_prompt="a much longer prompt" * 4),
            PairExample(1, "short:", " yes", " yes", rejected_prompt="other:")]
    full, _ = tokenize_reward_pairs(rows, tok, max_length=None)
    assert pair_length(full[0]) == len(full[0].rejected_prompt_ids) + len(full[0].rejected_ids) > 16
    assert pair_length(full[1]) <= 16
    kept, report = tokenize_reward_pairs(rows, tok, max_length=16)
    assert [p.row_id for p in kept] == [1] and report.skipped == {"longer_than_max_length": 1}


def test_a_pair_of_exactly_max_length_tokens_is_kept_and_one_token_less_drops_it(tok):
    """TRL's filter keeps len(ids) <= max_length: the boundary pair is kept at its own length, dropped (and counted)
    one token below it. A planted bug (< for <=) survived the tests of pairs far from the limit."""
    from preflab.data.rows import load_rows
    from preflab.reward_models.data import pair_length, tokenize_reward_pairs

    rows = load_rows([_short(0), LONG_REJECTED])[0]
    full, _ = tokenize_reward_pairs(rows, tok, max_length=None)
    short, long = (pair_length(p) for p in full)
    assert short < long
    kept, report = tokenize_reward_pairs(rows, tok, max_length=long)
    assert [p.row_id for p in kept] == [0, 1] and report.skipped == {}
    kept, report = tokenize_reward_pairs(rows, tok, max_length=long - 1)
    assert [p.row_id for p in kept] == [0] and report.skipped == {"longer_than_max_length": 1} and report.kept == 1
