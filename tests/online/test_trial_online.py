"""Findings of the RL / online-training user trial (a TRL GRPOTrainer / OnlineDPOTrainer user moving to preflab):
each test fails on the code before its fix."""
import asyncio
import json
import math
from pathlib import Path

import pytest
import torch

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.loops.judge import Judge


def _loud(prompts, completions, **kwargs):
    return [float(sum(ch.isupper() for ch in c)) for c in completions]


def _raises_on_e(prompts, completions, **kwargs):
    if any("e" in c for c in completions):
        raise ValueError("cannot parse")
    return [1.0] * len(completions)


def test_a_judge_that_raises_drops_the_completion_even_with_other_judges():
    """With two reward functions, an exception in one turned that completion's reward into the other function's
    alone (the None "not applicable" rule): 'ABe' scored 2 where its group-mates scored 2 + 1, with no note and no
    judge/dropped. Now the completion is NaN (dropped, counted) and the first failure is kept for the message."""
    judge = Judge([_loud, _raises_on_e])
    scores, per_fn = judge(["p"] * 3, ["AB", "ABe", "A"], [0, 0, 0])
    assert scores[0].item() == 3.0 and scores[2].item() == 2.0
    assert math.isnan(scores[1].item())
    assert per_fn[1, 0].item() == 2.0  # the other judge's own score is still logged per function
    assert judge.last_raised == 1 and judge.stats()["judge/failed"] == 1.0
    assert "raised ValueError: cannot parse" in judge.failure_note()
    # a None (not applicable) from one function keeps the TRL rule: the other functions' sum
    none_some = lambda prompts, completions, **kw: [None if "e" in c else 1.0 for c in completions]  # noqa: E731
    scores, _ = Judge([_loud, none_some])(["p"] * 2, ["ABe", "A"], [0, 0])
    assert scores.tolist() == [2.0, 2.0]


async def _async_loud(prompts, completions, **kwargs):
    await asyncio.sleep(0)
    return _loud(prompts, completions)


def test_async_reward_functions_are_awaited():
    """TRL 1.16 awaits `async def` reward functions; preflab refused them ("judge returned coroutine ... it must
    return a list") and warned that the coroutine was never awaited."""
    scores, _ = Judge([_async_loud, _loud], weights=[1.0, 0.5])(["p"] * 2, ["AB", "a"], [0, 0])
    assert scores.tolist() == [3.0, 0.0]

    async def inside_a_loop():  # a notebook's running event loop
        return Judge([_async_loud])(["p"], ["ABC"], [0])[0].tolist()
    assert asyncio.run(inside_a_loop()) == [3.0]


ONLINE = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl", "task": "online",
          "online_task": "dataset", "reward_funcs": "m:f", "max_steps": 2}


def test_grpo_delta_and_kl_bias_correction_reach_the_objective():
    """TRL's `delta` was refused as 'a parameter of the objective(s) slic'; `use_bias_correction_kl: false` was
    refused while preflab's KL term was exactly that (and TRL's default true accepted without being applied)."""
    cfg = config_from_dict({**ONLINE, "trainer": "grpo", "beta": 0.04, "delta": 1.5,
                            "use_bias_correction_kl": False})
    objective = cfg.objective()
    assert (objective.delta, objective.use_bias_correction_kl) == (1.5, False)
    assert config_from_dict({**ONLINE, "trainer": "dapo", "beta": 0.04}).objective().use_bias_correction_kl is True
    with pytest.raises(ConfigError, match="delta"):
        config_from_dict({**ONLINE, "trainer": "grpo", "delta": 0.0})


def test_saved_grpoconfig_loss_type_agreeing_with_the_trainer_loads():
    """A saved GRPOConfig carries loss_type (default dapo); with trainer: dapo it was refused with "(got trainer
    'dapo'). Set trainer: dapo and leave loss_type out", so no GRPOConfig dump loaded without editing it."""
    trl = pytest.importorskip("trl")
    raw = trl.GRPOConfig(output_dir="out", bf16=False, epsilon_high=0.28, beta=0.04).to_dict()
    assert raw["loss_type"] == "dapo"
    cfg = config_from_dict({**ONLINE, **raw, "trainer": "dapo", "max_steps": 2})
    objective = cfg.objective()
    assert (cfg.trainer, objective.loss_type, objective.epsilon_high, objective.beta) == ("dapo", "dapo", 0.28, 0.04)
    assert objective.use_bias_correction_kl is True  # the dump's (TRL's default) value, now applied
    with pytest.raises(ConfigError, match=r"`trainer: dapo` \(got trainer 'grpo'\)"):
        config_from_dict({**ONLINE, **raw, "trainer": "grpo", "max_steps": 2})  # a real disagreement is still refused


def test_online_dataset_eval_set_is_answered_and_judged(tmp_path):
    """online_task: dataset accepted eval_dataset_name and eval_steps and read neither: no eval row, no reward
    before / after, nothing to tell whether the run aligned anything. Now the held-out prompts are answered
    greedily and judged: eval_reward, eval_win_rate_vs_reference, summary.json eval_reward_before / after."""
    import copy
    import json

    from preflab.generate import generate_ids
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.online.run import OnlineRun

    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"prompt": f"say {w}\n"}) + "\n"
                                                  for w in ("ab", "cd", "ef", "gh")))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps({"prompt": f"say {w}\n"}) + "\n" for w in ("ij", "kl")))
    (tmp_path / "rewards.py").write_text("def length(prompts, completions, **kw):\n"
                                         "    return [float(len(c)) for c in completions]\n")
    cfg = config_from_dict(dict(task="online", trainer="grpo", online_task="dataset",
                                dataset_name=str(tmp_path / "train.jsonl"),
                                eval_dataset_name=str(tmp_path / "eval.jsonl"),
                                reward_funcs=f"{tmp_path / 'rewards.py'}:length",
                                model_name_or_path="builtin:tiny-llama",
                                learning_rate=1e-12, max_steps=2, eval_steps=1, num_generations=2,
                                prompts_per_generation=2, per_device_train_batch_size=2, max_completion_length=5,
                                logging_steps=1, disable_tqdm=True, use_cpu=True, output_dir=str(tmp_path / "out")))
    tok = tiny_tokenizer("char")
    policy = tiny_causal_lm(tok, hidden_size=16, num_layers=1, seed=1)
    start = copy.deepcopy(policy)
    summary = OnlineRun(cfg, policy=policy, tokenizer=tok).train()
    ids = generate_ids(start, [tok(f"say {w}\n").input_ids for w in ("ij", "kl")], eos_id=tok.eos_token_id,
                       pad_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                       max_new_tokens=5)
    expected = sum(len(tok.decode(c, skip_special_tokens=True)) for c in ids) / 2
    assert expected > 0
    assert summary["eval_reward_before"] == summary["eval_reward_after"] == expected  # lr ~0: the same answers
    assert summary["win_rate_vs_reference"] == 0.5
    # the same answers: both prompts tie, so the 0.5 is two halves (said beside it since leftovers-f)
    assert (summary["win_rate_vs_reference_ties"], summary["win_rate_vs_reference_prompts"]) == (2, 2)
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["step"], r["eval_reward"], r["eval_win_rate_vs_reference"]) for r in rows if "eval_reward" in r]
    assert evals == [(1, expected, 0.5), (2, expected, 0.5)]


def test_onlinedpoconfig_beta_schedule_is_refused_and_one_beta_unwrapped():
    """OnlineDPOConfig's beta is a per-epoch list; [0.5, 0.1] was refused as `beta must be float, got [0.5, 0.1]
    (list)`, which does not say what the list meant or what to do."""
    base = {**ONLINE, "trainer": "online_dpo"}
    assert config_from_dict({**base, "beta": [0.3]}).beta == 0.3
    with pytest.raises(ConfigError, match=r"beta=\[0.5, 0.1\] is OnlineDPOConfig's per-epoch beta schedule.*"
                                          r"beta: 0.5"):
        config_from_dict({**base, "beta": [0.5, 0.1]})


def test_demo_sft_model_loads_for_your_own_prompts(tmp_path, monkeypatch):
    """model_name_or_path: builtin:demo-sft (the docs' starting policy) with online_task: dataset failed with
    transformers' OSError 'Repo id must use alphanumeric chars ... builtin:demo-sft'."""
    import json

    from preflab.demo import sft_model
    from preflab.online import tasks

    monkeypatch.setattr(sft_model, "demo_sft_model", lambda cfg, tokenizer: ("demo-sft", cfg.seed))
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "echo: cat dog"}) + "\n")
    cfg = config_from_dict({**ONLINE, "trainer": "grpo", "model_name_or_path": "builtin:demo-sft",
                            "dataset_name": str(tmp_path / "p.jsonl"), "reward_funcs": "demo_true_reward",
                            "seed": 3})
    task, tokenizer, policy = tasks.load_task(cfg)
    assert policy == ("demo-sft", 3) and tokenizer.decode(tokenizer("echo").input_ids, skip_special_tokens=True) \
        == "echo"
    assert [p["prompt"] for p in task.prompts] == ["echo: cat dog"]


def test_demo_sft_model_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """builtin:demo-sft's cache ($PREFLAB_CACHE_DIR/demo-sft-<seed>-<recipe>/model.safetensors) was written in place:
    a run killed while writing it (or a second run, e.g. another test worker, reading it meanwhile) left a torn file
    that every later run failed to load. Now it is written beside it and renamed into place: a write that dies leaves no
    cache file, and the next call builds and loads the model."""
    import safetensors.torch

    from preflab.demo.sft_model import cache_name, demo_sft
    from preflab.loops.sft import SFTTrainer

    monkeypatch.setattr(SFTTrainer, "train", lambda self: None)  # the SFT stage itself is not what is checked here
    monkeypatch.setenv("PREFLAB_CACHE_DIR", str(tmp_path / "first"))
    demo_sft(5)  # imports every module on the way before save_file is replaced (none may keep the fake)
    monkeypatch.setenv("PREFLAB_CACHE_DIR", str(tmp_path / "cache"))
    cache = tmp_path / "cache" / cache_name(5) / "model.safetensors"
    save_file = safetensors.torch.save_file

    def killed_while_writing(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")  # the first bytes, then the kill
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", killed_while_writing)
    with pytest.raises(KeyboardInterrupt):
        demo_sft(5)
    assert not cache.exists()
    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    built, _ = demo_sft(5)
    loaded, _ = demo_sft(5)  # from the cache file now
    assert cache.is_file()
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), loaded.state_dict().values()))


@pytest.mark.parametrize("raised", ["safetensors", "oserror"])
def test_demo_sft_cache_on_a_full_disk_leaves_no_tmp_file_and_a_note_naming_it(tmp_path, monkeypatch, capsys, raised):
    """The cache was written to .model.safetensors.<pid>.tmp and renamed: a full disk (safetensors' SafetensorError
    "I/O error: ... (os error 28)", or an OSError naming no file) left that .tmp file behind and stopped the run
    with an error naming neither. Now nothing is left in the cache folder, a note names the cache file and the
    reason, and the run goes on with the model it trained (the same weights a working cache then holds)."""
    import errno

    import safetensors.torch
    from safetensors import SafetensorError

    from preflab.demo.sft_model import cache_name, demo_sft
    from preflab.loops.sft import SFTTrainer

    monkeypatch.setattr(SFTTrainer, "train", lambda self: None)  # the SFT stage itself is not what is checked here
    monkeypatch.setenv("PREFLAB_CACHE_DIR", str(tmp_path / "first"))
    demo_sft(5)  # imports every module on the way before save_file is replaced
    capsys.readouterr()
    monkeypatch.setenv("PREFLAB_CACHE_DIR", str(tmp_path / "cache"))
    cache = tmp_path / "cache" / cache_name(5) / "model.safetensors"
    save_file = safetensors.torch.save_file

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x10\x00\x00\x00")  # the first bytes, then the disk is full
        if raised == "safetensors":
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    model, _ = demo_sft(5)
    assert list(cache.parent.iterdir()) == []  # no .tmp file, no cache file
    assert (f"preflab: note: could not write the builtin:demo-sft cache {cache} (No space left on device); the run "
            "goes on") in capsys.readouterr().out
    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    cached, _ = demo_sft(5)
    assert [p.name for p in cache.parent.iterdir()] == ["model.safetensors"]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), cached.state_dict().values()))


def test_demo_sft_cache_names_its_recipe(tmp_path, monkeypatch):
    """builtin:demo-sft was cached as demo-sft-<seed> whatever trained it: the model of the old warmup rule (first
    step at lr / warmup) kept being loaded after the rule changed (changes/warmup-parity.md). The folder now names
    the SFT options and RECIPE_VERSION: the old folder is not read; other options or a new version, another folder."""
    import safetensors.torch

    from preflab.demo import run as demo_run
    from preflab.demo import sft_model
    from preflab.loops.sft import SFTTrainer

    monkeypatch.setattr(SFTTrainer, "train", lambda self: None)  # the model as built (seed 5), not trained
    monkeypatch.setenv("PREFLAB_CACHE_DIR", str(tmp_path))
    built = sft_model.demo_sft(5)[0].state_dict()
    zeros = {k: torch.zeros_like(v) for k, v in built.items()}
    (tmp_path / "demo-sft-5").mkdir()
    safetensors.torch.save_file(zeros, str(tmp_path / "demo-sft-5" / "model.safetensors"))  # the old name
    assert all(torch.equal(a, built[k]) for k, a in sft_model.demo_sft(5)[0].state_dict().items())
    safetensors.torch.save_file(zeros, str(tmp_path / sft_model.cache_name(5) / "model.safetensors"))
    assert all(not a.any() for a in sft_model.demo_sft(5)[0].state_dict().values())  # today's name: read
    today = sft_model.cache_name(5)
    monkeypatch.setattr(sft_model, "RECIPE_VERSION", sft_model.RECIPE_VERSION + 1)
    newer = sft_model.cache_name(5)
    monkeypatch.setattr(demo_run, "SFT", {**demo_run.SFT, "warmup_steps": 0})
    assert len({today, newer, sft_model.cache_name(5), sft_model.cache_name(6)}) == 4


def test_truncated_completions_are_said_and_counted(tmp_path, capsys):
    """A round whose completions all hit max_completion_length was judged on cut-off text with no word (only the
    completions/clipped_ratio metric); now a note says so once and summary.json counts them."""
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.online.run import OnlineRun
    from preflab.online.tasks import Task

    cfg = config_from_dict(dict(task="online", trainer="grpo", online_task="dataset", dataset_name="unused",
                                reward_funcs="x", model_name_or_path="builtin:tiny-llama", max_steps=2,
                                num_generations=2, prompts_per_generation=3, per_device_train_batch_size=3,
                                max_completion_length=2, logging_steps=1, disable_tqdm=True, use_cpu=True,
                                output_dir=str(tmp_path)))
    tok = tiny_tokenizer("char")
    policy = tiny_causal_lm(tok, hidden_size=16, num_layers=1, seed=1)
    summary = OnlineRun(cfg, policy=policy, tokenizer=tok, task=Task(["say a\n", "say b\n", "say c\n"],
                                                                     [_loud])).train()
    rounds = [json.loads(line) for r in (1, 2) for line in (tmp_path / "rounds" / f"{r}.jsonl").read_text()
              .splitlines()]
    assert len(rounds) == 6
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    clipped = sum(round(r["completions/clipped_ratio"] * 6) for r in rows)
    assert summary["online"]["truncated_completions"] == clipped >= 6
    out = capsys.readouterr().out
    assert out.count("completions reached max_completion_length=2 without EOS") == 1


def test_max_length_in_an_online_run_is_refused_not_ignored():
    """max_length (OnlineDPOConfig: prompt + completion cut to it) was accepted by task: online and read by
    nothing; OnlineDPOConfig's and DPOConfig's defaults stay accepted (every saved config carries one)."""
    assert config_from_dict({**ONLINE, "trainer": "online_dpo", "max_length": 512}).max_completion_length == 64
    with pytest.raises(ConfigError, match=r"max_length=96 is not read by task: online.*\(here max_prompt_length: "
                                          r"80\)"):
        config_from_dict({**ONLINE, "trainer": "online_dpo", "max_length": 96, "max_completion_length": 16})


def test_mask_truncated_completions_leaves_them_out_of_the_loss(tmp_path):
    """TRL GRPOConfig's mask_truncated_completions (DAPO's overlong filtering) was refused. Now a completion without
    EOS keeps its reward in the group's advantages but none of its tokens in the loss or in dapo's token count;
    a step whose completions are all truncated therefore moves nothing (loss 0, grad_norm 0, as TRL)."""
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.online.run import OnlineRun
    from preflab.online.tasks import Task

    def run(mask, length):
        cfg = config_from_dict(dict(task="online", trainer="dapo", online_task="dataset", dataset_name="unused",
                                    reward_funcs="x", model_name_or_path="builtin:tiny-llama", max_steps=1,
                                    num_generations=4, prompts_per_generation=3, per_device_train_batch_size=3,
                                    max_completion_length=length, mask_truncated_completions=mask, logging_steps=1,
                                    disable_tqdm=True, use_cpu=True, output_dir=str(tmp_path / f"{mask}{length}")))
        tok = tiny_tokenizer("char")
        policy = tiny_causal_lm(tok, hidden_size=16, num_layers=1, seed=1)
        return OnlineRun(cfg, policy=policy, tokenizer=tok, task=Task(["say a\n", "say b\n", "say c\n"],
                                                                      [_loud, lambda prompts, completions, **kw:
                                                                       [float(len(c)) for c in completions]]))

    r = run(True, 3)
    eos = r.tokenizer.eos_token_id
    examples = r._new_round(0).examples
    flags = [(c[-1] == eos, m) for e in examples for c, m in zip(e.completions, e.loss_mask)]
    assert all(m == ([1] * len(m) if ended else [0] * len(m)) for ended, m in flags)
    assert any(not ended for ended, _ in flags)
    unmasked = run(False, 3)._new_round(0).examples  # the same seed: the same completions and advantages
    assert [e.extras["advantages"] for e in unmasked] == [e.extras["advantages"] for e in examples]
    for mask in (True, False):
        summary = run(mask, 1).train()  # one new token: a completion without EOS everywhere but an [eos] one
        metrics = summary["final_metrics"]
        assert (metrics["grad_norm"] == 0.0) is mask and metrics["completions/clipped_ratio"] > 0.5
    with pytest.raises(ConfigError, match="mask_truncated_completions is read by the GRPO family"):
        config_from_dict({**ONLINE, "trainer": "online_dpo", "mask_truncated_completions": True})


def test_saved_onlinedpoconfig_without_vllm_prints_no_vllm_note(capsys):
    """Every saved OnlineDPOConfig printed 'vllm_gpu_memory_utilization: TRL's vLLM options are not read' (its
    default 0.55 is not GRPOConfig's 0.3), for a run that never asked for vLLM. And its reward_model_path: null
    beside reward_funcs was refused as 'reward_model_path and reward_funcs are the same option', then again as
    "unknown config key 'reward_model_path'. Did you mean 'reward_model_path'?"."""
    pytest.importorskip("trl")
    from trl.experimental.online_dpo import OnlineDPOConfig

    raw = OnlineDPOConfig(output_dir="out", bf16=False).to_dict()
    cfg = config_from_dict({**ONLINE, **raw, "trainer": "online_dpo", "max_steps": 2})
    assert (cfg.beta, cfg.max_completion_length, cfg.temperature) == (0.1, 64, 0.9)
    # OnlineDPOTrainer samples 2 completions per prompt (its __init__, no config field); preflab sampled 4 and
    # paired the best with the worst of them, another algorithm, under TRL's trainer name
    assert cfg.num_generations == 2
    assert config_from_dict({**ONLINE, "trainer": "online_dpo", "num_generations": 4}).num_generations == 4
    assert "vllm" not in capsys.readouterr().err
    config_from_dict({**ONLINE, **raw, "trainer": "online_dpo", "max_steps": 2, "vllm_gpu_memory_utilization": 0.9})
    assert "vllm_gpu_memory_utilization: TRL's vLLM options are not read" in capsys.readouterr().err
    with pytest.raises(ConfigError) as err:
        config_from_dict({**ONLINE, "reward_model_path": "rm_dir"})  # two different judges: one error, said once
    assert str(err.value) == ("reward_model_path and reward_funcs are the same option (TRL and preflab spelling); "
                              "keep one.")


def test_saved_grpoconfig_with_accumulation_takes_trls_optimizer_steps_per_round():
    """GRPOConfig's steps_per_generation counts micro-batches (default: gradient_accumulation_steps, one optimizer
    step per round); preflab's counts optimizer steps. A dump with gradient_accumulation_steps 4 took 4 optimizer
    steps per round, each on a quarter of it, where TRL takes one on the whole round."""
    trl = pytest.importorskip("trl")
    raw = trl.GRPOConfig(output_dir="out", bf16=False, per_device_train_batch_size=8, num_generations=4,
                         gradient_accumulation_steps=4).to_dict()
    raw.pop("loss_type")
    assert (raw["steps_per_generation"], raw["generation_batch_size"]) == (4, 32)
    cfg = config_from_dict({**ONLINE, **raw, "trainer": "grpo", "max_steps": 2})
    assert (cfg.steps_per_generation, cfg.prompts_per_generation, cfg.num_generations) == (1, 8, 4)
    raw = trl.GRPOConfig(output_dir="out", bf16=False, per_device_train_batch_size=8, num_generations=4,
                         gradient_accumulation_steps=2, steps_per_generation=8).to_dict()
    raw.pop("loss_type")
    cfg = config_from_dict({**ONLINE, **raw, "trainer": "grpo", "max_steps": 2})
    assert (cfg.steps_per_generation, cfg.prompts_per_generation) == (4, 16)  # 64 completions, 4 optimizer steps
    raw["steps_per_generation"] = 3
    with pytest.raises(ConfigError, match="steps_per_generation=3 .* not a multiple of gradient_accumulation_steps=2"):
        config_from_dict({**ONLINE, **raw, "trainer": "grpo", "max_steps": 2})


def test_hand_written_grpo_batch_says_what_trls_would_be(capsys):
    """TRL's per_device_train_batch_size counts completions (8 x accumulation 4 = 32 per optimizer step); here it
    counts prompt groups, and a round is 32 prompts: 256 completions per step from the same keys, without a word."""
    config_from_dict({**ONLINE, "trainer": "grpo", "per_device_train_batch_size": 8, "gradient_accumulation_steps": 4,
                      "num_generations": 8})
    err = capsys.readouterr().err
    assert "256 completions per step. TRL's GRPOConfig with these values takes 32 per optimizer step" in err
    assert "set prompts_per_generation: 4." in err
    config_from_dict({**ONLINE, "trainer": "grpo", "per_device_train_batch_size": 8, "prompts_per_generation": 4})
    assert "per_device_train_batch_size" not in capsys.readouterr().err  # the round is given: nothing to say


def test_online_dpo_logs_trls_objective_keys(tmp_path):
    """TRL's OnlineDPOTrainer logs objective/kl, objective/scores, objective/scores_margin, objective/rlhf_reward,
    objective/non_score_reward, objective/entropy, val/contain_eos_token and beta; a dashboard built on them found
    none of them in a preflab online_dpo run."""
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.online.run import OnlineRun
    from preflab.online.tasks import Task

    cfg = config_from_dict(dict(task="online", trainer="online_dpo", online_task="dataset", dataset_name="unused",
                                reward_funcs="x", model_name_or_path="builtin:tiny-llama", max_steps=2, beta=0.2,
                                learning_rate=1e-2,
                                prompts_per_generation=4, per_device_train_batch_size=4, max_completion_length=6,
                                logging_steps=1, disable_tqdm=True, use_cpu=True, seed=2, output_dir=str(tmp_path)))
    assert cfg.num_generations == 2  # TRL's pair
    tok = tiny_tokenizer("char")
    length = lambda prompts, completions, **kw: [float(len(c)) for c in completions]  # noqa: E731
    OnlineRun(cfg, policy=tiny_causal_lm(tok, hidden_size=16, num_layers=1, seed=1), tokenizer=tok,
              task=Task(["say a\n", "say b\n", "say c\n", "say d\n"], [length])).train()
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[1])  # step 2: the policy has moved
    assert row["step"] == 2 and abs(row["kl"]) > 1e-4
    pairs = [sorted(r["scores"]) for r in map(json.loads, (tmp_path / "rounds" / "2.jsonl").read_text().splitlines())]
    pairs = [p for p in pairs if p[0] != p[1]]  # ties give no pair
    assert pairs and row["examples/count"] == len(pairs)
    assert row["objective/scores_margin"] == pytest.approx(sum(b - a for a, b in pairs) / len(pairs))
    assert row["objective/scores"] == pytest.approx(sum(a + b for a, b in pairs) / (2 * len(pairs)))
    assert row["objective/kl"] == pytest.approx(row["kl"])
    assert row["objective/non_score_reward"] == pytest.approx(-0.2 * row["kl"])
    assert row["objective/rlhf_reward"] == pytest.approx(row["objective/scores"] - 0.2 * row["kl"])
    assert row["beta"] == pytest.approx(0.2)
    assert row["val/contain_eos_token"] == pytest.approx(1 - row["completions/clipped_ratio"])
    assert row["objective/entropy"] > 0


def test_a_judge_column_missing_in_some_prompt_rows_is_counted_and_said(tmp_path, capsys):
    """A prompt row without the `answer` column its neighbours carry (or with answer: null) reached the reward
    functions as None, so a rule reward scored the row against nothing, with no word. Now the gap is counted per
    column (summary.json data.prompt_rows.column_gaps) and said with the first row."""
    from preflab.online import tasks

    rows = [{"prompt": f"echo: w{i}\n", "answer": f"W{i}"} for i in range(5)]
    rows[2] = {"prompt": "echo: w2\n"}
    rows[4]["answer"] = None
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config_from_dict({**ONLINE, "trainer": "grpo", "dataset_name": str(tmp_path / "p.jsonl"),
                            "reward_funcs": "demo_true_reward"})
    task, _, _ = tasks.load_task(cfg)
    assert task.data_report["prompt_rows"]["column_gaps"] == {"answer": {"rows": 2, "first_row": 2}}
    out = capsys.readouterr().out
    assert "p.jsonl: column(s) absent or null in some prompt rows: 'answer' in 2 of 5 (first: row 2). The reward " \
           "functions get None for those rows" in out
    rows[2]["answer"] = rows[4]["answer"] = "W"
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task, _, _ = tasks.load_task(cfg)
    assert task.data_report["prompt_rows"]["column_gaps"] == {} and "absent or null" not in capsys.readouterr().out


def test_a_prompt_past_the_policys_positions_is_refused_before_generation(tmp_path, capsys):
    """An 800-token prompt to builtin:tiny-gpt2 (512 learned positions) stopped the first round with torch.embedding's
    'IndexError: index out of range in self' traceback; it is now refused up front with the max_prompt_length that
    fits, and that setting trains."""
    from preflab.cli import main

    rows = [{"prompt": "echo: ab\n"}, {"prompt": "echo: " + "ab " * 400}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["train", "task=online", "trainer=grpo", "beta=0", "online_task=dataset", f"dataset_name={tmp_path / 'p.jsonl'}",
            "reward_funcs=preflab.online.tasks:demo_true_reward", "model_name_or_path=builtin:tiny-gpt2", "max_steps=1",
            "num_generations=2", "prompts_per_generation=2", "per_device_train_batch_size=4",
            "max_completion_length=4", "use_cpu=true", "disable_tqdm=true", f"output_dir={tmp_path / 'run'}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'p.jsonl'}: 1 of 2 prompt(s) need more positions than the policy's 512: the first " \
           "('echo: ab ab" in err and "Set max_prompt_length to at most 508" in err, err
    assert main(args + ["max_prompt_length=508"]) == 0
