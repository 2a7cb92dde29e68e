"""Every option is range-checked from one table before any model loads (issue 18.11, 11.8)."""
import dataclasses
import typing

import pytest

from preflab.cli import main
from preflab.config import TrainConfig, config_from_dict, load_config, preflight
from preflab.config_options import OPTIONS
from preflab.errors import ConfigError

BASE = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl"}


def test_every_field_has_a_table_row():
    missing = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in OPTIONS]
    assert missing == [], f"add rows to preflab.config_options.OPTIONS for {missing}"


@pytest.mark.parametrize("key,value,allowed", [
    ("logging_steps", 0, "> 0"), ("adam_beta1", 1.5, "in [0, 1)"), ("adam_epsilon", -1.0, "> 0"),
    ("weight_decay", -5.0, ">= 0"), ("seed", -1, "[0, 4294967295]"), ("seed", 2**70, "[0, 4294967295]"),
    ("chunk_tokens", -8, "> 0"), ("chunk_tokens", 0, "> 0"), ("lora_dropout", 3.0, "in [0, 1)"),
    ("report_to", "nonsense", "tensorboard"), ("resume_from_checkpoint", [1, 2], "non-empty path"),
    ("resume_from_checkpoint", "", "non-empty path"), ("model_name_or_path", "", "non-empty"),
    ("max_grad_norm", -1.0, ">= 0"), ("num_train_epochs", -3.0, "> 0"), ("save_total_limit", -1, "> 0"),
    ("save_total_limit", 0, "> 0"), ("warmup_steps", -1, ">= 0"), ("logging_steps", -2, "> 0"),
    ("eval_steps", -1, ">= 0"), ("save_steps", -4, ">= 0"), ("warmup_ratio", 1.5, "[0, 1]"),
    ("max_steps", 0, "-1 or > 0"), ("max_completion_length", 0, "> 0"), ("rpo_alpha", -0.5, ">= 0"),
])
def test_out_of_range_values_are_refused_with_option_value_and_range(key, value, allowed):
    with pytest.raises(ConfigError) as err:
        config_from_dict({**BASE, key: value})
    text = str(err.value)
    assert f"{key}={value!r}" in text and allowed in text


def test_a_refused_value_says_what_the_option_is_and_temperature_zero_what_to_do():
    """The range message carries the option's meaning (its --help line), and temperature 0 (a TRL user's greedy
    decoding) says what to set instead; the old message said only `temperature must be > 0`."""
    with pytest.raises(ConfigError) as err:
        config_from_dict({**BASE, "task": "online", "temperature": 0})
    text = str(err.value)
    assert f"temperature must be > 0 ({OPTIONS['temperature'].meaning})." in text
    assert "Greedy decoding (temperature 0) is not offered" in text and "such as 0.1" in text


@pytest.mark.parametrize("key,accepted,refused,says", [
    ("eval_fraction", 0.99, 1.0, "in [0, 1)"), ("adam_beta1", 0.0, 1.0, "in [0, 1)"),
    ("adam_beta2", 0.999, 1.0, "in [0, 1)"), ("lora_dropout", 0.0, 1.0, "in [0, 1)"),
    ("warmup_ratio", 1.0, 1.01, "in [0, 1]"), ("max_length", 2, 1, "> 1"), ("seed", 2**32 - 1, 2**32, "4294967295"),
    ("top_p", 1.0, 0.0, "in (0, 1]"),
    ("score_range", [0.0, 1.0], [0.0, float("inf")], "must be finite"),  # a list value, no range of its own
    ("loss_weights", [1.0, 0.0], [1.0, float("nan")], "must be finite"),
    ("objective_params", {"gamma": 1.0}, {"gamma": float("nan")}, "must be finite"),
    ("max_grad_norm", float("inf"), float("nan"), "must be finite"),  # inf: clip nothing (torch), nan refused
])
def test_each_range_holds_its_end_and_refuses_the_value_just_past_it(key, accepted, refused, says):
    """The boundaries of the option table (an open end, a closed end, values inside lists and mappings): planted
    bugs that closed an open end, moved a bound by one or skipped the finiteness check of a list survived the tests
    of far-off values (adam_beta1 1.5, seed -1)."""
    from preflab.config_options import range_errors

    assert range_errors({key: accepted}) == []
    (message,) = range_errors({key: refused})
    assert message.startswith(f"{key}={refused!r} is not allowed") and says in message, message


def test_lora_rank_zero_refused():
    with pytest.raises(ConfigError, match=r"lora_r=0 .* > 0"):
        config_from_dict({**BASE, "use_peft": True, "lora_r": 0})


def test_every_bad_option_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        config_from_dict({**BASE, "logging_steps": 0, "adam_beta1": 1.5, "seed": -1})
    text = str(err.value)
    assert "3 invalid options" in text
    assert all(f in text for f in ("logging_steps=0", "adam_beta1=1.5", "seed=-1"))


@pytest.mark.parametrize("extra,words", [
    ({"bf16": True, "dtype": "float16"}, "bf16: true conflicts with dtype='float16'"),
    ({"fp16": True, "dtype": "bfloat16"}, "fp16: true conflicts"),
    ({"eval_fraction": 0.1, "eval_dataset_name": "e.jsonl"}, "both give an eval set"),
    ({"task": "reward", "loss_type": "ipo"},
     "task: reward trains a reward model (reward_head: bt); loss_type only applies to task: dpo. Remove it"),
    ({"task": "reward", "reward_head": "gpm", "beta": 0.5},
     "task: reward trains a reward model (reward_head: gpm); beta only applies to task: dpo"),
    # were accepted and ignored: a reward model has no reference and no beta; SFT has no beta
    ({"task": "reward", "precompute_ref_log_probs": True, "beta": 0.5},
     "task: reward trains a reward model (reward_head: bt); beta, precompute_ref_log_probs only apply to task: dpo. "
     "Remove them"),
    ({"task": "reward", "ref_model_name_or_path": "builtin:tiny-llama"}, "(reward_head: bt); ref_model_name_or_path only applies"),
    ({"task": "sft", "beta": 0.5}, "task: sft trains on completions by maximum likelihood; beta only applies"),
    ({"center_rewards_coefficient": 0.01}, "only applies to task: reward"),
    ({"ref_model_init_kwargs": {"dtype": "bfloat16"}}, "only apply to ref_model_name_or_path"),
])
def test_conflicting_options_are_errors(extra, words):
    with pytest.raises(ConfigError) as err:
        config_from_dict({**BASE, **extra})
    assert words in str(err.value)


def test_bf16_with_matching_dtype_is_fine():
    assert config_from_dict({**BASE, "bf16": True, "dtype": "bfloat16"}).torch_dtype == "bfloat16"


def test_empty_config_file_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("# nothing here\n")
    with pytest.raises(ConfigError, match="is empty"):
        load_config(path)


def test_read_only_cache_dir_refused_before_loading(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("PREFLAB_CACHE_DIR", str(blocker / "cache"))  # under a file: cannot be created, even as root
    with pytest.raises(ConfigError, match="PREFLAB_CACHE_DIR .* is not writable"):
        preflight(config_from_dict(BASE))


def test_report_to_unknown_lists_known_and_missing_says_pip_install(monkeypatch):
    with pytest.raises(ConfigError, match=r"report_to='tensorbord'.*tensorboard \| wandb"):
        config_from_dict({**BASE, "report_to": "tensorbord"})
    import preflab.config_options as options

    monkeypatch.setattr(options.importlib.util, "find_spec", lambda name: None)  # nothing installed
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        preflight(config_from_dict({**BASE, "report_to": ["tensorboard"]}))


def test_cli_reports_a_bad_value_in_one_line_before_loading(capsys):
    code = main(["train", "model_name_or_path=builtin:tiny-llama", "dataset_name=missing.jsonl", "max_grad_norm=-1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("preflab: error: max_grad_norm=-1.0 is not allowed") and "Traceback" not in err


def test_help_lists_every_option_with_meaning_and_allowed_values(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for f in dataclasses.fields(TrainConfig):
        assert f"  {f.name} = " in text
    assert "seed = 42  (int; integer in [0, 4294967295]) seed of data order" in text
    assert "lora_dropout = 0.05  (float; in [0, 1)) dropout on the LoRA input" in text
    assert "(undocumented)" not in text


def test_undocumented_field_is_type_checked_and_marked_in_help(monkeypatch):
    from preflab.config_options import help_line
    from preflab.option_types import check_type

    assert help_line("brand_new_option", "int", "3") == "  brand_new_option = 3  (int) (undocumented)"
    with pytest.raises(ConfigError, match="must be int"):
        check_type("brand_new_option", "three", typing.Optional[int])


def test_is_number_takes_ints_and_floats_but_not_bools_or_text():
    """The one "a number, not a bool" test the option tables, recipe params and summary readers share: YAML's `true`
    is an int to isinstance, never a number here; number text is not a number (check_type converts it first)."""
    from preflab.option_types import is_number

    assert [is_number(v) for v in (0, 3, -2.5, float("inf"), float("nan"))] == [True] * 5
    assert [is_number(v) for v in (True, False, "1", None, [1], 1j)] == [False] * 6


def test_objectives_name_prints_parameters_with_meaning(capsys):
    assert main(["objectives", "dpo"]) == 0
    out = capsys.readouterr().out
    assert "beta = 0.1  # inverse temperature of the implicit reward" in out
    assert "ld_alpha = None  # TRL's ld_alpha" in out


def test_cli_hides_third_party_warnings_but_not_preflab_ones():
    import warnings

    from transformers.utils import logging as transformers_logging

    from preflab.loops.cli import quiet_third_party_warnings
    from preflab.quiet import kept_as_found

    before = list(warnings.filters)
    with kept_as_found(), warnings.catch_warnings(record=True) as seen:  # kept_as_found: as preflab.cli.main runs it
        warnings.simplefilter("always")
        quiet_third_party_warnings()
        assert not transformers_logging.is_progress_bar_enabled()
        warnings.warn_explicit("`x` is deprecated", FutureWarning, "modeling_utils.py", 1,
                               module="transformers.modeling_utils")
        warnings.warn_explicit("a user warning", UserWarning, "tuners.py", 1, module="peft.tuners")
        warnings.warn_explicit("preflab: layout falls back", UserWarning, "prefix.py", 1, module="preflab.data.prefix")
    assert [str(w.message) for w in seen] == ["preflab: layout falls back"]
    assert warnings.filters == before  # the filters were the CLI run's only; library users keep theirs
    assert transformers_logging.is_progress_bar_enabled()  # left off, it silenced a later demo's bars


def test_a_split_a_single_data_file_cannot_hold_is_refused_naming_the_option(tmp_path):
    """dataset_split: test on one .jsonl file was ignored (training on the whole file); TRL's dataset_test_split with
    eval_strategy made the training file the eval set too. Both are refused before a model loads; eval_dataset_name
    as a file without eval_split is read whole."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
    base = {**BASE, "dataset_name": str(rows)}
    with pytest.raises(ConfigError, match=r"dataset_split='test': dataset_name: .*rows.jsonl holds the split "
                                          r"\['train'\] and no split 'test'.*Remove dataset_split \(or set it to "
                                          r"'train'\)"):
        preflight(config_from_dict({**base, "dataset_split": "test"}))
    with pytest.raises(ConfigError, match=r"eval_split='test': eval_dataset_name: .*rows.jsonl"):
        preflight(config_from_dict({**base, "dataset_test_split": "test", "eval_strategy": "steps",
                                    "eval_steps": 1}))
    preflight(config_from_dict({**base, "eval_dataset_name": str(rows)}))  # no eval_split: the file is the eval set
    preflight(config_from_dict({**base, "eval_dataset_name": str(rows), "eval_split": "train"}))


ONLINE_DEMO = {"task": "online", "online_task": "demo", "model_name_or_path": "builtin:demo-sft", "max_steps": 2}
GAME = {"task": "online", "online_task": "game", "trainer": "inpo", "model_name_or_path": "builtin:tiny-llama",
        "game_preferences": [[0.5, 0.7], [0.3, 0.5]], "max_steps": 2}


@pytest.mark.parametrize("raw,words", [
    # found by benchmarks/audit_unread_options.py: accepted, and never read by the run
    ({**BASE, "warmup_steps": 2, "warmup_ratio": 0.1}, "both set the warmup (warmup_steps would win"),
    ({**BASE, "eval_fraction": 0.1, "eval_split": "test"}, "eval_split='test' names the split of eval_dataset_name"),
    ({**BASE, "task": "sft", "max_prompt_length": 64}, "max_prompt_length only applies to the tasks with prompts"),
    ({**BASE, "task": "diffusion", "truncation_mode": "keep_start"}, "truncation_mode only applies to the tasks that cut"),
    ({**BASE, "task": "sft", "layout": "packed"},
     "layout only applies to the preference tasks (TRL's padding_free: true is"),
    ({**BASE, "task": "sft", "dataset_num_proc": 2}, "dataset_num_proc only applies to task: dpo and task: reward"),
    ({**BASE, "task": "reward", "attention": "dense"}, "attention only applies to the tasks that score prefix-shared"),
    ({**BASE, "task": "diffusion", "loss_type": "diffusion_dpo", "self_npo_rollout_steps": 2},
     "self_npo_rollout_steps only applies to task: diffusion with loss_type: self_npo"),
    ({**BASE, "task": "diffusion", "loss_type": "diffusion_dpo", "user_column": "u"},
     "user_column only applies to task: diffusion with loss_type: ppd"),
    ({**BASE, "task": "vlm", "pad_to_multiple_of": 8}, "pad_to_multiple_of only applies to the text tasks"),
    ({**ONLINE_DEMO, "precompute_ref_log_probs": True}, "precompute_ref_log_probs only applies to the offline"),
    ({**ONLINE_DEMO, "use_peft": True}, "use_peft only applies to the runs that load model_name_or_path"),
    ({**BASE, "task": "diffusion", "loss_type": "diffusion_dpo", "load_dtype": "bfloat16"},
     "load_dtype only applies to the runs that load model_name_or_path with transformers"),
    ({**ONLINE_DEMO, "eval_fraction": 0.1}, "eval_fraction only applies to the offline tasks and online_task: dataset"),
    ({**ONLINE_DEMO, "dataset_name": "x.jsonl"}, "dataset_name only applies to the tasks that read a dataset"),
    ({**GAME, "reward_funcs": "x:y"}, "reward_funcs is read by the online tasks that judge sampled text"),
    ({**GAME, "apo_alpha": 0.5}, "apo_alpha is read by trainer apo in online_task: game"),
])
def test_an_option_this_task_never_reads_is_refused(raw, words):
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    assert words in str(err.value)


def test_the_readers_of_the_newly_refused_options_still_take_them():
    config_from_dict({**BASE, "warmup_ratio": 0.1, "max_prompt_length": 64, "truncation_mode": "keep_start",
                      "dataset_num_proc": 2, "attention": "dense", "layout": "padded", "pad_to_multiple_of": 8})
    config_from_dict({**BASE, "eval_dataset_name": "e.jsonl", "eval_split": "test"})
    config_from_dict({**BASE, "task": "diffusion", "loss_type": "self_npo", "self_npo_rollout_steps": 2})
    config_from_dict({**BASE, "task": "online", "reward_funcs": "x:y", "eval_fraction": 0.1, "max_steps": 2,
                      "pad_to_multiple_of": 8, "max_prompt_length": 16})
    config_from_dict({**GAME, "trainer": "apo", "apo_alpha": 0.5})


def test_sft_and_vlm_take_keep_start_and_refuse_keep_end():
    """task: sft and task: vlm keep a long row's start: keep_start (TRL's default, in every saved TRL config) is
    accepted, keep_end is refused with the reason (task: sft accepted it and kept the start)."""
    for task in ("sft", "vlm"):
        config_from_dict({**BASE, "task": task, "truncation_mode": "keep_start"})
        with pytest.raises(ConfigError, match=f"keep_end .*not supported for task: {task}"):
            config_from_dict({**BASE, "task": task, "truncation_mode": "keep_end"})


def test_builtin_models_refuse_from_pretrained_kwargs_they_would_drop():
    """A builtin model is built in code: model_init_kwargs other than a dtype (TRL's torch_dtype becomes load_dtype)
    were accepted and dropped. The policy's and a builtin reference's are refused, each naming its option and keys;
    a saved model's name takes them."""
    with pytest.raises(ConfigError, match=r"model_init_kwargs \['attn_implementation', 'revision'\] would not "
                                          r"reach model_name_or_path='builtin:tiny-llama'"):
        config_from_dict({**BASE, "model_init_kwargs": {"revision": "v1", "attn_implementation": "eager"}})
    with pytest.raises(ConfigError, match=r"ref_model_init_kwargs \['revision'\] would not reach "
                                          r"ref_model_name_or_path='builtin:tiny-qwen2'"):
        config_from_dict({**BASE, "ref_model_name_or_path": "builtin:tiny-qwen2",
                          "ref_model_init_kwargs": {"revision": "v1"}})
    cfg = config_from_dict({**BASE, "model_init_kwargs": {"torch_dtype": "bfloat16"}})
    assert cfg.load_dtype == "bfloat16"
    assert config_from_dict({**BASE, "model_name_or_path": "Qwen/Qwen2.5-0.5B",
                             "model_init_kwargs": {"revision": "v1"}}).model_init_kwargs == {"revision": "v1"}


EXTRA = {"online": {"reward_funcs": "x:y", "max_steps": 2, "max_length": None}}


def test_each_refused_value_row_is_refused_with_its_whole_message(monkeypatch):
    """config_owners.REFUSED_VALUES drives TrainConfig._conflicts: every row refuses its value under its task with
    the message spelled out (the sentence the three truncation_mode refusals gave when they were if-blocks), and a
    row added to the table is refused without code (a new refusal is a row)."""
    import re

    import preflab.config_owners as owners

    expected = {
        "vlm": "truncation_mode: keep_end with max_length=64 is not supported for task: vlm (as in TRL 1.16): it cuts "
               "the start of prompt + response, where the image tokens are. Use truncation_mode: keep_start (or unset "
               "it) or max_length: null.",
        "sft": "truncation_mode: keep_end is not supported for task: sft: a row longer than max_length keeps its start "
               "(TRL SFTConfig's default keep_start). Unset truncation_mode (or keep_start), or raise max_length.",
        "online": "truncation_mode: keep_start is not supported for task: online: a prompt longer than "
                  "max_prompt_length keeps its end, as TRL's online trainers cut it (TRL 0.x's GRPOTrainer and its "
                  "OnlineDPOTrainer cut from the left; TRL 1.16's GRPOTrainer cuts no prompt), since the end holds "
                  "the question and the generation prompt the completion follows. Unset truncation_mode (or "
                  "keep_end), and raise max_prompt_length (or null: no limit) to keep a prompt's start.",
    }
    assert sorted(row[0] for row in owners.REFUSED_VALUES) == sorted(expected)
    for task, option, value, *_ in owners.REFUSED_VALUES:
        with pytest.raises(ConfigError, match=re.escape(expected[task])):
            config_from_dict({**BASE, "max_length": 64, **EXTRA.get(task, {}), "task": task, option: value})
    config_from_dict({**BASE, "task": "vlm", "truncation_mode": "keep_end", "max_length": None})  # its condition
    monkeypatch.setattr(owners, "REFUSED_VALUES", owners.REFUSED_VALUES + (
        ("dpo", "layout", "packed", lambda cfg: cfg.beta > 0.5, " with beta={cfg.beta}", ": a test row."),))
    config_from_dict({**BASE, "layout": "packed"})
    with pytest.raises(ConfigError, match=re.escape("layout: packed with beta=0.7 is not supported for task: dpo: "
                                                    "a test row.")):
        config_from_dict({**BASE, "layout": "packed", "beta": 0.7})


@pytest.mark.parametrize("task", ["reward", "sft", "diffusion"])
def test_ref_load_dtype_refused_where_no_reference_is_loaded(task):
    """ref_load_dtype was accepted and read by nothing under these tasks (only a bf16 hardware check saw it)."""
    with pytest.raises(ConfigError, match=rf"ref_load_dtype only applies to the runs that load a reference model .*"
                                          rf"not to this run \(task: {task}"):
        TrainConfig(task=task, model_name_or_path="x", dataset_name="y", ref_load_dtype="bfloat16")


def test_ref_load_dtype_beside_a_reference_free_loss_gets_a_note(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("model_name_or_path: x\ndataset_name: y\nloss_type: simpo\nref_load_dtype: bfloat16\n")
    cfg = load_config(str(path))
    assert cfg.ref_load_dtype == "bfloat16"
    assert ("ref_load_dtype: loss_type simpo uses no reference model, so no reference is loaded in bfloat16; "
            "remove it.") in capsys.readouterr().err


@pytest.mark.parametrize("extra,words", [
    ({"bf16": True, "fp16": True}, "bf16 and fp16 are both set; choose one."),
    ({"eval_strategy": "no", "eval_steps": 5}, "eval_strategy='no' conflicts with eval_steps=5 (no evaluation runs, "
     "so eval_steps would do nothing); remove one."),
    ({"task": "sft", "use_weighting": True}, "use_weighting (WPO) applies to task: dpo (the text scorer computes its "
     "token terms), not task: sft."),
])
def test_conflicts_of_a_config_built_from_keywords_are_errors(extra, words):
    """TrainConfig(...) with keyword arguments (the Python API) runs the same checks as a YAML file."""
    from preflab.config import TrainConfig

    with pytest.raises(ConfigError) as err:
        TrainConfig(**{**BASE, **extra})
    assert words in str(err.value)



def test_eval_steps_beside_eval_strategy_no_is_one_rule_for_every_entry_point(tmp_path, capsys):
    """Written by the user (TrainConfig(...), a YAML file, config_from_dict of the user's keys) eval_steps cannot do
    anything beside eval_strategy: no and is refused; a YAML file dropped it with a note while TrainConfig(...) refused
    it. From a saved config (TRL's args.to_dict(): nobody's choice, as TrainingArguments leaves it unread) or a value
    a program set (not written) it is set to 0 with a note, at each entry point."""
    refused = r"eval_strategy='no' conflicts with eval_steps=5 \(no evaluation runs"
    with pytest.raises(ConfigError, match=refused):
        TrainConfig(**BASE, eval_strategy="no", eval_steps=5)
    with pytest.raises(ConfigError, match=refused):
        config_from_dict({**BASE, "eval_strategy": "no", "eval_steps": 5})
    path = tmp_path / "c.yaml"
    path.write_text("model_name_or_path: builtin:tiny-llama\ndataset_name: x.jsonl\neval_strategy: no\neval_steps: 5\n")
    with pytest.raises(ConfigError, match=refused):
        load_config(path)
    capsys.readouterr()
    note = "preflab: note: eval_strategy: no -> eval_steps=5 is not used (no evaluation)."
    saved = {f.name: getattr(TrainConfig(**BASE), f.name) for f in dataclasses.fields(TrainConfig)}
    assert config_from_dict({**saved, "eval_strategy": "no", "eval_steps": 5}).eval_steps == 0
    assert note in capsys.readouterr().err
    assert TrainConfig(**BASE, eval_strategy="no", eval_steps=5, written_options=frozenset()).eval_steps == 0
    assert note in capsys.readouterr().err


@pytest.mark.parametrize("eval_set", [{"eval_fraction": 0.1}, {"eval_dataset_name": "held.jsonl"}])
def test_an_eval_set_beside_eval_strategy_no_is_refused_in_trainconfig(eval_set):
    """TrainConfig(eval_strategy="no", eval_fraction=0.1) was accepted and the run still evaluated at its end (eval_steps
    0 is "at the end only"); a YAML file drops the eval set with a note (test_config_trl), TrainConfig(...) refuses."""
    key, value = next(iter(eval_set.items()))
    with pytest.raises(ConfigError, match=rf"eval_strategy='no' conflicts with {key}={value!r}: the run would still "
                                          "evaluate"):
        TrainConfig(**BASE, eval_strategy="no", **eval_set)


@pytest.mark.parametrize("task, says", [("sft", "scores the eval rows' completions"),
                                        ("online", "already samples the held-out prompts")])
def test_generate_during_eval_is_refused_by_the_tasks_whose_evaluation_writes_no_samples(task, says):
    """generate_during_eval (TRL's DPOConfig option) was accepted and ignored by task: sft (and distillation) and
    task: online, whose evaluate() writes no eval_samples.jsonl: refused, naming the task; task: dpo keeps it."""
    base = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "rows.jsonl", "max_steps": 2}
    with pytest.raises(ConfigError) as err:
        config_from_dict({**base, "task": task, "generate_during_eval": True})
    assert f"is not read by task: {task}, whose evaluation {says}" in str(err.value)
    assert config_from_dict({**base, "task": task}).generate_during_eval is False
    assert config_from_dict({**base, "task": "dpo", "generate_during_eval": True}).generate_during_eval is True
