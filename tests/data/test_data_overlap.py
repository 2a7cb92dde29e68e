"""Repeated train rows and eval prompts also in train are counted in the data report and said (RELIABILITY D9)."""
import json

from preflab.data.examples import PairExample, UnpairedExample
from preflab.data.overlap import overlap_report


def test_counts_exact_repeats_and_eval_prompts_seen_in_train():
    train = [PairExample(0, "q1", "a", "b"), PairExample(1, "q1", "a", "b", {"w": 1.0}),  # a repeat (row id,
             PairExample(2, "q1", "a", "c"), PairExample(3, "q2", "a", "b"),                # extras ignored)
             PairExample(4, [{"role": "user", "content": "hi"}], "x", "y"),
             PairExample(5, [{"content": "hi", "role": "user"}], "x", "y")]                 # same messages
    evals = [PairExample(9, "q2", "z", "w"), PairExample(10, "q3", "a", "b"),
             PairExample(11, [{"role": "user", "content": "hi"}], "p", "q")]
    assert overlap_report(train, evals) == {"duplicate_train_examples": 2, "eval_prompts_in_train": 2}
    # the two halves of a pair split for KTO differ in completion and label: not repeats
    halves = [UnpairedExample(0, "q", "a", True), UnpairedExample(0, "q", "b", False)]
    assert overlap_report(halves, []) == {"duplicate_train_examples": 0, "eval_prompts_in_train": 0}


def test_prepare_puts_the_counts_in_the_report_and_says_them(tmp_path, capsys):
    from preflab.config import config_from_dict
    from preflab.loops.prepare import prepare_pairs
    from preflab.models.tiny import tiny_tokenizer

    rows = [{"prompt": f"q{i % 3}", "chosen": "yes", "rejected": "no"} for i in range(6)]  # 3 repeats
    train, held = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in rows))
    held.write_text(json.dumps({"prompt": "q1", "chosen": "maybe", "rejected": "no"}))
    cfg = config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name=str(train),
                                eval_dataset_name=str(held), output_dir=str(tmp_path / "out")))
    _, _, report = prepare_pairs(cfg, tiny_tokenizer())
    assert report["overlap"] == {"duplicate_train_examples": 3, "eval_prompts_in_train": 1}
    out = capsys.readouterr().out
    assert ("preflab: note: data: 3 train example(s) repeat an earlier one exactly (same prompt and responses): each "
            "copy is trained on.\n") in out
    assert "1 of 1 eval example(s) have a prompt that is also a train prompt" in out


def test_the_repeated_row_note_is_worded_once_for_text_vision_and_diffusion_rows():
    """The text, vision and diffusion runs printed the same note from three f-strings; data.overlap.repeats_note
    words it (the texts as each printed them before)."""
    from preflab.data.overlap import repeats_note

    assert repeats_note(0, "pair(s)", "tokens and image pixels") is None
    assert repeats_note(2, "pair(s)", "tokens and image pixels") == (
        "2 train pair(s) repeat an earlier one exactly (same tokens and image pixels): each copy is trained on.")
    assert repeats_note(1, "pair(s)", "caption and image pixels") == (
        "1 train pair(s) repeat an earlier one exactly (same caption and image pixels): each copy is trained on.")
