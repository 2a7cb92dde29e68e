"""`preflab train` with loss_type rrhf on ranked lists (src/preflab/loops/listwise.py): the logged loss equals RRHF
computed by hand from full-logit log-probs; pairs-only and ragged data are refused naming file, row and field."""
import json
from pathlib import Path

import pytest
import torch
import yaml

from preflab.cli import main

ROWS = [{"prompt": "echo: sun cat\n", "completions": ["SUN CAT", "sun cat", "Sun Cat"], "scores": [1.0, 0.0, 0.5]},
        {"prompt": "echo: red box pen\n", "completions": ["RED BOX PEN", "red box", "RED BOX PIN"],
         "scores": [1.0, 0.0, 0.67]},
        {"prompt": "echo: owl\n", "completions": ["OWL", "owl", "Owl"], "scores": [1.0, 0.0, 0.0]},
        {"prompt": "echo: fig jam\n", "completions": ["FIG JAM", "fig jam", "FIG"], "scores": [1.0, 0.5, 0.0]}]


def _config(tmp_path, rows, **over):
    data = tmp_path / "lists.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": str(data), "loss_type": "rrhf", "seed": 0,
           "learning_rate": 1e-3, "per_device_train_batch_size": 4, "max_steps": 2, "max_length": 64,
           "use_cpu": True, "disable_tqdm": True, "logging_steps": 1, "eval_fraction": 0, "save_steps": 0,
           "output_dir": str(tmp_path / "out"), **over}
    path = tmp_path / "rrhf.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _rrhf_by_hand(model, items) -> float:
    """mean over rows of sum_{r_i < r_j} max(0, p_i - p_j) - S(best), p = S / |y| (RRHF, rank_weight = sft_weight = 1)."""
    losses = []
    for x in items:
        S, n = [], []
        for c in x.completions:
            ids = torch.tensor([x.prompt_ids + c])
            logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
            tok = torch.tensor(c)
            S.append(float(logp[len(x.prompt_ids) - 1:].gather(-1, tok[:, None]).sum()))
            n.append(len(c))
        p = [s / m for s, m in zip(S, n)]
        r = x.scores
        rank = sum(max(0.0, p[i] - p[j]) for i in range(len(r)) for j in range(len(r)) if r[i] < r[j])
        losses.append(rank - S[max(range(len(r)), key=lambda i: r[i])])
    return sum(losses) / len(losses)


def test_rrhf_trains_from_preflab_train_with_the_hand_computed_loss(tmp_path):
    from preflab.config import load_config
    from preflab.loops.listwise import prepare_lists
    from preflab.models.load import load_tokenizer
    from preflab.models.tiny import tiny_causal_lm

    path = _config(tmp_path, ROWS)
    assert main(["train", str(path)]) == 0
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [r["step"] for r in rows] == [1, 2] and "loss/rank" in rows[0]
    tok = load_tokenizer("builtin:tiny-llama", False)
    items, _, _ = prepare_lists(load_config(path, []), tok)
    assert [len(x.completions) for x in items] == [3, 3, 3, 3]
    with torch.no_grad():
        want = _rrhf_by_hand(tiny_causal_lm(tok, arch="llama", seed=0), items)
    assert rows[0]["loss"] == pytest.approx(want, rel=1e-4)        # step 1: the starting weights, all 4 rows
    assert rows[1]["loss"] < rows[0]["loss"]                          # and it trains


def _refused(tmp_path, rows, capsys) -> str:
    assert main(["train", str(_config(tmp_path, rows))]) != 0
    return capsys.readouterr().err


def test_pairs_only_data_is_refused_naming_the_row_and_field(tmp_path, capsys):
    pairs = [{"prompt": "echo: sun\n", "chosen": "SUN", "rejected": "sun"}]
    err = _refused(tmp_path, pairs, capsys)
    assert "lists.jsonl row 0 (line 1), field 'completions': the row has no 'completions' list (it is a chosen/rejected " \
           "pair)" in err and "choose a pairwise loss_type" in err


def test_ragged_lists_and_bad_scores_are_refused(tmp_path, capsys):
    ragged = ROWS[:1] + [{"prompt": "echo: owl\n", "completions": ["OWL", "owl"], "scores": [1, 0]}]
    assert "lists.jsonl row 1 (line 2): completions holds 2 responses, row 0 3; every row" in \
        _refused(tmp_path, ragged, capsys)
    bad = [{"prompt": "echo: owl\n", "completions": ["OWL", "owl"], "scores": [1, "x"]}]
    assert "row 0 (line 1), field 'scores': scores must be a list of 2 finite numbers" in _refused(tmp_path, bad, capsys)
    single = [{"prompt": "echo: owl\n", "completions": ["OWL"], "scores": [1]}]  # one response ranks nothing
    assert "row 0 (line 1), field 'completions': completions must be a list of at least 2 responses" in \
        _refused(tmp_path, single, capsys)


@pytest.mark.parametrize("completions, scores, expected", [
    (["OWL", 3, "Owl"], [1, 0, 0.5], "row 1 (line 2), field 'completions[1]': expected text like the prompt, got int"),
    (["OWL", None, "Owl"], [1, 0, 0.5],
     "row 1 (line 2), field 'completions[1]': expected text like the prompt, got NoneType"),
    (["OWL", "", "Owl"], [1, 0, 0.5], "row 1 (line 2), field 'completions[1]': empty string"),
    (["OWL", "OWL", "Owl"], [1, 0, 0.5], "row 1 (line 2), field 'completions[1]': identical to 'completions[0]', with a "
                                          "different score (0 vs 1)"),
    (["OWL", [{"role": "assistant", "content": "owl"}], "Owl"], [1, 0, 0.5],
     "row 1 (line 2), field 'completions[1]': is a list of messages but 'prompt' is text"),
])
def test_a_bad_completion_in_a_ranked_list_is_refused_naming_its_index(tmp_path, capsys, completions, scores,
                                                                        expected):
    """Each completion is checked as a pair's response: a number or null was a traceback in the tokenizer, an empty
    string or a copy ranked against itself trained silently, a message list beside a text prompt an unclear error."""
    rows = ROWS[:1] + [{"prompt": "echo: owl\n", "completions": completions, "scores": scores}] + ROWS[2:]
    err = _refused(tmp_path, rows, capsys)
    assert "lists.jsonl " + expected in err, err


def test_a_response_turn_of_another_role_in_a_ranked_list_is_named(tmp_path, capsys):
    conv = [{"prompt": [{"role": "user", "content": "echo: owl"}],
             "completions": [[{"role": "assistant", "content": "OWL"}], [{"role": "user", "content": "owl"}]],
             "scores": [1, 0]}]
    assert "lists.jsonl row 0 (line 1), field 'completions[1][0].role': a response turn has role 'user'" in \
        _refused(tmp_path, conv, capsys)


def test_a_ranked_list_error_names_the_line_after_a_blank_one(tmp_path, capsys):
    """Completions are checked at tokenization, where examples carried the row only; after a blank line the line
    is not row + 1."""
    path = _config(tmp_path, ROWS)
    bad = {"prompt": "echo: owl\n", "completions": ["OWL", "", "Owl"], "scores": [1, 0, 0.5]}
    (tmp_path / "lists.jsonl").write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(bad) + "\n")
    assert main(["train", str(path)]) != 0
    assert "lists.jsonl row 1 (line 3), field 'completions[1]': empty string" in capsys.readouterr().err


def test_equal_completions_with_equal_scores_are_kept():
    from preflab.loops.listwise import _checked_completions

    assert _checked_completions("p", ["a", "a", "b"], ["c0", "c1", "c2"], [1, 1, 0]) == ["a", "a", "b"]


def test_shipped_example_reads_as_a_listwise_run():
    from preflab.config import load_config
    from preflab.loops.kinds import kind_for
    from preflab.loops.listwise import ListKind

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "examples" / "rrhf.yaml", [])
    assert cfg.loss_type == "rrhf" and kind_for(cfg.objective()) is ListKind
    rows = [json.loads(x) for x in (root / "examples" / "data" / "loud_echo_lists.jsonl").read_text().splitlines()]
    assert len(rows) == 256 and {len(r["completions"]) for r in rows} == {4}


def test_skipped_lists_are_said_on_the_console_and_an_eval_set_left_empty_is_refused(tmp_path, capsys):
    """The listwise loader printed no `preflab: data:` line (rows skipped with on_bad_row: skip were in summary.json
    only) and dropped the eval set's report; an eval set whose every list was skipped ran no evaluation, silently."""
    from preflab.config import load_config
    from preflab.errors import DataError
    from preflab.loops.listwise import prepare_lists
    from preflab.models.load import load_tokenizer

    bad = [*ROWS, {**ROWS[0], "scores": [1.0]}]
    tok = load_tokenizer("builtin:tiny-llama", False)
    train, _, report = prepare_lists(load_config(_config(tmp_path, bad, on_bad_row="skip"), []), tok)
    out = capsys.readouterr().out
    assert len(train) == 4 and "tokenized 5, 4 kept, 1 skipped (bad_scores: 1)" in out and "preflab: data:" in out
    (tmp_path / "eval.jsonl").write_text(json.dumps(bad[-1]) + "\n")
    cfg = load_config(_config(tmp_path, ROWS, on_bad_row="skip", eval_dataset_name=str(tmp_path / "eval.jsonl")), [])
    with pytest.raises(DataError, match=r"the eval set \(eval_dataset_name=.*eval.jsonl\) has no usable lists: "
                                        r".*1 skipped \(bad_scores: 1\)"):
        prepare_lists(cfg, tok)
