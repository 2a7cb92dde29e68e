"""A GRPO-family run's evaluation (online_task: dataset with an eval set) differs from TRL's GRPOTrainer in one way,
pinned here and said once by the config: preflab's eval_reward is the judges' reward of ONE GREEDY answer per
held-out prompt (the sampling options do not touch it); TRL averages num_generations_eval completions sampled as in
training."""
import math

import pytest
import torch

from preflab.config import config_from_dict
from preflab.online.tasks import dataset_evaluate

BASE = dict(task="online", online_task="dataset", dataset_name="unused", reward_funcs="x",
            model_name_or_path="builtin:tiny-llama", max_steps=2, max_completion_length=6, disable_tqdm=True,
            use_cpu=True)
PROMPTS = [{"prompt": p} for p in ("the cat", "a tree", "eels", "seven")]


def e_count(prompts, completions, **kwargs):
    """A TRL-style reward function: letters 'e', shorter is better."""
    return [c.count("e") - 0.01 * len(c) for c in completions]


def test_eval_reward_is_the_greedy_answers_reward_whatever_the_sampling_options():
    from preflab.generate import generate_ids
    from preflab.loops.rollout import decode, pad_id_of, prepare_prompts
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=0)
    results = []
    for sampling in ({"temperature": 1.5}, {"temperature": 0.3, "top_k": 2, "top_p": 0.5}):
        cfg = config_from_dict({**BASE, "trainer": "grpo", **sampling})
        results.append(dataset_evaluate(cfg, PROMPTS, [e_count])(model, tok))
    assert results[0]["per_prompt"] == results[1]["per_prompt"]  # the sampling options do not reach evaluation
    rows = prepare_prompts(PROMPTS, tok)
    greedy = generate_ids(model, [r.prompt_ids for r in rows], eos_id=tok.eos_token_id, pad_id=pad_id_of(tok),
                          max_new_tokens=6, do_sample=False)
    want = e_count(None, [decode(tok, ids, False) for ids in greedy])
    assert results[0]["per_prompt"] == pytest.approx(want, rel=0, abs=1e-12)
    assert results[0]["reward"] == pytest.approx(math.fsum(want) / len(want), rel=1e-12)


@pytest.mark.parametrize("options, said", [
    ({"trainer": "grpo", "eval_fraction": 0.25}, True),
    ({"trainer": "dapo", "eval_dataset_name": "held.jsonl"}, True),
    ({"trainer": "grpo"}, False),  # no eval set: no evaluation to speak of
    ({"trainer": "online_dpo", "eval_fraction": 0.25}, False),  # not a GRPOConfig recipe
])
def test_a_grpo_run_with_an_eval_set_is_told_its_eval_reward_is_greedy(options, said, capsys):
    from preflab.online_options import greedy_eval_notes

    cfg = config_from_dict({**BASE, **options, "temperature": 0.7})
    assert capsys.readouterr().err == ""  # loading the config says nothing: the training driver says it (below)
    notes = greedy_eval_notes(cfg)
    assert len(notes) == int(said)
    if said:
        assert "is the judges' reward of one greedy answer per held-out prompt" in notes[0]
        assert "mean over num_generations_eval completions sampled as in training (temperature 0.7)" in notes[0]


NOTE = "is the judges' reward of one greedy answer per held-out prompt"


def test_the_greedy_eval_note_is_said_once_when_the_run_trains(tmp_path, capsys):
    """trl-gaps-4 said it at every config load (preflab plan, a saved config read back); now once, at the start of
    training, beside the driver's other start-of-run notes."""
    import json

    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.online.run import OnlineRun

    for name, words in (("train", ("ab", "cd")), ("eval", ("ij",))):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"prompt": f"say {w}\n"}) + "\n" for w in words))
    (tmp_path / "rewards.py").write_text("def length(prompts, completions, **kw):\n"
                                         "    return [float(len(c)) for c in completions]\n")
    cfg = config_from_dict(dict(task="online", trainer="grpo", online_task="dataset",
                                dataset_name=str(tmp_path / "train.jsonl"),
                                eval_dataset_name=str(tmp_path / "eval.jsonl"),
                                reward_funcs=f"{tmp_path / 'rewards.py'}:length", model_name_or_path="builtin:tiny-llama",
                                learning_rate=1e-12, max_steps=1, num_generations=2, prompts_per_generation=2,
                                per_device_train_batch_size=2, max_completion_length=3, logging_steps=1,
                                disable_tqdm=True, use_cpu=True, output_dir=str(tmp_path / "out")))
    assert NOTE not in capsys.readouterr().err
    tok = tiny_tokenizer("char")
    OnlineRun(cfg, policy=tiny_causal_lm(tok, hidden_size=16, num_layers=1, seed=1), tokenizer=tok).train()
    assert capsys.readouterr().err.count(NOTE) == 1


def test_preflab_plan_of_a_grpo_config_does_not_say_it(tmp_path, capsys):
    """preflab plan loads the config and trains nothing: no note about the evaluation of a run it does not start.
    (preflab eval reads a run's saved config.yaml as plain options, never through the config loader.)"""
    from preflab.cli import main

    (tmp_path / "grpo.yaml").write_text("task: online\ntrainer: grpo\nonline_task: dataset\n"
                                        "dataset_name: unused\nreward_funcs: x\neval_fraction: 0.25\n"
                                        "model_name_or_path: builtin:tiny-llama\nmax_steps: 2\nuse_cpu: true\n")
    main(["plan", str(tmp_path / "grpo.yaml")])
    captured = capsys.readouterr()
    assert NOTE not in captured.err + captured.out
