"""Options a task: online run accepted and never read: pad_to_multiple_of (rows kept their own width),
gradient_checkpointing on a policy given from Python (only loaded models got it), and the Python API's
save_model=False (the final weights were written anyway)."""
import json

import pytest
import torch

from preflab.errors import ConfigError
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from preflab.scoring.lm import LogProbScorer

from test_online_run import PROMPTS, e_judge, tiny_cfg, tiny_run


def _rows(out) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def _widths(monkeypatch) -> list[int]:
    """The row width of every layout the run scores (policy, reference, round-start policy)."""
    widths, forward = [], LogProbScorer.forward

    def spy(self, layout, *args, **kwargs):
        widths.append(layout.input_ids.shape[1])
        return forward(self, layout, *args, **kwargs)

    monkeypatch.setattr(LogProbScorer, "forward", spy)
    return widths


@pytest.mark.parametrize("over", [dict(trainer="online_dpo"), dict(trainer="online_dpo", layout="padded"),
                                  dict(trainer="dapo", beta=0.04)])
def test_online_pad_to_multiple_of_rounds_every_scored_row_and_trains_the_same(tmp_path, monkeypatch, over):
    plain = tiny_run(tiny_cfg(tmp_path / "plain", max_steps=2, **over))
    plain.train()
    widths = _widths(monkeypatch)
    rounded = tiny_run(tiny_cfg(tmp_path / "rounded", max_steps=2, pad_to_multiple_of=16, **over))
    rounded.train()
    assert widths and all(w % 16 == 0 for w in widths), widths  # before: the rows' own widths (e.g. 11, 13)
    # exact but for float rounding (another width, another reduction order): the added positions are padding
    for p, r in zip(_rows(tmp_path / "plain"), _rows(tmp_path / "rounded"), strict=True):
        assert r["loss"] == pytest.approx(p["loss"], abs=1e-6)
    a, b = plain.policy.state_dict(), rounded.policy.state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 5e-5  # Adam at lr 1e-2 moved them by ~1e-2


def test_online_gradient_checkpointing_reaches_a_policy_given_from_python(tmp_path):
    plain = tiny_run(tiny_cfg(tmp_path / "plain", max_steps=2))
    assert not plain.policy.is_gradient_checkpointing
    plain.train()
    run = tiny_run(tiny_cfg(tmp_path / "ckpt", max_steps=2, gradient_checkpointing=True))
    assert run.policy.is_gradient_checkpointing  # before: only a model preflab loaded itself got it
    run.train()
    a, b = plain.policy.state_dict(), run.policy.state_dict()
    # recomputed activations, same step: float32 recomputation in another kernel order moves a weight whose gradient
    # is near Adam's eps by up to 1.7e-5 (AVX-512); a different step moves weights by about lr = 1e-2
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-4


def test_online_gradient_checkpointing_refuses_a_policy_without_it(tmp_path):
    class Plain(torch.nn.Module):
        pass

    from preflab.models.load import enable_gradient_checkpointing

    with pytest.raises(ConfigError, match="gradient_checkpointing: the policy \\(Plain\\) has no"):
        enable_gradient_checkpointing(Plain())


@pytest.mark.parametrize("api", ["online_dpo", "grpo_train"])
def test_online_api_save_model_false_writes_no_final_weights(tmp_path, api):
    from preflab.online import api as online_api

    tok = tiny_tokenizer("char")
    common = dict(max_completion_length=4, num_generations=2, per_device_train_batch_size=4, use_cpu=True)
    if api == "online_dpo":
        call = lambda out, **kw: online_api.online_dpo(tiny_causal_lm(tok, hidden_size=32, seed=1), tok,  # noqa: E731
                                                        PROMPTS[:4], e_judge, num_iterations=1, output_dir=str(out),
                                                        **common, **kw)
    else:
        call = lambda out, **kw: online_api.grpo_train(tiny_causal_lm(tok, hidden_size=32, seed=1), tok,  # noqa: E731
                                                        PROMPTS[:4], e_judge, max_steps=1, prompts_per_step=4,
                                                        output_dir=str(out), **common, **kw)
    kept = call(tmp_path / "kept")
    assert (tmp_path / "kept" / "model.safetensors").is_file() and "final_model_saved" not in kept
    dropped = call(tmp_path / "dropped", save_model=False)
    assert not (tmp_path / "dropped" / "model.safetensors").exists()  # before: written anyway
    assert dropped["final_model_saved"] is False and (tmp_path / "dropped" / "summary.json").is_file()
    with pytest.raises(ConfigError, match="save_model must be true or false, got 'no'"):
        call(tmp_path / "bad", save_model="no")


def test_online_truncation_mode_keep_end_keeps_the_prompts_end(tmp_path):
    """truncation_mode reaches the online prompts (it was accepted and not passed on): keep_end and unset keep a long
    prompt's end (a leading bos kept); keep_start is refused by the config (test_online_truncation_mode.py)."""
    rows = {}
    for mode in ("keep_end", None):
        rows[mode] = tiny_run(tiny_cfg(tmp_path / str(mode), max_prompt_length=4, truncation_mode=mode)).rows
    whole = tiny_run(tiny_cfg(tmp_path / "whole")).rows
    assert all(len(r.prompt_ids) > 4 for r in whole)
    for mode in ("keep_end", None):  # the bos token and the last 3
        assert [r.prompt_ids for r in rows[mode]] == [r.prompt_ids[:1] + r.prompt_ids[-3:] for r in whole]
