"""What a training run records of its costs (preflab.loops.driver): summary.json's peak_memory (preflab.peak_memory,
the max over ranks carried by the end-of-run agreement), train_<unit>_per_second beside tokens_per_second, and the
two options that were noted and not applied before: torch_empty_cache_steps (preflab.loops.device_cache) and
gradient_checkpointing_kwargs (preflab.checkpointing_options). The 2-process peak_memory is checked in
tests/loops/test_ddp_cli_launch.py's shared launch."""
import gc
import resource
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny_run import synthetic_pairs  # noqa: E402

GiB = 1024 ** 3


def _trainer(out: Path, n_eval_pairs: int = 0, **overrides):
    """tests/loops/tiny_run.py's tiny DPO run, built and not trained (a test sets its clock or spies first)."""
    from preflab.config import config_from_dict
    from preflab.loops.offline import Trainer
    from preflab.models.load import frozen_copy
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    torch.set_num_threads(1)
    params = dict(model_name_or_path="builtin:tiny-llama", dataset_name="synthetic", output_dir=str(out),
                  learning_rate=1e-3, per_device_train_batch_size=4, max_steps=4, logging_steps=1,
                  disable_tqdm=True, use_cpu=True)
    params.update(overrides)
    tok = tiny_tokenizer()
    policy = tiny_causal_lm(tok, seed=0)
    return Trainer(config_from_dict(params), policy=policy, ref=frozen_copy(policy), tokenizer=tok,
                   train_data=synthetic_pairs(32),
                   eval_data=synthetic_pairs(n_eval_pairs, seed=1) if n_eval_pairs else None)


# ---------------------------------------------------------------------------------------------------- peak memory
def _current_rss_gib() -> float:
    """This process's resident set now (/proc/self/statm's second field, in pages)."""
    import os

    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / GiB


def test_cpu_run_records_the_process_peak_rss_in_gib_between_the_reads_before_and_after(tmp_path):
    """A CPU run's peak_memory is getrusage's ru_maxrss of this very process (Linux: KiB), in GiB, reset when
    train() starts (preflab.peak_memory.reset_process_peak): a peak, so at least the resident set read before
    training and at most the peak read after train() returned. A bytes-as-KiB slip (or a MiB unit) puts it 1024
    times off either bound."""
    trainer = _trainer(tmp_path / "run", max_steps=2)
    gc.collect()  # earlier tests' garbage freed now, not between this read and train()'s reset
    before = _current_rss_gib()
    summary = trainer.train()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB
    memory = summary["peak_memory"]
    assert memory["measure"] == "process_rss" and "whole process" in memory["what"]
    assert memory["since"] == "run_start"
    # 0.9: memory the allocator hands back between the read and train()'s reset; a unit slip is 1024 times off
    assert 0.9 * before <= memory["gib"] <= after
    assert "reserved_gib" not in memory and "per_rank_gib" not in memory  # one process, no allocator


def test_a_later_run_in_the_same_process_reports_its_own_peak_not_an_earlier_one(tmp_path):
    """A notebook: 256 MiB held and freed before a run put the process's lifetime peak (ru_maxrss) that high; the
    run's peak_memory is counted from its own start, so it stays below that earlier peak by most of the 256 MiB
    (before: it reported the earlier peak, ru_maxrss being a counter since the process started)."""
    trainer = _trainer(tmp_path / "run", max_steps=1)
    big = torch.ones(64 * 2 ** 20)  # 256 MiB, written (resident), then returned to the system
    del big
    earlier_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB
    memory = trainer.train()["peak_memory"]
    assert memory["since"] == "run_start"
    assert memory["gib"] < earlier_peak - 0.2


def test_the_peak_reset_uses_the_allocator_on_a_device_and_says_when_it_cannot_reset(monkeypatch, tmp_path):
    """On an accelerator the reset is the allocator's reset_peak_memory_stats(device); on the CPU, where the
    clear_refs write fails (macOS, a read-only /proc), the record says the peak counts from the process's start."""
    from preflab.peak_memory import peak_memory_record, reset_process_peak

    asked = []
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: 0)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d: asked.append(d))
    device = torch.device("cuda", 1)
    assert reset_process_peak(device) == "run_start" and asked == [device]
    assert reset_process_peak(torch.device("cpu"), clear_refs=str(tmp_path / "no" / "clear_refs")) == "process_start"
    assert peak_memory_record("process_rss", "cpu", [(1.0, None)], "process_start")["since"] == "process_start"


def test_rss_peak_bytes_reads_kib_on_linux_and_bytes_on_macos(monkeypatch):
    from preflab import peak_memory

    monkeypatch.setattr(peak_memory.resource, "getrusage", lambda who: type("R", (), {"ru_maxrss": 3})())
    assert peak_memory.rss_peak_bytes("linux") == 3 * 1024
    assert peak_memory.rss_peak_bytes("darwin") == 3


def test_an_accelerator_run_reads_the_allocators_peak_and_reservation(monkeypatch):
    """On a CUDA device the measure is torch.cuda.max_memory_allocated / max_memory_reserved of that device, in GiB
    (no device here: the two counters are stood in for, and the device they are asked about is recorded)."""
    from preflab.peak_memory import process_peak

    asked = []
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: asked.append(d) or 3 * GiB // 2)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda d: asked.append(d) or 2 * GiB)
    device = torch.device("cuda", 1)
    assert process_peak(device) == ("device_allocated", 1.5, 2.0)
    assert asked == [device, device]


def test_the_end_of_run_agreement_carries_every_ranks_peak_and_the_summary_takes_their_max(monkeypatch):
    """ranks_agree(values=...) brings each rank's numbers to all in its one all-reduce (rank 0 of 2 here, the other
    rank stood in for as tests/test_rank_agreement_one_process.py does); peak_memory_record's gib is the max over
    the ranks, with each rank's value kept in rank order."""
    from preflab import rank_agreement
    from preflab.peak_memory import peak_memory_record
    from preflab.rank_agreement import ranks_agree

    class OtherRank:  # rank 1 of 2 contributes (peak 2.5 GiB, reserved 3.0 GiB) and does not fail
        class ReduceOp:
            SUM = "sum"
        calls = 0

        def get_world_size(self):
            return 2

        def get_rank(self):
            return 0

        def get_backend(self):
            return "gloo"

        def all_reduce(self, table, op):
            OtherRank.calls += 1
            table[:, 1] += torch.tensor([0.0, 2.5, 3.0], dtype=table.dtype)

    monkeypatch.setattr(rank_agreement, "_process_group", lambda: OtherRank())
    with ranks_agree("the end of the run", (1.25, 4.0)) as peaks:
        pass
    assert OtherRank.calls == 1 and peaks == [(1.25, 4.0), (2.5, 3.0)]
    record = peak_memory_record("device_allocated", "cuda", peaks)
    assert record["gib"] == 2.5 and record["reserved_gib"] == 4.0  # each its own max (different ranks)
    assert record["per_rank_gib"] == [1.25, 2.5] and record["per_rank_reserved_gib"] == [4.0, 3.0]


def test_the_report_and_the_final_line_show_the_peak_and_the_training_rate(tmp_path):
    from preflab.loops.cli import run_costs_line
    from preflab.report.html import _final_metrics
    from preflab.report.runs import RunData

    summary = {"global_step": 4, "runtime_s": 10.0, "train_step_seconds": 4.0,
               "final_metrics": {"loss": 0.5, "tokens_per_second": 40.0, "train_tokens_per_second": 100.0},
               "peak_memory": {"gib": 2.5, "measure": "device_allocated", "what": "...", "reserved_gib": 3.0,
                               "per_rank_gib": [1.25, 2.5]}}
    line = run_costs_line(summary)
    assert line == ("preflab: peak memory 2.5 GiB (device allocated, max over 2 ranks; reserved 3 GiB); "
                    "train_tokens_per_second 100 (optimizer steps only; tokens_per_second counts evaluation and "
                    "saves too).")
    html = _final_metrics([RunData(path=tmp_path, name="r", summary=summary)])
    assert "<td>train_step_seconds</td>" in html and "2.5 GiB (device allocated, max over 2 ranks" in html
    assert run_costs_line({"final_metrics": {"loss": 1.0}}) is None  # a summary without either (a recipe's)


# ---------------------------------------------------------------------------------------------------- throughput
class Clock:
    """A clock that moves only when told: 1 s per optimizer step, 100 s per evaluation, 1000 s per save."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_train_tokens_per_second_leaves_out_evaluation_and_save_time_exactly(tmp_path, monkeypatch):
    """With an injected clock: each step takes 1 s, each evaluation 100 s, each save 1000 s (evaluation and save at
    steps 2 and 4, after the step's row). train_tokens_per_second is the row's tokens over the steps' seconds
    (k at step k); tokens_per_second over the whole time (step 3's row: 3 + 100 + 1000 s). summary.json's
    train_step_seconds is 4 and runtime_s 4 + 2 x 1100."""
    from preflab.loops import driver

    clock = Clock()
    original_step = driver.optimizer_step

    def timed_step(*args, **kwargs):
        result = original_step(*args, **kwargs)
        clock.now += 1.0
        return result

    monkeypatch.setattr(driver, "optimizer_step", timed_step)
    trainer = _trainer(tmp_path / "run", n_eval_pairs=4, eval_steps=2, save_steps=2)
    trainer.clock = clock
    evaluate, save = trainer.evaluate, trainer._save

    def slow_evaluate():
        clock.now += 100.0
        return evaluate()

    def slow_save(*args, **kwargs):
        clock.now += 1000.0
        return save(*args, **kwargs)

    trainer.evaluate, trainer._save = slow_evaluate, slow_save
    summary = trainer.train()
    rows = [r for r in _rows(tmp_path / "run") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    elapsed = {1: 1.0, 2: 2.0, 3: 1103.0, 4: 1104.0}
    for row in rows:
        k = row["step"]
        assert row["train_tokens_per_second"] == pytest.approx(row["num_tokens"] / k, rel=1e-12)
        assert row["tokens_per_second"] == pytest.approx(row["num_tokens"] / elapsed[k], rel=1e-12)
    assert summary["train_step_seconds"] == 4.0 and summary["runtime_s"] == 2204.0
    assert summary["final_metrics"]["train_tokens_per_second"] == rows[-1]["train_tokens_per_second"]
    from preflab.objectives.base import TRAINER_METRICS  # an objective's metric may not take the rates' names

    assert {k for k in rows[0] if k.endswith("_per_second")} == {"tokens_per_second", "train_tokens_per_second"}
    assert {"tokens_per_second", "train_tokens_per_second", "train_images_per_second"} <= TRAINER_METRICS


def _rows(out: Path) -> list:
    import json

    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------------- options
def test_torch_empty_cache_steps_empties_where_transformers_does(tmp_path, monkeypatch, capsys):
    """transformers' Trainer.training_step empties the cache after each micro-batch's loss whenever its
    state.global_step (steps finished) % N == 0: with N 2, 5 steps of 2 micro-batches, after the micro-batches of
    the steps that start with 0, 2 and 4 steps done. The CPU note is said once."""
    from preflab.loops import device_cache

    trainer = _trainer(tmp_path / "run", max_steps=5, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                       torch_empty_cache_steps=2)
    seen = []
    monkeypatch.setattr(device_cache, "empty_device_cache", lambda: seen.append(trainer.step))
    trainer.train()
    assert seen == [s for s in range(5) for _ in range(2) if s % 2 == 0] == [0, 0, 2, 2, 4, 4]
    assert capsys.readouterr().out.count("torch_empty_cache_steps: 2 on the CPU") == 1


def test_without_torch_empty_cache_steps_nothing_is_emptied(tmp_path, monkeypatch):
    from preflab.loops import device_cache

    seen = []
    monkeypatch.setattr(device_cache, "empty_device_cache", lambda: seen.append(1))
    _trainer(tmp_path / "run", max_steps=2).train()
    assert seen == []


def _checkpointed_grads(tmp_path, kwargs):
    """The policy's gradients of one micro-batch's loss (the Trainer's own forward) and the use_reentrant value its
    checkpointed layers' checkpoint function carries (None: not checkpointed)."""
    over = {} if kwargs is None else {"gradient_checkpointing": True, "gradient_checkpointing_kwargs": kwargs}
    trainer = _trainer(tmp_path / str(kwargs), **over)
    policy = trainer.accelerator.unwrap_model(trainer.checkpoint_module)
    flags = {m._gradient_checkpointing_func.keywords["use_reentrant"] for m in policy.modules()
             if getattr(m, "gradient_checkpointing", False) is True}
    mb = trainer.micro_batches(0)[0]
    trainer.forward(mb).loss.backward()
    return {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}, flags


def test_use_reentrant_reaches_the_checkpointed_layers_and_gives_the_same_gradients(tmp_path):
    """gradient_checkpointing_kwargs: {use_reentrant: true} reaches every checkpointed layer of the policy (before,
    the option was noted and preflab checkpointed non-reentrant whatever it said); reentrant and non-reentrant
    recomputation give the gradients of the run without checkpointing (float32, no dropout in the tiny llama)."""
    plain, none = _checkpointed_grads(tmp_path, None)
    reentrant, on = _checkpointed_grads(tmp_path, {"use_reentrant": True})
    non_reentrant, off = _checkpointed_grads(tmp_path, {"use_reentrant": False})
    assert none == set() and on == {True} and off == {False}
    assert plain.keys() == reentrant.keys() == non_reentrant.keys() and len(plain) > 5
    for name in plain:
        torch.testing.assert_close(reentrant[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)
        torch.testing.assert_close(non_reentrant[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


BASE = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl", "output_dir": "out"}


@pytest.mark.parametrize("given, said", [
    ({"gradient_checkpointing_kwargs": {"use_reentrant": True}}, "without gradient_checkpointing: true"),
    ({"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"offload": True}},
     "gradient_checkpointing_kwargs.offload is not supported: preflab does not hold"),
    ({"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"every_n_layers": 2}},
     "gradient_checkpointing_kwargs.every_n_layers is not supported"),
    ({"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": "yes"}},
     "gradient_checkpointing_kwargs.use_reentrant='yes': must be true or false"),
    ({"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"context_fn": 1}},
     "gradient_checkpointing_kwargs.context_fn is not a keyword"),
    ({"gradient_checkpointing_use_reentrant": True}, "gradient_checkpointing_use_reentrant is not supported: give"),
    ({"gradient_checkpointing": True, "gradient_checkpointing_kwargs": "{use_reentrant"},
     "gradient_checkpointing_kwargs is not valid JSON"),
    ({"torch_empty_cache_steps": 0}, "torch_empty_cache_steps"),
])
def test_checkpointing_and_cache_options_refused_with_the_reason(given, said):
    from preflab.config import config_from_dict
    from preflab.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        config_from_dict({**BASE, **given})
    assert said in str(err.value)


def test_trl_spellings_of_the_checkpointing_kwargs_are_read():
    """transformers 5's activation_checkpointing_kwargs is the same option; TrainingArguments' JSON string from
    its command line is read as a mapping; the default {use_reentrant: false} without checkpointing asks nothing."""
    from preflab.checkpointing_options import checkpoint_kwargs
    from preflab.config import config_from_dict

    cfg = config_from_dict({**BASE, "gradient_checkpointing": True,
                            "activation_checkpointing_kwargs": {"use_reentrant": True}})
    assert checkpoint_kwargs(cfg) == {"use_reentrant": True}
    cfg = config_from_dict({**BASE, "gradient_checkpointing": True,
                            "gradient_checkpointing_kwargs": '{"use_reentrant": "true", "preserve_rng_state": false}'})
    assert checkpoint_kwargs(cfg) == {"use_reentrant": True, "preserve_rng_state": False}
    cfg = config_from_dict({**BASE, "gradient_checkpointing_kwargs": {"use_reentrant": False}})
    assert checkpoint_kwargs(cfg) == {"use_reentrant": False} and not cfg.gradient_checkpointing
    assert checkpoint_kwargs(config_from_dict(dict(BASE))) == {"use_reentrant": False}


def test_a_resume_may_change_the_two_options_with_a_note(tmp_path):
    """gradient_checkpointing_kwargs and torch_empty_cache_steps change no computed value (the same gradients; the
    cache only), so a resume may change them as it may gradient_checkpointing (resume_check.HARMLESS): a note, not
    the refusal a changed beta gets."""
    from preflab.config import config_from_dict
    from preflab.errors import ConfigError
    from preflab.resume_check import check_saved_config

    def cfg(**kw):
        return config_from_dict({**BASE, "output_dir": str(tmp_path), **kw})

    state = {"world_size": 1, "config": cfg().to_dict()}
    notes = []
    check_saved_config(state, cfg(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": True},
                                  torch_empty_cache_steps=3), "checkpoint-2", 1, note=notes.append)
    said = " ".join(notes)
    assert "gradient_checkpointing_kwargs" in said and "torch_empty_cache_steps" in said
    with pytest.raises(ConfigError, match="beta"):
        check_saved_config(state, cfg(beta=0.2), "checkpoint-2", 1, note=notes.append)


# ---------------------------------------------------------------------------------------- evaluate() from Python
def test_evaluate_from_python_without_an_eval_set_is_refused_and_inside_train_logs_nothing(tmp_path):
    """A notebook's `trainer.evaluate()` on a run built without eval_data returned {} (an evaluation that measured
    nothing, said nowhere); it is a ConfigError naming what to give (TRL's Trainer.evaluate raises too). Inside
    train() the same call still gives {} and the run logs no eval row; with eval_data the call gives eval_loss."""
    from preflab.errors import ConfigError

    trainer = _trainer(tmp_path / "run", max_steps=1)
    with pytest.raises(ConfigError, match="no eval set.*eval_data=rows"):
        trainer.evaluate()
    summary = trainer.train()
    assert not any(k.startswith("eval_") for k in summary["final_metrics"])
    with pytest.raises(ConfigError, match="no eval set"):  # after train() too
        trainer.evaluate()
    with_eval = _trainer(tmp_path / "eval", n_eval_pairs=4, max_steps=1)
    assert with_eval.evaluate()["eval_loss"] == pytest.approx(0.6931471805599453, abs=1e-6)  # policy == reference
