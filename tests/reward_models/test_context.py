"""Context-aware preference modeling: rendering, RPR expansion, marginalisation, and a reversal set that a
context-aware RM solves (reversal accuracy 1) while any context-blind model scores exactly 0."""
import json
import math
import random

import pytest
import torch

from preflab.data.rows import load_rows
from preflab.reward_models.context import (CONTEXT_TEMPLATE, expand_rpr_rows, marginal_preference, render_context,
                                    reversal_accuracy)

WORDS = "the cat sat on mat dog ran to park what is two plus three answer five please how many legs spider".split()


def test_render_context_text_and_chat():
    assert render_context("hi", "be brief") == "Context: be brief\n\nhi"
    assert render_context("hi", None) == "hi" and render_context("hi", "") == "hi"
    chat = [{"role": "user", "content": "hi"}]
    assert render_context(chat, "be brief") == [{"role": "system", "content": "Context: be brief"}, *chat]
    with_system = [{"role": "system", "content": "S"}, *chat]
    assert render_context(with_system, "c")[0] == {"role": "system", "content": "Context: c\n\nS"}


def test_rpr_rows_expand_to_opposite_labels_with_the_context_in_the_input():
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.data import tokenize_reward_pairs

    rows = expand_rpr_rows([{"prompt": "q", "response_a": " a a", "response_b": " b", "criteria_x": "short please",
                             "criteria_y": "long please", "id": 7}])
    assert [(r["context"], r["chosen"], r["rejected"], r["id"]) for r in rows] == [
        ("short please", " a a", " b", 7), ("long please", " b", " a a", 7)]
    tok = tiny_tokenizer()
    pairs, _ = tokenize_reward_pairs(load_rows(rows)[0], tok, context_template=CONTEXT_TEMPLATE)
    for pair, row in zip(pairs, rows):
        assert f"Context: {row['context']}" in tok.decode(pair.prompt_ids)


def test_marginal_preference_and_reversal_accuracy_by_hand():
    p = marginal_preference(torch.tensor([0.7, 0.3], dtype=torch.float64), torch.tensor([0.9, 0.2],
                                                                                        dtype=torch.float64))
    assert p.item() == pytest.approx(0.69, abs=1e-15)
    examples, _ = load_rows([{"prompt": "x", "chosen": "a", "rejected": "b", "context": "1"},
                             {"prompt": "x", "chosen": "b", "rejected": "a", "context": "2"},
                             {"prompt": "y", "chosen": "a", "rejected": "b", "context": "1"},
                             {"prompt": "y", "chosen": "b", "rejected": "a", "context": "2"},
                             {"prompt": "z", "chosen": "a", "rejected": "b"}])  # no reversal partner
    assert reversal_accuracy(examples, torch.tensor([True, True, True, False, True])) == 0.5
    assert reversal_accuracy(examples[4:], torch.tensor([True])) is None


def _reversal_rows(n, seed):
    """Per prompt a one-word and a 5-7-word response; "prefer brevity" picks the short one, "prefer detail" the
    long one."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = " ".join(rng.choice(WORDS) for _ in range(3))
        short = " " + rng.choice(WORDS)
        long = " " + " ".join(rng.choice(WORDS) for _ in range(rng.randrange(5, 8)))
        rows.append({"prompt": prompt, "context": "prefer brevity", "chosen": short, "rejected": long})
        rows.append({"prompt": prompt, "context": "prefer detail", "chosen": long, "rejected": short})
    return rows


def _train(tmp_path, name, rows, steps, *extra):
    from preflab.cli import main

    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["train", "task=reward", "model_name_or_path=builtin:tiny-llama", f"dataset_name={data}",
                 f"output_dir={tmp_path / name}", "learning_rate=3e-3", "per_device_train_batch_size=16",
                 f"max_steps={steps}", f"logging_steps={steps}", "lr_scheduler_type=constant", "max_length=64",
                 "disable_tqdm=true", "use_cpu=true", *[e.format(data=data) for e in extra]]) == 0
    return tmp_path / name, json.loads((tmp_path / name / "summary.json").read_text())


def test_context_aware_rm_solves_reversals_that_a_blind_model_cannot(tmp_path):
    from preflab.reward_models.eval import evaluate_reward_model
    from preflab.reward_models.interface import RewardModel

    held_out = _reversal_rows(32, seed=1)
    aware_dir, summary = _train(tmp_path, "aware", _reversal_rows(96, seed=0), steps=60)
    assert summary["reward_model"]["context_template"] == CONTEXT_TEMPLATE
    aware = evaluate_reward_model(str(aware_dir), held_out)
    assert aware["reversal_accuracy"] >= 0.9 and aware["accuracy"] >= 0.95
    assert set(aware["per_context"]) == {"prefer brevity", "prefer detail"}
    assert all(v["num_pairs"] == 32 for v in aware["per_context"].values())
    # the same model without its context input: each pair is scored alike under both contexts
    hidden = evaluate_reward_model(str(aware_dir), held_out, context_template=None)
    assert hidden["reversal_accuracy"] == 0.0 and hidden["accuracy"] <= 0.5

    blind_rows = [{k: v for k, v in r.items() if k != "context"} | {"criterion": r["context"]}
                  for r in _reversal_rows(96, seed=0)]
    blind_dir, blind_summary = _train(tmp_path, "blind", blind_rows, 30, "eval_dataset_name={data}")
    assert "context_template" not in blind_summary["reward_model"]
    # every pair appears in both orientations, so the mean loss over the data is >= ln 2 (Jensen)
    assert blind_summary["final_metrics"]["eval_loss"] >= math.log(2) - 1e-6
    blind = evaluate_reward_model(str(blind_dir), held_out)
    assert blind["reversal_accuracy"] == 0.0 and blind["accuracy"] <= 0.5

    judge = RewardModel.from_pretrained(str(aware_dir))
    prompts = [r["prompt"] for r in held_out[::2]]
    short, long = [r["chosen"] for r in held_out[::2]], [r["rejected"] for r in held_out[::2]]
    detail = ["prefer detail"] * len(prompts)
    assert bool((judge.score(prompts, long, detail) > judge.score(prompts, short, detail)).float().mean() >= 0.9)


def _long_prompt_rows():
    """Two reversal rows whose prompt is far longer than its context."""
    prompt = " ".join(WORDS * 2)
    return [{"prompt": prompt, "context": "prefer loud", "chosen": " YES!", "rejected": " yes."},
            {"prompt": prompt, "context": "prefer quiet", "chosen": " yes.", "rejected": " YES!"},
            {"prompt": prompt, "chosen": " a", "rejected": " b"}]  # no context: truncated as usual


def test_the_training_batch_holds_the_context_the_eval_renders(tmp_path):
    """load_reward_pairs (what `preflab train task=reward` feeds the model) and evaluate_reward_model's rendering
    decode to the same prompt, context first, with chosen and rejected as the row gives them."""
    from preflab.config import config_from_dict
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.data import load_reward_pairs, tokenize_reward_pairs

    rows = _reversal_rows(2, seed=3)
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = tiny_tokenizer()
    cfg = config_from_dict({"task": "reward", "model_name_or_path": "builtin:tiny-llama", "dataset_name": str(data),
                            "max_length": 64})
    train, _, _, template = load_reward_pairs(cfg, tok)
    assert template == CONTEXT_TEMPLATE
    evals, _ = tokenize_reward_pairs(load_rows(rows)[0], tok, max_length=1024, context_template=template)
    for pair, other, row in zip(train, evals, rows):
        assert tok.decode(pair.prompt_ids) == f"<s>Context: {row['context']}\n\n{row['prompt']}"
        assert tok.decode(pair.chosen_ids) == row["chosen"] + "</s>"
        assert tok.decode(pair.rejected_ids) == row["rejected"] + "</s>"
        assert (other.prompt_ids, other.chosen_ids, other.rejected_ids) == (
            pair.prompt_ids, pair.chosen_ids, pair.rejected_ids)


def test_max_prompt_length_that_would_cut_the_context_is_a_bad_row():
    """keep_end truncation cuts the prompt's start, which is where the context is: refused (it used to train the
    row silently without its context, so a context-aware RM could not learn the reversal)."""
    from preflab.errors import DataError
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.data import tokenize_reward_pairs

    tok = tiny_tokenizer()
    examples = load_rows(_long_prompt_rows())[0]
    with pytest.raises(DataError, match="context_truncated|cuts its start, which holds the context") as err:
        tokenize_reward_pairs(examples, tok, max_prompt_length=32, context_template=CONTEXT_TEMPLATE)
    assert "max_prompt_length=32" in str(err.value) and "keep_start" in str(err.value)
    pairs, report = tokenize_reward_pairs(examples, tok, max_prompt_length=32, context_template=CONTEXT_TEMPLATE,
                                          on_bad_row="skip")
    assert [p.row_id for p in pairs] == [examples[2].row_id]  # the context-free row is cut as before
    assert len(pairs[0].prompt_ids) == 32 and report.skipped == {"context_truncated": 2} and report.kept == 1
    kept, _ = tokenize_reward_pairs(examples, tok, max_prompt_length=32, truncation_mode="keep_start",
                                    context_template=CONTEXT_TEMPLATE)
    assert [tok.decode(p.prompt_ids).startswith("<s>Context: prefer ") for p in kept] == [True, True, False]
    roomy, _ = tokenize_reward_pairs(examples, tok, max_prompt_length=1000, context_template=CONTEXT_TEMPLATE)
    assert len(roomy) == 3
    chat = [{"prompt": [{"role": "user", "content": r["prompt"]}], "chosen": [{"role": "assistant", "content": "A"}],
             "rejected": [{"role": "assistant", "content": "B"}], "context": r["context"]}
            for r in _long_prompt_rows()[:2]]  # the context goes to the system message, at the start too
    with pytest.raises(DataError, match="cuts its start, which holds the context"):
        tokenize_reward_pairs(load_rows(chat)[0], tok, max_prompt_length=32, context_template=CONTEXT_TEMPLATE)


def test_render_context_reaches_both_prompts_of_a_mapl_intra_row():
    """A MAPL intra row has its own rejected prompt x_l: with_context writes the row's context into x_w and x_l
    alike (the rejected side is scored as y | c, x_l), and leaves a row without a context as it is."""
    from preflab.data.examples import PairExample
    from preflab.reward_models.context import with_context

    rows = [PairExample(0, "x_w", " y", " y", {"context": "be brief"}, rejected_prompt="x_l"),
            PairExample(1, "x_w", " y", " y", {}, rejected_prompt="x_l"),
            PairExample(2, "p", " a", " b", {"context": "c"})]
    out = with_context(rows)
    assert (out[0].prompt, out[0].rejected_prompt) == ("Context: be brief\n\nx_w", "Context: be brief\n\nx_l")
    assert (out[1].prompt, out[1].rejected_prompt) == ("x_w", "x_l")
    assert (out[2].prompt, out[2].rejected_prompt) == ("Context: c\n\np", None)


def test_marginal_reversal_groups_are_pairs_with_two_winners_not_repeats():
    """A pair repeated under two contexts with the same winner is no reversal: it forms no group (reversal accuracy
    None when nothing else does), and next to a real reversal group it does not count in the fraction."""
    from preflab.reward_models.context import reversal_groups

    examples, _ = load_rows([{"prompt": "x", "chosen": "a", "rejected": "b", "context": "1"},
                             {"prompt": "x", "chosen": "a", "rejected": "b", "context": "2"},  # same winner
                             {"prompt": "y", "chosen": "a", "rejected": "b", "context": "1"},
                             {"prompt": "y", "chosen": "b", "rejected": "a", "context": "2"}])
    assert reversal_groups(examples) == [[2, 3]]
    assert reversal_accuracy(examples[:2], torch.tensor([True, True])) is None
    assert reversal_accuracy(examples, torch.tensor([False, False, True, True])) == 1.0


def test_a_context_that_is_not_text_is_a_bad_row_naming_file_row_and_field(tmp_path):
    """Trial 19: a `context` given as a list (or an object, a number) was written into the prompt as its Python repr
    ("Context: ['loud', 'short']") and trained on without a word. Now a bad row: a DataError naming the file, the row
    and the field, or with on_bad_row: skip, left out and counted as bad_context; the string rows are as before."""
    from preflab.errors import DataError
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.data import tokenize_reward_pairs

    tok = tiny_tokenizer()
    rows = [{"prompt": "echo: cat\n", "chosen": "CAT", "rejected": "cat", "context": "prefer loud"},
            {"prompt": "echo: dog\n", "chosen": "dog", "rejected": "DOG", "context": ["prefer quiet", "short"]},
            {"prompt": "echo: sun\n", "chosen": "SUN", "rejected": "sun", "context": None},
            {"prompt": "echo: map\n", "chosen": "MAP", "rejected": "map", "context": {"tone": "loud"}}]
    data = tmp_path / "ctx.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples = load_rows(str(data))[0]
    with pytest.raises(DataError, match=r"ctx\.jsonl row 1, field 'context': expected text .*got list "
                                        r"\['prefer quiet', 'short'\]"):
        tokenize_reward_pairs(examples, tok, source=str(data), context_template=CONTEXT_TEMPLATE)
    pairs, report = tokenize_reward_pairs(examples, tok, source=str(data), context_template=CONTEXT_TEMPLATE,
                                          on_bad_row="skip")
    assert [p.row_id for p in pairs] == [0, 2] and report.skipped == {"bad_context": 2} and report.kept == 2
    assert tok.decode(pairs[0].prompt_ids) == "<s>" + render_context("echo: cat\n", "prefer loud")
    assert tok.decode(pairs[1].prompt_ids) == "<s>echo: sun\n"  # a null context is no context
