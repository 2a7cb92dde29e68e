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
    config_from_dict({**BASE, **options, "temperature": 0.7})
    err = capsys.readouterr().err
    note = "is the judges' reward of one greedy answer per held-out prompt"
    assert (note in err) is said
    if said:
        assert "mean over num_generations_eval completions sampled as in training (temperature 0.7)" in err
