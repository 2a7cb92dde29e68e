"""Regressions from a second new-user trial (online, tool, vision and diffusion paths; changes/newuser2.md): each
failed on the code before."""
import json
from pathlib import Path

import pytest

from preflab.config import load_config
from preflab.errors import ConfigError


# ---------------------------------------------------------------------------------------------- recipes (tools)
def test_recipe_params_take_dotted_overrides_on_the_command_line():
    """`recipe_params.iterations=1` was 'unknown config key' (only objective_params.x worked): a recipe option could
    only be changed by rewriting the whole recipe_params mapping. Now it sets one key and keeps the others."""
    cfg = load_config("examples/tools/dstc.yaml", ["recipe_params.iterations=1", "recipe_params.n_codes=3"])
    assert cfg.recipe_params["iterations"] == 1 and cfg.recipe_params["n_codes"] == 3
    assert cfg.recipe_params["n_tests"] == 6  # the file's other keys are kept


def test_recipe_params_of_the_wrong_type_are_refused_naming_the_option():
    """recipe_params.n_codes=abc crashed inside the recipe with a raw TypeError traceback ('<' between str and
    int); a misspelt option had no hint. A number YAML reads as text (3e-4) is taken as a number."""
    from preflab.recipes import check_recipe_params

    with pytest.raises(ConfigError, match=r"recipe_params.n_codes='abc' is not an integer.*n_codes=6"):
        check_recipe_params("dstc", {"n_codes": "abc"})
    with pytest.raises(ConfigError, match=r"recipe_params.control=1 is not true or false"):
        check_recipe_params("dstc", {"control": 1})
    with pytest.raises(ConfigError, match="Did you mean 'n_codes'"):
        check_recipe_params("dstc", {"n_code": 3})
    params = {"dpo_learning_rate": "3e-4", "sft_steps": 5}
    check_recipe_params("dstc", params)
    assert params == {"dpo_learning_rate": 3e-4, "sft_steps": 5}


def test_a_recipe_run_writes_its_config_and_preflab_report_reads_it(monkeypatch, tmp_path):
    """A recipe run (task: icpl, ...) wrote summary.json and its state but no config.yaml, so `preflab report` on
    it said 'holds no preflab run'. Now the resolved config is saved and the report shows metric_before/after."""
    from preflab import recipes
    from preflab.config import config_from_dict
    from preflab.report.html import write_report

    def recipe(output_dir, seed=0, quiet=False):
        Path(output_dir).mkdir(parents=True)
        summary = {"metric_name": "accuracy", "metric_before": 0.25, "metric_after": 0.5}
        (Path(output_dir) / "summary.json").write_text(json.dumps(summary))
        return summary

    monkeypatch.setattr(recipes, "recipe_function", lambda task: recipe)
    out = tmp_path / "run"
    recipes.run_recipe(config_from_dict({"task": "themis", "recipe_params": {}, "output_dir": str(out), "seed": 7}))
    assert load_config(out / "config.yaml").seed == 7
    assert "metric_before" in write_report([out], tmp_path / "r.html").read_text()


@pytest.mark.parametrize("bad", [{"arms": 0}, {"dims": -1}])
def test_icpl_refuses_an_empty_bandit(tmp_path, bad):
    """recipe_params.arms=0 / dims=-1 crashed inside numpy with a raw traceback ('max() arg is an empty sequence',
    'negative dimensions are not allowed')."""
    from preflab.reward_design.recipe import run_icpl_recipe

    with pytest.raises(ConfigError, match="need arms >= 2, dims >= 1"):
        run_icpl_recipe(str(tmp_path / "icpl"), quiet=True, **bad)


@pytest.mark.parametrize("bad", [{"steps": 0}, {"n_train": 1}, {"n_test": 0}])
def test_themis_refuses_empty_training_or_test_sets_naming_recipe_params(tmp_path, bad):
    """recipe_params.steps=0 was reported as transformers' 'max_steps=0' (an option the user never wrote); an empty
    train or test set failed later. Refused first, naming the recipe's own options."""
    from preflab.reward_models.themis_toy import run_themis_arithmetic

    with pytest.raises(ConfigError, match="themis recipe_params: need steps >= 1, n_train >= 2 and n_test >= 1"):
        run_themis_arithmetic(str(tmp_path / "themis"), **bad)
    assert not (tmp_path / "themis").exists()


@pytest.mark.parametrize("limits", [{"timeout_s": -1}, {"max_workers": 0}])
def test_dstc_refuses_bad_sandbox_limits_before_the_warm_up(monkeypatch, tmp_path, limits):
    """timeout_s=-1 / max_workers=0 were refused by the sandbox at the first program run, after the warm-up SFT
    (1000 steps in the shipped config) had run; now before anything trains."""
    from preflab.loops import sft
    from preflab.tool_use.dstc import run_dstc

    def no_sft(*args, **kwargs):
        raise AssertionError("the warm-up SFT ran before the limits were checked")

    monkeypatch.setattr(sft, "SFTTrainer", no_sft)
    with pytest.raises(ConfigError, match="timeout_s > 0 .* max_workers >= 1"):
        run_dstc(output_dir=str(tmp_path / "dstc"), quiet=True, **limits)


# ---------------------------------------------------------------------------------------------- online runs
def test_reward_funcs_from_a_python_file_or_the_current_directory(tmp_path, monkeypatch):
    """reward_funcs: ./my_rewards.py:fn crashed with a raw TypeError traceback ('package' argument required for a
    relative import), and my_rewards:fn with my_rewards.py in the current directory was 'No module named' under the
    console script (TRL's scripts search the current directory). A misspelt name now gets a did-you-mean."""
    import sys

    from preflab.online.tasks import resolve_judge

    (tmp_path / "my_rewards_nu2.py").write_text("def length_reward(prompts, completions, **kw):\n"
                                                "    return [float(len(c)) for c in completions]\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])  # as the console script
    by_file = resolve_judge("./my_rewards_nu2.py:length_reward")
    assert by_file(["p"], ["abc"]) == [3.0]
    by_module = resolve_judge("my_rewards_nu2:length_reward")
    assert by_module(["p"], ["abcd"]) == [4.0]
    with pytest.raises(ConfigError, match="Did you mean 'length_reward'"):
        resolve_judge("./my_rewards_nu2.py:lenght_reward")
    with pytest.raises(ConfigError, match="the file nothere.py does not exist"):
        resolve_judge("nothere.py:f")
    with pytest.raises(ConfigError, match="Did you mean 'demo_true_reward'"):
        resolve_judge("demo_true_rewrd")


PROMPTS = [f"say {w}\n" for w in ("abc", "de", "fgh", "ij", "klm", "no", "pq", "rst")]


def e_judge(prompts, completions, **kwargs):
    """More letters 'e' is better, then shorter: few ties."""
    return [c.count("e") - 0.01 * len(c) for c in completions]


def online_cfg(tmp_path, **over):
    from preflab.config import config_from_dict

    base = dict(task="online", trainer="online_dpo", online_task="dataset", dataset_name="unused", reward_funcs="x",
                model_name_or_path="builtin:tiny-llama", learning_rate=1e-2, lr_scheduler_type="constant",
                max_steps=2, num_generations=3, prompts_per_generation=8, steps_per_generation=1,
                per_device_train_batch_size=8, max_completion_length=6, logging_steps=1, disable_tqdm=True,
                use_cpu=True, seed=3, output_dir=str(tmp_path))
    return config_from_dict({**base, **over})


def online_run(cfg, judge=e_judge):
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.online.run import OnlineRun
    from preflab.online.tasks import Task

    tok = tiny_tokenizer("char")
    return OnlineRun(cfg, policy=tiny_causal_lm(tok, hidden_size=32, seed=1), tokenizer=tok,
                     task=Task(PROMPTS, [judge]))


def test_online_per_device_train_batch_size_bounds_the_micro_batch(tmp_path):
    """per_device_train_batch_size was accepted and ignored by online runs: a step took its whole slice of the round
    in one micro-batch (batch 4 and 16 gave bit-identical weights and memory), and summary.json's
    train_examples_seen was steps x the batch size, not the examples trained. Now a process's share of a step is
    cut into micro-batches of at most that size (the same update: the loss is normalised over the step) and
    train_examples_seen counts the examples."""
    sizes = []
    small = online_run(online_cfg(tmp_path / "b1", per_device_train_batch_size=1))  # lr 1e-2: Adam moves every weight
    forward = small.forward
    small.forward = lambda mb: sizes.append(len(mb.row_ids)) or forward(mb)
    summary = small.train()
    whole = online_run(online_cfg(tmp_path / "b8"))
    whole.train()
    assert sizes and max(sizes) == 1 and len(sizes) > 2
    a, b = small.policy.state_dict(), whole.policy.state_dict()
    # Adam's first steps turn float-rounding differences of near-zero gradients into lr-sized moves: 1e-4 at lr 1e-2
    # (the batch size itself, if it changed the update, moves weights by ~1e-2)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-4
    rows = [json.loads(line) for line in (tmp_path / "b1" / "metrics.jsonl").read_text().splitlines()]
    assert summary["train_examples_seen"] == sum(int(r["examples/count"]) for r in rows) == len(sizes)


@pytest.mark.parametrize("over, named", [
    ({"trainer": "online_dpo", "epsilon": 0.5}, "epsilon is read by the GRPO family"),
    ({"trainer": "grpo", "rso_beta": 2.0}, "rso_beta is read by trainer rso"),
    ({"trainer": "online_dpo", "preference_temperature": 3.0}, "preference_temperature is read by trainers sppo"),
    ({"trainer": "online_dpo", "mcts_iterations": 9}, "mcts_iterations is read by trainer mcts_dpo"),
    ({"trainer": "grpo", "upo_fraction": 0.9}, "upo_fraction is read by trainer upo"),
    ({"trainer": "grpo", "game_eta": 0.2}, "game_eta is read by online_task: game"),
    ({"trainer": "rso", "pair_builder": "all_pairs"}, "pair_builder is read by trainers online_dpo"),
    ({"task": "dpo", "num_generations": 8}, "num_generations only applies to task: online"),
    # mcts_dpo's search samples mcts_num_actions per expansion: num_generations trained the same weights unread
    ({"trainer": "mcts_dpo", "num_generations": 4}, r"^num_generations is read by the recipes that sample a group "
     r"per prompt \(trainer mcts_dpo samples mcts_num_actions per tree expansion instead: set that\), not by trainer "
     r"'mcts_dpo' with online_task 'demo'"),
])
def test_an_option_the_online_recipe_does_not_read_is_refused(over, named):
    """Another recipe's options (epsilon with online_dpo, upo_fraction with grpo, game_eta outside the game, ...)
    and online options under task: dpo were accepted and silently ignored (same weights as without them)."""
    from preflab.config import config_from_dict

    base = {"task": "online", "online_task": "demo", "model_name_or_path": "builtin:demo-sft", "max_steps": 2}
    with pytest.raises(ConfigError, match=named):
        config_from_dict({**base, **over} if over.get("task") != "dpo" else
                         {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl", **over})
    # the recipe that reads the option takes it
    for fits in ({"trainer": "grpo", "epsilon": 0.5}, {"trainer": "rso", "rso_beta": 2.0},
                 {"trainer": "gpo", "preference_temperature": 3.0}, {"trainer": "upo", "upo_fraction": 0.9},
                 {"trainer": "online_dpo", "pair_builder": "rso", "rso_beta": 2.0},
                 {"trainer": "mcts_dpo", "mcts_num_actions": 4}):
        config_from_dict({**base, **fits})


def test_a_group_run_whose_judge_gives_no_signal_says_so(tmp_path, capsys):
    """A GRPO-family run whose judge scores every completion of a prompt alike (the shipped Vision-R1 config on its
    random tiny model: reward 0 everywhere) logged loss 0 and grad_norm 0 for every step and ended like a normal
    run, without a word. Now the first such round prints a note and summary.json counts them."""
    constant = lambda prompts, completions, **kw: [1.0] * len(prompts)  # noqa: E731
    summary = online_run(online_cfg(tmp_path, trainer="grpo", beta=0.0), judge=constant).train()
    err = capsys.readouterr().out
    assert "every advantage is 0" in err and "2 of 2 generation rounds" in err
    # beta 0: there is no KL term to train (the note said "nothing but the KL term (beta 0)"; tests/test_user_trial7)
    assert "the round's steps train nothing (beta 0: no KL term)." in err
    assert summary["online"]["no_signal_rounds"] == 2
    assert summary["final_metrics"]["grad_norm"] == 0.0
    informative = online_run(online_cfg(tmp_path / "e", trainer="grpo", beta=0.0)).train()
    assert informative["online"].get("no_signal_rounds", 0) == 0


def test_report_shows_the_result_numbers_of_an_online_run_and_a_recipe(tmp_path):
    """`preflab report` on an online demo run showed final_metrics only: true_reward_before (the number the demo is
    for), win_rate_vs_reference, the game's tv_to_equilibrium and a recipe's metric_before / metric_after were
    missing from the report."""
    import re

    from preflab.report.html import write_report

    online, recipe = tmp_path / "online", tmp_path / "recipe"
    for d, summary in ((online, {"global_step": 4, "true_reward_before": 0.203125, "true_reward_after": 0.9479,
                                 "win_rate_vs_reference": 0.8828, "final_metrics": {"loss": 0.5}}),
                       (recipe, {"metric_name": "pass_rate", "metric_before": 0.5, "metric_after": 0.75})):
        d.mkdir()
        (d / "config.yaml").write_text("task: online\n")
        (d / "summary.json").write_text(json.dumps(summary))
    text = re.sub(r"<[^>]+>", " ", write_report([online, recipe], tmp_path / "r.html").read_text())
    text = re.sub(r"\s+", " ", text)
    assert "true_reward_before 0.2031 –" in text and "win_rate_vs_reference 0.8828 –" in text
    assert "metric_name – pass_rate" in text and "metric_after – 0.75" in text


def test_eval_loads_builtin_demo_sft_as_reference_and_as_an_online_checkpoints_base(tmp_path, monkeypatch):
    """`preflab eval RUN --reference builtin:demo-sft` (the online demo runs' reference) was refused ('not a
    directory'), and `preflab eval RUN/checkpoint-N` of an online demo run failed with transformers' 'Repo id must
    use alphanumeric chars' error. The demo's SFT model (built, here replaced by a tiny stand-in) now loads."""
    import torch
    from safetensors.torch import save_file

    from preflab.demo import sft_model
    from preflab.eval_cli.checkpoint import load_policy
    from preflab.models.tiny import tiny_causal_lm

    monkeypatch.setattr(sft_model, "demo_sft_model", lambda cfg, tok: tiny_causal_lm(tok, hidden_size=32, seed=cfg.seed))
    ref, tok = load_policy("builtin:demo-sft", seed=2)
    want = tiny_causal_lm(tok, hidden_size=32, seed=2).state_dict()
    assert all(torch.equal(v, want[k]) for k, v in ref.state_dict().items())
    ckpt = tmp_path / "run" / "checkpoint-3"
    ckpt.mkdir(parents=True)
    (tmp_path / "run" / "config.yaml").write_text("task: online\nmodel_name_or_path: builtin:demo-sft\nseed: 2\n")
    (ckpt / "trainer_state.json").write_text("{}")
    # every trained parameter (an online run trains them all; a checkpoint lacking one is refused), the norms moved
    moved = {k: v + 1.0 if k.endswith("norm.weight") else v for k, v in want.items()}
    save_file(moved, str(ckpt / "model.safetensors"))
    policy, _ = load_policy(str(ckpt))
    got = policy.state_dict()
    assert all(torch.equal(got[k], moved[k]) for k in want)
    assert not torch.equal(got["model.norm.weight"], want["model.norm.weight"])


@pytest.mark.parametrize("task, over, named", [
    ("vlm", {"resolution": 32}, "resolution only applies to task: diffusion"),
    ("dpo", {"vision_pairs": "pami_vdpo"}, "vision_pairs only applies to task: vlm"),
    ("dpo", {"caption_perturbation": "strong"}, "caption_perturbation only applies to task: diffusion"),
    ("dpo", {"hypo_online_samples": 8}, "hypo_online_samples only applies to task: dpo with loss_type: hypo"),
    ("dpo", {"recipe_params": {"iterations": 2}}, "recipe_params only applies to the recipe tasks"),
])
def test_an_option_another_task_reads_is_refused(task, over, named):
    """Diffusion options under task: vlm, vision-pair options under task: dpo, hypo_online_samples without
    loss_type hypo and recipe_params under a training task were accepted and silently ignored."""
    from preflab.config import config_from_dict

    base = {"task": task, "model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl"}
    with pytest.raises(ConfigError, match=named):
        config_from_dict({**base, **over})
    if task == "dpo":  # the run that reads the option takes it
        config_from_dict({**base, "loss_type": "hypo", "hypo_online_samples": 8})


def test_a_written_loss_type_sigmoid_is_not_silently_replaced_by_the_recipes_objective():
    """trainer: rso with loss_type: sigmoid trained hinge_norm (sppo: sppo, ...) without a word: sigmoid is also the
    default, which the recipe replaces. A game trainer with another loss_type failed with 'IPO has no parameter
    tau' (the recipe's parameters were given to the user's objective)."""
    from preflab.config import config_from_dict

    base = {"task": "online", "online_task": "demo", "model_name_or_path": "builtin:demo-sft", "max_steps": 2}
    with pytest.raises(ConfigError, match="trainer 'rso' trains its own objective 'hinge_norm'.*pair_builder: rso"):
        config_from_dict({**base, "trainer": "rso", "loss_type": "sigmoid"})
    assert config_from_dict({**base, "trainer": "rso"}).loss_type == "hinge_norm"       # left out: the recipe's
    assert config_from_dict({**base, "trainer": "rso", "loss_type": "ipo"}).loss_type == "ipo"  # another: used
    assert config_from_dict({**base, "trainer": "iterative_dpo", "loss_type": "sigmoid"}).loss_type == "sigmoid"
    game = {**base, "online_task": "game", "model_name_or_path": "builtin:tiny-llama",
            "game_preferences": [[0.5, 0.7], [0.3, 0.5]]}
    with pytest.raises(ConfigError, match="trainer 'inpo' builds the game's examples for its own objective 'inpo'"):
        config_from_dict({**game, "trainer": "inpo", "loss_type": "ipo"})


def test_progress_bar_shows_the_online_reward():
    """A GRPO run's bar showed only `loss=-0.0000` (GRPO's loss is ~0 by construction at every step), which reads
    as 'nothing trains'; it now shows the round's sampled reward (and the game's TV to the equilibrium)."""
    from types import SimpleNamespace

    from preflab.runlog import Progress

    bar = Progress(3, 0, enabled=False)
    bar.update(SimpleNamespace(loss=0.0, metrics={"reward": 0.5443, "tv_to_equilibrium": 0.01234}), 10)
    post = bar.bar.postfix if isinstance(bar.bar.postfix, str) else str(bar.bar.postfix)
    assert "reward=0.544" in post and "tv=0.0123" in post


def test_vision_prompt_rows_skipped_are_said_and_recorded(tmp_path, capsys):
    """online_task: vision_dataset with on_bad_row: skip dropped a row whose image is missing without a word, and
    summary.json `data` stayed {} (text prompts print `preflab: data:` and record `prompt_rows`)."""
    import shutil

    from preflab.models.tiny_vlm import tiny_vlm_processor
    from preflab.online.vision import load_vision_task

    rows = [json.loads(line) for line in Path("examples/vlm/data/grounding.jsonl").read_text().splitlines()]
    shutil.copytree("examples/vlm/data/grounding", tmp_path / "grounding")
    rows[1]["images"] = ["grounding/none.png"]
    data = tmp_path / "g.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config("examples/vlm/vision_r1.yaml", [f"dataset_name={data}", "on_bad_row=skip"])
    task = load_vision_task(cfg, tiny_vlm_processor())
    assert len(task.rows) == len(rows) - 1
    assert task.data_report["prompt_rows"]["skipped"] == {"bad_image": 1}
    assert f"{len(rows)} rows, {len(rows) - 1} kept, 1 skipped (bad_image: 1)" in capsys.readouterr().out


def test_a_round_with_fewer_examples_than_steps_says_so(tmp_path, capsys):
    """steps_per_generation above a round's example count (3 prompts x one pair, 5 steps) left steps without
    examples: zero-gradient steps, counted in summary.json but never said (a round with no example at all was)."""
    summary = online_run(online_cfg(tmp_path, prompts_per_generation=3, steps_per_generation=5, max_steps=5)).train()
    out = capsys.readouterr().out
    assert summary["online"]["empty_steps"] >= 2
    assert "training examples for steps_per_generation=5 steps" in out and "zero-gradient" in out


def test_typos_in_vision_pair_params_and_diffusion_noising_get_a_did_you_mean():
    """The builders' and noiser's own option typos listed the options but named no close match."""
    from preflab.data.vision_pairs import check_builder
    from preflab.loops.diffusion import check_diffusion_options

    with pytest.raises(ConfigError, match="Did you mean 'tau_sim'"):
        check_builder("pami_vdpo", {"tau_simm": 0.9})
    cfg = load_config("examples/diffusion/diffusion_dpo.yaml", ["diffusion_noising.modee=inversion"])
    with pytest.raises(ConfigError, match="Did you mean 'mode'"):
        check_diffusion_options(cfg)


# ---------------------------------------------------------------------------------------------- diffusion
def test_diffusion_resolution_must_fit_the_vae(tmp_path):
    """resolution=15 on the tiny pipeline (VAE scale factor 2) trained on 7x7 latents of 15x15 images (floored
    silently; the saved pipeline then refuses to generate at that size). Now refused, naming the sizes that fit."""
    from preflab.loops.diffusion import DiffusionRun

    cfg = load_config("examples/diffusion/diffusion_dpo.yaml", ["resolution=15", "eval_dataset_name=null",
                                                                 f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="resolution=15 is not a multiple of the VAE's scale factor 2.*14 or 16"):
        DiffusionRun(cfg)



def test_dcpo_without_a_second_caption_is_refused(tmp_path):
    """loss_type dcpo on pairs without caption_chosen / caption_rejected and caption_perturbation: none trained
    Diffusion-DPO under DCPO's name (both images conditioned on the one prompt), without a word."""
    from preflab.loops.diffusion import DiffusionRun

    cfg = load_config("examples/diffusion/dcpo.yaml", ["caption_perturbation=none", "eval_dataset_name=null",
                                                        f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="none of the 16 training pairs has two different captions"):
        DiffusionRun(cfg)



# ---------------------------------------------------------------------------------------------- vision
def test_cat_adpo_with_lora_saves_the_trained_clue_aggregator(tmp_path):
    """examples/vlm/cat_adpo.yaml (LoRA + clue aggregator): peft's save_pretrained kept the adapters only, so the
    trained clue aggregator (in every checkpoint) was missing from the final output_dir."""
    import torch
    from safetensors.torch import load_file

    from preflab.loops.vlm import VisionTrainer
    from preflab.models.clue_aggregator import clue_aggregator_of

    cfg = load_config("examples/vlm/cat_adpo.yaml", ["max_steps=2", f"output_dir={tmp_path}", "disable_tqdm=true"])
    run = VisionTrainer(cfg)
    run.train()
    saved = load_file(str(tmp_path / "clue_aggregator.safetensors"))
    live = clue_aggregator_of(run.policy).state_dict()
    assert saved.keys() == live.keys() and all(torch.equal(saved[k], live[k].cpu()) for k in live)
    assert float(saved["out.weight"].abs().max()) > 0  # zero-initialised: it trained
