"""task: sft with a teacher (preflab.loops.distill): the run's loss against TRL's generalized_jsd_loss on full
logits (off-policy, lmbda 0: the dataset's completions), student == teacher gives 0, the config's refusals, and
examples/distill.yaml lowering the divergence, checkpointing and resuming exactly."""
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.loops.distill import DistillTrainer
from preflab.loops.sft import SFTTrainer

ROOT = Path(__file__).resolve().parents[2]
gkd = pytest.importorskip("trl.experimental.gkd.gkd_trainer")


def _cfg(tmp_path, **kw):
    base = {"task": "sft", "model_name_or_path": "builtin:tiny-llama", "teacher_model_name_or_path": "builtin:tiny-qwen2",
            "dataset_name": str(ROOT / "examples/data/loud_echo_sft.jsonl"), "per_device_train_batch_size": 4,
            "max_length": 128, "max_steps": 1, "use_cpu": True, "disable_tqdm": True, "seed": 0,
            "output_dir": str(tmp_path / "run")}
    return config_from_dict({**base, **kw})


def _trl_loss(trainer, items, beta, temperature) -> float:
    """TRL 1.16's GKDTrainer.generalized_jsd_loss on the full [1, T, V] logits of each sequence run alone through
    model(...) (student and teacher), labels -100 off the completion, summed over tokens then over sequences and
    divided by the completion tokens: the batch's token mean, computed without preflab's scorer."""
    total, count = 0.0, 0
    with torch.no_grad():
        for x in items:
            ids = torch.tensor([x.prompt_ids + x.completion_ids])
            s = trainer.policy(ids).logits[:, :-1].double()
            t = trainer.ref(ids).logits[:, :-1].double()
            labels = ids[:, 1:].clone()
            labels[:, :len(x.prompt_ids) - 1] = -100
            n = int((labels != -100).sum())
            loss = gkd.GKDTrainer.generalized_jsd_loss(s, t, labels=labels, beta=beta, temperature=temperature)
            total, count = total + float(loss) * n, count + n
    return total / count


@pytest.mark.parametrize("beta,temperature", [(0.5, 0.8), (0.0, 1.0), (1.0, 1.3)])
def test_run_loss_is_trls_generalized_jsd_on_the_dataset_completions(tmp_path, beta, temperature):
    torch.manual_seed(0)
    trainer = DistillTrainer(_cfg(tmp_path, beta=beta, temperature=temperature))
    assert trainer.ref is not trainer.policy and not trainer.ref.training
    assert not any(p.requires_grad for p in trainer.ref.parameters())
    items = trainer.train_data[:4]
    layout = trainer.kind.collate(items, trainer.pad_id, trainer.layout)
    with torch.no_grad():
        loss = float(trainer.objective_output(trainer.score(layout)).loss)
    assert loss > 1e-4
    assert loss == pytest.approx(_trl_loss(trainer, items, beta, temperature), rel=1e-4, abs=1e-7)


def test_unwritten_beta_is_trls_distillation_default_and_student_equal_to_teacher_gives_zero(tmp_path):
    cfg = _cfg(tmp_path, teacher_model_name_or_path="builtin:tiny-llama")
    assert cfg.objective().beta == 1.0  # TRL 1.16 DistillationConfig.beta, not DPO's 0.1
    trainer = DistillTrainer(cfg)
    layout = trainer.kind.collate(trainer.train_data[:4], trainer.pad_id, trainer.layout)
    with torch.no_grad():
        assert abs(float(trainer.objective_output(trainer.score(layout)).loss)) < 1e-6


def test_refusals(tmp_path):
    with pytest.raises(ConfigError, match="lmbda: 0.5 .the student.s. samples completions: set max_completion_length"):
        _cfg(tmp_path, lmbda=0.5)
    with pytest.raises(ConfigError, match="streaming"):
        _cfg(tmp_path, lmbda=0.5, max_completion_length=8, streaming=True, max_steps=2)
    with pytest.raises(ConfigError, match="seq_kd: true .the teacher's. with streaming"):
        _cfg(tmp_path, seq_kd=True, max_completion_length=8, streaming=True, max_steps=2)
    with pytest.raises(ConfigError, match="seq_kd: true .the teacher's. samples completions: set max_completion"):
        _cfg(tmp_path, seq_kd=True)
    with pytest.raises(ConfigError, match="seq_kd: true with lmbda: 1.0: every step is on-policy"):
        _cfg(tmp_path, seq_kd=True, lmbda=1.0, max_completion_length=8)
    with pytest.raises(ConfigError, match="divergence_temperature"):
        _cfg(tmp_path, teacher_model_name_or_path=None, divergence_temperature=1.0)
    with pytest.raises(ConfigError, match="divergence_temperature"):
        _cfg(tmp_path, divergence_temperature=0.0)
    with pytest.raises(ConfigError, match="top_p, top_k apply to sampled completions"):  # nothing is sampled
        _cfg(tmp_path, top_k=5, top_p=0.9)
    with pytest.raises(ConfigError, match="needs teacher_model_name_or_path"):
        _cfg(tmp_path, teacher_model_name_or_path=None, lmbda=0.0, seq_kd=False, teacher_model_init_kwargs={})
    with pytest.raises(ConfigError, match="beta must be in"):
        _cfg(tmp_path, beta=2.0).objective()
    with pytest.raises(ConfigError, match="temperature"):
        _cfg(tmp_path, teacher_model_name_or_path=None, temperature=0.7)
    for strategy in ("wrapped", "bfd_split"):  # both cut rows; only bfd packs whole rows
        with pytest.raises(ConfigError, match=f"packing_strategy: {strategy} with teacher_model_name_or_path: it cuts"):
            _cfg(tmp_path, packing=True, packing_strategy=strategy)
    with pytest.raises(ConfigError, match="precompute_ref_log_probs with a teacher"):
        _cfg(tmp_path, precompute_ref_log_probs=True)
    with pytest.raises(ConfigError, match="max_completion_length applies to sampled completions"):  # none sampled
        _cfg(tmp_path, max_completion_length=64)
    with pytest.raises(ConfigError, match="DistillTrainer"):
        SFTTrainer(_cfg(tmp_path))


@pytest.mark.slow
def test_example_distill_yaml_lowers_the_divergence_and_resumes_exactly(tmp_path, monkeypatch):
    import yaml
    from safetensors.torch import load_file

    monkeypatch.chdir(ROOT)
    torch.set_num_threads(1)
    base = yaml.safe_load((ROOT / "examples/distill.yaml").read_text())
    base.update(max_steps=4, save_steps=2, eval_steps=0, logging_steps=1, disable_tqdm=True, use_cpu=True,
                lr_scheduler_type="constant", warmup_steps=0, learning_rate=1e-2)
    full = DistillTrainer(config_from_dict({**base, "output_dir": str(tmp_path / "full")}))
    before = full.evaluate()["eval_loss"]
    summary = full.train()
    assert summary["final_metrics"]["eval_loss"] < 0.7 * before
    rows = [json.loads(x) for x in (tmp_path / "full/metrics.jsonl").read_text().splitlines()]
    assert {"loss", "nll_loss", "mean_token_accuracy", "entropy"} <= set(next(r for r in rows if "loss" in r))
    DistillTrainer(config_from_dict({**base, "max_steps": 2, "output_dir": str(tmp_path / "part")})).train()
    resumed = config_from_dict({**base, "output_dir": str(tmp_path / "part"), "overwrite_output_dir": True,
                                "resume_from_checkpoint": str(tmp_path / "part/checkpoint-2")})
    assert DistillTrainer(resumed).train()["resumed_from_step"] == 2
    a, b = load_file(tmp_path / "full/model.safetensors"), load_file(tmp_path / "part/model.safetensors")
    assert a.keys() == b.keys() and not any(k.startswith("teacher") for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def _dump(cls, **kw):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(output_dir="unused", teacher_model_name_or_path="builtin:tiny-qwen2", use_cpu=True, bf16=False,
                   **kw).to_dict()


def test_saved_distillation_and_gkd_configs_load(tmp_path):
    """A saved DistillationConfig (args.to_dict()) loads as task: sft with lmbda 1 (every step on-policy), its
    teacher, beta, temperature, revision and max_completion_length; a GKDConfig with its lmbda and max_new_tokens;
    seq_kd stays refused."""
    from trl import DistillationConfig
    from trl.experimental.gkd import GKDConfig

    data = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": str(ROOT / "examples/data/loud_echo_sft.jsonl"),
            "output_dir": str(tmp_path / "run")}
    dump = _dump(DistillationConfig, beta=0.3, temperature=0.7, teacher_model_revision="main")
    cfg = config_from_dict({**dump, **data})  # TRL's DistillationTrainer: every step on-policy
    assert (cfg.task, cfg.teacher_model_name_or_path, cfg.teacher_model_init_kwargs) == (
        "sft", "builtin:tiny-qwen2", {"revision": "main"})
    assert (cfg.lmbda, cfg.max_completion_length) == (1.0, 512)
    assert (cfg.objective().beta, cfg.objective().temperature) == (0.3, 0.7)
    assert _dump(DistillationConfig)["beta"] == 1.0
    off = config_from_dict({**dump, **data, "lmbda": 0.0})  # off-policy: the sampling length is unread
    assert (off.lmbda, off.max_completion_length) == (0.0, None)
    gkd_dump = {k: v for k, v in _dump(GKDConfig, beta=0.2).items() if not k.endswith("_token")}
    cfg = config_from_dict({**gkd_dump, **data})  # GKDTrainer samples at 0.9 and scores the divergence at 1
    assert (cfg.task, cfg.lmbda, cfg.max_completion_length, cfg.objective().beta, cfg.temperature) == (
        "sft", 0.5, 128, 0.2, 0.9)
    assert (cfg.divergence_temperature, cfg.objective().temperature) == (1.0, 1.0)
    off = config_from_dict({**gkd_dump, **data, "lmbda": 0.0})  # nothing sampled: 0.9 is read by nobody
    assert (off.temperature, off.objective().temperature, off.max_completion_length) == (1.0, 1.0, None)
    seq = config_from_dict({**gkd_dump, **data, "seq_kd": True})
    assert (seq.seq_kd, seq.lmbda, seq.max_completion_length) == (True, 0.5, 128)
    seq = config_from_dict({**gkd_dump, **data, "seq_kd": True, "lmbda": 0.0})  # the teacher samples every step
    assert (seq.seq_kd, seq.lmbda, seq.max_completion_length) == (True, 0.0, 128)
    seq = config_from_dict({**gkd_dump, **data, "seq_kd": True, "lmbda": 1.0})  # TRL never reaches seq_kd: noted
    assert (seq.seq_kd, seq.lmbda) == (False, 1.0)
    sampling = dict(top_p=0.9, top_k=7, min_p=0.1, repetition_penalty=1.2)  # DistillationConfig's, read on-policy
    cfg = config_from_dict({**_dump(DistillationConfig, **sampling), **data})
    assert {k: getattr(cfg, k) for k in sampling} == sampling
    off = config_from_dict({**_dump(DistillationConfig, **sampling), **data, "lmbda": 0.0})  # noted as unread
    assert (off.top_p, off.top_k, off.min_p, off.repetition_penalty) == (1.0, 0, None, 1.0)


def test_on_policy_steps_follow_lmbda_and_are_the_same_on_every_draw(tmp_path):
    """lmbda 0.5: a step is on-policy when random.Random('distill:{seed}:{step}').random() < lmbda (the same on
    every process and after a resume); about half of 200 steps are."""
    import random

    trainer = DistillTrainer(_cfg(tmp_path, lmbda=0.5, max_completion_length=4))
    steps = [s for s in range(200) if trainer.on_policy(s)]
    assert steps == [s for s in range(200) if random.Random(f"distill:0:{s}").random() < 0.5]
    assert 70 < len(steps) < 130
    assert all(DistillTrainer(_cfg(tmp_path, lmbda=1.0, max_completion_length=4)).on_policy(s) for s in range(20))


def test_an_on_policy_step_distils_on_the_students_samples(tmp_path):
    """lmbda 1: the step's micro-batch holds the dataset's prompts with completions sampled from the student (at most
    max_completion_length tokens, cut after eos), and its loss is TRL's generalized_jsd_loss on those sequences; the
    global RNG is left as it was."""
    from dataclasses import replace

    trainer = DistillTrainer(_cfg(tmp_path, lmbda=1.0, max_completion_length=6, beta=0.5, temperature=0.9))
    before = torch.get_rng_state()
    mb = trainer.micro_batches(0)[0]
    assert torch.equal(torch.get_rng_state(), before)
    items = [trainer.train_data[i] for i in mb.index]
    sampled = trainer.sampled_completions
    eos = trainer.tokenizer.eos_token_id
    assert all(1 <= len(c) <= 6 and (len(c) == 6 or c[-1] == eos) for c in sampled)
    assert [c for c in sampled] != [x.completion_ids for x in items]
    assert int(mb.layout.response_mask.sum()) == sum(len(c) for c in sampled)
    on_policy = [replace(x, completion_ids=c, loss_mask=None) for x, c in zip(items, sampled)]
    with torch.no_grad():
        loss = float(trainer.objective_output(trainer.score(mb.layout)).loss)
    assert loss == pytest.approx(_trl_loss(trainer, on_policy, 0.5, 0.9), rel=1e-4, abs=1e-7)
    assert trainer.micro_batches(0)[0].layout.input_ids.tolist() == mb.layout.input_ids.tolist()  # seeded by step


@pytest.mark.slow
def test_an_on_policy_run_resumes_exactly(tmp_path, monkeypatch):
    import yaml
    from safetensors.torch import load_file

    monkeypatch.chdir(ROOT)
    torch.set_num_threads(1)
    base = yaml.safe_load((ROOT / "examples/distill.yaml").read_text())
    base.update(max_steps=4, save_steps=2, eval_steps=0, eval_fraction=0.0, logging_steps=1, disable_tqdm=True,
                use_cpu=True, lr_scheduler_type="constant", warmup_steps=0, lmbda=0.5, max_completion_length=6)
    DistillTrainer(config_from_dict({**base, "output_dir": str(tmp_path / "full")})).train()
    DistillTrainer(config_from_dict({**base, "max_steps": 2, "output_dir": str(tmp_path / "part")})).train()
    resumed = config_from_dict({**base, "output_dir": str(tmp_path / "part"), "overwrite_output_dir": True,
                                "resume_from_checkpoint": str(tmp_path / "part/checkpoint-2")})
    assert DistillTrainer(resumed).train()["resumed_from_step"] == 2
    a, b = load_file(tmp_path / "full/model.safetensors"), load_file(tmp_path / "part/model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_accumulation_equals_one_big_batch(tmp_path):
    """2 micro-batches x 4 rows == 1 batch of 8 rows: the divergence's token mean runs over the whole step."""
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    out = {}
    for name, b, accum in (("big", 8, 1), ("accum", 4, 2)):
        cfg = _cfg(tmp_path, per_device_train_batch_size=b, gradient_accumulation_steps=accum, max_steps=2,
                   learning_rate=1e-2, lr_scheduler_type="constant", logging_steps=1, beta=0.5,
                   output_dir=str(tmp_path / name))
        out[name] = (DistillTrainer(cfg).train(), load_file(tmp_path / name / "model.safetensors"))
    assert out["accum"][0]["final_metrics"]["loss"] == pytest.approx(out["big"][0]["final_metrics"]["loss"], abs=1e-7)
    for key, value in out["big"][1].items():
        torch.testing.assert_close(out["accum"][1][key], value, rtol=0, atol=1e-6)


def _trl_sampled_step(trainer, model, items, max_new_tokens, beta):
    """TRL 1.16 GKDTrainer on one batch: generate_on_policy_outputs (the left-padded prompts, its eos cut and label
    mask) with `model`, then compute_loss's formula (generalized_jsd_loss on the shifted logits of the student and
    the teacher over the padded batch, temperature 1 as there). Sampling with top_k 1 (one token left) makes TRL's
    do_sample draw and preflab's row-seeded draw the same token, so the two runs can be compared exactly."""
    from transformers import GenerationConfig

    from preflab.generate import left_padded

    prompts, attn = left_padded([x.prompt_ids for x in items], trainer.pad_id)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=True, top_k=1, top_p=1.0, temperature=0.9,
                              pad_token_id=trainer.pad_id, eos_token_id=trainer.tokenizer.eos_token_id)
    ids, mask, labels = gkd.GKDTrainer.generate_on_policy_outputs(
        model, {"prompts": prompts, "prompt_attention_mask": attn}, config)
    completions = [row[lab != -100].tolist() for row, lab in zip(ids, labels)]
    with torch.no_grad():
        s = trainer.policy(input_ids=ids, attention_mask=mask).logits[:, :-1].double()
        t = trainer.ref(input_ids=ids, attention_mask=mask).logits[:, :-1].double()
        loss = gkd.GKDTrainer.generalized_jsd_loss(s, t, labels=labels[:, 1:], beta=beta)
    return completions, float(loss)


@pytest.mark.parametrize("who", ["teacher", "student"])
def test_a_sampled_step_is_trls_gkd_step(tmp_path, who):
    """seq_kd (step 0 of lmbda 0.5 is not on-policy: the teacher samples) and lmbda 1 (the student samples), with
    GKDConfig's temperatures (sampling at 0.9, the divergence at 1: divergence_temperature, as a saved GKDConfig
    loads): the step's completions are the ones TRL's GKDTrainer.generate_on_policy_outputs gives with the same
    model (top_k 1), and its loss is TRL's compute_loss on them."""
    options = dict(seq_kd=True, lmbda=0.5) if who == "teacher" else dict(lmbda=1.0)
    trainer = DistillTrainer(_cfg(tmp_path, max_completion_length=6, top_k=1, beta=0.5, temperature=0.9,
                                  divergence_temperature=1.0, **options))
    assert trainer.on_policy(0) == (who == "student")
    mb = trainer.micro_batches(0)[0]
    items = [trainer.train_data[i] for i in mb.index]
    model = trainer.ref if who == "teacher" else trainer.policy
    completions, trl_loss = _trl_sampled_step(trainer, model, items, 6, 0.5)
    assert trainer.sampled_completions == completions
    assert completions != [x.completion_ids for x in items]
    with torch.no_grad():
        loss = float(trainer.objective_output(trainer.score(mb.layout)).loss)
    assert loss == pytest.approx(trl_loss, rel=1e-4, abs=1e-7)


def test_seq_kd_samples_the_teacher_with_the_row_seeds_off_policy_and_the_student_on_policy(tmp_path):
    """seq_kd, lmbda 0.5 and every sampling option (temperature 0.8, top_p 0.9, top_k 40, min_p 0.02,
    repetition_penalty 1.3): an off-policy step's completions are the teacher's row-seeded samples (seeds
    row_seed(step, index, "teacher")) with those options, an on-policy step's the student's (row_seed(..,
    "student"))."""
    from preflab.generate_seeded import generate_ids_row_seeded

    sampling = dict(temperature=0.8, top_p=0.9, top_k=40, min_p=0.02, repetition_penalty=1.3)
    trainer = DistillTrainer(_cfg(tmp_path, seq_kd=True, lmbda=0.5, max_completion_length=5, **sampling))
    for step, model, who in ((0, trainer.ref, "teacher"), (2, trainer.policy, "student")):
        assert trainer.on_policy(step) == (who == "student")
        mb = trainer.micro_batches(step)[0]
        prompts = [trainer.train_data[i].prompt_ids for i in mb.index]
        want = generate_ids_row_seeded(model, prompts, [trainer.row_seed(step, i, who) for i in mb.index],
                                       eos_id=trainer.tokenizer.eos_token_id, pad_id=trainer.pad_id,
                                       max_new_tokens=5, **sampling)
        assert trainer.sampled_completions == want
        assert int(mb.layout.response_mask.sum()) == sum(len(c) for c in want)


def test_fsdp_and_deepspeed_are_refused_naming_the_engine_and_ddp(tmp_path, monkeypatch):
    """Under a sharding engine (launch.is_sharded; the engine's name is accelerate's distributed_type, NO here) the
    trainer stops with the reason and the DDP launch."""
    from preflab.loops import launch

    monkeypatch.setattr(launch, "is_sharded", lambda accelerator: True)
    with pytest.raises(ConfigError, match="distillation under NO: .* ZeRO-3 .*examples/accelerate/ddp.yaml"):
        DistillTrainer(_cfg(tmp_path))


def test_preflab_eval_task_distill_gives_the_runs_own_eval_metrics(tmp_path, capsys, monkeypatch):
    """`preflab eval RUN --task distill --data F` on a run that evaluated on F (eval_dataset_name) gives the run's
    final (and, on checkpoint-1, its step-1) eval_loss, eval_nll_loss, eval_mean_token_accuracy and eval_entropy
    (the trained student against the run's teacher, the same rows and truncation), over num_tokens completion
    tokens (the eval rows' completion tokens, counted directly); each model is loaded once: the student (the final
    directory, or a checkpoint's base) and the teacher, not the run's base again (before: three loads, the student
    copied into a second base); --reference names another
    teacher (the student itself: 0); a run without a teacher and --no-reference are refused; the default eval's
    note on a distillation run says what its beta is. The divergence's temperature is divergence_temperature (0.8;
    the sampling temperature stays 1), which eval.json names."""
    from preflab.cli import main
    from preflab.eval.run import eval_beta

    data = str(ROOT / "examples/data/loud_echo_sft.jsonl")
    run = tmp_path / "run"
    cfg = _cfg(tmp_path, beta=0.5, divergence_temperature=0.8, max_steps=2, learning_rate=1e-2, eval_dataset_name=data,
               eval_steps=1, save_steps=1, logging_steps=1, per_device_eval_batch_size=8)
    trainer = DistillTrainer(cfg)
    final = trainer.train()["final_metrics"]
    tokens = [len(x.completion_ids) for x in trainer.eval_data]  # each eval row's completion tokens
    step1 = next(json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()
                 if '"eval_loss"' in x and json.loads(x)["step"] == 1)
    import preflab.eval.loading
    import preflab.models.load

    loaded, load = [], preflab.models.load.load_causal_lm

    def counted(name, *args, **kwargs):
        loaded.append(name)
        return load(name, *args, **kwargs)

    monkeypatch.setattr(preflab.models.load, "load_causal_lm", counted)  # the run's base and the teacher
    monkeypatch.setattr(preflab.eval.loading, "load_causal_lm", counted)  # the student (load_for_eval)
    for folder, want, loads in ((run, final, [str(run)]), (run / "checkpoint-1", step1, ["builtin:tiny-llama"])):
        loaded.clear()  # the final model, a checkpoint's weights (its base built, its weights read into it)
        assert main(["eval", str(folder), "--task", "distill", "--data", data, "--out", str(tmp_path / "e.json")]) == 0
        assert loaded == [*loads, "builtin:tiny-qwen2"]  # the student once, then the teacher
        got = json.loads((tmp_path / "e.json").read_text())
        assert (got["teacher"], got["beta"], got["temperature"], got["num_rows"], got["num_tokens"]) == (
            "builtin:tiny-qwen2", 0.5, 0.8, 48, sum(tokens))
        for key in ("eval_loss", "eval_nll_loss", "eval_mean_token_accuracy", "eval_entropy"):
            assert got["metrics"][key] == pytest.approx(want[key], rel=1e-6, abs=1e-9), key
        assert got["metrics"]["eval_loss"] > 1e-4
    assert final["eval_loss"] != pytest.approx(step1["eval_loss"], rel=1e-3)
    assert main(["eval", str(run), "--task", "distill", "--data", data, "--reference", str(run), "--limit", "8",
                 "--out", str(tmp_path / "self.json")]) == 0
    own = json.loads((tmp_path / "self.json").read_text())
    assert own["num_rows"] == 8 and abs(own["metrics"]["eval_loss"]) < 1e-6
    assert own["num_tokens"] == sum(tokens[:8])  # the divergence's tokens: the 8 rows --limit keeps
    unwritten = tmp_path / "unwritten-beta"  # the run's weights with a config that writes no beta: TRL's 1.0
    shutil.copytree(run, unwritten)
    saved = yaml.safe_load((unwritten / "config.yaml").read_text())
    del saved["beta"]
    (unwritten / "config.yaml").write_text(yaml.safe_dump(saved))
    assert main(["eval", str(unwritten), "--task", "distill", "--data", data, "--limit", "2", "--out",
                 str(tmp_path / "unwritten.json")]) == 0
    assert json.loads((tmp_path / "unwritten.json").read_text())["beta"] == 1.0
    capsys.readouterr()
    for option in ("--limit", "--batch-size"):
        assert main(["eval", str(run), "--task", "distill", "--data", data, option, "0"]) != 0
        assert f"{option} must be at least 1, got 0" in capsys.readouterr().err
    assert main(["eval", str(run), "--task", "distill", "--data", data, "--no-reference"]) != 0
    assert "--no-reference with --task distill: the divergence needs the teacher" in capsys.readouterr().err
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.yaml").write_text("task: dpo\nmodel_name_or_path: builtin:tiny-llama\n")
    assert main(["eval", str(plain), "--task", "distill", "--data", data]) != 0
    assert "--task distill evaluates distillation runs" in capsys.readouterr().err
    assert "distillation" in eval_beta(None, {"task": "sft", "teacher_model_name_or_path": "t", "beta": 0.5})[1][0]


def test_preflab_eval_task_distill_refuses_a_task_sft_run_without_a_teacher_before_loading(tmp_path, capsys):
    """A plain SFT run (task: sft, no teacher_model_name_or_path) has no teacher to measure the divergence to:
    --task distill refuses it with the run's task and the command that evaluates it, before the data or any model is
    read (neither exists here)."""
    from preflab.cli import main

    run = tmp_path / "sft"
    run.mkdir()
    (run / "config.yaml").write_text("task: sft\nmodel_name_or_path: builtin:tiny-llama\n")
    assert main(["eval", str(run), "--task", "distill", "--data", str(tmp_path / "no-rows.jsonl")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"preflab: error: {run} is a task: sft run without teacher_model_name_or_path; --task distill evaluates "
        f"distillation runs (task: sft with a teacher). Evaluate it with `preflab eval {run} --data ...`.")


def test_preflab_eval_task_distill_on_a_bfloat16_run_gives_its_eval_metrics(tmp_path):
    """load_dtype: bfloat16 from a saved model directory (from_pretrained, as a hub model loads): the student is
    loaded once, in bfloat16 as the run loaded its policy, and gives the run's final eval metrics exactly (in
    float32 its bfloat16 weights score otherwise: the run evaluated in bfloat16)."""
    from preflab.loops.distill_eval import evaluate_distill_run
    from preflab.models.load import load_causal_lm, load_tokenizer

    data, base = str(ROOT / "examples/data/loud_echo_sft.jsonl"), tmp_path / "base"
    tokenizer = load_tokenizer("builtin:tiny-llama")
    load_causal_lm("builtin:tiny-llama", tokenizer=tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    cfg = _cfg(tmp_path, model_name_or_path=str(base), load_dtype="bfloat16", learning_rate=1e-2,
               eval_dataset_name=data, eval_steps=1, save_steps=0, per_device_eval_batch_size=8)
    final = DistillTrainer(cfg).train()["final_metrics"]
    got = evaluate_distill_run(str(tmp_path / "run"), data)
    assert {k: got["metrics"][k] for k in final if k in got["metrics"]} == {k: final[k] for k in got["metrics"]}


def test_preflab_eval_task_distill_on_a_lora_run_gives_its_eval_metrics(tmp_path):
    """A LoRA run (use_peft, lora_r 4 and lora_alpha 8: not the defaults) evaluates to its final eval metrics (the
    adapters merged into the student). Before, its own lora_* options were refused beside the evaluation's
    use_peft: false ("lora_r, lora_alpha only apply to use_peft: true")."""
    from preflab.loops.distill_eval import evaluate_distill_run

    data = str(ROOT / "examples/data/loud_echo_sft.jsonl")
    cfg = _cfg(tmp_path, use_peft=True, lora_r=4, lora_alpha=8, learning_rate=1e-2, eval_dataset_name=data,
               eval_steps=1, save_steps=0, per_device_eval_batch_size=8)
    final = DistillTrainer(cfg).train()["final_metrics"]
    got = evaluate_distill_run(str(tmp_path / "run"), data)
    for key in ("eval_loss", "eval_nll_loss", "eval_mean_token_accuracy", "eval_entropy"):
        assert got["metrics"][key] == pytest.approx(final[key], rel=1e-5, abs=1e-9), key
    assert got["metrics"]["eval_loss"] > 1e-4


@pytest.mark.parametrize("sampled", [False, True])
def test_packed_rows_give_the_padded_rows_divergence_and_gradient(tmp_path, sampled):
    """packing: true (bfd: whole rows side by side, per-row positions, block-diagonal mask) on the step's 8 rows
    gives the loss of the same rows padded (to 1e-7) and the student's gradient (to 1e-8), on the dataset's
    completions and on a sampled step (lmbda 1: the rows' own seeds give both layouts the same samples)."""
    options = dict(lmbda=1.0, max_completion_length=6, temperature=0.9) if sampled else {}
    out = {}
    for packing in (False, True):
        trainer = DistillTrainer(_cfg(tmp_path / str(packing), per_device_train_batch_size=8, beta=0.5,
                                      packing=packing, **options))
        mb = trainer.micro_batches(0)[0]
        assert (mb.layout.input_ids.shape[0] < 8) == packing  # packed: fewer rows than sequences
        loss = trainer.objective_output(trainer.score(mb.layout)).loss
        loss.backward()
        out[packing] = (float(loss.detach()), {n: p.grad for n, p in trainer.policy.named_parameters()},
                        getattr(trainer, "sampled_completions", None))
    assert out[True][0] == pytest.approx(out[False][0], rel=1e-6, abs=1e-7) and out[True][0] > 1e-4
    assert out[True][2] == out[False][2]
    for name, grad in out[False][1].items():
        torch.testing.assert_close(out[True][1][name], grad, rtol=0, atol=1e-8)


def test_a_rows_sample_is_the_same_in_any_micro_batch_split_and_its_seed_is_its_own(tmp_path):
    """lmbda 1: the 8 rows of step 0 sampled as one micro-batch of 8 and as 2 micro-batches of 4 get the same
    completion row by row (a row's seed is (seed, step, dataset index, who), not its place in a micro-batch: what
    makes 2 processes train as 1 does, here on one process); and the seeds of distinct (step, index, who) are
    distinct, so a row drawn again at a later step, or by the teacher, gets new draws."""
    def completions(batch, accum):
        trainer = DistillTrainer(_cfg(tmp_path, lmbda=1.0, max_completion_length=6, temperature=1.2,
                                      per_device_train_batch_size=batch, gradient_accumulation_steps=accum,
                                      output_dir=str(tmp_path / f"b{batch}")))
        out = {}
        for mb in trainer.micro_batches(0):
            for row, index in enumerate(mb.index):
                out[index] = mb.layout.target_ids[row][mb.layout.response_mask[row].bool()].tolist()
        return trainer, out

    trainer, whole = completions(8, 1)
    _, split = completions(4, 2)
    assert len(whole) == 8 and split == whole
    assert len({tuple(c) for c in whole.values()}) > 1
    seeds = {(s, i, w): trainer.row_seed(s, i, w) for s in range(3) for i in range(8) for w in ("student", "teacher")}
    assert len(set(seeds.values())) == len(seeds)
