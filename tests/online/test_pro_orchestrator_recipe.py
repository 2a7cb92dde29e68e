"""The PRO recipe (task: pro_orchestrator) and the online reward aggregator: the run's adapter is fit_adapter's,
a constant adapter gives exactly the fixed-reward_weights run, per-prompt weights reach the judge, resume equals an
uninterrupted run, bad adapter data is refused with file, line and field."""
import json

import pytest
import torch
from safetensors.torch import load_file

from preflab.config import config_from_dict
from preflab.errors import ConfigError, DataError
from preflab.loops.judge import Judge
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from preflab.online.pro_recipe import loud_echo, quiet_echo, run_pro, toy_adapter_rows, toy_prompts
from preflab.online.run import OnlineRun
from preflab.online.tasks import Task
from preflab.reward_models.orchestrator import PreferenceWeightAdapter, fit_adapter
from preflab.reward_models.pro_orchestrator import PromptFeatures, PromptWeights, load_orchestrator, read_adapter_rows

TINY = {"n_train": 24, "n_heldout": 4, "hidden_size": 32, "sft_steps": 4, "adapter_steps": 50, "grpo_steps": 2,
        "prompts_per_generation": 2, "num_generations": 3, "max_completion_length": 8}


def test_the_runs_adapter_is_fit_adapters_result(tmp_path):
    run_pro(str(tmp_path), quiet=True, stop_after_stage="adapter", **TINY)
    rows = [json.loads(line) for line in (tmp_path / "data" / "adapter_rows.jsonl").read_text().splitlines()]
    assert rows == toy_adapter_rows(toy_prompts(24, 0))
    features = PromptFeatures.from_prompts([r["prompt"] for r in rows])
    torch.manual_seed(0)
    adapter = PreferenceWeightAdapter(len(features.vocabulary), 2)
    fit_adapter(adapter, features([r["prompt"] for r in rows]),
                chosen_rewards=torch.tensor([r["chosen_rewards"] for r in rows]), loss="kl", steps=50, lr=0.1)
    saved = load_file(str(tmp_path / "adapter" / "adapter.safetensors"))
    assert saved.keys() == adapter.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in adapter.state_dict().items())
    # the loaded aggregator: shout prompts weigh loud_echo, whisper prompts quiet_echo
    w = load_orchestrator(tmp_path / "adapter")(["shout: cat sun", "whisper: cat sun"])
    assert w[0, 0] > 0.7 and w[1, 1] > 0.7
    assert torch.allclose(w.sum(-1), torch.ones(2))


def test_the_held_out_prompts_are_drawn_apart_from_the_training_prompts(tmp_path):
    """The held-out prompts are toy_prompts(n_heldout, seed + 1) with the training prompts excluded: the adapter
    stage's per-type mean weights are the loaded aggregator's on exactly those prompts (with 600 training prompts of
    the 1104 possible, a draw that ignored the exclusion would repeat some)."""
    run_pro(str(tmp_path), quiet=True, stop_after_stage="adapter", **{**TINY, "n_train": 600, "n_heldout": 8})
    train = toy_prompts(600, 0)
    heldout = toy_prompts(8, 1, exclude=set(train))
    assert not set(heldout) & set(train) and set(toy_prompts(8, 1)) & set(train)
    record = json.loads((tmp_path / "pro_state.json").read_text())["stages"]["adapter"]
    w = load_orchestrator(tmp_path / "adapter")(heldout)
    for kind in ("shout", "whisper"):
        rows = [i for i, p in enumerate(heldout) if p.startswith(kind)]
        assert record["heldout_weights_by_type"][kind] == pytest.approx(w[rows].mean(0).tolist(), abs=1e-6)


def _constant(weights) -> PromptWeights:
    features = PromptFeatures(["shout", "whisper"])
    adapter = PreferenceWeightAdapter(2, 2)
    with torch.no_grad():
        adapter.net.weight.zero_()
        adapter.net.bias.copy_(torch.tensor(weights).log())
    return PromptWeights(adapter, features, ["loud_echo", "quiet_echo"])


def test_judge_with_a_constant_aggregator_equals_fixed_reward_weights():
    prompts = ["shout: cat sun", "whisper: box pen", "shout: cat sun"]
    texts = ["CAT SUN", "box PEN", "cat sun"]
    fixed, per_fixed = Judge([loud_echo, quiet_echo], weights=[0.25, 0.75])(prompts, texts)
    aggregated, per_agg = Judge([loud_echo, quiet_echo], weights=_constant([0.25, 0.75]))(prompts, texts)
    assert torch.equal(per_fixed, per_agg)
    assert torch.allclose(aggregated, fixed, atol=1e-7) and fixed.tolist() == pytest.approx([0.25, 0.5, 0.75])
    # per-prompt weights: a shout prompt scores with loud_echo only, a whisper prompt with quiet_echo only
    both = lambda ps: torch.tensor([[1.0, 0.0] if p.startswith("shout") else [0.0, 1.0] for p in ps])  # noqa: E731
    scores, _ = Judge([loud_echo, quiet_echo], weights=both)(prompts, texts)
    assert scores.tolist() == [1.0, 0.5, 0.0]
    with pytest.raises(ConfigError, match=r"weights of shape \(2,\) for 3 prompts"):
        Judge([loud_echo, quiet_echo], weights=lambda ps: torch.ones(2))(prompts, texts)


def capitals(prompts, completions, **kwargs):  # dense rewards: a random policy's completions differ in them
    return [sum(ch.isupper() for ch in c) / max(1, len(c)) for c in completions]


def lower_case(prompts, completions, **kwargs):
    return [sum(ch.islower() for ch in c) / max(1, len(c)) for c in completions]


def test_online_run_with_a_constant_aggregator_equals_the_fixed_weights_run(tmp_path):
    tokenizer = tiny_tokenizer("char")
    prompts = [p + "\n" for p in toy_prompts(8, 0)]
    final = []
    constant = lambda ps: torch.tensor([[0.25, 0.75]] * len(ps))  # noqa: E731  (softmax(log w) is w only to 1e-8)
    for name, weights in (("fixed", [0.25, 0.75]), ("aggregated", constant)):
        model = tiny_causal_lm(tokenizer, arch="llama", hidden_size=32, num_layers=1, num_heads=4, seed=0)
        task = Task(prompts, [capitals, lower_case], reward_aggregator=weights if callable(weights) else None)
        cfg = config_from_dict({"task": "online", "trainer": "grpo", "online_task": "dataset", "seed": 0,
                                "model_name_or_path": "(in memory)", "dataset_name": "(in memory)", "max_steps": 2,
                                "num_generations": 3, "prompts_per_generation": 2, "per_device_train_batch_size": 2,
                                "learning_rate": 1e-2, "beta": 0.0, "max_completion_length": 6, "use_cpu": True,
                                "disable_tqdm": True, "output_dir": str(tmp_path / name),
                                **({"reward_weights": weights} if isinstance(weights, list) else {})})
        OnlineRun(cfg, policy=model, tokenizer=tokenizer, task=task).train()
        final.append(model.state_dict())
    with pytest.raises(ConfigError, match="remove reward_weights"):
        OnlineRun(cfg.__class__(**{**cfg.__dict__, "reward_weights": [1.0, 1.0]}), policy=model, tokenizer=tokenizer,
                  task=Task(prompts, [capitals, lower_case], reward_aggregator=constant))
    assert any(not torch.equal(final[0][k], tiny_causal_lm(tokenizer, arch="llama", hidden_size=32, num_layers=1,
                                                           num_heads=4, seed=0).state_dict()[k]) for k in final[0])
    for k in final[0]:
        assert torch.equal(final[0][k], final[1][k]), k


def test_resume_after_the_grpo_stage_equals_an_uninterrupted_run(tmp_path):
    full = run_pro(str(tmp_path / "full"), quiet=True, **TINY)
    part = tmp_path / "part"
    run_pro(str(part), quiet=True, stop_after_stage="grpo", **TINY)
    assert not (part / "summary.json").exists()
    with pytest.raises(ConfigError, match="exists: set resume_from_checkpoint"):
        run_pro(str(part), quiet=True, **TINY)
    resumed = run_pro(str(part), quiet=True, resume=True, **TINY)
    drop = lambda s: {k: v for k, v in s.items() if k != "runtime_s"}  # noqa: E731
    assert drop(resumed) == drop(full)
    assert set(full) >= {"metric_before", "metric_after", "control_true_reward_after", "adapter_weights_by_type"}
    for stage in ("grpo", "control", "start"):  # start: the model the recipe built (preflab.recipe_start), saved once
        a, b = (load_file(str(d / stage / "model.safetensors")) for d in (tmp_path / "full", part))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    start, sft = (load_file(str(tmp_path / "full" / stage / "model.safetensors")) for stage in ("start", "sft"))
    assert not all(torch.equal(start[k], sft[k]) for k in start)  # saved before the SFT stage trained it


def test_pro_interrupted_mid_grpo_resumes_from_its_checkpoint_and_equals_an_uninterrupted_run(tmp_path,
                                                                                                stop_runs_at_step):
    """save_steps > 0: a run interrupted in the middle of its GRPO stage continues from that stage's newest
    checkpoint (the pending round and optimizer included), where before the resume deleted the checkpoints and
    reran the stage; the weights and numbers equal an uninterrupted run's."""
    params = {**TINY, "grpo_steps": 3, "save_steps": 1, "control": False}
    full = run_pro(str(tmp_path / "full"), quiet=True, **params)
    part = tmp_path / "part"
    with stop_runs_at_step(OnlineRun, 2):
        run_pro(str(part), quiet=True, **params)
    assert (part / "grpo" / "checkpoint-2").is_dir() and not (part / "grpo" / "model.safetensors").exists()
    resumed = run_pro(str(part), quiet=True, resume=True, **params)
    assert json.loads((part / "grpo" / "summary.json").read_text())["resumed_from_step"] == 2  # not rerun
    drop = lambda s: {k: v for k, v in s.items() if k != "runtime_s"}  # noqa: E731
    assert drop(resumed) == drop(full)
    for stage in ("sft", "grpo"):
        a, b = (load_file(str(d / stage / "model.safetensors")) for d in (tmp_path / "full", part))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stage


def test_bad_adapter_data_and_folders_are_refused(tmp_path):
    data = tmp_path / "rows.jsonl"
    good = {"prompt": "shout: cat sun", "chosen_rewards": [1.0, 0.0]}
    for row, match in ((dict(good, chosen_rewards=[1.0]), r"field 'chosen_rewards': 1 values; expected 2"),
                       ({"chosen_rewards": [1, 0]}, r"field 'prompt': missing"),
                       (dict(good, chosen_rewards=["high", 0]), r"field 'chosen_rewards': expected a list"),
                       (dict(good, chosen_rewards=[float("nan"), 0]), r"field 'chosen_rewards': expected a list of "
                                                                      r"numbers .*got \[nan, 0\]"),
                       ([1, 2], r"the row is a list, not an object with fields. Each row must be an object "
                                r"\{prompt, chosen_rewards")):
        data.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
        with pytest.raises(DataError, match=r"rows\.jsonl row 1 \(line 2\)(, |: )" + match):
            read_adapter_rows(data, 2)
    data.write_text("\n" + json.dumps(good) + "\n\n" + json.dumps(dict(good, chosen_rewards=[1.0])) + "\n")
    with pytest.raises(DataError, match=r"rows\.jsonl row 1 \(line 4\), field 'chosen_rewards': 1 values"):
        read_adapter_rows(data)  # blank lines are not rows; K from the first row
    other = dict(good, chosen_rewards=[0.0, 1.0])  # each reward function varies over the rows (z-scores)
    data.write_bytes(b"\xef\xbb\xbf" + (json.dumps(good) + "\n" + json.dumps(other) + "\n").encode())
    assert read_adapter_rows(data, 2) == [good, other]  # a byte-order mark is not part of the first row
    with pytest.raises(ConfigError, match="holds no PRO orchestrator"):
        load_orchestrator(tmp_path)
    # a reward function scoring every row alike has no z-score (the fit's error named no file, trial 19)
    data.write_text(json.dumps(good) + "\n" + json.dumps(dict(good, chosen_rewards=[1.0, 0.5])) + "\n")
    with pytest.raises(DataError, match=r"rows\.jsonl: field 'chosen_rewards': value 0 \(reward function 0, in the "
                                        r"order of reward_funcs\) is 1\.0 in all 2 rows"):
        read_adapter_rows(data, 2)
    varied = [good, dict(good, chosen_rewards=[0.0, 0.5])]
    data.write_text("".join(json.dumps(r) + "\n" for r in varied))
    assert read_adapter_rows(data, 2) == varied
    with pytest.raises(ConfigError, match=r"adapter_loss='bt': the recipe fits the adapter with PRO's loss 'kl'"):
        run_pro(str(tmp_path / "bt"), quiet=True, **{**TINY, "adapter_loss": "bt"})
    assert not (tmp_path / "bt").exists()  # refused before the state file and the data (trial 19: after them)
    data.write_text(json.dumps(good) + "\n" + json.dumps(dict(good, chosen_rewards=[1, 0, 0])) + "\n")
    with pytest.raises(DataError, match="3 values; expected 2"):
        run_pro(str(tmp_path / "run"), quiet=True, adapter_data=str(data), **TINY)


def test_preflab_train_online_with_reward_aggregator_equals_fixed_weights(tmp_path):
    """`reward_aggregator: <folder>` in a task: online config: an adapter with constant weights (0.5, 0.5) trains
    exactly as reward_weights [0.5, 0.5]; refusals name what to change."""
    from preflab.cli import main
    from preflab.reward_models.pro_orchestrator import save_orchestrator

    adapter = PreferenceWeightAdapter(2, 2)
    with torch.no_grad():
        adapter.net.weight.zero_()
        adapter.net.bias.zero_()
    save_orchestrator(tmp_path / "orch", PromptWeights(adapter, PromptFeatures(["shout", "whisper"]),
                                                       ["capitals", "lower_case"]), hidden=0)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p + "\n"}) + "\n" for p in toy_prompts(6, 0)))
    funcs = [f"{__file__}:capitals", f"{__file__}:lower_case"]
    base = {"task": "online", "trainer": "grpo", "online_task": "dataset", "model_name_or_path": "builtin:tiny-llama",
            "dataset_name": str(prompts), "reward_funcs": funcs, "max_steps": 2, "num_generations": 3,
            "prompts_per_generation": 2, "per_device_train_batch_size": 2, "learning_rate": 1e-2, "beta": 0.0,
            "max_completion_length": 6, "use_cpu": True, "disable_tqdm": True, "seed": 0}
    for name, extra in (("fixed", {"reward_weights": [0.5, 0.5]}),
                        ("pro", {"reward_aggregator": str(tmp_path / "orch")})):
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(json.dumps({**base, **extra, "output_dir": str(tmp_path / name)}))
        assert main(["train", str(cfg)]) == 0
    a, b = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("fixed", "pro"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    for extra, match in (({"reward_aggregator": str(tmp_path / "orch"), "reward_weights": [1, 1]},
                          "remove reward_weights"),
                         ({"reward_aggregator": str(tmp_path / "orch"), "reward_funcs": funcs[:1]},
                          r"weighs 2 reward functions \['capitals', 'lower_case'\]; reward_funcs lists 1"),
                         # the adapter's names in another order: its weights would multiply the other function's
                         # reward (trial 19: it ran so without a word)
                         ({"reward_aggregator": str(tmp_path / "orch"), "reward_funcs": funcs[::-1]},
                          r"in the order \['capitals', 'lower_case'\]; reward_funcs lists them as "
                          r"\['lower_case', 'capitals'\]"),
                         ({"reward_aggregator": str(tmp_path)}, "holds no PRO orchestrator")):
        cfg = tmp_path / "bad.yaml"
        cfg.write_text(json.dumps({**base, **extra, "output_dir": str(tmp_path / "bad")}))
        with pytest.raises(ConfigError, match=match):
            from preflab.config import load_config
            from preflab.online.tasks import load_task

            load_task(load_config(str(cfg)))
    with pytest.raises(ConfigError, match="reward_aggregator"):
        config_from_dict({"task": "dpo", "reward_aggregator": str(tmp_path / "orch")}).check()
