"""load_best_model_at_end / metric_for_best_model / greater_is_better / save_total_limit and transformers'
EarlyStoppingCallback in preflab's training loop, with transformers 5.25's rules (preflab.loops.best_model).

The runs: a tiny model trained with a high learning rate, evaluated and checkpointed every step, on eval pairs half
of which have chosen and rejected swapped, so that eval_loss falls first and then rises (the best step is found from
the logged metrics in each test, never assumed). The 2-process checks (the same best checkpoint as one process;
every rank restores the best checkpoint's extras) are in tests/loops/test_ddp_cli_launch.py's shared DDP launch."""
import json

import pytest
import torch
from safetensors.torch import load_file

from preflab.errors import ConfigError

STEPS = 8


def _rows(n: int) -> list[dict]:
    words = ["cat", "dog", "owl", "bee", "ant", "oak", "jam", "log"]
    return [{"prompt": f"echo: {words[i % 8]} {words[(i * 3) % 8]}\n",
             "chosen": f"{words[i % 8].upper()} {words[(i * 3) % 8].upper()}",
             "rejected": f"{words[i % 8]} {words[(i * 3) % 8]}"} for i in range(n)]


def _eval_rows() -> list[dict]:
    return [dict(r, chosen=r["rejected"], rejected=r["chosen"]) if i % 2 else r for i, r in enumerate(_rows(8))]


def _cfg(tmp_path, name: str, **over):
    from preflab.config import config_from_dict

    return config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "rows",
                             "output_dir": str(tmp_path / name), "max_steps": STEPS,
                             "per_device_train_batch_size": 4, "max_length": 64, "learning_rate": 0.05,
                             "logging_steps": 1, "disable_tqdm": True, "eval_steps": 1, "save_steps": 1,
                             "load_best_model_at_end": True, **over})


def _train(cfg, callbacks=()):
    from preflab.loops.offline import Trainer

    return Trainer(cfg, train_data=_rows(16), eval_data=_eval_rows(), callbacks=list(callbacks)).train()


def _evals(run_dir, key: str = "eval_loss") -> list[tuple[int, float]]:
    rows = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [(r["step"], r[key]) for r in rows if key in r]


def _best(evals, greater: bool = False) -> tuple[int, float]:
    """transformers' _determine_best_metric over the evaluations in order: a strictly better value replaces."""
    best = None
    for step, value in evals:
        if best is None or (value > best[1] if greater else value < best[1]):
            best = (step, value)
    return best


def _same_weights(final: dict, checkpoint: dict) -> bool:
    shared = set(final) & set(checkpoint)
    assert len(shared) >= len(checkpoint) - 1  # every trained tensor (a tied lm_head is saved once)
    return all(torch.equal(final[k], checkpoint[k]) for k in shared)


def _checkpoints(run_dir) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in run_dir.glob("checkpoint-*"))


@pytest.mark.slow
def test_the_final_model_is_the_best_checkpoint_and_the_summary_names_it(tmp_path):
    summary = _train(_cfg(tmp_path, "run"))
    run = tmp_path / "run"
    evals = _evals(run)
    step, value = _best(evals)
    assert [s for s, _ in evals] == list(range(1, STEPS + 1)) and 1 < step < STEPS  # eval_loss rose after the best
    assert summary["best_global_step"] == step and summary["best_metric"] == pytest.approx(value, abs=0)
    assert summary["best_model_checkpoint"] == str(run / f"checkpoint-{step}")
    assert summary["metric_for_best_model"] == "eval_loss"
    final = load_file(str(run / "model.safetensors"))
    assert _same_weights(final, load_file(str(run / f"checkpoint-{step}" / "model.safetensors")))
    assert not _same_weights(final, load_file(str(run / f"checkpoint-{STEPS}" / "model.safetensors")))
    saved = json.loads((run / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    assert (saved["best_global_step"], saved["best_metric"]) == (step, summary["best_metric"])


@pytest.mark.slow
def test_save_total_limit_one_keeps_the_best_and_the_last_checkpoint_then_only_the_best(tmp_path):
    """transformers' rotate_checkpoints protects the newest and the best checkpoint; at the end of a
    load_best_model_at_end run with save_total_limit 1 only the best is left."""
    from transformers import TrainerCallback

    seen = {}

    class Listing(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            seen[state.global_step] = _checkpoints(tmp_path / "lim")

    _train(_cfg(tmp_path, "lim", save_total_limit=1), [Listing()])
    evals = _evals(tmp_path / "lim")
    expected = {k: sorted({_best(evals[:k])[0], k}) for k in range(1, STEPS + 1)}
    assert seen == expected and any(len(v) == 2 for v in seen.values())
    assert _checkpoints(tmp_path / "lim") == [_best(evals)[0]]


@pytest.mark.slow
def test_transformers_early_stopping_callback_stops_where_its_rule_says(tmp_path, capsys):
    from transformers import EarlyStoppingCallback

    summary = _train(_cfg(tmp_path, "es"), [EarlyStoppingCallback(early_stopping_patience=2,
                                                                  early_stopping_threshold=0.0)])
    evals = _evals(tmp_path / "es")
    best, counter, expected = None, 0, None  # EarlyStoppingCallback.check_metric_value, then _determine_best_metric
    for step, value in evals:
        counter = 0 if best is None or (value < best and abs(value - best) > 0.0) else counter + 1
        best = value if best is None or value < best else best
        if counter >= 2:
            expected = step
            break
    assert expected is not None and expected < STEPS
    assert summary["global_step"] == expected == evals[-1][0] and summary["stopped_early"]["step"] == expected
    step = _best(evals)[0]
    assert summary["best_global_step"] == step
    assert _same_weights(load_file(str(tmp_path / "es" / "model.safetensors")),
                         load_file(str(tmp_path / "es" / f"checkpoint-{step}" / "model.safetensors")))
    # user-trial-9: the stop note said "(the final model is step N's)" and the next line loaded the best checkpoint
    assert (f"preflab: note: a callback set control.should_training_stop at step {expected} of {STEPS}: training "
            "stops there (load_best_model_at_end: the final model is the best checkpoint's).") in capsys.readouterr().out


@pytest.mark.slow
def test_greater_is_better_follows_an_accuracy_metric(tmp_path):
    cfg = _cfg(tmp_path, "acc", metric_for_best_model="rewards/accuracies", learning_rate=0.02)
    assert cfg.greater_is_better is True  # transformers' default: the name does not end in "loss"
    summary = _train(cfg)
    evals = _evals(tmp_path / "acc", "eval_rewards/accuracies")
    step, value = _best(evals, greater=True)
    assert _best(evals, greater=False)[0] != step  # the direction matters on this run
    assert (summary["best_global_step"], summary["best_metric"]) == (step, value)
    assert summary["metric_for_best_model"] == "eval_rewards/accuracies"
    assert _same_weights(load_file(str(tmp_path / "acc" / "model.safetensors")),
                         load_file(str(tmp_path / "acc" / f"checkpoint-{step}" / "model.safetensors")))


@pytest.mark.slow
def test_a_resumed_run_keeps_best_metric_and_ends_with_the_straight_runs_model(tmp_path):
    from transformers import TrainerCallback

    class StopAtFive(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == 5

    straight = _train(_cfg(tmp_path, "straight"))
    _train(_cfg(tmp_path, "resumed"), [StopAtFive()])
    assert _checkpoints(tmp_path / "resumed")[-1] == 5
    resumed = _train(_cfg(tmp_path, "resumed", resume_from_checkpoint=True))
    assert resumed["resumed_from_step"] == 5
    assert straight["best_global_step"] < 5  # the best came before the resume: kept from the checkpoint
    for key in ("best_metric", "best_global_step"):
        assert resumed[key] == straight[key]
    assert resumed["best_model_checkpoint"] == str(tmp_path / "resumed" / f"checkpoint-{straight['best_global_step']}")
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_best_model_options_are_checked_as_transformers_checks_them(tmp_path):
    from preflab.config import config_from_dict

    base = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "rows", "eval_fraction": 0.25,
            "output_dir": str(tmp_path / "c"), "load_best_model_at_end": True}
    cfg = config_from_dict({**base, "eval_strategy": "steps", "eval_steps": 2, "save_strategy": "steps",
                            "save_steps": 4})  # TRL's spelling is accepted
    assert (cfg.metric_for_best_model, cfg.greater_is_better) == ("loss", False)
    with pytest.raises(ConfigError, match=r"load_best_model_at_end requires the save and eval strategy to match.*"
                                          r"'steps'.*'no'"):
        config_from_dict({**base, "eval_strategy": "steps", "eval_steps": 2, "save_strategy": "no"})
    with pytest.raises(ConfigError, match=r"load_best_model_at_end requires the saving steps to be a round multiple"
                                          r".*save_steps=3.*eval_steps=2"):
        config_from_dict({**base, "eval_steps": 2, "save_steps": 3})
    no_best = config_from_dict({**base, "load_best_model_at_end": False, "metric_for_best_model": "eval_margin"})
    assert no_best.greater_is_better is True


@pytest.mark.slow
def test_a_metric_missing_from_the_eval_metrics_names_the_available_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"'eval_lossy', which is not found in the evaluation metrics \(step 1\)"
                                          r".*'eval_loss'.*'eval_rewards/accuracies'"):
        _train(_cfg(tmp_path, "bad", metric_for_best_model="lossy", max_steps=2))


@pytest.mark.slow
@pytest.mark.parametrize("kind", [
    ["task=sft", "dataset_name=examples/data/loud_echo_sft.jsonl", "learning_rate=0.05"],
    ["task=reward", "learning_rate=3"],
    ["loss_type=kto", "learning_rate=0.1"],
    ["use_peft=true", "learning_rate=1"],  # LoRA: the final adapters are the best checkpoint's
], ids=["sft", "reward", "kto", "lora-dpo"])
def test_every_offline_run_kind_saves_the_best_checkpoints_weights(tmp_path, kind):
    """greater_is_better: true on eval_loss picks the worst evaluation: a step before the last on each of these runs
    (their eval_loss falls overall), so the final model must differ from the last step's."""
    from pathlib import Path

    from preflab.cli import main

    import yaml

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "run"
    config = yaml.safe_load((root / "examples/quickstart.yaml").read_text())
    if any(k.startswith("task=") for k in kind):  # sft / reward read no objective: the written keys are refused
        config = {k: v for k, v in config.items() if k not in ("loss_type", "beta")}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(tmp_path / "config.yaml"), f"output_dir={out}", "eval_fraction=0.25",
                 "eval_steps=1", "save_steps=1", "logging_steps=1", "disable_tqdm=true", "max_steps=6",
                 "warmup_steps=0", "per_device_train_batch_size=16", "load_best_model_at_end=true",
                 "greater_is_better=true", *kind]) == 0
    step = _best(_evals(out), greater=True)[0]
    assert step < 6 and json.loads((out / "summary.json").read_text())["best_global_step"] == step
    lora = "use_peft=true" in kind
    final = load_file(str(out / ("adapter_model.safetensors" if lora else "model.safetensors")))

    def saved(at: int) -> dict:
        tensors = load_file(str(out / f"checkpoint-{at}" / "model.safetensors"))
        return {k.replace(".default.", "."): v for k, v in tensors.items()} if lora else tensors

    assert _same_weights(final, saved(step)) and not _same_weights(final, saved(6))


@pytest.mark.slow
def test_an_online_run_ranks_its_checkpoints_by_eval_true_reward(tmp_path):
    """task: online evaluates the demo's true reward (eval_true_reward, greater is better by its name); an equal
    value does not replace the best (transformers' strict comparison), so a run whose reward stays flat keeps
    step 1's weights."""
    from preflab.cli import main

    out = tmp_path / "online"
    assert main(["train", "task=online", "online_task=demo", "model_name_or_path=builtin:demo-sft", "max_steps=4",
                 "eval_steps=1", "save_steps=1", "logging_steps=1", "disable_tqdm=true", "learning_rate=0.05",
                 "load_best_model_at_end=true", "metric_for_best_model=true_reward", f"output_dir={out}"]) == 0
    step = _best(_evals(out, "eval_true_reward"), greater=True)[0]
    assert step < 4 and json.loads((out / "summary.json").read_text())["best_global_step"] == step
    final = load_file(str(out / "model.safetensors"))
    assert _same_weights(final, load_file(str(out / f"checkpoint-{step}" / "model.safetensors")))
    assert not _same_weights(final, load_file(str(out / "checkpoint-4" / "model.safetensors")))


def test_load_best_model_at_end_under_a_sharding_engine_is_refused_before_training(tmp_path, monkeypatch):
    from preflab.loops import driver
    from preflab.loops.offline import Trainer

    trainer = Trainer(_cfg(tmp_path, "fsdp", max_steps=2), train_data=_rows(16), eval_data=_eval_rows())
    monkeypatch.setattr(driver, "is_sharded", lambda acc: True)
    monkeypatch.setattr(driver, "sharding_engine", lambda acc: "FSDP2")
    with pytest.raises(ConfigError, match=r"load_best_model_at_end is not supported under FSDP2.*ddp.yaml"):
        trainer.train()
    assert not (tmp_path / "fsdp" / "metrics.jsonl").exists()


def _new_bests(evals, greater: bool = False) -> list[int]:
    """The steps at which transformers' _determine_best_metric finds a new best (save_strategy best saves there)."""
    return [step for k, (step, _) in enumerate(evals) if _best(evals[:k + 1], greater)[0] == step]


def test_save_strategy_best_saves_at_each_new_best_evaluation_and_the_last_step_is_evaluated(tmp_path, capsys):
    """transformers' save_strategy "best" was refused: a checkpoint exactly at the evaluations that improve
    metric_for_best_model (save_steps not read; the last step evaluated, as transformers' DefaultFlowCallback does when
    it is not an eval step); with load_best_model_at_end the strategies need not match, and the final model is the
    best checkpoint's. eval_loss (the default metric under load_best_model_at_end) falls, then rises: the evaluations
    at steps 4 and 5 (the last step) save nothing."""
    summary = _train(_cfg(tmp_path, "best", save_strategy="best", eval_steps=2, max_steps=5))
    assert "save_strategy: best -> save_steps 1 is not used" in capsys.readouterr().err
    run = tmp_path / "best"
    evals = _evals(run)
    assert [s for s, _ in evals] == [2, 4, 5]
    assert _checkpoints(run) == _new_bests(evals) and 0 < len(_checkpoints(run)) < len(evals)
    step, value = _best(evals)
    assert summary["best_model_checkpoint"] == str(run / f"checkpoint-{step}")
    assert summary["best_metric"] == pytest.approx(value, abs=0)
    final = load_file(str(run / "model.safetensors"))
    assert _same_weights(final, load_file(str(run / f"checkpoint-{step}" / "model.safetensors")))


def test_save_strategy_best_options_are_checked(tmp_path):
    """metric_for_best_model is required (transformers' ValueError); with no evaluation (or no eval set) it would
    save nothing, which is refused; save_steps given beside it is not read."""
    from preflab.config import TrainConfig, config_from_dict

    base = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "rows", "eval_fraction": 0.25,
            "output_dir": str(tmp_path / "c"), "save_strategy": "best"}
    with pytest.raises(ConfigError, match="metric_for_best_model must be provided when using save_strategy: best"):
        config_from_dict({**base, "eval_steps": 2})
    with pytest.raises(ConfigError, match="has no evaluation during training"):
        config_from_dict({**base, "metric_for_best_model": "loss"})
    from preflab.loops.offline import Trainer

    no_eval_set = _cfg(tmp_path, "none", save_strategy="best", eval_steps=2)
    with pytest.raises(ConfigError, match=r"save_strategy: best .* but there is no eval set"):
        Trainer(no_eval_set, train_data=_rows(16)).train()
    assert not (tmp_path / "none" / "metrics.jsonl").exists()
    cfg = config_from_dict({**base, "eval_strategy": "steps", "eval_steps": 2, "load_best_model_at_end": True})
    assert (cfg.save_strategy, cfg.save_steps, cfg.metric_for_best_model) == ("best", 0, "loss")
    with pytest.raises(ConfigError, match="save_steps=4 is not used with save_strategy: best"):
        TrainConfig(**{**base, "metric_for_best_model": "loss", "eval_steps": 2, "save_steps": 4})


def test_the_last_step_off_the_schedule_is_evaluated_checkpointed_and_competes_for_the_best(tmp_path):
    """transformers' DefaultFlowCallback evaluates the last step under eval_strategy steps and saves it under
    save_strategy steps even when it is off the schedule, so its evaluation takes part in the best model: 5 steps with
    eval_steps = save_steps = 2 evaluate and checkpoint steps 2, 4 and 5 (before: the last step was evaluated after
    the loop, without a checkpoint, and could not be the best)."""
    summary = _train(_cfg(tmp_path, "end", eval_steps=2, save_steps=2, max_steps=5, learning_rate=0.01))
    run = tmp_path / "end"
    evals = _evals(run)
    assert [s for s, _ in evals] == [2, 4, 5] and _checkpoints(run) == [2, 4, 5]
    step, value = _best(evals)
    assert (summary["best_global_step"], summary["best_metric"]) == (step, value)
    assert summary["best_model_checkpoint"] == str(run / f"checkpoint-{step}")


def test_save_only_model_checkpoints_hold_the_weights_only_and_still_give_the_best_model(tmp_path):
    """transformers' save_only_model: checkpoints without optimizer, scheduler and RNG state; load_best_model_at_end
    needs only the weights, so the final model is still the best checkpoint's."""
    summary = _train(_cfg(tmp_path, "run", save_only_model=True))
    run = tmp_path / "run"
    step, _ = _best(_evals(run))
    best = run / f"checkpoint-{step}"
    assert summary["best_model_checkpoint"] == str(best)
    assert sorted(p.name for p in best.iterdir()) == ["COMPLETE", "model.safetensors", "trainer_state.json"]
    assert json.loads((best / "trainer_state.json").read_text())["save_only_model"] is True
    assert _same_weights(load_file(str(run / "model.safetensors")), load_file(str(best / "model.safetensors")))


@pytest.mark.slow
def test_resumed_early_stopping_stops_at_the_uninterrupted_runs_step(tmp_path):
    """EarlyStoppingCallback's patience counter is saved in each checkpoint (trainer_state.json stateful_callbacks,
    transformers' layout) and restored on resume: a run interrupted when the counter is 1 and resumed stops at the
    uninterrupted run's step (it restarted from 0 and stopped a step later, or never)."""
    from transformers import EarlyStoppingCallback, TrainerCallback

    def stopper():
        return EarlyStoppingCallback(early_stopping_patience=2, early_stopping_threshold=0.0)

    whole = _train(_cfg(tmp_path, "whole"), [stopper()])
    stop = whole["global_step"]
    assert whole["stopped_early"]["step"] == stop < STEPS

    class Interrupt(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == stop - 1:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(_cfg(tmp_path, "cut"), [stopper(), Interrupt()])
    again = stopper()
    resumed = _train(_cfg(tmp_path, "cut", resume_from_checkpoint=True), [again])
    assert resumed["global_step"] == stop and resumed["stopped_early"]["step"] == stop
    assert again.early_stopping_patience_counter == 2
    assert _evals(tmp_path / "cut")[-2:] == _evals(tmp_path / "whole")[-2:]  # the same run after the resume
    saved = json.loads((tmp_path / "whole" / f"checkpoint-{stop - 1}" / "trainer_state.json").read_text())
    assert saved["stateful_callbacks"]["EarlyStoppingCallback"]["attributes"] == {
        "early_stopping_patience_counter": 1}


# name: (objective_params, greater_is_better on eval_loss: the direction whose best is not the last step on this run)
EXTRA_OBJECTIVES = {"spo_degree": ({"degrees": 1, "degree_weight": 1.0}, True),  # a degree head (extras producer)
                    "sparsepo": ({}, False)}                                    # learned token masks (its own)


def _best_extras_run(tmp_path, name: str):
    """A load_best_model_at_end run of `name` whose best checkpoint is not the last (the test checks it);
    (trainer, summary)."""
    from preflab.loops.offline import Trainer

    params, greater = EXTRA_OBJECTIVES[name]
    trainer = Trainer(_cfg(tmp_path, name, loss_type=name, objective_params=params, max_steps=5,
                           greater_is_better=greater), train_data=_rows(16), eval_data=_eval_rows())
    return trainer, trainer.train()


@pytest.mark.parametrize("name", list(EXTRA_OBJECTIVES))
def test_load_best_model_at_end_restores_every_checkpoint_extra(tmp_path, name):
    """The best checkpoint's extra.safetensors (every checkpoint_extras tensor: spo_degree's head, SparsePO's
    masks) replaces the last step's, byte for byte, as its model.safetensors replaces the weights; spo_degree's
    degree_head.safetensors beside the final model is that head, SparsePO's sparsepo_masks.safetensors its masks
    (SparsePO's masks were left at the last step's; then they were not written beside the model at all)."""
    trainer, summary = _best_extras_run(tmp_path, name)
    run, step = tmp_path / name, summary["best_global_step"]
    assert step == _best(_evals(run), greater=EXTRA_OBJECTIVES[name][1])[0] and step < 5
    best, last = (load_file(str(run / f"checkpoint-{s}" / "extra.safetensors")) for s in (step, 5))
    assert any(not torch.equal(best[k], last[k]) for k in best)  # the extras trained after the best step
    final = {k: v.detach().cpu() for k, v in trainer.checkpoint_extras().items()}
    assert final.keys() == best.keys()
    assert all(final[k].dtype == best[k].dtype and torch.equal(final[k], best[k]) for k in best)
    assert _same_weights(load_file(str(run / "model.safetensors")),
                         load_file(str(run / f"checkpoint-{step}" / "model.safetensors")))
    if name == "spo_degree":
        head = load_file(str(run / "degree_head.safetensors"))
        assert torch.equal(head["linear.weight"], best["producer.0"]) and torch.equal(head["linear.bias"],
                                                                                       best["producer.1"])
    else:  # the objective's own tensors (Objective.state_file), by their state_dict names
        from preflab.objectives.sparsepo import SparsePO

        masks = load_file(str(run / "sparsepo_masks.safetensors"))
        assert {f"objective.{k}" for k in masks} == best.keys()
        assert all(torch.equal(masks[k], best[f"objective.{k}"]) for k in masks)
        SparsePO(hidden_size=trainer.policy.config.hidden_size).load_state_dict(masks)  # reads back, strict


def test_a_best_checkpoint_lacking_an_extra_is_refused(tmp_path):
    """load_best_weights with an extra the checkpoint does not hold: an error naming it, nothing half-loaded."""
    from preflab.errors import PreflabError
    from preflab.loops.best_model import load_best_weights

    trainer, summary = _best_extras_run(tmp_path, "sparsepo")
    before = {k: v.clone() for k, v in trainer.checkpoint_extras().items()}
    extras = {**trainer.checkpoint_extras(), "objective.nets.x.weight": torch.zeros(2)}
    with pytest.raises(PreflabError, match=r"checkpoint-\d+ lacks 1 tensor\(s\) the training step updates outside "
                                           r"the model, e.g. 'objective.nets.x.weight' .*its weights would be loaded "
                                           "without them"):
        load_best_weights(summary["best_model_checkpoint"], trainer.policy, extras)
    assert all(torch.equal(before[k], v) for k, v in trainer.checkpoint_extras().items())


def test_best_model_keeps_the_earlier_of_equal_evaluations_and_records_the_checkpoint_being_saved(tmp_path):
    """transformers' _determine_best_metric replaces the best only on a strictly better value (an equal later
    evaluation keeps the earlier step), and _save_checkpoint records checkpoint-<best step> as
    best_model_checkpoint at that step's own save, before its folder exists."""
    from preflab.loops.best_model import BestModel

    best = BestModel("loss", greater_is_better=False)
    assert best.key == "eval_loss"
    assert best.update({"eval_loss": 0.5}, 2) is True
    best.note_checkpoint(tmp_path, 2)  # checkpoint-2 is being written: not on disk yet
    assert best.best_model_checkpoint == str(tmp_path / "checkpoint-2")
    assert best.update({"eval_loss": 0.5}, 3) is False  # equal: the earlier step stays the best
    assert best.update({"eval_loss": 0.7}, 4) is False
    best.note_checkpoint(tmp_path, 4)
    assert (best.best_metric, best.best_global_step) == (0.5, 2)
    assert best.best_model_checkpoint == str(tmp_path / "checkpoint-2")
    accuracy = BestModel("eval_accuracy", greater_is_better=True)
    assert [accuracy.update({"eval_accuracy": v}, s) for s, v in ((1, 0.6), (2, 0.6), (3, 0.7))] == [True, False, True]
    assert accuracy.best_global_step == 3


def test_a_resumed_best_model_checkpoint_that_was_deleted_is_dropped(tmp_path):
    from preflab.loops.best_model import BestModel

    (tmp_path / "checkpoint-4").mkdir()
    best = BestModel("loss", greater_is_better=False)
    best.load_state_dict({"best_metric": 0.3, "best_global_step": 4, "best_model_checkpoint": str(tmp_path / "checkpoint-4")})
    assert (best.best_metric, best.best_global_step, best.best_model_checkpoint) == (0.3, 4, str(tmp_path / "checkpoint-4"))
    best.load_state_dict({"best_metric": 0.2, "best_global_step": 6, "best_model_checkpoint": str(tmp_path / "checkpoint-6")})
    assert (best.best_metric, best.best_global_step, best.best_model_checkpoint) == (0.2, 6, None)
