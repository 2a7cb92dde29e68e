"""eval_fraction holds out whole parent_id groups when every row names its parent (MAPL files: the original pair,
its intra rows and inter rows share the base row's parent_id), so no eval row's response is a training row's;
files without the column keep the row-by-row hold-out."""
import json

from preflab.config import config_from_dict
from preflab.data.holdout import held_out_positions, split_eval_fraction
from preflab.data.rows import load_rows
from preflab.loops.prepare import prepare_pairs
from preflab.models.tiny import tiny_tokenizer


def _mapl_like_rows(n_parents: int) -> list[dict]:
    rows = []
    for p in range(n_parents):
        x, yw, yl = f"echo: w{p}\n", f"W{p}", f"w{p}"
        rows.append({"prompt": x, "chosen": yw, "rejected": yl, "parent_id": p})
        rows.append({"prompt_chosen": x + "Answer in uppercase.", "prompt_rejected": x + "Answer in lowercase.",
                     "completion": yw, "parent_id": p})
    return rows


def test_split_eval_fraction_keeps_each_parent_on_one_side(tmp_path):
    data = tmp_path / "mapl.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _mapl_like_rows(10)))
    rows, _ = load_rows(str(data), kind="pairwise")
    train, evals = split_eval_fraction(rows, 0.2, seed=0)
    parents = lambda xs: {x.extras["parent_id"] for x in xs}  # noqa: E731
    assert not parents(train) & parents(evals)
    want = {sorted(range(10))[i] for i in held_out_positions(10, 0.2, 0)}  # 2 of the 10 parents, both their rows
    assert parents(evals) == want and len(evals) == 4 and len(train) == 16


def test_rows_without_a_parent_id_are_held_out_one_by_one(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"p{i}", "chosen": "a", "rejected": "b"}) + "\n"
                            for i in range(10)))
    rows, _ = load_rows(str(data), kind="pairwise")
    train, evals = split_eval_fraction(rows, 0.2, seed=0)
    assert [x.row_id for x in evals] == sorted(rows[i].row_id for i in held_out_positions(10, 0.2, 0))


def test_preference_run_holds_out_whole_parent_groups_and_says_so(tmp_path, capsys):
    data = tmp_path / "mapl.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _mapl_like_rows(10)))
    cfg = config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": str(data),
                            "loss_type": "rc_dpo", "eval_fraction": 0.2, "output_dir": str(tmp_path / "out")})
    train, evals, _ = prepare_pairs(cfg, tiny_tokenizer())
    by_id = {i: r["parent_id"] for i, r in enumerate(_mapl_like_rows(10))}
    assert not {by_id[x.row_id] for x in train} & {by_id[x.row_id] for x in evals}
    assert len(evals) == 4
    assert "holds out whole parent_id groups (2 of 10)" in capsys.readouterr().out


def test_eval_fraction_holds_out_the_rounded_count_and_at_least_one_row():
    """max(1, round(fraction x n)) positions: 0.18 of 10 rows is 2 (not the floor, 1), 0.14 of 10 is 1, and 0.01
    of 10 still holds out one row; the positions are the first ones of the seeded permutation."""
    import torch

    counts = [len(held_out_positions(10, fraction, 0)) for fraction in (0.18, 0.14, 0.01)]
    assert counts == [2, 1, 1]
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(3)).tolist()
    assert held_out_positions(10, 0.18, 3) == set(perm[:2])
