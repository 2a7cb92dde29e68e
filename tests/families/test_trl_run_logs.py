"""The logged history of a whole run equals TRL 1.16's: TRL's own trainer.train() (DPOTrainer, KTOTrainer,
SFTTrainer, RewardTrainer, GRPOTrainer) and preflab's run on the same tiny model, rows in the same order (TRL's
sequential sampler over the rows in preflab's seeded order; GRPO: the same forced completions), the same optimizer
and linear schedule, 4 optimizer steps of 2 micro-batches x 2 rows, a row every 2 steps (a logging window of 4
micro-batches), and the eval row after the run. Every key both log is equal (1e-5 relative), and the keys only one
of them logs are listed.

What differs, by design (README, "What a run writes"), is asserted as its documented relation instead: TRL averages
each micro-batch's own mean, then the window's micro-batches; preflab keeps the exact mean over what the metric
averages (independent of how a step is cut into micro-batches, equal to 2 processes x b):
- token means (`entropy`, `logits/*`, `mean_token_accuracy`): the token mean over the step (SFT: every step, then
  the mean of the window's steps as for the loss; DPO family, KTO, GRPO: the logged step only);
- KTO's means over the desirable / undesirable examples: exact means over the window's examples.
The test rebuilds preflab's value from TRL's recorded per-micro-batch values, weighted by their counts.
"""
import copy
import hashlib
import json

import pytest
import torch

from preflab.config import config_from_dict
from preflab.loops.batches import BatchPlan
from preflab.models.load import frozen_copy
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

BATCH, ACCUM, STEPS, LOGGING = 2, 2, 4, 2
ROWS = BATCH * ACCUM * STEPS  # one epoch
COMMON = {"per_device_train_batch_size": BATCH, "gradient_accumulation_steps": ACCUM, "max_steps": STEPS,
          "logging_steps": LOGGING, "learning_rate": 1e-2, "lr_scheduler_type": "linear", "seed": 0}
TRL_ARGS = {"report_to": [], "use_cpu": True, "bf16": False, "optim": "adamw_torch", "gradient_checkpointing": False,
            "save_strategy": "no", "disable_tqdm": True, "max_length": None, "train_sampling_strategy": "sequential",
            **COMMON}
PREFLAB_ARGS = {"model_name_or_path": "unused", "dataset_name": "synthetic", "disable_tqdm": True, "use_cpu": True,
                "save_steps": 0, **COMMON}
ONLY_PREFLAB = {"tokens_per_second", "train_tokens_per_second"}  # preflab's throughput; TRL logs none per row
EVAL_ROWS = 4  # the eval set of the eval rows after a run (the first rows)

WORDS = "kit cat hat jam log bus bee pen car red ant oak net toy dog owl".split()


def _pairs() -> list[dict]:
    """Loud-echo pairs: chosen in capitals; the rejected answer of every third row is another echo."""
    rows = []
    for i in range(ROWS):
        words = [WORDS[(i * 3 + k) % len(WORDS)] for k in range(2 + i % 3)]
        echo = " ".join(words)
        wrong = " ".join(words[:-1] + ["fox"]).upper() if i % 3 == 0 else echo
        rows.append({"prompt": f"echo: {echo}\n", "chosen": echo.upper(), "rejected": wrong})
    return rows


def _order(n: int) -> list[int]:
    """preflab's row order over the run (preflab.loops.batches.BatchPlan, seed 0): steps, then micro-batches."""
    plan = BatchPlan(n, BATCH, 1, ACCUM, COMMON["seed"])
    return [i for step in range(STEPS) for mb in plan.indices(step, 0) for i in mb]


def _recording(cls):
    """A TRL trainer class that keeps each logging window's per-micro-batch metric lists (TRL's `_metrics`, which
    its log() averages and clears)."""
    class Recording(cls):
        tokens: list = []  # each training micro-batch's completion tokens (GRPO's inputs carry completion_mask)

        def compute_loss(self, model, inputs, *args, **kwargs):
            if model.training and "completion_mask" in inputs:
                self.tokens = self.tokens + [int(inputs["completion_mask"].sum())]
            return super().compute_loss(model, inputs, *args, **kwargs)

        def log(self, logs, start_time=None):
            if any(k.startswith("eval_") for k in logs):
                self.eval_window = {k: list(v) for k, v in self._metrics["eval"].items()}
            if "loss" in logs:
                self.windows = getattr(self, "windows", []) + [
                    {k: list(v) for k, v in self._metrics["train"].items()}]
            return super().log(logs, start_time)

    return Recording


def _trl_history(trainer) -> list[dict]:
    trainer.train()
    return [h for h in trainer.state.log_history if "loss" in h]


def _preflab_history(out) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def _eval_row(out) -> dict:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if any(k.startswith("eval_") for k in r)][-1]


def _compare(theirs, ours, *, differ=(), only_trl=(), only_preflab=ONLY_PREFLAB, only_trl_at=None,
             loose=None, abs_tol=1e-6) -> None:
    """Every key both log is equal at every logged step, except those in `differ` (asserted by the caller); the
    keys only one logs are exactly `only_trl` (plus only_trl_at[step] at that step) / `only_preflab`."""
    assert [h["step"] for h in theirs] == [r["step"] for r in ours] == list(range(LOGGING, STEPS + 1, LOGGING))
    print(_table(theirs, ours))
    for a, b in zip(theirs, ours):
        assert set(a) - set(b) == set(only_trl) | set((only_trl_at or {}).get(a["step"], ())), a["step"]
        assert set(b) - set(a) == set(only_preflab), a["step"]
        for key in (set(a) & set(b)) - set(differ):
            assert b[key] == pytest.approx(a[key], rel=(loose or {}).get(key, 1e-5), abs=abs_tol), (a["step"], key)
    assert theirs[0]["loss"] != pytest.approx(theirs[1]["loss"], rel=1e-3)  # the weights moved between the rows


def _table(theirs, ours) -> str:
    lines = []
    for a, b in zip(theirs, ours):
        for key in sorted(set(a) | set(b)):
            lines.append(f"step {a['step']} {key:24s} trl={a.get(key)!s:24s} preflab={b.get(key)!s}")
    return "\n".join(lines)


def _weighted(windows, counts, key, theirs, ours, *, logged_step_only=True) -> None:
    """preflab's `key` equals the `counts`-weighted mean of TRL's per-micro-batch values (`counts[m]`: what micro-batch
    m of the run averages over: tokens, desirable examples, ...) over the logged step's micro-batches
    (logged_step_only: the DPO family's token metrics) or over the whole window's; TRL's own logged value is the
    plain mean of the window's micro-batch values (TRL appends none for a micro-batch without any: count 0)."""
    per_window = LOGGING * ACCUM
    for w, (window, a, b) in enumerate(zip(windows, theirs, ours)):
        present = [(m, n) for m, n in enumerate(counts[w * per_window:(w + 1) * per_window]) if n > 0]
        values = window[key]
        assert len(values) == len(present), key
        assert a[key] == pytest.approx(sum(values) / len(values), rel=1e-9)
        first = per_window - ACCUM if logged_step_only else 0
        pairs = [(v, n) for v, (m, n) in zip(values, present) if m >= first]
        if not pairs:  # the logged step has none (KTO: no undesirable completion): preflab logs no value
            assert key not in b, (key, a["step"])
            continue
        want = sum(v * n for v, n in pairs) / sum(n for _, n in pairs)
        assert b[key] == pytest.approx(want, rel=1e-5, abs=1e-6), (key, a["step"])


# ---------------------------------------------------------------------------------------------------------- DPO
def _dpo_run(tmp_path, loss_type: str, evaluate: bool = False, cut: dict | None = None, options: dict | None = None):
    """cut: {"max_length", "truncation_mode"} for both libraries (default: no truncation); options: DPOConfig fields
    both read under the same name (use_weighting)."""
    from trl import DPOConfig, DPOTrainer

    from preflab.data.rows import load_rows
    from preflab.data.tokenize import tokenize_pairs
    from preflab.loops.offline import Trainer

    torch.set_num_threads(1)
    rows = _pairs()
    order = _order(len(rows))
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=0)
    trainer = _recording(DPOTrainer)(
        model=copy.deepcopy(model), ref_model=frozen_copy(model), processing_class=tok,
        args=DPOConfig(output_dir=str(tmp_path / "trl"), loss_type=loss_type if isinstance(loss_type, list) else [loss_type],
                       beta=0.1, per_device_eval_batch_size=EVAL_ROWS, **{**TRL_ARGS, **(cut or {}), **(options or {})}),
        train_dataset=datasets.Dataset.from_list([rows[i] for i in order]),
        eval_dataset=datasets.Dataset.from_list(rows[:EVAL_ROWS]) if evaluate else None)
    theirs = _trl_history(trainer)
    examples, _ = load_rows(datasets.Dataset.from_list(rows), kind="pairwise")
    pairs, _ = tokenize_pairs(examples, tok, **(cut or {"max_length": None}))
    cfg = config_from_dict({**PREFLAB_ARGS, "output_dir": str(tmp_path / "preflab"), "loss_type": loss_type,
                            "beta": 0.1, "per_device_eval_batch_size": EVAL_ROWS, "eval_steps": STEPS, **(cut or {}),
                            **(options or {})})
    Trainer(cfg, policy=copy.deepcopy(model), ref=frozen_copy(model), tokenizer=tok, train_data=pairs,
            eval_data=pairs[:EVAL_ROWS] if evaluate else None).train()
    ours = _preflab_history(tmp_path / "preflab")
    if evaluate:  # the eval row after the run (one eval batch: TRL's micro-batch means are the batch's)
        trainer.eval_rows = ({**trainer.evaluate(), "step": STEPS}, _eval_row(tmp_path / "preflab"))
    per_mb = lambda size: [sum(size(pairs[i]) for i in order[m * BATCH:(m + 1) * BATCH])  # noqa: E731
                           for m in range(STEPS * ACCUM)]
    counts = {"logits/chosen": per_mb(lambda p: len(p.chosen_ids)),
              "mean_token_accuracy": per_mb(lambda p: len(p.chosen_ids)),
              "logits/rejected": per_mb(lambda p: len(p.rejected_ids)),
              "entropy": per_mb(lambda p: len(p.chosen_ids) + len(p.rejected_ids))}
    return trainer, theirs, ours, counts


@pytest.mark.parametrize("loss_type", ["ipo", "bco_pair", ["sigmoid", "sft"]], ids=["ipo", "bco_pair", "sigmoid+sft"])
def test_dpo_other_run_logs_equal_trls(tmp_path, loss_type):
    """Other DPO losses log TRL's keys with TRL's values too; a list of losses (TRL's MPO / RPO) also logs each
    term as loss/<name> (preflab only; they add up to loss with TRL's default weights of 1)."""
    trainer, theirs, ours, counts = _dpo_run(tmp_path, loss_type)
    terms = {f"loss/{name}" for name in loss_type} if isinstance(loss_type, list) else set()
    _compare(theirs, ours, differ=counts, only_preflab=ONLY_PREFLAB | terms)
    for b in ours:
        assert sum(b[t] for t in terms) == (pytest.approx(b["loss"], rel=1e-6) if terms else 0)


def test_dpo_wpo_weighting_run_logs_equal_trls(tmp_path):
    """use_weighting (WPO) logs TRL 1.16's loss at every row: TRL multiplies each pair's loss by its weights as they
    are, and by the run's second row some pair's weight is above 1 (preflab clamped it at 1, TRL 0.x's rule: the
    first row was equal, the second 0.487 against TRL's 0.732). preflab alone logs the mean weight, policy_weights."""
    trainer, theirs, ours, counts = _dpo_run(tmp_path, "sigmoid", options={"use_weighting": True})
    _compare(theirs, ours, differ=counts, only_preflab=ONLY_PREFLAB | {"policy_weights"})
    assert max(b["policy_weights"] for b in ours) > 1  # the clamp would have changed this run


def test_dpo_sigmoid_run_logs_equal_trls(tmp_path):
    """DPO (sigmoid): loss, rewards/*, logps/*, num_tokens (cumulative), learning_rate (the rate the logged step
    used), grad_norm (the logged step's), epoch and step equal TRL's DPOTrainer; the token means relate as
    documented. The eval row after the run: every eval_ key TRL's evaluate() gives, epoch (since this test) and
    step equal; TRL alone logs transformers' timings and eval_num_tokens (the train token count under an eval
    name); preflab alone its ranking accuracies and log-prob drift."""
    trainer, theirs, ours, counts = _dpo_run(tmp_path, "sigmoid", evaluate=True)
    _compare(theirs, ours, differ=counts)
    for key in counts:
        _weighted(trainer.windows, counts[key], key, theirs, ours)
    trl_eval, ours_eval = trainer.eval_rows
    assert set(trl_eval) - set(ours_eval) == {"eval_runtime", "eval_samples_per_second", "eval_steps_per_second",
                                              "eval_num_tokens"}
    assert set(ours_eval) - set(trl_eval) == {
        "eval_ranking_accuracy", "eval_ranking_accuracy_norm", "eval_reference_ranking_accuracy",
        "eval_logps_drift/chosen", "eval_logps_drift/rejected", "eval_logps_drift/suppression_rate"}
    for key in set(trl_eval) & set(ours_eval):
        assert ours_eval[key] == pytest.approx(trl_eval[key], rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("mode,max_length", [("keep_end", 20), ("keep_start", 21)])
def test_dpo_truncated_run_logs_equal_trls(tmp_path, mode, max_length):
    """truncation_mode with a max_length that cuts most sequences (prompts of 11-20 tokens, responses of 8-16):
    TRL's DPOTrainer and preflab log the same loss, rewards/*, logps/*, num_tokens; keep_end cuts the prompt's
    start per sequence (chosen and rejected keep different parts of it), keep_start the responses' ends."""
    cut = {"max_length": max_length, "truncation_mode": mode}
    trainer, theirs, ours, counts = _dpo_run(tmp_path, "sigmoid", cut=cut)
    _compare(theirs, ours, differ=counts)
    for key in counts:
        _weighted(trainer.windows, counts[key], key, theirs, ours)


# ---------------------------------------------------------------------------------------------------------- SFT
def _sft_run(tmp_path):
    from trl import SFTConfig, SFTTrainer as TRLSFTTrainer

    from preflab.data.report import TokenizeReport
    from preflab.loops.sft import SFTTrainer, tokenize_sft_row

    torch.set_num_threads(1)
    rows = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in _pairs()]
    order = _order(len(rows))
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=0)
    trainer = _recording(TRLSFTTrainer)(
        model=copy.deepcopy(model), processing_class=tok,
        args=SFTConfig(output_dir=str(tmp_path / "trl"), per_device_eval_batch_size=EVAL_ROWS, **TRL_ARGS),
        train_dataset=datasets.Dataset.from_list([rows[i] for i in order]),
        eval_dataset=datasets.Dataset.from_list(rows[:EVAL_ROWS]))
    theirs = _trl_history(trainer)
    theirs_eval = trainer.evaluate()
    cfg = config_from_dict({**PREFLAB_ARGS, "task": "sft", "output_dir": str(tmp_path / "preflab"),
                            "max_length": 256, "per_device_eval_batch_size": EVAL_ROWS, "eval_steps": STEPS})
    items = [tokenize_sft_row(i, row, tok, cfg, TokenizeReport())[0] for i, row in enumerate(rows)]
    SFTTrainer(cfg, policy=copy.deepcopy(model), tokenizer=tok, train_data=items, eval_data=items[:EVAL_ROWS]).train()
    ours = _preflab_history(tmp_path / "preflab")
    ours_eval = _eval_row(tmp_path / "preflab")
    # one eval batch: TRL's micro-batch mean is the token mean, so every eval key is equal
    assert ours_eval["epoch"] == theirs_eval["epoch"] == 1.0
    for key in ("eval_loss", "eval_mean_token_accuracy", "eval_entropy"):
        assert ours_eval[key] == pytest.approx(theirs_eval[key], rel=1e-5, abs=1e-6), key
    tokens = [sum(len(items[i].completion_ids) for i in order[m * BATCH:(m + 1) * BATCH])
              for m in range(STEPS * ACCUM)]
    return trainer, theirs, ours, tokens


def _step_token_means(windows, counts, key, theirs, ours) -> None:
    """preflab's `key` (SFT: computed every step) is the mean over the window's steps of each step's token mean of
    TRL's per-micro-batch values (`counts[m]`: micro-batch m's loss tokens), as the loss is the mean of the steps'
    token-mean losses in both; TRL logs the plain mean of the micro-batches' values."""
    per_step = [counts[s * ACCUM:(s + 1) * ACCUM] for s in range(STEPS)]
    for w, (window, a, b) in enumerate(zip(windows, theirs, ours)):
        values = window[key]
        assert a[key] == pytest.approx(sum(values) / len(values), rel=1e-9)
        means = [sum(v * n for v, n in zip(values[i * ACCUM:(i + 1) * ACCUM], per_step[w * LOGGING + i]))
                 / sum(per_step[w * LOGGING + i]) for i in range(LOGGING)]
        assert b[key] == pytest.approx(sum(means) / LOGGING, rel=1e-5, abs=1e-6), (key, a["step"])


def test_sft_run_logs_equal_trls(tmp_path):
    """SFT: loss (the steps' token means), grad_norm, learning_rate, num_tokens, epoch equal TRL's SFTTrainer;
    entropy (logged since this test) and mean_token_accuracy relate as documented; eval_loss,
    eval_mean_token_accuracy and eval_entropy after the run equal TRL's evaluate() (one eval batch)."""
    trainer, theirs, ours, tokens = _sft_run(tmp_path)
    _compare(theirs, ours, differ=("mean_token_accuracy", "entropy"))
    for key in ("mean_token_accuracy", "entropy"):
        _step_token_means(trainer.windows, tokens, key, theirs, ours)
    assert abs(theirs[1]["mean_token_accuracy"] - ours[1]["mean_token_accuracy"]) > 1e-3  # the relation matters


# ---------------------------------------------------------------------------------------------------------- KTO
def _kto_run(tmp_path, max_length=None):
    """max_length: for both libraries (default: no truncation)."""
    from trl import KTOConfig, KTOTrainer

    from preflab.data.rows import load_rows
    from preflab.data.tokenize import tokenize_unpaired
    from preflab.loops.offline import Trainer

    torch.set_num_threads(1)
    rows = [{"prompt": p["prompt"], "completion": p["chosen"] if i % 3 else p["rejected"], "label": i % 3 != 0}
            for i, p in enumerate(_pairs())]
    order = _order(len(rows))
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=0)
    # eval: rows[:4] in batches of 2 (each eval completion paired with a mismatched one inside chunks of
    # per_device_train_batch_size rows, by TRL and by preflab: preflab.loops.kinds.UnpairedKind.fix_eval_pairing)
    trainer = _recording(KTOTrainer)(
        model=copy.deepcopy(model), ref_model=frozen_copy(model), processing_class=tok,
        args=KTOConfig(output_dir=str(tmp_path / "trl"), beta=0.1, per_device_eval_batch_size=BATCH,
                       **{**TRL_ARGS, "max_length": max_length}),
        train_dataset=datasets.Dataset.from_list([rows[i] for i in order]),
        eval_dataset=datasets.Dataset.from_list(rows[:EVAL_ROWS]))
    theirs = _trl_history(trainer)
    examples, _ = load_rows(datasets.Dataset.from_list(rows), kind="unpaired")
    items, _ = tokenize_unpaired(examples, tok, max_length=max_length)
    cfg = config_from_dict({**PREFLAB_ARGS, "output_dir": str(tmp_path / "preflab"), "loss_type": "kto",
                            "beta": 0.1, "per_device_eval_batch_size": BATCH, "eval_steps": STEPS,
                            "max_length": max_length})
    Trainer(cfg, policy=copy.deepcopy(model), ref=frozen_copy(model), tokenizer=tok, train_data=items,
            eval_data=items[:EVAL_ROWS]).train()
    ours = _preflab_history(tmp_path / "preflab")
    trainer.eval_rows = ({**trainer.evaluate(), "step": STEPS}, _eval_row(tmp_path / "preflab"))
    return trainer, theirs, ours, items, order


def test_kto_run_logs_equal_trls(tmp_path):
    """KTO: loss, kl, grad_norm, learning_rate, num_tokens (the completions' tokens), epoch equal TRL's KTOTrainer.
    The means over the desirable / undesirable examples (rewards/*, logps/*) are exact means over the window's
    examples (TRL: the plain mean of the micro-batches' means, over the micro-batches that have such examples),
    rewards/margins their difference (TRL: the mean over the micro-batches that have both kinds of the
    micro-batch's difference); the token means are the logged step's (DPO's rule). preflab also logs
    mean_token_accuracy (on the desirable completions), which TRL's KTOTrainer does not."""
    _check_kto_run(*_kto_run(tmp_path))


def test_kto_truncated_run_logs_equal_trls(tmp_path):
    """The same with a max_length that cuts most sequences (prompts of 11-20 tokens, completions of 8-16): the
    mismatched (KL) sequences are cut as TRL's KTOTrainer cuts them (prompt + the other row's uncut completion, its
    start kept), so kl and the loss stay TRL's (they were not cut before)."""
    trainer, theirs, ours, items, order = _kto_run(tmp_path, max_length=21)
    assert any(x.kl_cut.completion_ids != x.completion_ids for x in items)  # the cut bites
    _check_kto_run(trainer, theirs, ours, items, order)


def _check_kto_run(trainer, theirs, ours, items, order) -> None:
    per_mb = lambda size: [sum(size(items[i]) for i in order[m * BATCH:(m + 1) * BATCH])  # noqa: E731
                           for m in range(STEPS * ACCUM)]
    desirable, undesirable = per_mb(lambda x: x.label), per_mb(lambda x: not x.label)
    tokens = {"logits/chosen": per_mb(lambda x: len(x.completion_ids) * x.label),
              "logits/rejected": per_mb(lambda x: len(x.completion_ids) * (not x.label)),
              "entropy": per_mb(lambda x: len(x.completion_ids))}
    examples = {"rewards/chosen": desirable, "logps/chosen": desirable, "rewards/rejected": undesirable,
                "logps/rejected": undesirable}
    # preflab's token metrics are the logged step's: a logged step without undesirable completions has no
    # logits/rejected (TRL's window has it from the step before)
    no_rejected = [r["step"] for r in ours if sum(tokens["logits/rejected"][(r["step"] - 1) * ACCUM:
                                                                            r["step"] * ACCUM]) == 0]
    _compare(theirs, ours, differ=[*tokens, *examples, "rewards/margins"], only_preflab={
        *ONLY_PREFLAB, "mean_token_accuracy"}, only_trl_at={step: {"logits/rejected"} for step in no_rejected})
    for key, counts in tokens.items():
        _weighted(trainer.windows, counts, key, theirs, ours)
    for key, counts in examples.items():
        _weighted(trainer.windows, counts, key, theirs, ours, logged_step_only=False)
    for b in ours:
        assert b["rewards/margins"] == pytest.approx(b["rewards/chosen"] - b["rewards/rejected"], rel=1e-9)
    assert any(abs(a[k] - b[k]) > 1e-3 for a, b in zip(theirs, ours) for k in examples)  # the relation matters
    # the eval row: its 2 batches hold one desirable and one undesirable row each, so TRL's batch means average to
    # the exact means; the token means relate as in training (over the eval set's tokens)
    trl_eval, ours_eval = trainer.eval_rows
    assert [x.label for x in items[:EVAL_ROWS]] == [False, True, True, False]
    assert set(trl_eval) - set(ours_eval) == {"eval_runtime", "eval_samples_per_second", "eval_steps_per_second",
                                              "eval_num_tokens"}
    assert set(ours_eval) - set(trl_eval) == {"eval_mean_token_accuracy"}
    eval_tokens = {"logits/chosen": lambda x: len(x.completion_ids) * x.label,
                   "logits/rejected": lambda x: len(x.completion_ids) * (not x.label),
                   "entropy": lambda x: len(x.completion_ids)}
    for key in set(trl_eval) & set(ours_eval) - {f"eval_{k}" for k in eval_tokens}:
        assert ours_eval[key] == pytest.approx(trl_eval[key], rel=1e-5, abs=1e-6), key
    for key, size in eval_tokens.items():
        counts = [sum(size(x) for x in items[b:b + BATCH]) for b in range(0, EVAL_ROWS, BATCH)]
        values = trainer.eval_window[key]
        assert trl_eval[f"eval_{key}"] == pytest.approx(sum(values) / len(values), rel=1e-9)
        want = sum(v * n for v, n in zip(values, counts)) / sum(counts)
        assert ours_eval[f"eval_{key}"] == pytest.approx(want, rel=1e-5, abs=1e-6), key


# ---------------------------------------------------------------------------------------------------------- reward
def _reward_run(tmp_path):
    from trl import RewardConfig, RewardTrainer

    from preflab.data.rows import load_rows
    from preflab.reward_models.data import tokenize_reward_pairs
    from preflab.reward_models.heads import build_reward_model
    from preflab.reward_models.train import train_reward

    torch.set_num_threads(1)
    rows = _pairs()
    order = _order(len(rows))
    tok = tiny_tokenizer()
    model = build_reward_model("builtin:tiny-llama", 1, tok)
    trainer = _recording(RewardTrainer)(
        model=copy.deepcopy(model), processing_class=tok,
        args=RewardConfig(output_dir=str(tmp_path / "trl"), per_device_eval_batch_size=EVAL_ROWS, **TRL_ARGS),
        train_dataset=datasets.Dataset.from_list([rows[i] for i in order]),
        eval_dataset=datasets.Dataset.from_list(rows[:EVAL_ROWS]))
    theirs = _trl_history(trainer)
    examples, _ = load_rows(datasets.Dataset.from_list(rows), kind="pairwise")
    pairs, _ = tokenize_reward_pairs(examples, tok, max_length=None)
    cfg = config_from_dict({**PREFLAB_ARGS, "task": "reward", "output_dir": str(tmp_path / "preflab"),
                            "per_device_eval_batch_size": EVAL_ROWS, "eval_steps": STEPS})
    train_reward(cfg, model=copy.deepcopy(model), tokenizer=tok, train_data=pairs, eval_data=pairs[:EVAL_ROWS])
    ours = _preflab_history(tmp_path / "preflab")
    trainer.eval_rows = ({**trainer.evaluate(), "step": STEPS}, _eval_row(tmp_path / "preflab"))
    return trainer, theirs, ours


def test_reward_run_logs_equal_trls(tmp_path):
    """task: reward: loss, accuracy, margin, min/mean/max_reward (TRL: the mean of the micro-batches' minima and
    maxima, each call equally; preflab: the same), grad_norm, learning_rate, num_tokens, epoch equal TRL's
    RewardTrainer. preflab also logs rewards/chosen and rewards/rejected (the mean reward of each side)."""
    trainer, theirs, ours = _reward_run(tmp_path)
    # grad_norm to 1e-4 and rewards to 1e-5 (rewards of about +-0.5): the weights differ by float rounding (preflab
    # gives the reward model its right-padded rows without a mask, reward_models.train) that Adam's first, nearly
    # sign-like steps amplify (2.8e-5 relative on grad_norm, 1e-6 on mean_reward at step 4)
    _compare(theirs, ours, only_preflab={*ONLY_PREFLAB, "rewards/chosen", "rewards/rejected"},
             loose={"grad_norm": 1e-4}, abs_tol=1e-5)
    for b in ours:
        assert b["mean_reward"] == pytest.approx((b["rewards/chosen"] + b["rewards/rejected"]) / 2, rel=1e-6)
    trl_eval, ours_eval = trainer.eval_rows  # one eval batch: every eval key TRL's evaluate() gives is equal
    assert set(trl_eval) - set(ours_eval) == {"eval_runtime", "eval_samples_per_second", "eval_steps_per_second",
                                              "eval_num_tokens"}
    assert set(ours_eval) - set(trl_eval) == {"eval_rewards/chosen", "eval_rewards/rejected"}
    for key in set(trl_eval) & set(ours_eval):
        assert ours_eval[key] == pytest.approx(trl_eval[key], rel=1e-5, abs=1e-5), key


# ---------------------------------------------------------------------------------------------------------- GRPO
def reward_vowels(prompts, completions, **kwargs):
    """The share of vowels among a completion's letters (0 without letters), TRL's reward-function signature."""
    out = []
    for text in completions:
        letters = [ch for ch in text.lower() if ch.isalpha()]
        out.append(sum(ch in "aeiou" for ch in letters) / len(letters) if letters else 0.0)
    return out


def _forced(prompt_ids, k: int, round_index: int, vocab: int, eos: int, length: int) -> list[list[int]]:
    """k completions of 1..length random ids seeded by the prompt and the round, eos-ended when shorter than
    `length` (both libraries get these through their generation hook: sampling is not what is compared)."""
    seed = int(hashlib.sha256(json.dumps([*map(int, prompt_ids), round_index]).encode()).hexdigest()[:8], 16)
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(k):
        n = int(torch.randint(1, length + 1, (1,), generator=g))
        ids = torch.randint(3, vocab, (n,), generator=g).tolist()
        out.append(ids + [eos] if n < length else ids)
    return out


def _grpo_run(tmp_path):
    from trl import GRPOConfig, GRPOTrainer

    from preflab.online.run import OnlineRun
    from preflab.online.tasks import Task

    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=0)
    prompts = ["echo: kit cat", "echo: jam log bus", "echo: bee", "echo: oak net toy"]
    G, length = 4, 6
    run_args = {k: v for k, v in COMMON.items() if k not in ("per_device_train_batch_size",)}
    # a round: the 4 prompts x 4 completions, one optimizer step of 2 micro-batches (TRL: 8 completions each)
    trainer = _recording(GRPOTrainer)(
        model=copy.deepcopy(model), reward_funcs=reward_vowels, processing_class=tok,
        args=GRPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=len(prompts) * G // ACCUM,
                        num_generations=G, max_completion_length=length, top_k=0, beta=0.0, shuffle_dataset=False,
                        log_completions=False, **{k: v for k, v in TRL_ARGS.items() if k not in (
                            "max_length", "train_sampling_strategy", "per_device_train_batch_size")}),
        train_dataset=datasets.Dataset.from_list([{"prompt": p} for p in prompts]))
    rounds = {"trl": 0, "preflab": 0}

    def trl_generate(prompt_ids, images, multimodal_fields, num_generations, *args, **kwargs):
        rounds["trl"] += 1
        return [c for p in prompt_ids[::num_generations]
                for c in _forced(p, num_generations, rounds["trl"], len(tok), tok.eos_token_id, length)], None

    trainer._generate_single_turn = trl_generate
    theirs = _trl_history(trainer)
    cfg = config_from_dict({**PREFLAB_ARGS, **run_args, "task": "online", "online_task": "dataset",
                            "dataset_name": "(in memory)", "output_dir": str(tmp_path / "preflab"), "trainer": "dapo",
                            "num_generations": G, "prompts_per_generation": len(prompts), "steps_per_generation": 1,
                            "per_device_train_batch_size": len(prompts) // ACCUM, "max_completion_length": length,
                            "beta": 0.0})
    run = OnlineRun(cfg, policy=copy.deepcopy(model), tokenizer=tok, task=Task(list(prompts), [reward_vowels]))

    def preflab_generate(rows, k, seed):
        rounds["preflab"] += 1
        return [c for r in rows for c in _forced(r.prompt_ids, k, rounds["preflab"], len(tok), tok.eos_token_id,
                                                 length)]

    run._generate = preflab_generate
    run.train()
    return trainer, theirs, _preflab_history(tmp_path / "preflab")


def test_grpo_run_logs_equal_trls(tmp_path):
    """task: online, trainer: dapo (GRPOConfig's default loss) on forced completions (new ones each round): loss,
    grad_norm, learning_rate, num_tokens, epoch, reward, reward_std, frac_reward_zero_std, rewards/<function>/mean
    and /std, completions/* (lengths, terminated lengths, clipped_ratio) and clip_ratio/*_mean equal TRL's
    GRPOTrainer, and so do clip_ratio/low_min / high_max (the min / max over a micro-batch's sequences, averaged
    over micro-batches); entropy relates as documented (the logged step's token mean); step_time is each library's
    own wall time; preflab alone logs its round bookkeeping."""
    trainer, theirs, ours = _grpo_run(tmp_path)
    assert all(r["step_time"] > 0 for r in ours)
    _compare(theirs, ours, differ=["entropy", "step_time"],
             only_preflab={*ONLY_PREFLAB, "clip_ratio", "completions/empty", "examples/count", "judge/dropped",
                           "pairs/ties_dropped", "round"})
    _weighted(trainer.windows, trainer.tokens, "entropy", theirs, ours)
    assert theirs[0]["reward"] != pytest.approx(theirs[1]["reward"], rel=1e-3)  # each round its own completions


def test_grpo_entropy_adds_no_host_sync_to_the_step(tmp_path):
    """The online step's entropy (logged steps) stays on the device: a run logging every step makes the same
    device -> host reads per step as one that never logs (benchmarks/op_count.py's counter, tests/test_step_syncs.py's
    rules); the logged rows hold it."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from op_count import OpCounter, counted_steps, counting

    from preflab.online.run import OnlineRun
    from preflab.online.tasks import Task

    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    prompts = ["echo: kit cat", "echo: jam log bus", "echo: bee", "echo: oak net toy"]
    syncs = {}
    for logging in (1, 1000):
        counter = OpCounter()
        cfg = config_from_dict({**PREFLAB_ARGS, "max_steps": 4, "logging_steps": logging, "task": "online",
                                "online_task": "dataset", "dataset_name": "(in memory)", "trainer": "dapo",
                                "output_dir": str(tmp_path / str(logging)), "num_generations": 4,
                                "prompts_per_generation": 4, "steps_per_generation": 1,
                                "per_device_train_batch_size": 2, "max_completion_length": 6, "beta": 0.0})
        run = OnlineRun(cfg, policy=tiny_causal_lm(tok, seed=0), tokenizer=tok,
                        task=Task(list(prompts), [reward_vowels]))
        made = iter(range(1, 100))
        run._generate = lambda rows, k, seed: [c for r, i in zip(rows, [next(made)] * len(rows))  # noqa: E731
                                               for c in _forced(r.prompt_ids, k, i, len(tok), tok.eos_token_id, 6)]
        batches = run.micro_batches

        def host_micro_batches(step, batches=batches, counter=counter):  # generation and judging: host work
            with counter.host_region():
                return batches(step)

        run.micro_batches = host_micro_batches
        with counting(counter):
            run.train()
        syncs[logging] = [dict(step.syncs) for step in counted_steps(counter, 4)]  # steps 2 and 3
    assert syncs[1] == syncs[1000] and len(syncs[1]) == 2
    assert [("entropy" in r) for r in _preflab_history(tmp_path / "1")] == [True] * 4
    assert [r["step"] for r in _preflab_history(tmp_path / "1000")] == [4]  # the last step only: 2 and 3 had none
