"""Regressions from a second reward-model user's trial (a TRL RewardTrainer user): what was silently different from
TRL or wrong, each now right or loud."""
import json

import pytest
import torch


@pytest.fixture(scope="module")
def tok():
    from preflab.models.tiny import tiny_tokenizer

    return tiny_tokenizer()


def _pair(prompt, chosen, rejected):
    from preflab.data.examples import PairExample

    return PairExample(0, prompt, chosen, rejected)


def test_reward_pairs_are_the_joint_tokenization_of_prompt_and_response_as_trl(tok):
    """A prompt ending in a space ("pick: ") merges with the response's first letter ("Ġa"). TRL's RewardTrainer
    tokenizes prompt + response as one text, and so does a user scoring with AutoModelForSequenceClassification;
    preflab trained on the prompt's own ids + the response tokenized alone (["Ġ", "a"]): another sequence."""
    from preflab.reward_models.data import tokenize_reward_pairs

    (pair,), _ = tokenize_reward_pairs([_pair("pick: ", "apple", "banana")], tok)
    for side, text in ((pair.chosen_ids, "apple"), (pair.rejected_ids, "banana")):
        assert pair.prompt_ids + side == tok("pick: " + text + tok.eos_token)["input_ids"]


def test_a_reward_judge_scores_the_ids_a_plain_transformers_user_scores(tok, tmp_path):
    """load_judge(...).score and AutoModelForSequenceClassification on tokenizer(prompt + response + eos) agree, also
    where a token spans the prompt/response boundary."""
    from transformers import AutoModelForSequenceClassification

    from preflab.reward_models.heads import build_reward_model, set_reward_config
    from preflab.reward_models.interface import load_judge

    model = build_reward_model("builtin:tiny-llama", 1, tok, seed=0)
    set_reward_config(model, {"head": "bt", "tau": 1.0})
    model.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    prompts, responses = ["pick: ", "say "], ["apple", "hello there"]
    judged = load_judge(str(tmp_path)).score(prompts, responses)
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        expected = [plain(torch.tensor([tok(p + r + tok.eos_token)["input_ids"]])).logits[0, 0].item()
                    for p, r in zip(prompts, responses)]
    torch.testing.assert_close(judged, torch.tensor(expected), rtol=0, atol=1e-6)


def _reward_cfg(tmp_path, data, **kw):
    from preflab.config import config_from_dict

    return config_from_dict({"task": "reward", "model_name_or_path": "builtin:tiny-llama", "dataset_name": str(data),
                             "per_device_train_batch_size": 4, "max_steps": 2, "learning_rate": 1e-3,
                             "logging_steps": 1, "use_cpu": True, "seed": 0, "output_dir": str(tmp_path), **kw})


def _pairs_file(tmp_path, n=8):
    from reward_synthetic import marker_rows

    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in marker_rows(n, seed=0)))
    return path


def test_reward_runs_pad_rows_to_pad_to_multiple_of_with_the_same_loss(tmp_path, monkeypatch):
    """RewardConfig's pad_to_multiple_of was accepted by task: reward and ignored (rows kept their own width)."""
    from preflab.reward_models.train import RewardRun, train_reward

    data, widths = _pairs_file(tmp_path), []
    forward = RewardRun.forward

    def recording(self, mb):
        widths.append(mb.layout.input_ids.shape[1])
        return forward(self, mb)

    plain = train_reward(_reward_cfg(tmp_path / "plain", data))
    monkeypatch.setattr(RewardRun, "forward", recording)
    rounded = train_reward(_reward_cfg(tmp_path / "rounded", data, pad_to_multiple_of=64))
    assert widths and all(w % 64 == 0 for w in widths)
    for key in ("loss", "accuracy", "margin"):
        assert rounded["final_metrics"][key] == pytest.approx(plain["final_metrics"][key], abs=1e-6)


def test_reward_task_refuses_chunk_tokens_and_says_lora_task_type_seq_cls_is_what_it_does(capsys):
    """chunk_tokens (the LM-head chunk) was accepted by task: reward and ignored; TRL's reward-model LoRA recipe
    `lora_task_type: SEQ_CLS` got the note "adapters are always built for CAUSAL_LM", false for a reward model."""
    from preflab.config import config_from_dict
    from preflab.errors import ConfigError

    base = {"task": "reward", "model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl"}
    with pytest.raises(ConfigError, match="chunk_tokens .* no LM head"):
        config_from_dict({**base, "chunk_tokens": 64})
    config_from_dict({**base, "use_peft": True, "lora_task_type": "SEQ_CLS"})
    assert "CAUSAL_LM" not in capsys.readouterr().err
    config_from_dict({**base, "use_peft": True, "lora_task_type": "CAUSAL_LM"})
    assert "builds its adapters for SEQ_CLS" in capsys.readouterr().err


def test_attribute_reward_model_names_its_outputs_in_id2label(tmp_path):
    """A DPA (multi_objective) model loaded with AutoModelForSequenceClassification showed LABEL_0, LABEL_1 for its
    outputs; the attribute names were only in preflab's own config entry."""
    from transformers import AutoConfig

    from reward_synthetic import rated_rows

    from preflab.reward_models.train import train_reward

    data = tmp_path / "rated.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rated_rows(8, seed=0)))
    train_reward(_reward_cfg(tmp_path / "run", data, max_steps=1, reward_head="multi_objective",
                             reward_head_params={"attributes": ["helpfulness", "verbosity"]}))
    config = AutoConfig.from_pretrained(tmp_path / "run")
    assert config.id2label == {0: "helpfulness", 1: "verbosity"}
    assert config.label2id == {"helpfulness": 0, "verbosity": 1}
    from preflab.errors import ConfigError
    from preflab.reward_models.eval import evaluate_reward_model

    # was: "use ...multi_objective", then "its held-out error is eval_mse ..."; now the eval that evaluates it
    with pytest.raises(ConfigError, match=r"attribute \(DPA\).*preflab eval DIR --task reward.*direction="):
        evaluate_reward_model(str(tmp_path / "run"), [{"prompt": "a", "chosen": " b", "rejected": " c"}])


def test_reward_data_drops_pairs_longer_than_max_length_as_trl_and_says_so(tmp_path, tok, capsys):
    """TRL's RewardTrainer filters out pairs longer than max_length; preflab cut their responses (rewards read
    mid-text, without eos). Now dropped as TRL does, counted in the data report, and said with what to do."""
    from preflab.reward_models.data import load_reward_pairs

    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"prompt": "the cat", "chosen": " sat on the mat " * 6, "rejected": " ran"}) + "\n"
                    + json.dumps({"prompt": "a", "chosen": " good", "rejected": " bad"}) + "\n")
    cfg = _reward_cfg(tmp_path, data, max_length=16)
    train, _, report, _ = load_reward_pairs(cfg, tok)
    assert [p.row_id for p in train] == [1]
    assert report["train_tokenize"]["skipped"] == {"longer_than_max_length": 1}
    out = capsys.readouterr().out
    assert "1 skipped (longer_than_max_length: 1)" in out
    assert "1 pairs are longer than max_length=16 tokens and were dropped" in out and "raise max_length" in out
    train, _, _, _ = load_reward_pairs(_reward_cfg(tmp_path, data, max_length=None), tok)
    assert len(train) == 2 and "were dropped" not in capsys.readouterr().out


def test_an_rpr_row_and_a_pre_tokenized_row_are_named_with_what_to_do(tmp_path):
    """microsoft/rpr rows {prompt, response_a, response_b, criteria_x, criteria_y} were refused as a pair 'missing'
    chosen, with no word of preflab's own expand_rpr_rows; the expansion itself gives two opposite context rows."""
    from preflab.data.rows import load_rows
    from preflab.errors import DataError
    from preflab.reward_models.context import expand_rpr_rows

    row = {"prompt": "p", "response_a": "short", "response_b": "long answer", "criteria_x": "brief",
           "criteria_y": "detailed"}
    data = tmp_path / "rpr.jsonl"
    data.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match="RPR context row.*expand_rpr_rows"):
        load_rows(str(data), kind="pairwise")
    with pytest.raises(DataError, match="pre-tokenized row.*chosen_ids, rejected_ids.*text columns"):  # TRL's form
        load_rows([{"chosen_ids": [1, 5, 2], "rejected_ids": [1, 6, 2]}], kind="pairwise")
    examples, _ = load_rows(expand_rpr_rows([row]), kind="pairwise")
    assert [(ex.extras["context"], ex.chosen, ex.rejected) for ex in examples] == [
        ("brief", "short", "long answer"), ("detailed", "long answer", "short")]
    from preflab.data.holdout import split_eval_fraction  # eval_fraction keeps an RPR row's two pairs together

    many, _ = load_rows(expand_rpr_rows([dict(row, prompt=f"p{i}") for i in range(10)]), kind="pairwise")
    train, held = split_eval_fraction(many, 0.3, seed=0)
    assert held and {ex.prompt for ex in held}.isdisjoint({ex.prompt for ex in train})


def test_a_trl_trained_reward_model_judges_on_the_ids_trl_trained_it_on(tok, tmp_path):
    """A sequence-classification reward model from TRL's RewardTrainer (no preflab config) as `reward_funcs: DIR`
    was scored on tokenizer(prompt + response) without the eos TRL appends, and chat prompts on their message
    contents glued together without the chat template TRL trains with."""
    from transformers import AutoModelForSequenceClassification

    from preflab.online.tasks import resolve_judge
    from preflab.reward_models.heads import build_reward_model

    build_reward_model("builtin:tiny-llama", 1, tok, seed=0).save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    judge = resolve_judge(str(tmp_path))
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    prompts, responses = ["the cat ", "say"], ["sat", " hello"]
    chat_prompt, chat_response = [{"role": "user", "content": "hi"}], [{"role": "assistant", "content": "hello"}]
    trl_ids = [tok(p + r + tok.eos_token)["input_ids"] for p, r in zip(prompts, responses)]
    trl_ids.append(tok.apply_chat_template(chat_prompt + chat_response, tokenize=True, return_dict=True)["input_ids"])
    with torch.no_grad():
        expected = torch.tensor([plain(torch.tensor([ids])).logits[0, 0].item() for ids in trl_ids])
    got = torch.cat([judge.score(prompts, responses), judge.score([chat_prompt], [chat_response])])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_an_em_mixture_run_is_named_instead_of_a_transformers_traceback(tmp_path):
    """`preflab eval RUN --task reward` (and load_judge, reward_funcs: RUN) on a MaxMin em_mixture run ended in
    transformers' `ValueError: Unrecognized model ... model_type`; a folder without a model likewise."""
    from preflab.errors import ConfigError
    from preflab.reward_models.heads import load_reward_model

    (tmp_path / "mixture.json").write_text(json.dumps({"components": ["em-iter-2/component-0"]}))
    with pytest.raises(ConfigError, match="em_mixture run.*component-0.*maxmin:"):
        load_reward_model(str(tmp_path))
    (tmp_path / "mixture.json").unlink()
    with pytest.raises(ConfigError, match="holds no model"):
        load_reward_model(str(tmp_path))
    (tmp_path / "with_traces").mkdir()  # a recipe's run (Themis): its models sit in subfolders
    (tmp_path / "with_traces" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="holds no model.*these folders in it do.*with_traces"):
        load_reward_model(str(tmp_path))


def test_reward_eval_and_judge_cap_max_length_to_the_models_positions(tok):
    """`preflab eval --task reward` (default --max-length 1024) and a RewardModel judge on a GPT-2-style model with
    512 learned positions ended in `IndexError: index out of range in self` on a long pair; training caps it."""
    from preflab.reward_models.eval import evaluate_reward_model
    from preflab.reward_models.heads import build_reward_model
    from preflab.reward_models.interface import RewardModel

    model = build_reward_model("builtin:tiny-gpt2", 1, tok, seed=0)
    positions = model.config.n_positions
    long_text = " kit cat" * positions  # more tokens than positions
    rows = [{"prompt": "echo:", "chosen": long_text, "rejected": " short"},
            {"prompt": "a", "chosen": " good", "rejected": " bad"}]
    result = evaluate_reward_model(model, rows, tokenizer=tok)
    assert result["num_pairs"] == 1 and result["skipped"] == {"longer_than_max_length": 1}  # dropped, as TRL does
    assert result["max_length"] == positions
    scores = RewardModel(model, tok).score(["echo:"], [long_text])
    assert scores.shape == (1,) and RewardModel(model, tok).max_length == positions


def test_a_direction_of_the_wrong_length_is_a_config_error_naming_the_attributes(tok):
    """RewardModel(..., direction=v) on a DPA model with len(v) != its number of attributes ended in
    `RuntimeError: size mismatch` at the first score."""
    from preflab.errors import ConfigError
    from preflab.reward_models.heads import build_reward_model, set_reward_config
    from preflab.reward_models.interface import RewardModel

    model = build_reward_model("builtin:tiny-llama", 2, tok, seed=0)
    set_reward_config(model, {"head": "multi_objective", "attributes": ["helpfulness", "verbosity"]})
    with pytest.raises(ConfigError, match=r"one weight per output.*helpfulness.*give 2 numbers"):
        RewardModel(model, tok, direction=[1.0, 0.0, 0.0])
    out = RewardModel(model, tok).outputs(["a"], [" b"])
    torch.testing.assert_close(RewardModel(model, tok, direction=[0.6, 0.8]).score(["a"], [" b"]),
                               out @ torch.tensor([0.6, 0.8]))


def test_preflab_eval_reward_reports_the_runs_eval_loss_and_margin(tmp_path):
    """`preflab eval --task reward` gave accuracy and mean_logit only: no TRL `loss` / `margin` / min-mean-max reward
    to set beside the training run's eval_* metrics. Now the same numbers as the run's final evaluation."""
    from preflab.reward_models.eval import evaluate_reward_model
    from preflab.reward_models.train import train_reward

    data = _pairs_file(tmp_path)
    rows = [dict(json.loads(line), margin=0.5 * i) for i, line in enumerate(data.read_text().splitlines())]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = train_reward(_reward_cfg(tmp_path / "run", data, eval_dataset_name=str(data), max_steps=1))
    final = summary["final_metrics"]
    result = evaluate_reward_model(str(tmp_path / "run"), str(data))
    for key in ("loss", "accuracy", "margin", "min_reward", "mean_reward", "max_reward"):
        assert result[key] == pytest.approx(final[f"eval_{key}"], abs=1e-5), key


def test_a_reward_head_on_a_causal_lm_starts_from_the_seed(tok, tmp_path):
    """The usual start of a reward model, an SFT (causal LM) directory, got its fresh score head from whatever the
    global RNG held: two runs with the same seed trained different models (TRL calls set_seed first)."""
    from preflab.models.tiny import tiny_causal_lm
    from preflab.reward_models.heads import build_reward_model

    tiny_causal_lm(tok).save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    heads = []
    for noise in (1, 2):
        torch.manual_seed(noise)  # whatever ran before in the process
        heads.append(build_reward_model(str(tmp_path), 1, tok, seed=7).score.weight.detach().clone())
    torch.testing.assert_close(heads[0], heads[1], rtol=0, atol=0)
    other = build_reward_model(str(tmp_path), 1, tok, seed=8).score.weight
    assert not torch.equal(heads[0], other)


def test_bt_loss_and_metrics_equal_trl_compute_loss_with_margins_centering_and_a_merged_boundary(tok):
    """TRL 1.16 RewardTrainer.compute_loss on TRL's own ids and collator equals preflab's BT loss and metrics on
    preflab's tokenization, with a margin column, center_rewards_coefficient and a prompt ending in a space (whose
    ids differed from TRL's before joint tokenization)."""
    import types
    from collections import defaultdict

    trl_reward = pytest.importorskip("trl.trainer.reward_trainer")
    from trl.data_utils import _tokenize

    from preflab.data.rows import load_rows
    from preflab.loops.batches import collate_pairs
    from preflab.reward_models.bt import BTHead
    from preflab.reward_models.data import tokenize_reward_pairs
    from preflab.reward_models.heads import build_reward_model, sequence_outputs
    from reward_synthetic import marker_rows

    model = build_reward_model("builtin:tiny-llama", 1, tok, seed=0).eval()
    rows = [dict(r, margin=0.5 * i) for i, r in enumerate(marker_rows(6, seed=1))]
    rows[0].update(prompt="pick: ", chosen="apple", rejected="banana")  # "pick: apple" has the token "Ġa"
    features = [{"chosen_ids": _tokenize(tok, r["prompt"] + r["chosen"] + tok.eos_token)["input_ids"],
                 "rejected_ids": _tokenize(tok, r["prompt"] + r["rejected"] + tok.eos_token)["input_ids"],
                 "margin": r["margin"]} for r in rows]
    batch = trl_reward.DataCollatorForPreference(pad_token_id=tok.pad_token_id)(features)
    same = lambda x: x  # noqa: E731  (one process)
    trainer = types.SimpleNamespace(model=model, args=types.SimpleNamespace(center_rewards_coefficient=0.01),
                                    accelerator=types.SimpleNamespace(gather_for_metrics=same, gather=same),
                                    _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
                                    _total_train_tokens=0, _tp_size=1)
    pairs, _ = tokenize_reward_pairs(load_rows(rows)[0], tok)
    with torch.no_grad():
        theirs = trl_reward.RewardTrainer.compute_loss(trainer, model, dict(batch))
        layout = collate_pairs(pairs, tok.pad_token_id, "padded")
        out = sequence_outputs(model, layout.input_ids, layout.attention_mask)
        ours = BTHead(center_rewards_coefficient=0.01).loss(out[:6], out[6:], layout.extras)
    assert ours.loss.item() == pytest.approx(theirs.item(), abs=1e-6)
    for key in ("accuracy", "margin", "min_reward", "mean_reward", "max_reward"):
        assert ours.metrics[key].item() == pytest.approx(trainer._metrics["eval"][key][-1], abs=1e-6), key


def test_a_lora_reward_runs_checkpoint_evaluates_as_its_merged_final_model(tmp_path):
    """`preflab eval RUN/checkpoint-N --task reward` (docs/reward-models.md) refused every checkpoint of a use_peft
    run ("adapters only"). Now the adapters and head are loaded over the base and merged: the last checkpoint scores
    exactly as the run's final (merged) model. Its base is the builtin model of the run's seed (here TrainConfig's
    default, 42): with no `seed` in config.yaml the loader rebuilt the base of seed 0 (another random model, so other
    scores); now the run's seed, else TrainConfig's default (models.run_config.run_seed)."""
    from preflab.reward_models.heads import load_reward_model
    from preflab.reward_models.interface import RewardModel
    from preflab.reward_models.train import train_reward

    data = _pairs_file(tmp_path)
    run = tmp_path / "run"
    train_reward(_reward_cfg(run, data, use_peft=True, lora_r=4, save_steps=2, learning_rate=1e-2, seed=42))
    final, checkpoint = (load_reward_model(str(run / d)) for d in ("", "checkpoint-2"))
    from preflab.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    prompts, responses = ["the cat", "a dog"], [" sat good", " ran"]
    expected = RewardModel(final, tok).score(prompts, responses)
    torch.testing.assert_close(RewardModel(checkpoint, tok).score(prompts, responses), expected, rtol=0, atol=1e-5)
    import yaml

    saved = yaml.safe_load((run / "config.yaml").read_text())
    for seed, same in ((None, True), (0, False)):  # no seed written: 42; seed 0 (the old fallback): another base
        (run / "config.yaml").write_text(yaml.safe_dump({k: v for k, v in saved.items() if k != "seed"}
                                                        | ({} if seed is None else {"seed": seed})))
        scores = RewardModel(load_reward_model(str(run / "checkpoint-2")), tok).score(prompts, responses)
        assert torch.allclose(scores, expected, rtol=0, atol=1e-5) == same, seed


def test_reward_data_tokenizes_with_dataset_num_proc_to_the_same_pairs(tmp_path, tok, monkeypatch):
    """TRL's dataset_num_proc was accepted by task: reward and ignored (one process tokenized everything)."""
    import concurrent.futures

    from preflab.reward_models.data import load_reward_pairs

    pools, pool_class = [], concurrent.futures.ProcessPoolExecutor

    def recording_pool(workers, *args, **kwargs):
        pools.append(workers)
        return pool_class(workers, *args, **kwargs)

    data = _pairs_file(tmp_path, n=12)
    one, _, report_one, _ = load_reward_pairs(_reward_cfg(tmp_path, data), tok)
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", recording_pool)
    two, _, report_two, _ = load_reward_pairs(_reward_cfg(tmp_path, data, dataset_num_proc=2), tok)
    assert pools == [2]
    assert [(p.row_id, p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in two] == \
        [(p.row_id, p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in one]
    assert report_two["train_tokenize"] == report_one["train_tokenize"]


def test_the_model_card_says_what_the_logits_of_a_gpm_are(tmp_path):
    """The README.md written beside a GPM said "the reward is .logits" and `.score(prompts, responses)`: a GPM's
    logits are a preference embedding and its judge has no score."""
    from preflab.reward_models.train import train_reward

    train_reward(_reward_cfg(tmp_path / "gpm", _pairs_file(tmp_path), max_steps=1, reward_head="gpm",
                             reward_head_params={"dim": 4}))
    card = (tmp_path / "gpm" / "README.md").read_text()
    assert "the reward is .logits" not in card and ".score(" not in card
    assert ".logits are the 4-dim preference embedding" in card and ".prefer(prompts, a, b)" in card


def test_an_em_mixture_takes_center_rewards_coefficient_for_its_bt_components():
    """MaxMin's M-step trains K BT components with center_rewards_coefficient (WeightedBTHead reads it), but the
    config refused it: "a em_mixture head has no pairwise scalar reward to centre"."""
    from preflab.config import config_from_dict
    from preflab.errors import ConfigError
    from preflab.reward_models.maxmin_train import WeightedBTHead

    base = {"task": "reward", "model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl",
            "center_rewards_coefficient": 0.01}
    assert config_from_dict({**base, "reward_head": "em_mixture"}).center_rewards_coefficient == 0.01
    with pytest.raises(ConfigError, match="applies to reward_head: bt and em_mixture"):
        config_from_dict({**base, "reward_head": "gpm"})
    head = WeightedBTHead(center_rewards_coefficient=0.01)
    out = head.loss(torch.tensor([[1.2]]), torch.tensor([[0.4]]), {"em_weight": torch.tensor([0.5])})
    assert out.loss.item() == pytest.approx(0.5 * (0.371101 + 0.01 * 1.6 ** 2), abs=1e-6)


def test_eval_fraction_holds_a_context_pair_out_under_all_its_contexts(tmp_path, tok):
    """Context rows (the same pair under "prefer loud" and "prefer quiet", opposite labels) were split row by row:
    a pair could be trained under one context and evaluated under the other (models-and-loops.md #39)."""
    from preflab.reward_models.data import load_reward_pairs

    rows = []
    for i in range(12):
        loud, quiet = f"WORD{i} UP", f"word{i} up"
        rows += [{"prompt": f"echo {i}", "chosen": loud, "rejected": quiet, "context": "prefer loud"},
                 {"prompt": f"echo {i}", "chosen": quiet, "rejected": loud, "context": "prefer quiet"}]
    data = tmp_path / "ctx.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train, evals, _, template = load_reward_pairs(_reward_cfg(tmp_path, data, eval_fraction=0.25), tok)
    assert template and evals and len(train) + len(evals) == 24
    held = {p.row_id // 2 for p in evals}  # rows 2i and 2i + 1 are pair i under its two contexts
    assert not held & {p.row_id // 2 for p in train}
    assert all("parent_id" not in p.extras for p in train + evals)
