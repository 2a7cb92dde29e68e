"""MAPL intra rows {prompt_chosen, prompt_rejected, completion} through `preflab train`: rc_dpo (task: dpo) and Rc-BT
(task: reward, reward_head: bt) against the loss computed by hand from separately scored S(y | x_w), S(y | x_l)."""
import json
import math
import random

import pytest
import torch
import torch.nn.functional as F

from preflab.config import config_from_dict
from preflab.data.examples import PairExample
from preflab.data.mapl import build_mapl_rows
from preflab.data.tokenize import tokenize_pairs
from preflab.errors import DataError
from preflab.loops.offline import Trainer
from preflab.models.load import frozen_copy
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from preflab.objectives import PairBatch, get_objective

BASE = [{"prompt": f"Q{i}: describe item {i}.", "chosen": c, "rejected": r} for i, (c, r) in enumerate([
    ("it is red, small", "blue"), ("- one\n- two", "one two"), ("A LOUD ANSWER", "a quiet one"),
    ("short", "a much longer answer here"), ("the end, yes", "no"), ("all lower case", "Mixed Case")])]


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def mapl_file(tmp_path, keep_original=True):
    rows, _ = build_mapl_rows(BASE, seed=0, keep_original=keep_original)
    return write_rows(tmp_path / "mapl.jsonl", rows), rows


def sides(row):
    """(prompt, response) of the chosen and the rejected side of a built row."""
    if "prompt_chosen" in row:
        return (row["prompt_chosen"], row["completion"]), (row["prompt_rejected"], row["completion"])
    return (row["prompt"], row["chosen"]), (row["prompt"], row["rejected"])


def ordinary_ids(tok, prompt, response):
    """(prompt ids, response ids) of (prompt, response) tokenized as an ordinary pair (not the intra-row path)."""
    (pair,), _ = tokenize_pairs([PairExample(0, prompt, response, response + " other")], tok, max_length=None)
    return pair.prompt_ids, pair.chosen_ids


def logp_sum(model, prompt_ids, response_ids, response_only=True):
    """sum_t log p(token_t | tokens before), over the response tokens (or over every predicted token)."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logps = F.log_softmax(model(ids).logits[0, :-1].double(), -1).gather(1, ids[0, 1:, None])[:, 0]
    return float(logps[len(prompt_ids) - 1:].sum() if response_only else logps.sum())


def dpo_cfg(data, out, **over):
    return config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": data, "output_dir": str(out),
                             "loss_type": "rc_dpo", "beta": 0.5, "learning_rate": 1e-3, "max_steps": 1,
                             "per_device_train_batch_size": 12, "logging_steps": 1, "disable_tqdm": True,
                             "use_cpu": True, "max_length": 256, "seed": 0, **over})


def first_row(out):
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[0])


def train_dpo(data, out, **over):
    tok = tiny_tokenizer()
    policy, ref = tiny_causal_lm(tok, seed=0), tiny_causal_lm(tok, seed=1)
    frozen = frozen_copy(ref)
    Trainer(dpo_cfg(data, out, **over), policy=policy, ref=frozen, tokenizer=tok).train()
    return first_row(out)


def hand_scores(rows):
    """S(y | x) of each row's chosen and rejected side under the policy and the reference (seeds 0, 1), each
    sequence scored alone after ordinary tokenization, response tokens only; and the chosen sides with every token."""
    tok = tiny_tokenizer()
    policy, ref = tiny_causal_lm(tok, seed=0), tiny_causal_lm(tok, seed=1)
    scores = {"pc": [], "pr": [], "rc": [], "rr": [], "pc_leaky": []}
    for row in rows:
        (xw, yw), (xl, yl) = sides(row)
        for key, model, (x, y) in (("pc", policy, (xw, yw)), ("pr", policy, (xl, yl)), ("rc", ref, (xw, yw)),
                                   ("rr", ref, (xl, yl))):
            scores[key].append(logp_sum(model, *ordinary_ids(tok, x, y)))
        scores["pc_leaky"].append(logp_sum(policy, *ordinary_ids(tok, xw, yw), response_only=False))
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in scores.items()}


def test_rc_dpo_step_zero_loss_equals_dpo_on_separately_scored_sides(tmp_path):
    """Original pairs + intra rows in one file (L_orig + L_intra): the logged loss of the first step (all 12 rows)
    equals DPO computed by hand from S(y | x_w), S(y | x_l) scored one sequence at a time, response tokens only."""
    data, rows = mapl_file(tmp_path)
    assert len(rows) == 12 and sum("prompt_chosen" in r for r in rows) == 6
    t = hand_scores(rows)
    by_hand = -F.logsigmoid(0.5 * ((t["pc"] - t["rc"]) - (t["pr"] - t["rr"]))).mean()
    same = get_objective("dpo", beta=0.5)(PairBatch.from_sums(t["pc"], t["pr"], t["rc"], t["rr"])).loss
    assert float(same) == pytest.approx(float(by_hand), abs=1e-12)

    logged = train_dpo(data, tmp_path / "run")
    assert logged["loss"] == pytest.approx(float(by_hand), abs=1e-6)
    assert logged["logps/chosen"] == pytest.approx(float(t["pc"].mean()), abs=1e-4)
    assert logged["logps/rejected"] == pytest.approx(float(t["pr"].mean()), abs=1e-4)
    # the check can fail: prompt tokens in the sum would move logps/chosen by far more than the tolerance
    assert abs(float(t["pc_leaky"].mean()) - float(t["pc"].mean())) > 10


def test_rc_dpo_level_weights_in_one_run(tmp_path):
    """L_orig + lambda_intra L_intra + lambda_inter L_inter: each row's DPO loss weighted by its level."""
    rows, _ = build_mapl_rows(BASE, seed=0, keep_original=True, levels=("intra", "inter"))
    levels = [r["mapl_level"] for r in rows]
    assert {lv: levels.count(lv) for lv in set(levels)} == {"original": 6, "intra": 6, "inter": 6}
    data = write_rows(tmp_path / "levels.jsonl", rows)
    t = hand_scores(rows)
    per_row = -F.logsigmoid(0.5 * ((t["pc"] - t["rc"]) - (t["pr"] - t["rr"])))
    weight = torch.tensor([{"original": 1.0, "intra": 0.25, "inter": 3.0}[lv] for lv in levels], dtype=torch.float64)
    logged = train_dpo(data, tmp_path / "run", per_device_train_batch_size=18,
                       objective_params={"intra_weight": 0.25, "inter_weight": 3.0})
    assert logged["loss"] == pytest.approx(float((weight * per_row).mean()), abs=1e-6)
    assert abs(float((weight * per_row).mean()) - float(per_row.mean())) > 1e-3  # the weights change the value
    rows_without = [{k: v for k, v in r.items() if k != "mapl_inter"} for r in rows]
    with pytest.raises(DataError, match="inter_weight=3.0 needs the numeric column 'mapl_inter'"):
        train_dpo(write_rows(tmp_path / "plain.jsonl", rows_without), tmp_path / "run2",
                  per_device_train_batch_size=18, objective_params={"inter_weight": 3.0})


@pytest.mark.parametrize("layout", ["prefix_shared", "packed", "prefix_packed", "cached_reference"])
def test_every_layout_scores_intra_rows_as_the_padded_layout(tmp_path, layout, monkeypatch):
    """Each layout (and the reference log-probs precomputed and cached per row) gives the padded layout's numbers."""
    monkeypatch.setenv("PREFLAB_CACHE_DIR", str(tmp_path / "cache"))
    data, _ = mapl_file(tmp_path)
    padded = train_dpo(data, tmp_path / "padded", layout="padded", max_steps=2)
    options = {"precompute_ref_log_probs": True} if layout == "cached_reference" else {"layout": layout}
    other = train_dpo(data, tmp_path / layout, max_steps=2, **options)
    for key in ("loss", "logps/chosen", "logps/rejected", "rewards/margins"):
        assert other[key] == pytest.approx(padded[key], abs=1e-5), key


def test_intra_rows_refused_by_a_loss_that_compares_responses(tmp_path):
    data, _ = mapl_file(tmp_path)
    with pytest.raises(DataError, match=r"mapl\.jsonl: row 1: fields prompt_chosen / prompt_rejected: 6 MAPL "
                                        r"intra rows.*loss_type='sigmoid'.*rc_dpo"):
        train_dpo(data, tmp_path / "run", loss_type="sigmoid")


def test_malformed_intra_row_names_file_row_and_field(tmp_path):
    rows = [{"prompt_chosen": "Q\n\nUse no commas.", "prompt_rejected": "Q\n\nUse 2 commas.", "completion": "ok"},
            {"prompt_chosen": "Q\n\nUse no commas.", "prompt_rejected": "Q\n\nUse 2 commas."}]
    data = write_rows(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=r"bad\.jsonl.*row 1.*completion.*python -m preflab\.data\.mapl"):
        train_dpo(data, tmp_path / "run")
    rows[1] = {"prompt_chosen": "Q", "prompt_rejected": "Q", "completion": "ok"}
    with pytest.raises(DataError, match=r"row 1.*prompt_rejected.*identical"):
        train_dpo(write_rows(tmp_path / "bad.jsonl", rows), tmp_path / "run2")
    rows[1] = {"prompt": "Q", "prompt_chosen": "Q a", "prompt_rejected": "Q b", "completion": "ok"}
    with pytest.raises(DataError, match=r"row 1.*prompt.*both an ordinary pair and a MAPL intra row"):
        train_dpo(write_rows(tmp_path / "bad.jsonl", rows), tmp_path / "run3")


def reward_cfg(data, out, **over):
    return config_from_dict({"task": "reward", "model_name_or_path": "builtin:tiny-llama", "dataset_name": data,
                             "output_dir": str(out), "learning_rate": 1e-3, "max_steps": 1,
                             "per_device_train_batch_size": 6, "logging_steps": 1, "disable_tqdm": True,
                             "use_cpu": True, "max_length": 256, "seed": 0, **over})


def test_reward_task_on_intra_rows_is_rc_bt_on_separately_scored_rewards(tmp_path):
    from preflab.reward_models.heads import build_reward_model, sequence_outputs
    from preflab.reward_models.train import train_reward

    data, rows = mapl_file(tmp_path, keep_original=False)
    tok = tiny_tokenizer()
    model = build_reward_model("builtin:tiny-llama", 1, tok, seed=0)
    with torch.no_grad():  # a head of std 0.02 gives rewards near 0 and a loss near log 2 whatever is scored
        model.score.weight.normal_(0, 30.0, generator=torch.Generator().manual_seed(0))
    model.eval()
    rewards = []
    with torch.no_grad():
        for row in rows:
            one = []
            for x, y in sides(row):
                prompt_ids, response_ids = ordinary_ids(tok, x, y)
                ids = torch.tensor([prompt_ids + response_ids])
                one.append(float(sequence_outputs(model, ids, torch.ones_like(ids))[0, 0]))
            rewards.append(one)
    r = torch.tensor(rewards, dtype=torch.float64)
    by_hand = float(-F.logsigmoid(r[:, 0] - r[:, 1]).mean())
    rc_bt = get_objective("rc_bt")(PairBatch.from_sums(r[:, 0], r[:, 1])).loss
    assert float(rc_bt) == pytest.approx(by_hand, abs=1e-12)
    assert abs(by_hand - math.log(2)) > 0.05  # the two prompts are scored apart
    train_reward(reward_cfg(data, tmp_path / "rm"), model=model, tokenizer=tok)
    # float32 rewards from a head of std 30: the padded batch and the one-sequence forwards agree to a relative 1e-5
    assert first_row(tmp_path / "rm")["loss"] == pytest.approx(by_hand, rel=1e-5)


def test_reward_task_refuses_intra_rows_for_a_gpm_head(tmp_path):
    from preflab.reward_models.train import train_reward

    data, _ = mapl_file(tmp_path, keep_original=False)
    with pytest.raises(DataError, match=r"row 0: fields prompt_chosen / prompt_rejected.*reward_head='gpm'"):
        train_reward(reward_cfg(data, tmp_path / "rm", reward_head="gpm"), tokenizer=tiny_tokenizer())


def test_toy_rc_bt_learns_to_prefer_the_satisfied_prompt_on_held_out_rows():
    """Spec #14 toy learnability: a linear RM over verifiable features phi(x, y) (per instruction kind in x: one
    feature if y follows it, one if not; instructions read back from the prompt's lines), trained with rc_bt on the
    builder's intra rows of 40 base pairs, gives r(x_w, y) > r(x_l, y) on every intra row of 20 held-out pairs."""
    from preflab.data.mapl import GENERATORS, Instruction, check

    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma"]

    def base(i):
        rng = random.Random(i)
        pick = lambda: " ".join(rng.choices(words, k=rng.randint(1, 5)))
        return {"prompt": f"Task {i}.", "chosen": pick() + ", done", "rejected": pick().upper()}

    train_rows, _ = build_mapl_rows([base(i) for i in range(40)], seed=0, responses=("chosen", "rejected"))
    test_rows, _ = build_mapl_rows([base(i) for i in range(40, 60)], seed=1, responses=("chosen", "rejected"))
    kinds = list(GENERATORS)
    lookup = {d["text"]: Instruction.from_dict(d) for r in train_rows + test_rows
              for d in r["instructions_chosen"] + r["instructions_rejected"]}

    def phi(prompt, y):
        f = torch.zeros(2 * len(kinds), dtype=torch.float64)
        for line in prompt.split("\n\n", 1)[1].splitlines():
            instr = lookup[line]
            f[2 * kinds.index(instr.kind) + (0 if check(instr, y) else 1)] = 1.0
        return f

    def features(rows):
        return (torch.stack([phi(r["prompt_chosen"], r["completion"]) for r in rows]),
                torch.stack([phi(r["prompt_rejected"], r["completion"]) for r in rows]))

    theta = torch.zeros(2 * len(kinds), dtype=torch.float64, requires_grad=True)
    fw, fl = features(train_rows)
    opt = torch.optim.SGD([theta], lr=0.5)
    rc_bt = get_objective("rc_bt")
    for _ in range(200):
        opt.zero_grad()
        rc_bt(PairBatch.from_sums(fw @ theta, fl @ theta)).loss.backward()
        opt.step()
    tw, tl = features(test_rows)
    assert len(test_rows) == 40
    assert bool(((tw @ theta) > (tl @ theta)).all())
    assert float(rc_bt(PairBatch.from_sums(fw @ theta, fl @ theta)).loss.detach()) < 0.1


def test_streaming_reads_intra_rows_like_the_ordinary_run(tmp_path):
    data, _ = mapl_file(tmp_path)
    ordinary = train_dpo(data, tmp_path / "plain")
    streamed = train_dpo(data, tmp_path / "stream", streaming=True)
    assert streamed["loss"] == pytest.approx(ordinary["loss"], abs=1e-6)  # one step over all 12 rows
    with pytest.raises(DataError, match=r"row 1: fields prompt_chosen / prompt_rejected.*loss_type='ipo'"):
        train_dpo(data, tmp_path / "stream2", streaming=True, loss_type="ipo")


def test_loss_type_rc_bt_under_task_reward_points_to_the_bt_head(tmp_path):
    from preflab.errors import ConfigError

    with pytest.raises(ConfigError, match="Rc-BT loss is reward_head: bt on intra rows"):
        reward_cfg("x.jsonl", tmp_path, loss_type="rc_bt")
