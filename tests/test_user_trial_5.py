"""User trial 5 (today's features used together): each test reproduces a finding and asserts the fixed value."""
from pathlib import Path

import pytest


def test_a_gone_absolute_training_path_is_said_moved_not_a_hub_name(tmp_path, monkeypatch):
    """The overlap check's reason when the run's training data is gone: an absolute dataset_name (as written, or
    launch.json's record of a relative one) was moved or deleted, never 'a hub dataset name'; a relative name that
    is no path here keeps the hub / launch-directory reason."""
    from preflab.eval.run import run_training_rows

    def read(name, split):
        raise AssertionError("nothing is read for a path that does not exist")

    gone = run_training_rows({"dataset_name": str(tmp_path / "data/train.jsonl")}, read)
    assert gone.rows is None or not gone.rows
    assert gone.why == (f"the run's training data {tmp_path / 'data/train.jsonl'} (dataset_name, split train) is gone "
                        "(an absolute path: the file or folder was moved or deleted since the run), and eval downloads "
                        "no training data, so whether the eval rows were trained on was not checked")
    monkeypatch.chdir(tmp_path)
    hub = run_training_rows({"dataset_name": "org/pairs"}, read)
    assert "is no file or folder here (a hub dataset name" in hub.why and "moved or deleted" not in hub.why
    assert not Path("org/pairs").exists()


RLOO_BASE = dict(task="online", trainer="rloo", online_task="dataset", dataset_name="unused", reward_funcs="x",
                 model_name_or_path="builtin:tiny-llama", max_steps=2, eval_fraction=0.25)


def test_rloo_takes_num_generations_eval_and_its_greedy_note_names_rlootrainer():
    """RLOOConfig has num_generations_eval (TRL 1.16's RLOOTrainer samples it at evaluation as GRPOTrainer does):
    trainer rloo takes it, and without it the greedy-evaluation note names RLOOTrainer."""
    from preflab.config import config_from_dict
    from preflab.online_options import greedy_eval_notes

    assert config_from_dict({**RLOO_BASE, "num_generations_eval": 3}).num_generations_eval == 3
    note = greedy_eval_notes(config_from_dict(RLOO_BASE))
    assert len(note) == 1 and "TRL's RLOOTrainer logs eval_reward" in note[0] and "trainer rloo" in note[0]
    assert greedy_eval_notes(config_from_dict({**RLOO_BASE, "num_generations_eval": 2})) == []


def test_an_rloo_run_evaluates_num_generations_eval_sampled_answers(tmp_path, capsys):
    """An rloo run with num_generations_eval 3: its final eval_reward is the mean reward of 3 sampled answers per
    held-out prompt from the trained policy (online.tasks.dataset_evaluate recomputed on it), not one greedy answer."""
    import json

    import torch

    from preflab.config import config_from_dict
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.online.run import OnlineRun
    from preflab.online.tasks import dataset_evaluate

    torch.set_num_threads(1)
    for name, words in (("train", ("ab", "cd")), ("eval", ("ij", "kl"))):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"prompt": f"say {w}\n"}) + "\n" for w in words))
    (tmp_path / "rewards.py").write_text("def e_count(prompts, completions, **kw):\n"
                                         "    return [c.count('e') - 0.01 * len(c) for c in completions]\n")
    cfg = config_from_dict(dict(RLOO_BASE, dataset_name=str(tmp_path / "train.jsonl"), eval_fraction=0.0,
                                eval_dataset_name=str(tmp_path / "eval.jsonl"),
                                reward_funcs=f"{tmp_path / 'rewards.py'}:e_count", learning_rate=1e-3, max_steps=1,
                                num_generations=2, prompts_per_generation=2, per_device_train_batch_size=2,
                                max_completion_length=4, num_generations_eval=3, temperature=1.5, logging_steps=1,
                                disable_tqdm=True, use_cpu=True, output_dir=str(tmp_path / "out")))
    tok = tiny_tokenizer("char")
    policy = tiny_causal_lm(tok, hidden_size=16, num_layers=1, seed=1)
    summary = OnlineRun(cfg, policy=policy, tokenizer=tok).train()
    assert "answered 3 times each, sampled as in training" in capsys.readouterr().out
    judge = lambda prompts, completions, **kw: [c.count("e") - 0.01 * len(c) for c in completions]  # noqa: E731
    want = dataset_evaluate(cfg, [{"prompt": "say ij\n"}, {"prompt": "say kl\n"}], [judge])(policy, tok)
    assert summary["eval_reward_after"] == pytest.approx(want["reward"], rel=1e-12)
    assert len(summary["examples_after"]) == 4
