"""`preflab train examples/tools/itool.yaml`: the iTool recipe runs from the shipped config, refuses to overwrite a
finished state, and an interrupted run resumed ends with exactly the weights and metrics of an uninterrupted one."""
import json

import pytest
import torch
from safetensors.torch import load_file

from preflab.cli import main
from preflab.tool_use import itool
from preflab.tool_use.itool_task import make_itool_rows

# a test-size run: few rows, few steps, a tiny search; accept_value is lowered so the barely trained model's pairs
# pass the chosen-value floor and SimPO runs in both iterations
SMALL = ("{n_train: 40, n_test: 6, pool_size: 14, sft_steps: 3, iterations: 2, mcts_iters: 2, num_actions: 2, "
         "hidden_size: 32, max_new_tokens: 24, accept_value: -10.0}")


def _summary(out):
    return json.loads((out / "summary.json").read_text())


def _final_weights(out):
    state = json.loads((out / itool.STATE_FILE).read_text())
    return state["weights"], load_file(str(out / state["weights"]["itool"] / "model.safetensors"))


@pytest.mark.slow
def test_itool_runs_from_the_shipped_config_and_resumes_exactly(tmp_path, capsys):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    args = ["train", "examples/tools/itool.yaml", f"output_dir={whole}", f"recipe_params={SMALL}"]
    assert main(args) == 0
    full = _summary(whole)
    assert full["metric_name"] == "call_accuracy" and full["baseline"] == itool.BASELINE
    assert full["metric_before"] == full["warmup"]["sft_3_hard"]["call_accuracy"]
    assert full["metric_after"] == full["iterations"]["iter_2"]["eval"]["call_accuracy"]
    for t in ("iter_1", "iter_2"):
        record = full["iterations"][t]
        assert record["simpo_steps"] > 0 and record["pairs"]["kept"] > 0
        assert record["selected"] == record["selected_tool"] + record["selected_plain"] >= 1
        assert record["pairs"]["candidates"] == record["pairs"]["kept"] + sum(
            v for k, v in record["pairs"].items() if k.startswith("dropped_"))
    assert full["control_after"] is not None and len(full["examples_after"]) == 6
    # easy to hard: warm-up stage k trains on every training row of difficulty (arguments) up to its bucket's
    train = [json.loads(line) for line in (whole / "data" / "train.jsonl").read_text().splitlines()]
    for stage, most in (("sft_1_easy", 1), ("sft_2_medium", 2), ("sft_3_hard", 99)):
        rows = [json.loads(line) for line in (whole / "data" / f"{stage}.jsonl").read_text().splitlines()]
        assert rows == [{"prompt": r["prompt"], "completion": r["gold"]} for r in train if r["difficulty"] <= most]
        assert full["warmup"][stage]["rows"] == len(rows)

    assert main(args) == 2 and "resume_from_checkpoint" in capsys.readouterr().err  # a state exists: refuse

    small_stop = SMALL[:-1] + ", stop_after_stage: iter_1}"
    assert main(["train", "examples/tools/itool.yaml", f"output_dir={parts}", f"recipe_params={small_stop}"]) == 0
    stopped = _summary(parts)
    assert stopped["stopped_after_stage"] == "iter_1" and "iter_2" not in stopped["iterations"]
    assert main(["train", "examples/tools/itool.yaml", f"output_dir={parts}", "resume_from_checkpoint=true",
                 f"recipe_params={SMALL}"]) == 0
    resumed = _summary(parts)
    assert "iter_2" in resumed["iterations"]
    weights_a, tensors_a = _final_weights(whole)
    weights_b, tensors_b = _final_weights(parts)
    assert weights_a == weights_b == {"itool": "iter_2/simpo", "control": "control_2"}
    assert tensors_a.keys() == tensors_b.keys()
    assert all(torch.equal(tensors_a[k], tensors_b[k]) for k in tensors_a)
    drop = ("runtime_s", "params", "stopped_after_stage")
    for key in set(full) - set(drop):
        if key == "iterations":
            for t, record in full[key].items():
                trimmed = {k: v for k, v in record.items() if not k.endswith("_seconds")}
                assert trimmed == {k: v for k, v in resumed[key][t].items() if not k.endswith("_seconds")}, t
        else:
            assert resumed[key] == full[key], key
    assert (whole / "iter_1" / "pairs.jsonl").read_text() == (parts / "iter_1" / "pairs.jsonl").read_text()
    # the model the recipe started from (RUN/start/, preflab.recipe_start): saved once, before the warm-up, by the
    # stopped session, equal to the whole run's; the warm-up trained away from it
    start_a, start_b = (load_file(str(out / "start" / "model.safetensors")) for out in (whole, parts))
    warm = load_file(str(whole / "sft_1_easy" / "model.safetensors"))
    assert start_a.keys() == start_b.keys() and all(torch.equal(start_a[k], start_b[k]) for k in start_a)
    assert not all(torch.equal(start_a[k], warm[k]) for k in warm)


def test_resume_refuses_changed_options(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / itool.STATE_FILE).write_text(json.dumps({"params": {"seed": 0, "n_train": 10}, "stages": {},
                                                      "weights": {"itool": None, "control": None}}))
    with pytest.raises(itool.ConfigError, match="differ from the interrupted run"):
        itool.run_itool(str(out), resume=True, n_train=40, pool_size=10)


def test_planted_model_output_is_counted_not_run(tmp_path, monkeypatch):
    """The recipe's evaluation parses whatever the model writes: planted code is an invalid call, counted."""
    target = tmp_path / "pwned"
    planted = [f"[__import__('os').system('touch {target}')]", f"[open('{target}', 'w').write('x')]"]
    monkeypatch.setattr(itool, "generate_text", lambda model, tok, ids, **kw: planted[:len(ids)])
    rows = make_itool_rows(2, seed=0)
    metrics, examples = itool.call_accuracy(None, itool.tiny_tokenizer("char"), rows, max_new_tokens=8)
    assert metrics["invalid_calls"] == 2 and metrics["call_accuracy"] == 0.0
    assert [e["output"] for e in examples] == planted and not target.exists()


def _naive_logps(model, prefix: list[int], continuation: list[int]) -> list[float]:
    ids = torch.tensor([prefix + continuation])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float().log_softmax(-1)
    return [float(logits[len(prefix) - 1 + k, t]) for k, t in enumerate(continuation)]


def test_batched_sampler_log_probs_and_budgets_match_the_model():
    """ModelSampler.sample_many left-pads requests of different lengths into one generate call: each sample's token
    log-probs equal the model's own (temperature 1) on that sequence, and each request's budget is kept."""
    tok = itool.tiny_tokenizer("char")
    model = itool.tiny_causal_lm(tok, arch="llama", hidden_size=32, num_layers=2, num_heads=4, seed=3)
    enc = lambda text: [tok.bos_token_id] + itool._encode(tok, text)
    requests = [itool.SampleRequest(tuple(enc("Q: time in Oslo\nA: ")), tuple(itool._encode(tok, "[get_")), 2, 7,
                                    ("a", 1)),
                itool.SampleRequest(tuple(enc("Q: hi\nA: ")), (), 1, 3, ("b", 1))]
    sampler = itool.ModelSampler(model, tok, temperature=1.0)
    out = sampler.sample_many(requests)
    assert [len(group) for group in out] == [2, 1]
    for request, group in zip(requests, out):
        for sample in group:
            assert len(sample.ids) <= request.max_new_tokens
            assert sample.stopped == (tok.eos_token_id in sample.ids)
            assert sample.text == tok.decode(sample.ids, skip_special_tokens=True)
            naive = _naive_logps(model, list(request.prompt_ids + request.response_ids), sample.ids)
            assert sample.logps == pytest.approx(naive, abs=1e-4)
    assert sampler.sample_many(requests)[0][0].ids == out[0][0].ids  # seeded by the keys


def test_batched_sampler_keeps_the_eos_of_a_stopped_sample():
    """A sample that ends with the end-of-sequence token keeps it (ids, log-prob and stopped), as iTool's step pairs
    carry the final step's eos; here the model is made to say eos at once (+100 on its logit)."""
    tok = itool.tiny_tokenizer("char")
    model = itool.tiny_causal_lm(tok, arch="llama", hidden_size=32, num_layers=1, num_heads=4, seed=3)

    def eos_first(module, inputs, output):
        output.logits[..., tok.eos_token_id] += 100.0
        return output

    model.register_forward_hook(eos_first)
    prompt = tuple([tok.bos_token_id] + itool._encode(tok, "Q: hi\nA: "))
    (group,) = itool.ModelSampler(model, tok, temperature=1.0).sample_many([itool.SampleRequest(prompt, (), 2, 5,
                                                                                                ("a", 1))])
    for sample in group:
        assert sample.ids == [tok.eos_token_id] and sample.stopped and sample.text == ""
        assert sample.logps == pytest.approx([0.0], abs=1e-4)


def test_gold_perplexity_is_exp_mean_nll_of_the_reply_and_eos():
    tok = itool.tiny_tokenizer("char")
    model = itool.tiny_causal_lm(tok, arch="llama", hidden_size=32, num_layers=2, num_heads=4, seed=4)
    rows = make_itool_rows(3, seed=9)
    got = itool.gold_perplexities(model, tok, rows, batch_size=2)
    for row, ppl in zip(rows, got):
        reply = itool._encode(tok, row["gold"]) + [tok.eos_token_id]
        naive = _naive_logps(model, [tok.bos_token_id] + itool._encode(tok, row["prompt"]), reply)
        assert ppl == pytest.approx(float(torch.tensor(naive).neg().mean().exp()), rel=1e-4)


def test_step_pairs_become_token_pairs_with_the_prompt_and_the_response_so_far():
    pair = {"item": 7, "prefix_ids": [11, 12], "chosen_ids": [13, 2], "rejected_ids": [14]}
    (tokenized,) = itool._pairs_data([pair], {7: [1, 9, 10]})
    assert (tokenized.prompt_ids, tokenized.chosen_ids, tokenized.rejected_ids) == ([1, 9, 10, 11, 12], [13, 2], [14])
