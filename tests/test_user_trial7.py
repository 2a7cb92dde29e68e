"""User trial 7 (text models: DPO family, online loops, tool calling, optimizers, distillation, eval, report,
resume, 2 processes): each test reproduces a finding and asserts the fixed message or value."""
import json

import pytest

from preflab.config import config_from_dict
from preflab.errors import ConfigError

ONLINE_TOOLS = {"task": "online", "online_task": "dataset", "trainer": "grpo", "model_name_or_path": "./toolmodel",
                "dataset_name": "prompts.jsonl", "reward_funcs": "my_rewards.py:correct",
                "tools": ["calculator", "mytools.py:multiply"], "max_steps": 2}


# ------------------------------------------------------------------ report: a run trained with tools
def test_the_report_does_not_point_a_tool_run_to_the_win_rate_preflab_eval_refuses(tmp_path):
    """The report of a GRPO run with `tools:` said `no eval.json: run preflab eval RUN --data HELDOUT_PAIRS
    --reward-fn my_rewards.py:correct`, which preflab eval refuses for such a run (its win rate samples plain
    answers, without the tools). It now gives the pair-metrics command and names the run's own held-out evaluation."""
    import yaml

    from preflab.report.runs import eval_command, load_run

    assert eval_command(ONLINE_TOOLS) == "preflab eval RUN_DIR --data HELDOUT_PAIRS"
    without = {k: v for k, v in ONLINE_TOOLS.items() if k != "tools"}  # unchanged without tools
    assert eval_command(without) == "preflab eval RUN_DIR --data HELDOUT_PAIRS --reward-fn my_rewards.py:correct"
    run_dir = tmp_path / "gt"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(ONLINE_TOOLS))
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 2, "loss": 0.0, "reward": 0.1}) + "\n")
    (run_dir / "config.json").write_text("{}")  # a final model is there
    notes = load_run(run_dir).missing
    hint = [n for n in notes if n.startswith("no eval.json")]
    assert len(hint) == 1 and "--reward-fn" in hint[0].split(";")[1]  # named only as what is refused
    assert hint[0].startswith(f"no eval.json: run `preflab eval {run_dir} --data HELDOUT_PAIRS` for ranking "
                              "accuracy on held-out pairs")
    assert hint[0].endswith("(set eval_dataset_name or eval_fraction: eval_reward, eval_win_rate_vs_reference, "
                            "eval_tools/*)")
    (run_dir / "config.yaml").write_text(yaml.safe_dump({**ONLINE_TOOLS, "eval_fraction": 0.5}))  # it has one
    hint = [n for n in load_run(run_dir).missing if n.startswith("no eval.json")]
    assert hint[0].endswith("(its eval rows in metrics.jsonl: eval_reward, eval_win_rate_vs_reference, eval_tools/*)")
    # the "no eval rows" note names what an online run's evaluation logs, not a preference run's ranking accuracy
    rows = [n for n in notes if n.startswith("no eval rows")]
    assert rows == ["no eval rows in metrics.jsonl: set eval_steps and an eval set (eval_fraction or "
                    "eval_dataset_name) to log the reward of the policy's greedy answers to held-out prompts and "
                    "their win rate against the starting policy's (eval_reward, eval_win_rate_vs_reference, and "
                    "the tool loop's eval_tools/*)"]


@pytest.mark.parametrize("config, logged", [
    ({"task": "online", "online_task": "demo", "trainer": "grpo"},
     "greedy answers to held-out prompts and their win rate against the starting policy's (eval_true_reward, "
     "eval_win_rate_vs_reference)"),
    ({"task": "online", "online_task": "dataset", "trainer": "grpo", "num_generations_eval": 4},
     "sampled answers (num_generations_eval) to held-out prompts and their win rate against the starting "
     "policy's (eval_reward, eval_win_rate_vs_reference)"),
    ({"task": "online", "online_task": "game", "trainer": "inpo"},
     "the policy's distance to the equilibrium (eval_tv_to_equilibrium, eval_duality_gap)"),
    ({"task": "dpo"}, "held-out ranking accuracy and log-prob drift"),
    ({"task": "sft"}, "the held-out loss and next-token accuracy (eval_loss, eval_mean_token_accuracy)"),
])
def test_the_no_eval_rows_note_names_what_the_runs_evaluation_logs(config, logged):
    """Every online run was told to set an eval set "to log held-out ranking accuracy and log-prob drift", which
    an online run never logs (online/run.py evaluate: eval_reward / eval_true_reward, the win rate; the game's
    distance to the equilibrium)."""
    from preflab.report.runs import eval_rows_log

    assert eval_rows_log(config).endswith(logged)


# ------------------------------------------------------------------ distillation: the teacher's tokenizer
def test_a_teacher_with_another_tokenizer_is_refused_under_its_own_option(tmp_path):
    """A teacher saved with another tokenizer of the same size was refused as `ref_model_name_or_path='./teacher'
    has its own tokenizer ...; Use a reference with the policy's tokenizer`, an option the distillation config does
    not have. The refusal (unchanged) now names teacher_model_name_or_path and the teacher."""
    from preflab.models.load import load_models, load_tokenizer
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    teacher = tmp_path / "teacher"
    tiny_causal_lm(tiny_tokenizer("whitespace"), arch="qwen2", vocab_size=300, hidden_size=16,
                   num_layers=1).save_pretrained(teacher)
    tiny_tokenizer("whitespace").save_pretrained(teacher)
    cfg = config_from_dict({"task": "sft", "model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl",
                            "teacher_model_name_or_path": str(teacher)})
    with pytest.raises(ConfigError) as err:
        load_models(cfg, load_tokenizer(cfg.model_name_or_path))
    assert str(err.value).startswith(f"teacher_model_name_or_path={str(teacher)!r} has its own tokenizer, which "
                                     "gives ")
    assert str(err.value).endswith("the teacher would score other tokens than the policy. Use a teacher with the "
                                   "policy's tokenizer.")
    tiny_tokenizer("bytelevel").save_pretrained(teacher)  # the student's tokenizer beside it: the teacher loads
    policy, ref = load_models(cfg, load_tokenizer(cfg.model_name_or_path))
    assert ref is not None and not any(p.requires_grad for p in ref.parameters())


# ------------------------------------------------------------------ a saved GRPOConfig
def test_a_saved_grpoconfig_trains_the_recipe_of_its_loss_type():
    """A GRPOConfig dump (args.to_dict()) with no task stopped on `generation_batch_size, num_generations,
    reward_funcs only apply to task: online ...; remove them`, and with task: online on `Set trainer: dapo and leave
    loss_type out` (the loss_type may stay). A full dump now gets task: online and trainer: <its loss_type>, as a
    saved RLOOConfig gets trainer: rloo; a hand-written loss_type: dapo without trainer is still refused."""
    trl = pytest.importorskip("trl")
    base = {"model_name_or_path": "builtin:demo-sft", "dataset_name": "prompts.jsonl", "reward_funcs": "m:f"}
    for loss in ("dapo", "grpo", "cispo"):
        raw = trl.GRPOConfig(output_dir="out", bf16=False, use_cpu=True, max_steps=2, loss_type=loss).to_dict()
        cfg = config_from_dict({**base, **raw})
        assert (cfg.task, cfg.trainer, cfg.objective().loss_type) == ("online", loss, loss)
    raw = trl.GRPOConfig(output_dir="out", bf16=False, use_cpu=True, max_steps=2).to_dict()
    assert config_from_dict({**base, **raw, "task": "online"}).trainer == "dapo"
    with pytest.raises(ConfigError, match=r"`trainer: dapo` \(got trainer 'grpo'\)"):  # a disagreement: refused
        config_from_dict({**base, **raw, "trainer": "grpo"})
    with pytest.raises(ConfigError, match=r"Set task: online, trainer: dapo"):  # a task written against the dump
        config_from_dict({**base, **raw, "task": "dpo"})
    with pytest.raises(ConfigError) as err:  # hand-written: no inference
        config_from_dict({**base, "task": "online", "loss_type": "dapo"})
    assert str(err.value).endswith("Set trainer: dapo (loss_type: dapo may stay, or leave it out).")


# ------------------------------------------------------------------ preflab eval --task distill
def test_preflab_eval_task_distill_counts_training_rows_and_takes_a_small_file(tmp_path, capsys):
    """`preflab eval RUN --task distill --data F`: a held-out file of fewer rows than the run's global batch stopped
    on "7 training rows are fewer than one global batch" (the eval built its trainer on the rows as training data);
    the run's own training file, or rows it trained on, got no word (every other eval task says so: eval.json
    overlap_with_training); and a training-time note "eval_steps=..., but there is no eval set" was printed about
    the eval's own config. Now a 3-row file (2 training rows, 1 new) is evaluated and counted: 2 rows and 2 prompts
    the run trained on; the training file itself gets the training-data note."""

    from preflab.cli import main
    from preflab.loops.distill import DistillTrainer

    train = tmp_path / "train.jsonl"
    rows = [{"prompt": f"echo: {w} cat\n", "completion": f"{w.upper()} CAT"} for w in
            ("kit", "hat", "owl", "box", "sun", "map", "pen", "cup")]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    cfg = config_from_dict({"task": "sft", "model_name_or_path": "builtin:tiny-llama", "dataset_name": str(train),
                            "teacher_model_name_or_path": "builtin:tiny-qwen2", "per_device_train_batch_size": 8,
                            "max_length": 64, "max_steps": 1, "eval_steps": 1, "eval_fraction": 0.0,
                            "use_cpu": True, "disable_tqdm": True, "seed": 0, "output_dir": str(run)})
    DistillTrainer(cfg).train()
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps(r) + "\n" for r in rows[:2] + [{"prompt": "echo: new dog\n",
                                                                        "completion": "NEW DOG"}]))
    capsys.readouterr()
    assert main(["eval", str(run), "--task", "distill", "--data", str(held), "--out", str(tmp_path / "e.json")]) == 0
    said = capsys.readouterr()
    got = json.loads((tmp_path / "e.json").read_text())
    assert got["num_rows"] == 3 and got["missing"] == {}
    assert got["overlap_with_training"] == {"prompts": 2, "pairs": 2, "rows": 3, "checked_against": str(train),
                                            "split": "train", "training_sequences": 8}
    assert got["notes"] == [f"2 of 3 eval rows (66.7%) have a prompt the run trained on, and 2 (66.7%) are rows the "
                            "run trained on (the same text, prompt + completion or messages), compared with the run's "
                            f"training data {train} (dataset_name, split train): these metrics are partly on training "
                            "data, not held-out; evaluate rows whose prompts the run did not train on for "
                            "generalization"]
    assert "but there is no eval set" not in said.out + said.err
    assert main(["eval", str(run), "--task", "distill", "--data", str(train), "--out", str(tmp_path / "t.json")]) == 0
    own = json.loads((tmp_path / "t.json").read_text())
    assert own["overlap_with_training"]["pairs"] == 8 and own["notes"] == [
        f"--data {train} (split train) is the run's training data (dataset_name): every row was trained on, so these "
        "metrics are not held-out; evaluate a held-out file for generalization"]


# ------------------------------------------------------------------ tools offered, never used (or always failing)
def test_a_tool_run_whose_model_never_calls_a_tool_is_told_so():
    """A GRPO run with `tools:` whose completions never called a tool (a model that does not know the template's
    tool format, or a template that does not show the tools) ended with tools/call_frequency 0 in every row and no
    word: it trained as plain GRPO. The run's end and the report now say it, and also when every call failed."""
    from preflab.report.data_notes import online_notes, tool_use_note

    unused = {"rounds": 2, "completions": 8, "tool_calls": 0, "tool_failures": 0, "tool_timeouts": 0}
    said = ("tools: no completion of the 2 training round(s) called a tool (online.tool_calls 0, tools/call_frequency "
            "0), so the run trained as it would without tools; check that the chat template shows the tools to the "
            "model and that it writes calls the response parser reads")
    assert tool_use_note(unused) == said and online_notes({"online": unused}) == [said]
    failing = {**unused, "tool_calls": 5, "tool_failures": 5}
    assert tool_use_note(failing).startswith("tools: every one of the 5 tool calls of the training rounds failed")
    assert tool_use_note({**unused, "tool_calls": 5, "tool_failures": 4}) is None  # some calls answered
    assert tool_use_note({"rounds": 2, "completions": 8}) is None and online_notes(  # a run without tools
        {"online": {"rounds": 2, "completions": 8}}) == []


# ------------------------------------------------------------------ an example's eval_dataset_name left as it was
@pytest.mark.parametrize("task", ["dpo", "sft"])
def test_an_eval_data_error_names_eval_dataset_name(tmp_path, task):
    """examples/dpo.yaml's comment said to override model_name_or_path and dataset_name; its eval_dataset_name still
    named the hub dataset, and the error ("'trl-lib/ultrafeedback_binarized' was taken as a hub dataset name ...")
    named no option, so it read as one about the dataset_name just given. The eval set's read errors now start with
    eval_dataset_name=..., for the DPO family's reader and train_and_eval's (SFT, online, VLM, ...); the comment
    names eval_dataset_name too."""
    from pathlib import Path

    from preflab.errors import DataError
    from preflab.loops.sft import SFTTrainer
    from preflab.loops.offline import Trainer

    data = str(Path(__file__).resolve().parents[1] / "examples/data/" /
               ("loud_echo_pairs.jsonl" if task == "dpo" else "loud_echo_sft.jsonl"))
    missing = str(tmp_path / "held.jsonl")
    cfg = config_from_dict({"task": task, "model_name_or_path": "builtin:tiny-llama", "dataset_name": data,
                            "eval_dataset_name": missing, "max_steps": 1, "use_cpu": True, "disable_tqdm": True,
                            "output_dir": str(tmp_path / "run")})
    with pytest.raises(DataError) as err:
        (Trainer if task == "dpo" else SFTTrainer)(cfg)
    assert str(err.value).startswith(f"eval_dataset_name={missing!r}: data file or directory {missing!r} does not "
                                     "exist")
    comment = (Path(__file__).resolve().parents[1] / "examples/dpo.yaml").read_text().split("\n", 4)[2:4]
    assert "dataset_name=/path/to/pairs.jsonl" in comment[0] and "eval_dataset_name=/path/to/heldout.jsonl" in comment[1]


def test_a_policy_whose_template_cannot_call_tools_is_named_with_what_to_do():
    """`tools: [calculator]` on builtin:tiny-qwen2 stopped on "tools: its chat template drops part of a tool-calling
    conversation (...)", naming neither the model nor what to do. It now names model_name_or_path and the kind of
    model tool calling needs; a template that renders tools but has no response_template keeps its own advice."""
    import sys
    from pathlib import Path

    from preflab.models.tiny import tiny_tokenizer
    from preflab.online.tool_calling import TEMPLATE_FIX, check_tool_tokenizer

    with pytest.raises(ConfigError) as err:
        check_tool_tokenizer(tiny_tokenizer("bytelevel"), None, "builtin:tiny-qwen2")
    assert str(err.value).startswith("tools: its chat template drops part of a tool-calling conversation")
    assert str(err.value).endswith(f"; the policy is model_name_or_path builtin:tiny-qwen2. {TEMPLATE_FIX}")
    sys.path.insert(0, str(Path(__file__).parent / "online"))
    from test_tool_calling import TEMPLATE

    tok = tiny_tokenizer("char")
    tok.chat_template = TEMPLATE  # renders tools, but has no response_template (and TRL does not know it)
    with pytest.raises(ConfigError) as err:
        check_tool_tokenizer(tok, None, "./toolmodel")
    assert str(err.value).startswith("tools: the tokenizer has no response_template")
    assert str(err.value).endswith("; the policy is model_name_or_path ./toolmodel.")


def test_a_misspelt_optim_args_key_names_the_key_meant():
    """optim_args: "momentum=0.9,centred=true" for rmsprop was refused listing the keys it reads; the one meant
    (transformers' `centered`) is now named, as every misspelt option is."""
    with pytest.raises(ConfigError) as err:
        config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl", "optim": "rmsprop",
                          "optim_args": "momentum=0.9,centred=true"})
    assert ("optim rmsprop does not read 'centred' (it reads momentum, alpha, eps, centered; transformers would "
            "ignore it; did you mean 'centered'?)") in str(err.value)
    with pytest.raises(ConfigError) as err:  # nothing close: no guess
        config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl", "optim": "sgd",
                          "optim_args": "lr_decay=0.1"})
    assert "optim sgd does not read 'lr_decay' (it reads momentum, dampening, nesterov; transformers would ignore " \
           "it)" in str(err.value)


@pytest.mark.parametrize("trainer, options, trains", [
    ("grpo", {"beta": 0.0}, "nothing (beta 0: no KL term)"),
    ("grpo", {"beta": 0.04}, "nothing but the KL term (beta 0.04)"),
    ("dapo", {"beta": 0.0, "entropy_coef": 0.01}, "nothing but the entropy bonus (entropy_coef 0.01)"),
    ("rloo", {"beta": 0.05}, "nothing (rloo's KL penalty is in the reward, not in the loss)"),
])
def test_a_round_without_reward_signal_says_what_its_steps_still_train(tmp_path, trainer, options, trains):
    """A round whose every group was rewarded alike said its steps "train nothing but the KL term (beta 0)" for a
    GRPO run without a KL term (the GRPO family's default), and the same for rloo, whose KL penalty is in the reward;
    the note now says what the zero-advantage loss still holds."""
    from preflab.online.run import OnlineRun

    cfg = config_from_dict({"task": "online", "online_task": "demo", "trainer": trainer,
                            "model_name_or_path": "builtin:tiny-llama", "max_steps": 1, "use_cpu": True,
                            "output_dir": str(tmp_path), **options})
    run = OnlineRun.__new__(OnlineRun)  # the rule reads the config, the recipe and the objective only
    run.cfg, run.objective = cfg, cfg.objective()
    from preflab.online_recipes import TRAINERS

    run.spec = TRAINERS[trainer]
    assert run._without_advantages() == trains


def test_preflab_eval_of_a_mistyped_run_path_says_only_that(tmp_path, capsys):
    """`preflab eval outputs/nothere --data F` printed "note: no --reference, and outputs/nothere has no saved run
    config naming a model: the reference metrics ... are absent" before the error that the folder does not exist."""
    from preflab.cli import main

    missing = str(tmp_path / "nothere")
    assert main(["eval", missing, "--data", str(tmp_path / "pairs.jsonl")]) != 0
    said = capsys.readouterr()
    assert said.err.strip() == (f"preflab: error: {missing} is not a directory; give a run directory saved by "
                                "`preflab train`, a checkpoint-<step> directory, a builtin:tiny-* name or "
                                "builtin:demo-sft.")


def test_a_misspelt_builtin_tool_names_the_tool_meant():
    """tools: [calculater] was refused without the "Did you mean" that a misspelt function in a tools file gets."""
    from preflab.online.tool_calling import load_tools

    with pytest.raises(ConfigError) as err:
        load_tools(["calculater"])
    assert str(err.value).endswith("type hints and docstring.) Did you mean 'calculator'?")
    with pytest.raises(ConfigError) as err:  # nothing close: no guess
        load_tools(["search"])
    assert str(err.value).endswith("type hints and docstring.)")
