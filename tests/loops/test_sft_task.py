"""task: sft — the completion NLL against a hand computation, packing equals padding, TRL's row forms, the run."""
import json
import random
from pathlib import Path

import pytest
import torch

from preflab.config import config_from_dict
from preflab.errors import ConfigError, DataError
from preflab.data.report import TokenizeReport
from preflab.loops.sft import SFTKind, SFTLoss, SFTTrainer, TokenizedSFT, collate_sft, tokenize_sft_row
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from preflab.scoring.lm import LogProbScorer

ROOT = Path(__file__).resolve().parents[2]


def _items(n=5, seed=0):
    rng = random.Random(seed)
    draw = lambda k: [rng.randrange(6, 200) for _ in range(k)]  # noqa: E731
    return [TokenizedSFT(i, [1] + draw(rng.randrange(1, 6)), draw(rng.randrange(1, 7)) + [2]) for i in range(n)]


def _hand_nll(model, items) -> float:
    """sum over completion tokens of -log p(token | everything before it), over the number of completion tokens,
    from full-vocabulary logits of each sequence run alone."""
    total, count = 0.0, 0
    with torch.no_grad():
        for x in items:
            ids = x.prompt_ids + x.completion_ids
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
            for t in range(len(x.prompt_ids), len(ids)):
                total -= float(logp[t - 1, ids[t]])
                count += 1
    return total / count


@pytest.fixture(scope="module")
def model_and_tok():
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, arch="llama", seed=0)
    model.config._attn_implementation = "sdpa"
    return model.eval(), tok


@pytest.mark.parametrize("packing", [False, True])
def test_sft_loss_is_the_hand_computed_completion_nll(model_and_tok, packing):
    model, _ = model_and_tok
    items = _items()
    layout = collate_sft(items, pad_id=0, packing=packing, max_row_tokens=24 if packing else None)
    with torch.no_grad():
        loss = SFTLoss()(SFTKind.split(LogProbScorer(model)(layout), None, {})).loss
    assert abs(float(loss) - _hand_nll(model, items)) < 1e-5


def test_packed_rows_hold_several_sequences_and_equal_the_padded_loss(model_and_tok):
    model, _ = model_and_tok
    items = _items(8, seed=3)
    padded, packed = collate_sft(items, 0, False), collate_sft(items, 0, True, max_row_tokens=32)
    assert packed.input_ids.shape[0] < len(items)  # really packed (several sequences per row)
    with torch.no_grad():
        a = SFTLoss()(SFTKind.split(LogProbScorer(model)(padded), None, {})).loss
        b = SFTLoss()(SFTKind.split(LogProbScorer(model)(packed), None, {})).loss
    assert abs(float(a) - float(b)) < 1e-5


def _cfg(**kw):
    return config_from_dict({"task": "sft", "model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl",
                             "max_length": 64, **kw})


def test_row_forms_and_completion_only_loss(model_and_tok):
    _, tok = model_and_tok
    report = TokenizeReport()
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    text, form = tokenize_sft_row(0, {"text": "echo: hat\nHAT"}, tok, _cfg(), report)
    assert form == "text"
    assert text.prompt_ids + text.completion_ids == [tok.bos_token_id] + enc("echo: hat\nHAT") + [tok.eos_token_id]
    assert len(text.prompt_ids) == 1  # the whole text is the completion
    row = {"prompt": "echo: hat\n", "completion": "HAT"}
    only, form = tokenize_sft_row(1, row, tok, _cfg(), report)
    assert form == "prompt_completion"
    assert tok.decode(only.completion_ids, skip_special_tokens=True) == "HAT"
    assert only.completion_ids[-1] == tok.eos_token_id
    full, _ = tokenize_sft_row(1, row, tok, _cfg(completion_only_loss=False), report)
    assert full.prompt_ids + full.completion_ids == only.prompt_ids + only.completion_ids
    assert len(full.prompt_ids) == 1 and len(full.completion_ids) > len(only.completion_ids)
    cut, _ = tokenize_sft_row(2, {"text": "a b c d e f g h i j k l m n o p"}, tok, _cfg(max_length=5), report)
    assert len(cut.prompt_ids + cut.completion_ids) == 5 and report.response_truncated == 1


def test_bad_row_names_file_row_and_forms(tmp_path, model_and_tok):
    _, tok = model_and_tok
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"text": "ok row"}) + "\n" + json.dumps({"question": "q", "answer": "a"}) + "\n")
    from preflab.loops.sft import prepare_sft

    with pytest.raises(DataError, match=r"d.jsonl row 1.*text.*messages.*prompt"):
        prepare_sft(_cfg(dataset_name=str(data)), tok)
    train, _, report = prepare_sft(_cfg(dataset_name=str(data), on_bad_row="skip"), tok)
    assert len(train) == 1 and report["skipped"] == {"missing_field": 1}


@pytest.mark.parametrize("row,said", [
    ({"prompt": "q", "chosen": " a", "rejected": " b"},
     r"field 'completion': missing: the row is a preference pair \(chosen, rejected\), not an SFT row\. Train pairs "
     "with task: dpo"),
    ({"prompt": "q"}, "field 'completion': missing: the row has a prompt but no completion"),
])
def test_a_preference_or_prompt_only_row_says_what_sft_needs(tmp_path, model_and_tok, row, said):
    """Both said "the row holds ['prompt'], which is not one SFT form", hiding chosen/rejected and the missing
    completion."""
    from preflab.loops.sft import prepare_sft

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=r"d.jsonl row 0 \(line 1\), " + said):
        prepare_sft(_cfg(dataset_name=str(data)), model_and_tok[1])



@pytest.mark.parametrize("label", [False, True, "false"])
def test_an_unpaired_preference_row_is_refused_not_fine_tuned_on(tmp_path, model_and_tok, label):
    """{prompt, completion, label: false} (a KTO row) trained its undesirable completion as an SFT target, silently;
    a `label` that is not a preference label (a category) is still an extra column."""
    from preflab.loops.sft import prepare_sft

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "q", "completion": " a"}) + "\n" +
                    json.dumps({"prompt": "q", "completion": " b", "label": label}) + "\n")
    with pytest.raises(DataError, match=r"d.jsonl row 1 \(line 2\), field 'label': is " + repr(label) + ": the row "
                                        r"is TRL's unpaired preference form \(prompt, completion, label\)"):
        prepare_sft(_cfg(dataset_name=str(data)), model_and_tok[1])
    data.write_text(json.dumps({"prompt": "q", "completion": " b", "label": "sports"}) + "\n")
    assert len(prepare_sft(_cfg(dataset_name=str(data)), model_and_tok[1])[0]) == 1

def test_sft_options_refuse_preference_settings():
    with pytest.raises(ConfigError, match="task: sft.*loss_type"):
        _cfg(loss_type="ipo")
    with pytest.raises(ConfigError, match="packing applies to task: sft"):
        config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x", "packing": True})


@pytest.mark.slow
def test_example_sft_yaml_trains_checkpoints_and_resumes_exactly(tmp_path, monkeypatch):
    """examples/sft.yaml (shipped data, builtin tiny Llama) runs; a resume from its step-2 checkpoint ends with the
    same weights as the uninterrupted run; TRL's metric names are logged."""
    import yaml
    from safetensors.torch import load_file

    monkeypatch.chdir(ROOT)
    torch.set_num_threads(1)
    base = yaml.safe_load((ROOT / "examples/sft.yaml").read_text())
    base.update(max_steps=4, save_steps=2, eval_steps=0, logging_steps=1, disable_tqdm=True, use_cpu=True,
                lr_scheduler_type="constant", warmup_steps=0,  # the same schedule whether the run ends at 2 or 4
                packing=True)
    full = config_from_dict({**base, "output_dir": str(tmp_path / "full")})
    summary = SFTTrainer(full).train()
    rows = [json.loads(x) for x in (tmp_path / "full/metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r and "step" in r]
    assert {"loss", "mean_token_accuracy", "num_tokens"} <= set(train_rows[0])
    assert 0.0 <= summary["final_metrics"]["mean_token_accuracy"] <= 1.0
    half = config_from_dict({**base, "max_steps": 2, "output_dir": str(tmp_path / "part")})
    SFTTrainer(half).train()
    resumed = config_from_dict({**base, "output_dir": str(tmp_path / "part"), "overwrite_output_dir": True,
                                "resume_from_checkpoint": str(tmp_path / "part/checkpoint-2")})
    assert SFTTrainer(resumed).train()["resumed_from_step"] == 2
    a, b = load_file(tmp_path / "full/model.safetensors"), load_file(tmp_path / "part/model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_accumulation_equals_one_big_batch_with_the_global_token_mean(tmp_path, monkeypatch):
    """2 micro-batches x 4 rows == 1 batch of 8 rows: the loss is the token mean over the whole step (TRL's
    num_items_in_batch), not the mean of the micro-batches' token means."""
    from safetensors.torch import load_file

    monkeypatch.chdir(ROOT)
    torch.set_num_threads(1)
    common = {"task": "sft", "model_name_or_path": "builtin:tiny-llama", "learning_rate": 1e-3,
              "dataset_name": "examples/data/loud_echo_sft.jsonl", "max_steps": 2, "logging_steps": 1,
              "lr_scheduler_type": "constant", "disable_tqdm": True, "use_cpu": True, "max_length": 128}
    out = {}
    for name, b, accum in (("big", 8, 1), ("accum", 4, 2)):
        cfg = config_from_dict({**common, "per_device_train_batch_size": b, "gradient_accumulation_steps": accum,
                                "output_dir": str(tmp_path / name)})
        out[name] = (SFTTrainer(cfg).train(), load_file(tmp_path / name / "model.safetensors"))
    assert out["accum"][0]["final_metrics"]["loss"] == pytest.approx(out["big"][0]["final_metrics"]["loss"], abs=1e-6)
    assert out["accum"][0]["final_metrics"]["mean_token_accuracy"] == pytest.approx(
        out["big"][0]["final_metrics"]["mean_token_accuracy"], abs=1e-9)
    for key, value in out["big"][1].items():
        torch.testing.assert_close(out["accum"][1][key], value, rtol=0, atol=1e-6)


def test_conversational_rows_use_the_chat_template(model_and_tok):
    _, tok = model_and_tok
    report = TokenizeReport()
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    messages = [{"role": "user", "content": "echo: hat"}, {"role": "assistant", "content": "HAT"}]
    whole, form = tokenize_sft_row(0, {"messages": messages}, tok, _cfg(), report)
    assert form == "messages"
    assert whole.prompt_ids + whole.completion_ids == enc(tok.apply_chat_template(messages, tokenize=False))
    assert len(whole.prompt_ids) == 1  # every rendered token after the first carries loss
    pc, form = tokenize_sft_row(1, {"prompt": messages[:1], "completion": messages[1:]}, tok, _cfg(), report)
    assert form == "prompt_completion"
    assert pc.prompt_ids + pc.completion_ids == whole.prompt_ids + whole.completion_ids
    assert tok.decode(pc.completion_ids, skip_special_tokens=True).strip() == "HAT"  # loss on the answer only


def test_eval_loss_is_the_hand_computed_token_mean_over_uneven_eval_batches(model_and_tok, tmp_path):
    """evaluate()'s eval_loss is the completion NLL summed over the whole eval set over its completion-token count
    (TRL's token mean), not a mean per example or per batch, and eval_mean_token_accuracy the share of argmax hits
    over the same tokens: eval batches of 2, 2 and 1 rows of different lengths give the hand computation of all
    five together."""
    import copy

    model, tok = model_and_tok
    items = _items()
    cfg = config_from_dict({"task": "sft", "model_name_or_path": "unused", "dataset_name": "synthetic",
                            "output_dir": str(tmp_path), "per_device_eval_batch_size": 2,
                            "per_device_train_batch_size": 1, "use_cpu": True,
                            "save_steps": 0})
    out = SFTTrainer(cfg, policy=copy.deepcopy(model), tokenizer=tok, train_data=items, eval_data=items).evaluate()
    assert out["eval_loss"] == pytest.approx(_hand_nll(model, items), abs=1e-5)
    right, count = 0, 0
    with torch.no_grad():  # the share of completion tokens whose argmax prediction is the target, over all five
        for x in items:
            ids = x.prompt_ids + x.completion_ids
            logits = model(torch.tensor([ids])).logits[0]
            right += sum(int(logits[t - 1].argmax()) == ids[t] for t in range(len(x.prompt_ids), len(ids)))
            count += len(x.completion_ids)
    assert out["eval_mean_token_accuracy"] == pytest.approx(right / count)
