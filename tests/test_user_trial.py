"""Regressions from a new user's trial of the CLI (changes/newuser-findings.md): each failed on the code before."""
import json
import re

import pytest

from preflab.errors import ConfigError


def test_trl_notes_are_printed_once_per_command(tmp_path, capsys):
    """`preflab train` read its config twice (once to route by task, once to run), printing every TRL note twice."""
    from preflab.cli import main

    cfg = tmp_path / "trl.yaml"
    cfg.write_text("model_name_or_path: ./no-such-model-dir\ndataset_name: x.jsonl\nuse_logits_to_keep: true\n"
                   f"output_dir: {tmp_path / 'out'}\n")
    assert main(["train", str(cfg)]) == 2  # stops at the preflight's model check, after the notes
    err = capsys.readouterr().err
    assert err.count("preflab: note: use_logits_to_keep") == 1
    assert "no-such-model-dir" in err


def test_plan_refuses_an_unreachable_hub_name_before_autoconfig(monkeypatch):
    """`preflab plan` with a hub name and no network sat through AutoConfig's retries (~25 s of 'Retrying in 8s'
    lines) before its error; now the quick model-name check refuses it first and AutoConfig is never asked."""
    import transformers

    from preflab.plan import model_config_of

    asked = []
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained",
                        lambda *a, **k: asked.append(a) or (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(ConfigError, match="model_name_or_path='someorg/not-cached-model'"):
        model_config_of("someorg/not-cached-model")
    assert asked == []


def _long_rows(n_words: int) -> list[dict]:
    rows = [{"prompt": f"what is {i} plus {i} ?", "chosen": f"the answer is {2 * i}", "rejected": "no idea"}
            for i in range(6)]
    rows[1]["chosen"] = " ".join(["the cat sat on the mat"] * n_words)
    return rows


def test_eval_caps_max_length_at_the_models_positions_and_says_what_it_dropped():
    """preflab eval's max_length (default 1024) was not capped at the model's positions: a pair longer than a
    learned position table (GPT-2, 32 positions here) crashed with an IndexError traceback. Now it is capped with a
    note and scores exactly what an explicit max_length=32 scores; truncated/skipped rows are named in the notes."""
    from preflab.eval.cli import format_summary
    from preflab.eval.run import EvalOptions, evaluate_models
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer("bytelevel")
    policy = tiny_causal_lm(tok, arch="gpt2", max_positions=32)
    rows = _long_rows(20)
    capped = evaluate_models(policy, tok, rows, options=EvalOptions())
    explicit = evaluate_models(policy, tok, rows, options=EvalOptions(max_length=32))
    assert capped["per_pair"] == explicit["per_pair"]
    assert capped["num_pairs"] == 6
    assert any("above the model's 32 positions" in n for n in capped["notes"])
    assert any("response truncated 1" in n for n in capped["notes"])
    assert "response truncated 1" in format_summary(capped)
    # a prompt that fills max_length is skipped: the console summary says so (it only said "5 pairs")
    rows = _long_rows(1)
    rows[3]["prompt"] = " ".join(["the dog ran to the park"] * 20)
    skipped = evaluate_models(policy, tok, rows, options=EvalOptions(max_length=32))
    assert skipped["num_pairs"] == 5
    assert "1 skipped (prompt_fills_max_length: 1)" in format_summary(skipped)


def test_a_fresh_run_in_a_finished_runs_folder_says_it_replaces_it(tmp_path, capsys):
    """A second `preflab train` into the output_dir of a finished run silently replaced its model, metrics.jsonl
    and summary.json; now a note names the earlier run and how to resume or keep it (not when resuming)."""
    from types import SimpleNamespace

    from preflab.loops.resume import earlier_run_note, refuse_fresh_start_over_unfinished_run

    (tmp_path / "summary.json").write_text(json.dumps({"global_step": 4}))
    refuse_fresh_start_over_unfinished_run(SimpleNamespace(output_dir=str(tmp_path), resume_from_checkpoint=None))
    out = earlier_run_note(SimpleNamespace(output_dir=str(tmp_path), resume_from_checkpoint=None))
    assert "holds an earlier run (it ended at step 4)" in out and "resume_from_checkpoint: true" in out
    assert earlier_run_note(SimpleNamespace(output_dir=str(tmp_path), resume_from_checkpoint=True)) is None
    assert earlier_run_note(SimpleNamespace(output_dir=str(tmp_path / "new"), resume_from_checkpoint=None)) is None
    assert capsys.readouterr().out == ""


def test_an_eval_set_with_no_usable_rows_stops_and_its_skips_are_printed(tmp_path, capsys):
    """With on_bad_row: skip, an eval set whose rows were all skipped made evaluation silently not run (eval_strategy
    steps asked for it), and the eval set's skipped rows never reached the console; now the run stops naming the eval
    set, and a `preflab: data (eval):` line gives its counts."""
    from preflab.config import config_from_dict
    from preflab.errors import DataError
    from preflab.loops.prepare import prepare_pairs
    from preflab.models.tiny import tiny_tokenizer

    good = [{"prompt": f"q{i}", "chosen": "yes", "rejected": "no"} for i in range(4)]
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in good))
    bad = tmp_path / "eval.jsonl"
    bad.write_text("\n".join(json.dumps({"prompt": "q", "chosen": "yes"}) for _ in range(3)))

    def cfg(eval_file):
        return config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name=str(train),
                                     eval_dataset_name=str(eval_file), eval_strategy="steps", on_bad_row="skip",
                                     output_dir=str(tmp_path / "out")))

    with pytest.raises(DataError, match=r"the eval set \(.*eval.jsonl\) has no usable examples: .*3 skipped"):
        prepare_pairs(cfg(bad), tiny_tokenizer())
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("\n".join(json.dumps(r) for r in good + [{"prompt": "q", "chosen": "yes"}]))
    _, evals, report = prepare_pairs(cfg(mixed), tiny_tokenizer())
    assert len(evals) == 4 and report["eval_rows"]["skipped"] == {"missing_field": 1}
    out = capsys.readouterr().out
    assert "preflab: data (eval): " in out and "5 rows, 4 kept, 1 skipped (missing_field: 1)" in out


def test_sft_prints_its_truncations_and_refuses_an_unusable_eval_set(tmp_path, capsys):
    """task: sft printed only the row counts: every example cut by max_length went unsaid on the console (only
    summary.json had it), and an eval set whose rows were all skipped silently disabled evaluation."""
    from preflab.config import config_from_dict
    from preflab.errors import DataError
    from preflab.loops.sft import prepare_sft
    from preflab.models.tiny import tiny_tokenizer

    train = tmp_path / "sft.jsonl"
    train.write_text("\n".join(json.dumps({"prompt": "q", "completion": " ".join(["the cat sat on the mat"] * n)})
                               for n in (1, 1, 8)))
    bad = tmp_path / "eval.jsonl"
    bad.write_text(json.dumps({"prompt": "q", "completion": ""}))

    def cfg(**kw):
        return config_from_dict(dict(task="sft", model_name_or_path="builtin:tiny-llama", dataset_name=str(train),
                                     max_length=24, on_bad_row="skip", output_dir=str(tmp_path / "out"), **kw))

    items, _, report = prepare_sft(cfg(), tiny_tokenizer())
    assert report["train_tokenize"]["response_truncated"] == 1 and max(len(x.prompt_ids) + len(x.completion_ids) for x in items) <= 24
    assert "response truncated 1" in capsys.readouterr().out
    with pytest.raises(DataError, match=r"the eval set \(.*eval.jsonl\) has no usable examples: .*1 skipped"):
        prepare_sft(cfg(eval_dataset_name=str(bad)), tiny_tokenizer())


def test_an_online_round_without_examples_is_said_and_logged(tmp_path, capsys):
    """online_dpo with a judge that scores every completion alike builds no pairs: the run took zero-gradient steps
    and ended looking normal (loss 0; metrics.jsonl without reward or ties). Now each empty round prints a note and
    its metrics (reward, examples/count 0, pairs/ties_dropped) are logged."""
    from preflab.config import config_from_dict
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.online.run import OnlineRun
    from preflab.online.tasks import Task

    cfg = config_from_dict(dict(task="online", trainer="online_dpo", online_task="dataset", dataset_name="unused",
                                reward_funcs="x", model_name_or_path="builtin:tiny-llama", max_steps=2,
                                num_generations=2, prompts_per_generation=3, per_device_train_batch_size=2,
                                max_completion_length=3, logging_steps=1, disable_tqdm=True, use_cpu=True,
                                output_dir=str(tmp_path)))
    tok = tiny_tokenizer("char")
    run = OnlineRun(cfg, policy=tiny_causal_lm(tok, hidden_size=16, num_layers=1, seed=1), tokenizer=tok,
                    task=Task(["say a\n", "say b\n", "say c\n"], [lambda prompts, completions, **kw: [1.0] * len(
                        completions)]))
    summary = run.train()
    assert summary["online"]["empty_steps"] == 2
    out = capsys.readouterr().out
    assert out.count("gave no training examples (3 tied pairs dropped") == 2
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["examples/count"], r["pairs/ties_dropped"], r["reward"]) for r in rows] == [
        (1, 0.0, 3.0, 1.0), (2, 0.0, 3.0, 1.0)]


@pytest.mark.parametrize("over, words", [
    # a TRL GRPOConfig's loss_type: was "unknown objective 'dapo'. Did you mean 'dpo'?"
    ({"loss_type": "dapo"}, "is a TRL GRPOConfig loss_type; in preflab it is the group recipe `trainer: dapo`"),
    ({"trainer": "grpo", "loss_type": "dr_grpo"}, "`trainer: dr_grpo` (got trainer 'grpo')"),
    # a group objective under the default pair recipe: was refused only after the model loaded and a round ran
    ({"loss_type": "grpo"}, "loss_type='grpo' takes a ListBatch, but trainer 'online_dpo' builds pairs"),
    ({"trainer": "grpo", "loss_type": "ipo"}, "loss_type='ipo' takes a PairBatch, but trainer 'grpo' builds groups"),
])
def test_online_loss_type_that_does_not_fit_the_trainer_is_a_config_error(over, words):
    from preflab.config import config_from_dict

    base = dict(task="online", online_task="dataset", dataset_name="p.jsonl", reward_funcs="m:f",
                model_name_or_path="builtin:tiny-llama", max_steps=2)
    with pytest.raises(ConfigError, match=re.escape(words)):
        config_from_dict({**base, **over})


def test_online_prompt_rows_skipped_or_cut_are_reported(tmp_path, capsys):
    """online_task: dataset read its prompts with on_bad_row and max_prompt_length but kept no report: a skipped or
    truncated prompt left summary.json's "data" empty and the console silent."""
    from preflab.config import config_from_dict
    from preflab.loops.rollout import prepare_prompts
    from preflab.models.tiny import tiny_tokenizer
    from preflab.online.tasks import load_task

    data = tmp_path / "prompts.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": p}) for p in ("echo: a", "", "echo: " + "b " * 40)))
    cfg = config_from_dict(dict(task="online", trainer="grpo", online_task="dataset", dataset_name=str(data),
                                reward_funcs="preflab.online.tasks:demo_true_reward", on_bad_row="skip",
                                model_name_or_path="builtin:tiny-llama", max_steps=1, output_dir=str(tmp_path / "o")))
    task, _, _ = load_task(cfg)
    assert len(task.prompts) == 2 and task.data_report["prompt_rows"]["skipped"] == {"empty_field": 1}
    assert "3 rows, 2 kept, 1 skipped (empty_field: 1)" in capsys.readouterr().out
    report: dict = {}
    rows = prepare_prompts(task.prompts, tiny_tokenizer("char"), max_prompt_length=10, report_to=report)
    assert report["prompt_tokenize"]["prompt_truncated"] == 1 and max(len(r.prompt_ids) for r in rows) == 10


def test_an_unreachable_hub_dataset_fails_at_once_without_load_dataset(monkeypatch, tmp_path):
    """A hub dataset name with no network sat through datasets' retries (~28 s of 'Retrying in 8s' lines) before
    its error; now one quick lookup refuses it naming the dataset, and datasets.load_dataset is never asked."""
    import datasets
    import datasets.config
    import huggingface_hub

    from preflab.data.rows import load_rows
    from preflab.errors import DataError

    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "ds-cache")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))

    def no_network(*args, **kwargs):
        raise ConnectionError("[Errno -2] Name or service not known")

    asked = []
    monkeypatch.setattr(huggingface_hub, "dataset_info", no_network)
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda *a, **k: asked.append(a) or [{"prompt": "p", "chosen": "c", "rejected": "r"}])
    with pytest.raises(DataError, match="'someorg/prefs' was taken as a hub dataset name \\(it is no local file or "
                                        "folder: tried .*\\) and is not in the local cache, and the hub could not be "
                                        "reached \\(ConnectionError: .*\\): no network\\?"):
        load_rows("someorg/prefs")
    assert asked == []
    (tmp_path / "ds-cache" / "someorg___prefs").mkdir(parents=True)  # cached: left to datasets (it reads the cache)
    examples, report = load_rows("someorg/prefs")
    assert len(asked) == 1 and len(examples) == 1 and report.source == "hub:someorg/prefs[train]"


def test_eval_refuses_a_reward_model_run_as_a_policy(tmp_path):
    """`preflab eval RUN --data ...` on a task: reward run (forgetting --task reward) loaded the reward model's
    backbone as a causal LM (its score head dropped, the LM head random) and reported policy metrics for it."""
    from preflab.eval.loading import load_for_eval
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer("char")
    tiny_causal_lm(tok, hidden_size=16, num_layers=1).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    (tmp_path / "config.yaml").write_text("task: reward\nmodel_name_or_path: builtin:tiny-llama\n")
    with pytest.raises(ConfigError, match=r"is a task: reward run, not a language-model policy; evaluate it with "
                                          r"`preflab eval .* --task reward --data"):
        load_for_eval(str(tmp_path))
    (tmp_path / "config.yaml").write_text("task: vlm\nmodel_name_or_path: builtin:tiny-qwen2-vl\n")
    with pytest.raises(ConfigError, match=r"is a task: vlm run; evaluate it with `preflab eval .* --task vlm --data"):
        load_for_eval(str(tmp_path))
    (tmp_path / "config.yaml").write_text("task: dpo\nmodel_name_or_path: builtin:tiny-llama\n")
    assert load_for_eval(str(tmp_path))[0].config.vocab_size == len(tok)


def test_a_reference_with_another_tokenizer_or_fewer_positions_is_refused_or_capped(tmp_path, capsys):
    """ref_model_name_or_path pointing at a model with another tokenizer trained silently against log-probs of other
    tokens (same ids, different vocabulary) or crashed with an IndexError (fewer embeddings); a reference with fewer
    positions than max_length crashed mid-run (only the policy's positions capped max_length)."""
    from types import SimpleNamespace

    from preflab.models.load import cap_max_length, check_reference_tokens, reference_positions
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer("bytelevel")
    policy = tiny_causal_lm(tok, arch="qwen2", hidden_size=16, num_layers=1)
    other = tmp_path / "other-tokenizer"
    ref = tiny_causal_lm(vocab_size=len(tok) + 50, arch="gpt2", hidden_size=16, num_layers=1, max_positions=48)
    ref.save_pretrained(other)
    tiny_tokenizer("whitespace").save_pretrained(other)  # enough rows, but its own ids for the same tokens
    with pytest.raises(ConfigError, match="has its own tokenizer, which gives .* tokens other ids than the policy's"):
        check_reference_tokens(str(other), ref, policy, tok)
    tok.save_pretrained(other)  # the policy's tokenizer beside it: accepted
    check_reference_tokens(str(other), ref, policy, tok)
    small = tiny_causal_lm(vocab_size=len(tok) - 10, hidden_size=16, num_layers=1)
    with pytest.raises(ConfigError, match=f"has {len(tok) - 10} token embeddings, the policy {len(tok)}"):
        check_reference_tokens("small-ref", small, policy, tok)
    cfg = SimpleNamespace(ref_model_name_or_path=str(other), trust_remote_code=False, max_length=200,
                          model_name_or_path="p", objective=lambda: SimpleNamespace(needs_reference=True))
    cap_max_length(cfg, reference_positions(cfg), cfg.ref_model_name_or_path)
    assert cfg.max_length == 48 and f"above the 48 positions of {other}" in capsys.readouterr().out


def test_trl_dataset_test_split_with_eval_strategy_evaluates_on_that_split(capsys):
    """TRL's scripts evaluate on dataset_name[dataset_test_split] whenever eval_strategy is not "no"; the same YAML
    was refused here ("eval_strategy='steps' needs an eval set")."""
    from preflab.config import config_from_dict

    cfg = config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name="data/dd",
                                dataset_test_split="test_prefs", eval_strategy="steps", eval_steps=5))
    assert (cfg.eval_dataset_name, cfg.eval_split, cfg.eval_steps) == ("data/dd", "test_prefs", 5)
    assert capsys.readouterr().err.count("-> eval_dataset_name: data/dd (its 'test_prefs' split)") == 1
    # without eval_strategy (TRL's default "no") nothing is evaluated, as in TRL
    assert config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name="data/dd",
                                 dataset_test_split="test_prefs")).eval_dataset_name is None


def test_no_rows_left_after_skipping_says_so_instead_of_lower_the_batch_size():
    """With every row skipped (on_bad_row: skip) the error said "0 training rows are fewer than one global batch
    ...; lower the batch size", advice that cannot help."""
    from types import SimpleNamespace

    from preflab.errors import DataError
    from preflab.loops.batches import make_plan

    cfg = SimpleNamespace(dataset_name="bad.jsonl", per_device_train_batch_size=8, gradient_accumulation_steps=1,
                          seed=0, max_steps=2, num_train_epochs=1)
    with pytest.raises(DataError, match="no training rows are left in bad.jsonl: every row was skipped"):
        make_plan(cfg, 0, 1)
    with pytest.raises(Exception, match="lower the batch size"):  # a few rows left: the batch is what to change
        make_plan(cfg, 3, 1)


def test_ctrl_c_is_one_line_not_a_traceback(monkeypatch, capsys):
    """Ctrl-C during `preflab train` printed a KeyboardInterrupt traceback through torch's modules."""
    import preflab.cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(preflab.cli, "_handler", lambda args: interrupted)
    assert preflab.cli.main(["lab", "list"]) == 130
    # one line; a command that keeps no checkpoints promises none (`preflab train`'s message:
    # tests/test_user_trial_nontext.py)
    assert capsys.readouterr().err == "preflab: interrupted.\n"


@pytest.mark.parametrize("ratio, total, warmup", [(0.1, 6, 1), (0.1, 25, 3), (0.5, 4, 2)])
def test_warmup_ratio_rounds_up_like_transformers(ratio, total, warmup):
    """warmup_ratio gave int(ratio x steps) warmup steps; transformers (TrainingArguments.get_warmup_steps, what TRL
    runs) takes math.ceil: 6 steps x 0.1 warmed up for 0 steps here and 1 in TRL."""
    from types import SimpleNamespace

    import torch

    from preflab.loops.optimizer import make_optimizer, make_scheduler

    cfg = SimpleNamespace(learning_rate=1.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, weight_decay=0.0,
                          warmup_steps=0, warmup_ratio=ratio, lr_scheduler_type="linear")
    _, scheduler = make_optimizer(cfg, [torch.nn.Parameter(torch.zeros(2))], total)
    reference = make_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), "linear", total, warmup)
    assert [scheduler.lr_lambdas[0](s) for s in range(total)] == [reference.lr_lambdas[0](s) for s in range(total)]


def test_missing_chat_template_names_the_model_directory(tmp_path):
    """Message rows with a tokenizer without a chat template: the error did not say whose tokenizer it was."""
    from transformers import AutoTokenizer

    from preflab.data.rows import load_rows
    from preflab.data.tokenize import tokenize_pairs
    from preflab.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer("bytelevel")
    tok.chat_template = None
    tok.save_pretrained(tmp_path / "model")
    examples, _ = load_rows([{"prompt": [{"role": "user", "content": "hi"}],
                              "chosen": [{"role": "assistant", "content": "yes"}],
                              "rejected": [{"role": "assistant", "content": "no"}]}])
    with pytest.raises(ConfigError, match=f"and the tokenizer of {tmp_path / 'model'} has none"):
        tokenize_pairs(examples, AutoTokenizer.from_pretrained(tmp_path / "model"))


def test_precompute_with_a_reference_free_objective_says_it_does_nothing(capsys):
    """precompute_ref_log_probs: true with loss_type simpo (no reference) was accepted without a word."""
    from preflab.config import config_from_dict

    base = dict(model_name_or_path="builtin:tiny-llama", dataset_name="x.jsonl", precompute_ref_log_probs=True)
    config_from_dict({**base, "loss_type": "simpo"})
    assert capsys.readouterr().err.count("precompute_ref_log_probs: loss_type simpo uses no reference model") == 1
    config_from_dict({**base, "loss_type": "sigmoid"})
    assert "precompute_ref_log_probs" not in capsys.readouterr().err


def test_a_reference_model_with_a_reference_free_objective_is_said_not_loaded(capsys):
    """ref_model_name_or_path with loss_type simpo (no reference) was accepted without a word and never loaded."""
    from preflab.config import config_from_dict

    base = dict(model_name_or_path="builtin:tiny-llama", dataset_name="x.jsonl", ref_model_name_or_path="outputs/sft")
    config_from_dict({**base, "loss_type": "simpo"})
    assert capsys.readouterr().err.count("ref_model_name_or_path: loss_type simpo uses no reference model, so "
                                         "'outputs/sft' is not loaded") == 1
    config_from_dict({**base, "loss_type": "sigmoid"})
    assert "ref_model_name_or_path" not in capsys.readouterr().err


def test_unpaired_data_with_one_label_only_is_said(tmp_path, capsys):
    """A KTO file whose rows are all label true (or all false) trained with no word: the data line counts rows,
    not labels, and KTO then has no undesirable (desirable) term."""
    from preflab.config import config_from_dict
    from preflab.loops.prepare import prepare_unpaired
    from preflab.models.tiny import tiny_tokenizer

    data = tmp_path / "kto.jsonl"
    rows = [{"prompt": f"q{i}", "completion": f" a{i}", "label": True} for i in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name=str(data), loss_type="kto"))
    prepare_unpaired(cfg, tiny_tokenizer("bytelevel"))
    assert "every one of the 4 training examples of" in capsys.readouterr().out
    rows[0]["label"] = False
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepare_unpaired(cfg, tiny_tokenizer("bytelevel"))
    assert "every one of" not in capsys.readouterr().out


def test_trl_style_dashed_options_say_to_write_key_value(capsys):
    """`preflab train ... --beta 0.1` (TRL's CLI style) answered only `unrecognized arguments: --beta 0.1`."""
    from preflab.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["train", "model_name_or_path=builtin:tiny-llama", "--beta", "0.1"])
    assert stop.value.code == 2
    assert "write beta=VALUE instead of --beta VALUE" in capsys.readouterr().err
