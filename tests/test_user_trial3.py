"""Third new-user trial: the silent failures and unclear errors a TRL user met, each pinned to its message."""
import json
import re

import pytest

from preflab.cli import main
from preflab.errors import ConfigError
from jsonl_files import write_jsonl  # tests/, on sys.path beside conftest
from lora_weights import randomize_lora_b  # tests/, on sys.path beside conftest


def test_demo_judges_on_prompts_not_of_the_demo_task_are_refused_naming_the_row(tmp_path, capsys):
    """`online_task=dataset reward_funcs=demo_true_reward` on other prompts stopped the first round with "judge
    'demo_true_reward' raised IndexError: list index out of range"; it is now refused before any generation, naming
    the first row that is not a loud-echo prompt, how many are not, and what to use instead."""
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "echo: sun cat\n"}, {"prompt": "What is 1 plus 1?"},
                                         {"prompt": "echo:"}])
    args = ["train", "examples/online/online_dpo.yaml", "online_task=dataset", f"dataset_name={data}",
            "model_name_or_path=builtin:tiny-llama", "reward_funcs=demo_true_reward", "max_steps=1",
            f"output_dir={tmp_path / 'o'}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert (f"reward_funcs: demo_true_reward scores only the demo task's prompts ('echo: ' and the words to echo, e.g. "
            f"'echo: sun cat map'), and 2 of 3 prompt row(s) of {data} are not: the first, row 1 ('What is 1 plus "
            "1?'): it does not start with 'echo:'. To train on the demo task use online_task: demo") in err, err
    assert not (tmp_path / "o" / "metrics.jsonl").exists()


def test_demo_judges_name_the_prompt_they_cannot_score():
    """Called directly (a Python reward function, `preflab eval --reward-fn`), the demo judges raised IndexError or
    ZeroDivisionError; they now raise a ValueError that says which prompts they score."""
    from preflab.online.tasks import demo_echo_reward, demo_true_reward

    assert demo_true_reward(["echo: sun cat\n"], ["SUN CAT"]) == [1.0]
    with pytest.raises(ValueError, match=r"^the demo task's true reward scores only its own prompts \('echo: ' and "
                                         r"the words to echo, e.g. 'echo: sun cat map'\); 'Hi: there': it does not "
                                         r"start with 'echo:'\.$"):
        demo_true_reward(["Hi: there"], ["THERE"])
    with pytest.raises(ValueError, match=r"'echo:  ': it has no words after 'echo:'"):
        demo_echo_reward(["echo:  "], [""])
    with pytest.raises(ValueError, match=r"a list, not a string"):
        demo_echo_reward([[{"role": "user", "content": "echo: a"}]], ["a"])


def test_a_yaml_key_is_dropped_from_the_command_line_with_a_tilde(tmp_path):
    """`preflab train examples/quickstart.yaml task=reward` refused loss_type and beta ("Remove them") and the command
    line had no way to remove a key of the file (`beta=null` was "beta may not be null"). `'~key'` (Hydra's spelling)
    drops it; the refusals say so, and `key=null` points to it."""
    from preflab.config import load_config

    with pytest.raises(ConfigError, match=r"^task: reward trains a reward model \(reward_head: bt\); loss_type, beta "
                                          r"only apply to task: dpo\. Remove them \(on the command line: '~loss_type' "
                                          r"'~beta'\), or set task: dpo\.$"):
        load_config("examples/quickstart.yaml", ["task=reward"])
    with pytest.raises(ConfigError, match=r"^override 'beta=null': beta may not be null\. To drop a beta that the "
                                          r"config file sets .* write '~beta' instead\.$"):
        load_config("examples/quickstart.yaml", ["task=reward", "beta=null"])
    cfg = load_config("examples/quickstart.yaml", ["task=reward", "~loss_type", " ~beta"])
    assert cfg.task == "reward" and "beta" not in cfg.written_options and "loss_type" not in cfg.written_options
    assert cfg.beta == 0.1 and cfg.max_steps == 20  # the default beta; the file's other keys kept
    # the last of `beta=0.3 ~beta` wins, as for two values; a nested key of a mapping option; typos are refused
    assert "beta" not in load_config("examples/quickstart.yaml", ["beta=0.3", "~beta"]).written_options
    cfg = load_config("examples/quickstart.yaml", ["loss_type=robust", "objective_params.label_smoothing=0.2",
                                                   "~objective_params.label_smoothing"])
    assert "label_smoothing" not in cfg.objective_params
    with pytest.raises(ConfigError, match=r"^override '~bta': the config sets no bta to drop \(it sets "
                                          r"model_name_or_path, .*\)\. Did you mean 'beta'\?$"):
        load_config("examples/quickstart.yaml", ["~bta"])
    with pytest.raises(ConfigError, match=r"^override '~beta=0\.1': '~KEY' drops KEY from the config, and takes no "
                                          r"value; write '~beta' alone\.$"):
        load_config("examples/quickstart.yaml", ["~beta=0.1"])


def test_tilde_overrides_reach_the_train_command(tmp_path, capsys):
    """`~key` is an override wherever key=value is: after the config, and after a command's --options."""
    from preflab.cli import build_parser, _parse
    from preflab.loops.cli import config_from_args

    args = _parse(build_parser(), ["train", "examples/quickstart.yaml", "task=reward", "~loss_type", "~beta",
                                   f"output_dir={tmp_path}"])
    assert args.overrides[1:3] == ["~loss_type", "~beta"] and config_from_args(args).task == "reward"
    args = _parse(build_parser(), ["plan", "examples/quickstart.yaml", "--world-size", "2", "~beta"])
    assert args.overrides == ["~beta"]


def test_a_streamed_row_with_a_token_the_model_cannot_embed_names_the_row(tmp_path):
    """streaming: true skipped the check of token ids against the model's embedding that the ordinary run makes of
    its data: a streamed row holding a token added to the tokenizer after the model was saved stopped step 3 with
    torch's "IndexError: index out of range in self". Each global batch is now checked as it is read, with the
    ordinary run's message naming the row and field, and when it was read."""
    from preflab.config import config_from_dict
    from preflab.errors import DataError
    from preflab.loops.offline import Trainer
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer("bytelevel")
    tiny_causal_lm(tok, hidden_size=16, num_layers=1).save_pretrained(tmp_path / "model")
    tok.add_tokens(["zqzqzq"])  # id 300: the model has 300 embeddings
    tok.save_pretrained(tmp_path / "model")
    rows = [{"prompt": f"q{i}", "chosen": " yes", "rejected": " no"} for i in range(8)]
    rows[5]["chosen"] = " zqzqzq"
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    cfg = dict(model_name_or_path=str(tmp_path / "model"), dataset_name=data, max_steps=3, streaming=True,
               streaming_shuffle_buffer=0, per_device_train_batch_size=2, max_length=64, disable_tqdm=True,
               output_dir=str(tmp_path / "out"))
    with pytest.raises(DataError, match=r"^" + re.escape(
            f"{data} row 5, field 'chosen': token 'zqzqzq' has id 300, but the model has 300 token embeddings (ids 0 "
            "to 299): the tokenizer holds tokens the model cannot embed, and the run would stop with an IndexError. "
            "Resize the model's embeddings to the tokenizer and save both: model.resize_token_embeddings(len("
            "tokenizer)) (here 301); model.save_pretrained(dir); tokenizer.save_pretrained(dir). (streaming: rows "
            "are checked as they are read; this one was read for optimizer step 3, after 2 step(s) trained.)") + "$"):
        Trainer(config_from_dict(cfg)).train()  # (steps 1 and 2, rows 0 to 3, passed the check and trained)


def test_a_lora_run_on_a_builtin_base_as_the_policy_gets_a_merge_command_that_works(tmp_path):
    """A LoRA run over builtin:tiny-llama as model_name_or_path was refused (rightly) with "adapter_config.json over
    the base None" and a peft merge command that cannot work (AutoPeftModelForCausalLM has no base to load), and only
    after the data was read and tokenized. Now preflight refuses it naming the base its config.yaml names and a merge
    command through preflab's own loader; running that command gives a model folder that loads as the merged model."""
    import re

    import torch
    import yaml

    from preflab.config import config_from_dict, preflight
    from preflab.models.load import add_lora, load_causal_lm
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer("bytelevel")
    run = tmp_path / "lora"
    peft_model = add_lora(tiny_causal_lm(tok, seed=7), r=2, alpha=4, dropout=0.0, target_modules=["q_proj"])
    randomize_lora_b(peft_model, 0.1)
    peft_model.save_pretrained(run)
    tok.save_pretrained(run)
    (run / "config.yaml").write_text(yaml.safe_dump({"model_name_or_path": "builtin:tiny-llama", "seed": 7,
                                                     "use_peft": True, "lora_r": 2, "lora_alpha": 4}))
    cfg = config_from_dict(dict(model_name_or_path=str(run), dataset_name=str(tmp_path / "absent.jsonl"),
                                output_dir=str(tmp_path / "out")))
    with pytest.raises(ConfigError) as err:
        preflight(cfg)  # before any data is read (the data file does not even exist)
    message = str(err.value)
    assert message.startswith(f"model_name_or_path={str(run)!r} is a LoRA adapter folder (adapter_config.json over "
                              "the base 'builtin:tiny-llama'), not a full model"), message
    assert f"and give model_name_or_path={run}-merged." in message
    code = re.search(r'python -c "(.*?)"', message).group(1)
    exec(code, {})  # the command the error gives
    merged = load_causal_lm(f"{run}-merged", "float32")
    ids = torch.tensor([[1, 10, 20, 30, 40]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, peft_model.eval()(ids).logits, atol=1e-5, rtol=0)


def test_comma_separated_lora_target_modules_say_to_write_a_list():
    """`lora_target_modules=q_proj,v_proj` (TRL's CLI takes `--lora_target_modules q_proj v_proj`) is the one name
    'q_proj,v_proj', and the error listed the model's modules (q_proj and v_proj among them) without saying why they
    did not match. It now says how to write the list; the list it names matches."""
    from preflab.config import parse_override
    from preflab.models.load import check_lora_targets
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    model = tiny_causal_lm(tiny_tokenizer("bytelevel"), hidden_size=16, num_layers=1)
    with pytest.raises(ConfigError, match=r"\(or use all-linear\)\. 'q_proj,v_proj' is one name: for a list of modules "
                                          r"write lora_target_modules=\[q_proj,v_proj\] on the command line \(YAML: "
                                          r"lora_target_modules: \[q_proj, v_proj\]\)\.$"):
        check_lora_targets(model, parse_override("lora_target_modules=q_proj,v_proj")[1])
    key, value = parse_override("lora_target_modules=[q_proj,v_proj]")
    assert value == ["q_proj", "v_proj"]
    check_lora_targets(model, value)  # matches
    with pytest.raises(ConfigError, match=r"\['qq_proj'\] match no module of the model; its linear modules are .*"
                                          r"\(or use all-linear\)\.$"):  # no comma: no hint
        check_lora_targets(model, ["qq_proj"])


def test_a_reward_function_that_raises_in_the_eval_win_rate_is_an_error_naming_it():
    """`preflab eval RUN --data OTHER --reward-fn demo_true_reward` ended in a traceback out of the reward function
    after both models had generated; it is now a ConfigError naming the function, what it raised and on whose
    answers. A function that scores them still gives the win rate."""
    from preflab.eval.winrate import compare_generations
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.online.tasks import demo_true_reward

    tok = tiny_tokenizer("bytelevel")
    model = tiny_causal_lm(tok, hidden_size=16, num_layers=1).eval()
    prompts = ["hi", "yo"]
    ids = [tok(p).input_ids for p in prompts]
    with pytest.raises(ConfigError, match=r"^the reward function demo_true_reward raised ValueError on the policy "
                                          r"model's answers to the win-rate prompts: the demo task's true reward "
                                          r"scores only its own prompts .*'hi': it does not start with 'echo:'\. Fix "
                                          r"the reward function, or evaluate data whose prompts it scores"):
        compare_generations(model, model, tok, ids, prompts, reward_fn=demo_true_reward, max_new_tokens=2)
    out = compare_generations(model, model, tok, ids, prompts, max_new_tokens=2,
                              reward_fn=lambda prompts, completions: [float(len(c)) for c in completions])
    assert out["win_rate"]["ties"] == 2  # the same model on both sides: every prompt a tie


def test_evaluating_an_sft_run_says_its_beta_is_not_the_runs():
    """`preflab eval SFT_RUN --data PAIRS` reported beta=0.1 from "run config" with no note: an SFT run's config.yaml
    holds beta's default, which maximum likelihood never read, so rewards/* and R* were presented as the run's own.
    Now a note says so (and eval.json's beta_source is "default"); --beta still chooses."""
    from preflab.eval.run import eval_beta

    assert eval_beta(None, {"task": "sft", "beta": 0.1}) == (0.1, [
        "the run is task: sft (maximum likelihood, no beta; its config.yaml's beta is the option's default, unread): "
        "beta = 0.1 is used for rewards/*, R* and the difficulty, DPO's quantities against the reference; pass --beta "
        "to choose it"])
    assert eval_beta(0.3, {"task": "sft", "beta": 0.1}) == (0.3, [])
    assert eval_beta(None, {"task": "dpo", "beta": 0.3, "loss_type": "sigmoid"}) == (0.3, [])  # a DPO run: its own


def test_an_eval_fraction_that_holds_out_every_row_is_said_as_such(tmp_path):
    """eval_fraction=0.999 on the quickstart's 256 rows stopped with "no training rows are left in ...: every row was
    skipped (see the `preflab: data:` line ...)", while that line said 256 kept, 0 skipped. The DPO-family reader now
    refuses the hold-out itself, as the SFT and online readers did."""
    from preflab.config import load_config
    from preflab.errors import DataError
    from preflab.loops.prepare import prepare_pairs
    from preflab.models.tiny import tiny_tokenizer

    cfg = load_config("examples/quickstart.yaml", ["eval_fraction=0.999", f"output_dir={tmp_path}"])
    with pytest.raises(DataError, match=r"^eval_fraction=0\.999 holds out all 256 row\(s\) of dataset_name=examples/"
                                        r"data/loud_echo_pairs\.jsonl \(at least one is held out\), leaving none to "
                                        r"train on\. Give more rows, lower eval_fraction or set eval_fraction: 0, or "
                                        r"give the eval set as eval_dataset_name\.$"):
        prepare_pairs(cfg, tiny_tokenizer("bytelevel"))
    cfg = load_config("examples/quickstart.yaml", ["eval_fraction=0.99", f"output_dir={tmp_path}"])
    train, evals, _ = prepare_pairs(cfg, tiny_tokenizer("bytelevel"))  # round(0.99 x 256) = 253 held out
    assert (len(train), len(evals)) == (3, 253)


def test_preflab_eval_says_when_the_pairs_mix_text_and_conversational_rows(tmp_path):
    """Training says when its rows mix text and conversational forms (only the latter get the chat template); `preflab
    eval` on such a file averaged the metrics over both formats without a word. It now notes it in eval.json."""
    from preflab.eval.run import evaluate_models
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer("bytelevel")
    model = tiny_causal_lm(tok, hidden_size=16, num_layers=1).eval()
    text = [{"prompt": f"q{i}", "chosen": " yes", "rejected": " no"} for i in range(2)]
    chat = [{"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": [{"role": "assistant", "content": "yes"}],
             "rejected": [{"role": "assistant", "content": "no"}]} for i in range(3)]
    data = write_jsonl(tmp_path / "mixed.jsonl", text + chat)
    notes = evaluate_models(model, tok, data)["notes"]
    assert (f"{data} mixes 2 text row(s) and 3 conversational row(s): only the conversational ones get the chat "
            "template, so the model is evaluated on two formats. Give every row in one form unless that is meant."
            ) in notes
    assert not any("mixes" in n for n in evaluate_models(model, tok, write_jsonl(tmp_path / "t.jsonl", text))["notes"])


def test_an_online_prompt_row_without_prompt_names_its_columns_and_the_one_to_rename(tmp_path):
    """Prompt rows (online_task: dataset) with a 'question' column said "field 'prompt': missing. Add a non-empty
    string 'prompt'" (no columns named, and a prompt may be a list of messages too); the pair reader already listed
    the row's columns. Now the prompt reader does too, and names the column to rename."""
    from preflab.data.rows import load_rows
    from preflab.errors import DataError

    data = write_jsonl(tmp_path / "q.jsonl", [{"question": "what is 1?", "answer": "1"}])
    with pytest.raises(DataError) as err:
        load_rows(data, kind="prompt")
    assert str(err.value) == (
        f"{data} row 0 (line 1), field 'prompt': missing (the row's columns: 'question', 'answer'). A prompt row needs "
        "'prompt': text, or a list of messages (TRL's GRPO / online DPO datasets). Read 'question' as the prompt with "
        "dataset_columns: {prompt: question} (or rename it). Fix "
        "the row or set on_bad_row: skip.")
    data = write_jsonl(tmp_path / "m.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(DataError, match=r"Read 'messages' as the prompt with dataset_columns: \{prompt: messages\} "
                                        r"\(or rename it\) \(a 'messages' column is TRL's language-modeling form: as "
                                        r"the prompt it must hold the prompt turns only\)\."):
        load_rows(data, kind="prompt")
    rows, _ = load_rows(write_jsonl(tmp_path / "p.jsonl", [{"prompt": [{"role": "user", "content": "hi"}]}]), kind="prompt")
    assert rows[0].prompt == [{"role": "user", "content": "hi"}]


def test_lora_adapters_over_a_relative_base_folder_record_its_absolute_path(tmp_path, monkeypatch):
    """model_name_or_path=base (a folder relative to the working directory) with use_peft saved adapter_config.json
    with base_model_name_or_path 'base': the model card's peft lines then failed from any other directory (peft asked
    the hub for a repo 'base'). The folder's absolute path is recorded; a builtin or hub name is left as it is."""
    from peft import AutoPeftModelForCausalLM

    from preflab.models.load import add_lora, load_causal_lm
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer("bytelevel")
    tiny_causal_lm(tok, hidden_size=16, num_layers=1).save_pretrained(tmp_path / "work" / "base")
    tok.save_pretrained(tmp_path / "work" / "base")
    monkeypatch.chdir(tmp_path / "work")
    peft_model = add_lora(load_causal_lm("base", "float32"), r=2, alpha=4, dropout=0.0, target_modules=["q_proj"])
    peft_model.save_pretrained(tmp_path / "adapters")
    saved = json.loads((tmp_path / "adapters" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(tmp_path / "work" / "base")
    monkeypatch.chdir(tmp_path)  # another working directory: the adapters load over their base
    assert type(AutoPeftModelForCausalLM.from_pretrained(str(tmp_path / "adapters")).merge_and_unload()).__name__ \
        == "LlamaForCausalLM"
    builtin = add_lora(tiny_causal_lm(tok, hidden_size=16, num_layers=1), r=2, alpha=4, dropout=0.0,
                       target_modules=["q_proj"])
    assert not builtin.peft_config["default"].base_model_name_or_path  # none to make absolute


def test_switching_streaming_off_says_how_to_drop_its_buffer_option():
    """`preflab train examples/streaming.yaml streaming=false` said "streaming_shuffle_buffer applies with streaming:
    true." without what to do; it now names the `'~key'` override, which then loads."""
    from preflab.config import load_config

    with pytest.raises(ConfigError, match=r"^streaming_shuffle_buffer applies with streaming: true; remove it \(on the "
                                          r"command line: '~streaming_shuffle_buffer'\), or set streaming: true\.$"):
        load_config("examples/streaming.yaml", ["streaming=false"])
    cfg = load_config("examples/streaming.yaml", ["streaming=false", "~streaming_shuffle_buffer"])
    assert not cfg.streaming and not cfg.streaming_shuffle_buffer


def test_a_python_file_without_the_function_to_call_lists_its_functions_in_eval_too(tmp_path):
    """`reward_funcs: rewards.py` listed the file's functions, while `preflab eval --reward-fn rewards.py` said
    "is not 'module:name' or 'path/to/file.py:name'" and `rewards.py:nope` only "no 'nope' in rewards.py". Every
    spec read by preflab.plugins.import_object now lists the file's top-level functions (read, not run)."""
    from preflab.eval.winrate import load_callable

    code = tmp_path / "rewards.py"
    code.write_text("def helpful(prompts, completions, **kw):\n    return [1.0] * len(completions)\n\n"
                    "def _private():\n    pass\n")
    with pytest.raises(ConfigError, match=r"^--reward-fn / --judge: '.*rewards\.py' is a Python file without the name "
                                          r"to call; write .*rewards\.py:NAME \(its top-level functions: helpful\)\.$"):
        load_callable(str(code))
    with pytest.raises(ConfigError, match=r"^--reward-fn / --judge: '.*rewards\.py:nope': no 'nope' in .*rewards\.py "
                                          r"\(its top-level functions: helpful\)\.$"):
        load_callable(f"{code}:nope")
    assert load_callable(f"{code}:helpful")(["p"], ["c"]) == [1.0]


def test_tilde_drops_a_key_by_either_name_and_refuses_a_missing_nested_key(tmp_path):
    """`~key` drops a key the file writes under TRL's name when given preflab's (dataset_train_split / dataset_split)
    and the reverse, so the key is no longer written; `~name.key` of a key the mapping lacks is a ConfigError
    listing the keys it holds; a dropped key that preflab's own overrides set again is not written; `key=null` stays
    accepted for an option that takes null (resume_from_checkpoint, typed Any: only the options whose type has no
    None are refused)."""
    from pathlib import Path

    from preflab.config import load_config

    base = Path("examples/quickstart.yaml").read_text()
    for written, dropped in (("dataset_train_split", "~dataset_split"), ("dataset_split", "~dataset_train_split")):
        path = tmp_path / f"{written}.yaml"
        path.write_text(base + f"{written}: other\n")
        assert load_config(str(path)).dataset_split == "other"
        cfg = load_config(str(path), [dropped])
        assert cfg.dataset_split == "train" and "dataset_split" not in cfg.written_options, written
    with pytest.raises(ConfigError, match=r"^override '~objective_params\.nope': the config sets no "
                                          r"objective_params\.nope to drop \(objective_params holds "
                                          r"\['label_smoothing'\]\)"):
        load_config("examples/quickstart.yaml", ["loss_type=robust", "objective_params.label_smoothing=0.2",
                                                 "~objective_params.nope"])
    cfg = load_config("examples/quickstart.yaml", ["resume_from_checkpoint=null"])
    assert cfg.resume_from_checkpoint is None
    # a key the user dropped and preflab's own override then sets (an evaluation's settings) is not the user's
    cfg = load_config("examples/quickstart.yaml", ["~beta"], ["beta=0.2"])
    assert cfg.beta == 0.2 and "beta" not in cfg.written_options
