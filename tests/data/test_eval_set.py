"""preflab.data.eval_set.train_and_eval, the one eval-set choice of the six loaders (SFT, listwise, vision, diffusion,
pairwise and multi-objective reward models): eval_dataset_name, else a seeded eval_fraction hold-out, else none.
The held-out rows are the ones each loader held out before it was shared (recorded from the old code: 10 rows,
eval_fraction 0.3, seed 7 -> rows 0, 3, 5), and the empty cases are refused with the same messages everywhere."""
import json
from types import SimpleNamespace

import pytest

from preflab.config import config_from_dict
from preflab.data.eval_set import train_and_eval
from preflab.data.report import DataReport
from preflab.errors import DataError
from preflab.models.tiny import tiny_tokenizer

N, FRACTION, SEED, HELD = 10, 0.3, 7, [0, 3, 5]  # HELD: split_eval_fraction before this change, recorded


def _cfg(**kw):
    base = dict(eval_dataset_name=None, eval_split="train", eval_fraction=0.0, seed=0, dataset_name="rows.jsonl")
    return SimpleNamespace(**{**base, **kw})


def test_the_recorded_rows_are_held_out_in_order_and_the_rest_trained_on():
    train, evals, report = train_and_eval(_cfg(eval_fraction=FRACTION, seed=SEED), list(range(N)), None)
    assert evals == HELD and train == [i for i in range(N) if i not in HELD] and report is None
    train, evals, _ = train_and_eval(_cfg(eval_fraction=0.25, seed=42), list(range(9)), None)
    assert evals == [4, 6] and train == [0, 1, 2, 3, 5, 7, 8]
    assert train_and_eval(_cfg(), [1, 2], None) == ([1, 2], [], None)


def test_the_eval_dataset_is_read_whole_and_the_training_items_kept():
    read = lambda name, split: ([f"{name}:{split}:a", "b"], "report")  # noqa: E731
    cfg = _cfg(eval_dataset_name="e.jsonl", eval_split="test", eval_fraction=0.0)
    assert train_and_eval(cfg, [1, 2, 3], read) == ([1, 2, 3], ["e.jsonl:test:a", "b"], "report")


def test_an_empty_eval_dataset_is_refused_naming_the_option_and_its_counts():
    report = DataReport(source="e.jsonl", total=3, kept=0, skipped={"missing_field": 3})
    with pytest.raises(DataError, match=r"the eval set \(eval_dataset_name=e.jsonl\) has no usable examples: "
                                        r"e.jsonl \(pairwise\): 3 rows, 0 kept, 3 skipped.*eval_split='test'.*drop "
                                        r"eval_dataset_name"):
        train_and_eval(_cfg(eval_dataset_name="e.jsonl", eval_split="test"), [1], lambda n, s: ([], report))


def test_a_hold_out_that_leaves_nothing_to_train_on_is_refused():
    with pytest.raises(DataError, match=r"eval_fraction=0.1 holds out all 1 usable training example\(s\) of "
                                        r"dataset_name=rows.jsonl.*set eval_fraction: 0"):
        train_and_eval(_cfg(eval_fraction=0.1), ["only"], None)
    with pytest.raises(DataError, match="holds out all 2"):
        train_and_eval(_cfg(eval_fraction=0.9), ["a", "b"], None)


# ------------------------------------------------------------------ the six callers hold out the recorded rows
def _write(tmp_path, rows) -> str:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _real_cfg(tmp_path, rows, **kw):
    return config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": _write(tmp_path, rows),
                             "eval_fraction": FRACTION, "seed": SEED, "max_length": 64,
                             "output_dir": str(tmp_path / "out"), **kw})


def _sft(tmp_path, monkeypatch):
    from preflab.loops.sft import prepare_sft

    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(N)]
    _, evals, _ = prepare_sft(_real_cfg(tmp_path, rows, task="sft"), tiny_tokenizer())
    return [x.row_id for x in evals]


def _listwise(tmp_path, monkeypatch):
    from preflab.loops.listwise import prepare_lists

    rows = [{"prompt": f"q{i}", "completions": [f"a{i}", "b", "c"], "scores": [1.0, 0.5, 0.0]} for i in range(N)]
    _, evals, _ = prepare_lists(_real_cfg(tmp_path, rows, loss_type="rrhf"), tiny_tokenizer())
    return [x.row_id for x in evals]


def _reward(tmp_path, monkeypatch):
    from preflab.reward_models.data import load_reward_pairs

    rows = [{"prompt": f"q{i}", "chosen": f"yes{i}", "rejected": "no"} for i in range(N)]
    _, evals, _, _ = load_reward_pairs(_real_cfg(tmp_path, rows, task="reward"), tiny_tokenizer())
    return [x.row_id for x in evals]


def _multi_objective(tmp_path, monkeypatch):
    from preflab.reward_models import multi_objective

    seen = {}
    monkeypatch.setattr(multi_objective, "train_multi_objective",
                        lambda cfg, rows, attributes, **kw: seen.update(eval_rows=kw["eval_rows"]) or {})
    rows = [{"prompt": f"q{i}", "response": f"r{i}", "ratings": {"helpfulness": i}} for i in range(N)]
    cfg = _real_cfg(tmp_path, rows, task="reward", reward_head="multi_objective",
                    reward_head_params={"attributes": ["helpfulness"]})
    multi_objective.train_attribute_reward(cfg, tokenizer=tiny_tokenizer())
    return [int(r["prompt"][1:]) for r in seen["eval_rows"]]


def _vision(tmp_path, monkeypatch, **kw):
    from preflab.data import vision
    from preflab.loops.vlm import prepare_vision_data

    rows = [SimpleNamespace(row_id=i, images=["img"], rejected_images=None) for i in range(N)]  # rows with an image
    monkeypatch.setattr(vision, "read_vision_pairs", lambda source, split, **kw: (list(rows), DataReport(
        "rows", total=N, kept=N)))  # the rows read (a report of 0 rows is an empty file: refused)
    monkeypatch.setattr(vision, "tokenize_vision_pairs", lambda examples, *a: (
        examples, DataReport("rows"), DataReport("rows")))
    monkeypatch.setattr(vision, "vision_pairs_fingerprint", lambda pairs: str(pairs[0].row_id))  # the stubs' content
    cfg = _cfg(**{**dict(dataset_name="rows", dataset_split="train", eval_fraction=FRACTION, seed=SEED,
                         vision_pairs="given", vision_pair_params={}, on_bad_row="error", max_frames=8, max_length=64,
                         chunk_tokens=None, max_completion_length=None), **kw})
    _, evals, _ = prepare_vision_data(cfg, None, None, None)
    return [x.row_id for x in evals]


def _diffusion(tmp_path, monkeypatch, **kw):
    from preflab.diffusion import data
    from preflab.diffusion.data import ImageDataReport
    from preflab.loops.diffusion import DiffusionRun

    rows = [SimpleNamespace(row_id=i) for i in range(N)]
    monkeypatch.setattr(data, "load_image_pairs", lambda source, split, **kw: (list(rows), ImageDataReport("rows")))
    cfg = _cfg(**{**dict(dataset_name="rows", dataset_split="train", eval_fraction=FRACTION, seed=SEED,
                         score_range=None, resolution=8, image_resize=True, on_bad_row="error", user_column=None), **kw})
    run = SimpleNamespace(cfg=cfg, self_npo=False, ppd=False, objective=None, main=False, dcpo=False,
                          scores_held_out=False)
    run.image_pair_options = lambda: DiffusionRun.image_pair_options(run)
    _, evals, _ = DiffusionRun._prepare_data(run)
    return [x.row_id for x in evals]


@pytest.mark.parametrize("caller", [_sft, _listwise, _reward, _multi_objective, _vision, _diffusion],
                         ids=lambda f: f.__name__.strip("_"))
def test_every_loader_holds_out_the_rows_it_held_out_before(tmp_path, monkeypatch, caller):
    assert caller(tmp_path, monkeypatch) == HELD


def test_eval_steps_without_an_eval_set_is_said_by_every_loader(capsys):
    """eval_steps > 0 with no eval_dataset_name / eval_fraction ran no evaluation at all, without a word (preflab
    refused eval_strategy: steps without an eval set, but not eval_steps alone)."""
    from preflab.loops.prepare import prepare_examples

    said = "preflab: note: eval_steps=5, but there is no eval set (no eval_dataset_name, eval_fraction 0), so no " \
           "evaluation runs"
    assert train_and_eval(_cfg(eval_steps=5), [1, 2], None) == ([1, 2], [], None)
    assert said in capsys.readouterr().out
    cfg = config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name="rows.jsonl", eval_steps=5))
    with pytest.raises(DataError, match="rows.jsonl"):
        prepare_examples(cfg, tiny_tokenizer())  # said before the (missing) file is read
    assert said in capsys.readouterr().out
    train_and_eval(_cfg(eval_steps=0), [1, 2], None)
    assert train_and_eval(_cfg(eval_steps=5, eval_fraction=0.5, seed=0), [1, 2], None)[1] != []
    assert "eval_steps" not in capsys.readouterr().out
    train_and_eval(_cfg(eval_steps=0, generate_during_eval=True), [1, 2], None)
    assert "generate_during_eval: there is no eval set" in capsys.readouterr().out


def test_eval_split_without_an_eval_set_is_said_by_text_vision_and_diffusion_runs(tmp_path, monkeypatch, capsys):
    """`dataset_name=DIR eval_split=test` with no eval_dataset_name, eval_fraction or eval_steps: a diffusion run
    trained with "0 eval examples" and no word (eval_split unused); the text, vision and diffusion loaders now say
    the same note (data.eval_set.note_eval_steps_without_eval_set), naming how to evaluate on that split."""
    from preflab.loops.prepare import prepare_examples

    said = ("preflab: note: there is no eval set (no eval_dataset_name, eval_fraction 0), so no evaluation runs. "
            "eval_split='test' names a split of eval_dataset_name, not of dataset_name: to evaluate on rows's 'test' "
            "split, set eval_dataset_name: rows.")
    cfg = config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name="rows", eval_split="test"))
    with pytest.raises(DataError, match="rows"):
        prepare_examples(cfg, tiny_tokenizer())  # said before the (missing) data is read
    assert said in capsys.readouterr().out.splitlines()
    for caller in (_vision, _diffusion):
        assert caller(tmp_path, monkeypatch, eval_fraction=0.0, eval_split="test") == []  # nothing evaluated
        assert said in capsys.readouterr().out.splitlines(), caller.__name__
    train_and_eval(_cfg(eval_split=None), [1, 2], None)  # no eval_split, no eval_steps: nothing asked, nothing said
    train_and_eval(_cfg(eval_split="test", eval_dataset_name="e", eval_fraction=0.0), [1], lambda n, s: ([1], None))
    assert capsys.readouterr().out == ""  # eval_split read as eval_dataset_name's split: no note


def test_options_that_act_on_evaluations_are_refused_without_an_eval_set():
    """save_strategy best (would save nothing), reduce_lr_on_plateau (the rate would never change) and
    load_best_model_at_end (nothing ranks the checkpoints) without eval_dataset_name or eval_fraction: a ConfigError
    naming the option, before any row is read; with an eval_fraction the same options go on."""
    from preflab.errors import ConfigError

    for option, said in ((dict(save_strategy="best"), r"save_strategy: best .*so it would save nothing"),
                         (dict(lr_scheduler_type="reduce_lr_on_plateau"),
                          r"reduce_lr_on_plateau .*so the rate would never change"),
                         (dict(load_best_model_at_end=True),
                          r"load_best_model_at_end: true, but there is no eval set")):
        with pytest.raises(ConfigError, match=said):
            train_and_eval(_cfg(**option), [1, 2], None)
        assert train_and_eval(_cfg(eval_fraction=0.5, **option), [1, 2], None)[1] != []
