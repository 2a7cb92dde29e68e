"""The MAPL builder (preflab.data.mapl) against models-and-loops.md #14's exact checks."""
import json
import random

import pytest

from preflab.data.mapl import (
    GENERATORS,
    Instruction,
    Vocabulary,
    build_mapl_rows,
    check,
    generate,
    main,
)
from preflab.errors import ConfigError, DataError

RESPONSES = ["An apple, clearly.", "no idea", "- red\n- blue", "Red and blue, I think.",
             "THE SUN IS A STAR", "Water boils at 100 degrees Celsius at sea level, roughly.",
             "* one\n* two\n* three", "yes"]


def base_rows(n=24, seed=0):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        chosen, rejected = rng.sample(RESPONSES, 2)
        rows.append({"prompt": f"Question {i}: say something.", "chosen": chosen, "rejected": rejected})
    return rows


def instructions(row, key):
    return [Instruction.from_dict(d) for d in row[key]]


def test_every_intra_row_satisfies_x_w_not_x_l_with_base_prefix_and_no_repeats():
    rows = base_rows()
    out, report = build_mapl_rows(rows, seed=3, responses=("chosen", "rejected"), min_instructions=1,
                                  max_instructions=4)
    intra = [r for r in out if r["mapl_level"] == "intra"]
    assert len(intra) == report.written["intra"] == 2 * len(rows) - sum(report.skipped.values())
    assert len(intra) == 48  # every response here can take a satisfied and a violated instruction
    for r in intra:
        base, y = rows[r["parent_id"]], r["completion"]
        good, worse = instructions(r, "instructions_chosen"), instructions(r, "instructions_rejected")
        assert all(check(i, y) for i in good)
        assert not all(check(i, y) for i in worse)
        assert r["prompt_chosen"].startswith(base["prompt"]) and r["prompt_rejected"].startswith(base["prompt"])
        assert r["prompt_chosen"] != r["prompt_rejected"]
        for instr in (good, worse):  # no instruction repeats, one per kind
            assert len({i.text for i in instr}) == len(instr) == len({i.kind for i in instr})
        # the same kinds in the same order on both sides (no template token tells x_l from x_w)
        assert [i.kind for i in good] == [i.kind for i in worse]
        assert r["prompt_chosen"].endswith("\n".join(i.text for i in good))
        assert r["prompt_rejected"].endswith("\n".join(i.text for i in worse))
        assert y == base[r["response_side"]]
    # each kind appears as often in x_w as in x_l; the report counts every wording on both sides
    kinds = [[i["kind"] for r in intra for i in r[key]] for key in ("instructions_chosen", "instructions_rejected")]
    assert sorted(kinds[0]) == sorted(kinds[1])
    counts = report.to_dict()["templates_chosen_rejected"]
    assert sum(c for c, _ in counts.values()) == sum(len(r["instructions_chosen"]) for r in intra)
    assert sum(c for _, c in counts.values()) == sum(len(r["instructions_rejected"]) for r in intra)
    assert counts["Include the word #."][0] == counts["Include the word #."][1] > 0


def test_inter_rows_chosen_satisfies_more_instructions_than_rejected():
    rows = base_rows()
    out, report = build_mapl_rows(rows, seed=1, levels=("inter",))
    inter = [r for r in out if r["mapl_level"] == "inter"]
    assert inter and len(inter) + report.skipped["no_separating_instruction"] == len(rows)
    for r in inter:
        instr = instructions(r, "instructions")
        assert r["prompt"].startswith(rows[r["parent_id"]]["prompt"])
        won = sum(check(i, r["chosen"]) for i in instr)
        lost = sum(check(i, r["rejected"]) for i in instr)
        assert won == len(instr) > lost


def test_checkers_are_deterministic_and_match_closed_cases():
    cases = [(Instruction("word_limit", ("<", 3), ""), "two words", True),
             (Instruction("word_limit", ("<", 2), ""), "two words", False),
             (Instruction("word_limit", (">=", 2), ""), "two words", True),
             (Instruction("include_word", "apple", ""), "An Apple, clearly.", True),
             (Instruction("include_word", "app", ""), "An Apple, clearly.", False),
             (Instruction("end_with", "clearly.", ""), "An apple, clearly.  ", True),
             (Instruction("end_with", "apple", ""), "An apple, clearly.", False),
             (Instruction("bullet_count", 2, ""), "- a\n  * b\nc", True),
             (Instruction("bullet_count", 1, ""), "- a\n  * b\nc", False),
             (Instruction("letter_case", "lower", ""), "all lower, 42", True),
             (Instruction("letter_case", "upper", ""), "42", False),  # no letters: no case instruction holds
             (Instruction("commas", ("none", 0), ""), "a, b", False),
             (Instruction("commas", (">=", 2), ""), "a, b, c", True)]
    for instr, y, expected in cases:
        assert [check(instr, y) for _ in range(3)] == [expected] * 3, (instr, y)
    with pytest.raises(ConfigError, match="unknown instruction kind"):
        check(Instruction("rhyme", None, ""), "x")


def test_generators_honour_satisfied_flag_and_seeded_builds_repeat():
    vocab = Vocabulary.of(RESPONSES)
    for kind in GENERATORS:
        for y in RESPONSES:
            for satisfied in (True, False):
                made = generate(kind, y, satisfied, random.Random(f"{kind}{y}{satisfied}"), vocab)
                assert made is None or check(made, y) == satisfied
    # letter case cannot be satisfied by mixed case, nor violated twice by lower case (lower holds)
    assert generate("letter_case", "Mixed Case", True, random.Random(0), vocab) is None
    first, _ = build_mapl_rows(base_rows(), seed=5, levels=("intra", "inter"))
    again, _ = build_mapl_rows(base_rows(), seed=5, levels=("intra", "inter"))
    other, _ = build_mapl_rows(base_rows(), seed=6, levels=("intra", "inter"))
    assert first == again and first != other


def test_skip_counts_equal_unusable_rows():
    """Only case instructions: a mixed-case response has no satisfied one (skipped, counted); a lower- or upper-case
    response always gets both. Inter rows: a pair whose two responses are both lower case has no instruction that
    separates them."""
    rows = [{"prompt": "p0", "chosen": "all lower", "rejected": "ALL UPPER"},       # usable (both)
            {"prompt": "p1", "chosen": "Mixed Case", "rejected": "lower again"},    # chosen unusable
            {"prompt": "p2", "chosen": "Also Mixed", "rejected": "no letters? no"},  # chosen unusable
            {"prompt": "p3", "chosen": "quiet", "rejected": "calm"}]                # usable; inter: not separable
    out, report = build_mapl_rows(rows, kinds=("letter_case",), levels=("intra", "inter"))
    assert report.skipped["no_satisfied_instruction"] == 2
    assert {(r, s) for r, s, _ in report.skipped_rows if s == "chosen"} == {(1, "chosen"), (2, "chosen")}
    assert report.written["intra"] == 2
    # inter: p0 separates (lower vs upper); p1: "Mixed Case" satisfies none; p2 likewise; p3 both lower
    assert report.skipped["no_separating_instruction"] == 3 and report.written["inter"] == 1
    assert sum(report.skipped.values()) + report.written["intra"] + report.written["inter"] == 2 * len(rows)
    assert len(out) == 3


def test_bad_input_is_a_data_error_naming_the_row():
    rows = base_rows(3) + [{"prompt": "p", "chosen": "same", "rejected": "same"}]
    with pytest.raises(DataError, match="row 3"):
        build_mapl_rows(rows)
    with pytest.raises(DataError, match="row 0.*text rows"):
        build_mapl_rows([{"prompt": [{"role": "user", "content": "hi"}],
                          "chosen": [{"role": "assistant", "content": "a"}],
                          "rejected": [{"role": "assistant", "content": "b"}]}])
    with pytest.raises(ConfigError, match="levels"):
        build_mapl_rows(base_rows(2), levels=("outer",))


def test_cli_writes_rows_and_report(tmp_path, capsys):
    src, dst = tmp_path / "pairs.jsonl", tmp_path / "mapl.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in base_rows(5)))
    assert main([str(src), str(dst), "--keep-original", "--seed", "2"]) == 0
    rows = [json.loads(line) for line in dst.read_text().splitlines()]
    expected, _ = build_mapl_rows(str(src), seed=2, keep_original=True)
    assert rows == expected
    assert [r["mapl_level"] for r in rows].count("original") == 5
    printed = json.loads(capsys.readouterr().out)
    assert printed["written"] == {"original": 5, "intra": 5} and printed["templates_chosen_rejected"]


def test_shipped_example_file_is_the_builders_output():
    """examples/data/mapl_loud_echo.jsonl (read by examples/mapl_rc_dpo.yaml) is what the builder writes for the
    first 64 loud-echo pairs, so the example stays in step with the builder."""
    from pathlib import Path

    from preflab.config import load_config
    from preflab.loops.prepare import accepts_intra_rows

    root = Path(__file__).resolve().parents[2]
    pairs = [json.loads(x) for x in (root / "examples/data/loud_echo_pairs.jsonl").read_text().splitlines()[:64]]
    expected, report = build_mapl_rows(pairs, seed=0, responses=("chosen", "rejected"), keep_original=True)
    shipped = [json.loads(x) for x in (root / "examples/data/mapl_loud_echo.jsonl").read_text().splitlines()]
    assert shipped == expected and dict(report.written) == {"original": 64, "intra": 128}
    cfg = load_config(root / "examples" / "mapl_rc_dpo.yaml", [])
    assert cfg.dataset_name == "examples/data/mapl_loud_echo.jsonl" and accepts_intra_rows(cfg.objective())


def test_intra_row_tokenizes_each_side_after_its_own_prompt_and_counts_a_cut_once():
    from preflab.data.rows import load_rows
    from preflab.data.tokenize import tokenize_pairs
    from preflab.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    row = {"prompt_chosen": "Q\n\nUse no commas.", "prompt_rejected": "Q\n\nUse at least 2 commas.",
           "completion": "a long answer without any commas at all", "parent_id": 0}
    (ex,), report = load_rows([row], kind="pairwise")
    assert report.forms == {"intra_standard": 1} and ex.extras == {"parent_id": 0}
    (whole,), _ = tokenize_pairs([ex], tok, max_length=None)
    (cut,), cut_report = tokenize_pairs([ex], tok, max_length=30)
    (plain,), _ = tokenize_pairs(load_rows([{"prompt": row["prompt_rejected"], "chosen": row["completion"],
                                             "rejected": "other"}], kind="pairwise")[0], tok, max_length=None)
    assert whole.rejected_prompt_ids == plain.prompt_ids and whole.rejected_ids == plain.chosen_ids
    assert whole.prompt_ids != whole.rejected_prompt_ids
    # the longer side fills max_length; the other keeps the same tokens of y (both sums cover the same y)
    assert len(cut.rejected_prompt_ids) + len(cut.rejected_ids) == 30 and cut.chosen_ids == cut.rejected_ids
    assert cut_report.response_truncated == 1  # both sides were cut; one row
