"""A TRL user's DPOConfig YAML works in preflab (issue 11): TRL keys keep TRL's meaning, keys without effect say
so once, unknown keys are all reported with correct suggestions."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from preflab.config import config_from_dict, load_config
from preflab.errors import ConfigError
from preflab.objectives.base import PairBatch, SequenceLogps

BASE = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl"}
DATA = str(Path(__file__).resolve().parents[1] / "examples" / "data" / "loud_echo_pairs.jsonl")


# ---------------------------------------------------------------- unknown keys
def test_every_unknown_key_reported_once_with_correct_hints():
    with pytest.raises(ConfigError) as err:
        config_from_dict({**BASE, "learning_rat": 1e-5, "lora_rank": 8, "gamma": 1.0, "frobnicate": 3,
                          "bta": 0.2})
    text = str(err.value)
    lines = [line for line in text.splitlines() if line.startswith("unknown config key")]
    assert len(lines) == 5
    assert "'learning_rat'. Did you mean 'learning_rate'?" in text
    assert "'lora_rank'. preflab calls it 'lora_r'." in text
    assert "'gamma'. It is a parameter of the objective(s)" in text and "not of the chosen loss_type" in text
    assert "'bta'. Did you mean 'beta'?" in text
    assert "unknown config key 'frobnicate'.\n" in text  # nothing close: no hint at all
    assert text.count("preflab train --help") == 1


def test_old_wrong_hints_are_gone():
    """do_eval, rpo_alpha, padding_free and torch_dtype are TRL keys preflab now accepts (they once got the hints
    ld_alpha, f_alpha, learning_rate and torch_compile)."""
    cfg = config_from_dict({**BASE, "do_eval": False, "rpo_alpha": 0.5, "padding_free": True,
                            "torch_dtype": "float32"})
    assert cfg.rpo_alpha == 0.5 and cfg.layout == "prefix_packed" and cfg.load_dtype == "float32"
    with pytest.raises(ConfigError, match="'padding_fre'. Did you mean 'padding_free'?"):
        config_from_dict({**BASE, "padding_fre": True})


# ---------------------------------------------------------------- TRL meaning
def _batch():
    g = torch.Generator().manual_seed(0)
    mask_c = torch.tensor([[True, True, True, False], [True, True, False, False]])
    mask_r = torch.tensor([[True, True, False, False], [True, True, True, True]])
    side = lambda m: SequenceLogps(-torch.rand(m.shape, generator=g) * 3, m)  # noqa: E731
    return PairBatch(side(mask_c), side(mask_r), side(mask_c), side(mask_r))


def test_rpo_alpha_adds_alpha_times_token_mean_nll_of_chosen():
    """TRL 0.x: loss = mean_i dpo_i + rpo_alpha * CE(chosen logits, chosen labels) with CE the mean over every
    chosen response token of the batch."""
    batch = _batch()
    out = config_from_dict({**BASE, "rpo_alpha": 0.7, "beta": 0.2}).objective()(batch)
    h = lambda s, r: (s.token_logps * s.mask).sum(-1) - (r.token_logps * r.mask).sum(-1)  # noqa: E731
    dpo = -F.logsigmoid(0.2 * (h(batch.policy_chosen, batch.ref_chosen) - h(batch.policy_rejected, batch.ref_rejected)))
    c = batch.policy_chosen
    nll = -(c.token_logps * c.mask).sum() / c.mask.sum()  # 5 chosen tokens in all
    assert torch.allclose(out.loss, dpo.mean() + 0.7 * nll, atol=1e-6)
    assert torch.allclose(out.metrics["loss/sft"], nll, atol=1e-6)


def test_rpo_alpha_extends_a_loss_type_list():
    obj = config_from_dict({**BASE, "loss_type": ["sigmoid", "bco_pair"], "loss_weights": [0.8, 0.2],
                            "rpo_alpha": 1.0}).objective()
    assert obj.names == ("sigmoid", "bco_pair", "sft") and obj.weights == (0.8, 0.2, 1.0)


def test_label_smoothing_with_sigmoid_is_cdpo_with_a_note(capsys):
    cfg = config_from_dict({**BASE, "loss_type": "sigmoid", "label_smoothing": 0.1})
    assert cfg.loss_type == "cdpo" and cfg.objective().label_smoothing == 0.1
    assert "cdpo" in capsys.readouterr().err
    batch = _batch()
    z = cfg.objective()(batch).losses  # TRL <= 0.28: -(1 - eps) logsig(z) - eps logsig(-z)
    dpo = config_from_dict(BASE).objective()
    margin = torch.logit(torch.exp(-dpo(batch).losses))  # beta * Delta recovered from the DPO loss
    expected = -0.9 * F.logsigmoid(margin) - 0.1 * F.logsigmoid(-margin)
    assert torch.allclose(z, expected, atol=1e-5)


def test_eval_strategy_maps_onto_eval_steps(capsys):
    cfg = config_from_dict({**BASE, "eval_strategy": "steps", "logging_steps": 5, "eval_fraction": 0.1})
    assert cfg.eval_steps == 5  # transformers: eval_steps defaults to logging_steps
    cfg = config_from_dict({**BASE, "evaluation_strategy": "no", "eval_fraction": 0.1})
    assert cfg.eval_fraction == 0 and "not used (no evaluation)" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="needs an eval set"):
        config_from_dict({**BASE, "eval_strategy": "steps"})
    with pytest.raises(ConfigError, match="do_eval: true but there is no eval set"):
        config_from_dict({**BASE, "do_eval": True})


def test_transformers5_fractions_and_yaml_no(tmp_path):
    cfg = config_from_dict({**BASE, "warmup_steps": 0.1})
    assert cfg.warmup_ratio == 0.1 and cfg.warmup_steps == 0
    with pytest.raises(ConfigError, match="eval_steps=0.25 is transformers' fraction-of-total-steps form"):
        config_from_dict({**BASE, "eval_steps": 0.25, "eval_fraction": 0.1})
    path = tmp_path / "c.yaml"
    path.write_text("model_name_or_path: builtin:tiny-llama\ndataset_name: d.jsonl\neval_strategy: no\n"
                    "save_strategy: no\neval_fraction: 0.1\nsave_steps: 100\n")
    cfg = load_config(path)  # a bare `no` is YAML 1.1's false
    assert (cfg.eval_strategy, cfg.eval_fraction, cfg.eval_steps, cfg.save_steps) == ("no", 0.0, 0, 0)
    # (a written eval_steps beside it is refused: test_config_validation.py, one rule for every entry point)


def test_renamed_and_translated_keys():
    cfg = config_from_dict({**BASE, "model_name_or_path": "Qwen/Qwen2.5-0.5B", "ref_model": "builtin:tiny-llama",
                            "dataset_train_split": "train_prefs",
                            "dataset_test_split": "test_prefs", "f_divergence_type": "js_divergence",
                            "model_init_kwargs": {"torch_dtype": "bfloat16", "attn_implementation": "eager"},
                            "save_strategy": "steps", "optim": "adamw_torch_fused", "max_completion_length": 64})
    assert cfg.ref_model_name_or_path == "builtin:tiny-llama"
    assert (cfg.dataset_split, cfg.eval_split) == ("train_prefs", "test_prefs")
    assert cfg.objective().f_divergence == "js_divergence"
    assert cfg.load_dtype == "bfloat16" and cfg.model_init_kwargs == {"attn_implementation": "eager"}
    assert cfg.save_steps == 500 and cfg.max_completion_length == 64


@pytest.mark.parametrize("key,value,why", [
    ("train_sampling_strategy", "batch_rebalance", "length-grouped form"), ("optim", "galore_adamw", "need no other package"),
    ("use_dora", True, "use_dora only applies to use_peft: true"),
    # TrainingArguments / TRL keys that were "unknown config key" errors with no reason
    ("eval_on_start", True, "no eval set"), ("ignore_data_skip", True, "replays the data order"),
    ("lr_scheduler_kwargs", {"min_lr": 0.0}, "'min_lr' is not an option of lr_scheduler_type 'linear' \\(it takes: "
                                             "none\\)"),
    ("lr_scheduler_type", "greedy", "adapts the rate to the loss"), ("tools", [{"type": "function"}], "'tools' column"),
    ("chat_template_path", "t.jinja", "chat_template_path only applies to task: sft"),
])
def test_trl_values_preflab_cannot_honour_are_refused(key, value, why):
    with pytest.raises(ConfigError, match=why):
        config_from_dict({**BASE, key: value})


def test_lr_scheduler_kwargs_reach_the_schedule_and_unknown_keys_name_the_accepted_ones():
    """TRL's lr_scheduler_kwargs (a mapping, or the JSON string TrainingArguments takes) with the schedule it is for;
    a key that schedule does not take is refused naming it and the keys it takes (transformers: a TypeError)."""
    cfg = config_from_dict({**BASE, "lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": '{"min_lr_rate": '
                            '"0.1"}'})
    assert cfg.lr_scheduler_kwargs == {"min_lr_rate": 0.1}  # as transformers reads a JSON string
    with pytest.raises(ConfigError, match="lr_scheduler_kwargs key 'lr_end' is not an option of lr_scheduler_type "
                                          "'cosine_with_min_lr' \\(it takes: num_cycles, min_lr, min_lr_rate\\)"):
        config_from_dict({**BASE, "lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"lr_end": 0.0}})
    with pytest.raises(ConfigError, match="needs exactly one of min_lr .* or min_lr_rate"):
        config_from_dict({**BASE, "lr_scheduler_type": "cosine_with_min_lr"})
    with pytest.raises(ConfigError, match="needs num_decay_steps"):
        config_from_dict({**BASE, "lr_scheduler_type": "warmup_stable_decay", "lr_scheduler_kwargs": {
            "num_stable_steps": 3}})
    with pytest.raises(ConfigError, match="decay_type='exp' .* must be one of linear \\| cosine \\| 1-sqrt"):
        config_from_dict({**BASE, "lr_scheduler_type": "warmup_stable_decay", "lr_scheduler_kwargs": {
            "num_decay_steps": 3, "decay_type": "exp"}})
    with pytest.raises(ConfigError, match="lr_end=0.1 must be below learning_rate=0.01"):
        config_from_dict({**BASE, "learning_rate": 0.01, "lr_scheduler_type": "polynomial",
                          "lr_scheduler_kwargs": {"lr_end": 0.1}})
    with pytest.raises(ConfigError, match="not an option of lr_scheduler_type 'constant_with_warmup'"):
        config_from_dict({**BASE, "lr_scheduler_type": "constant_with_warmup", "lr_scheduler_kwargs": {"x": 1}})
    for kind, kwargs in (("cosine", {"num_cycles": 1.5}), ("cosine_with_restarts", {"num_cycles": 2}),
                         ("polynomial", {"lr_end": 1e-8, "power": 2.0}), ("inverse_sqrt", {"timescale": 5}),
                         ("warmup_stable_decay", {"num_decay_steps": 3, "min_lr_ratio": 0.1, "decay_type": "1-sqrt"})):
        assert config_from_dict({**BASE, "lr_scheduler_type": kind, "lr_scheduler_kwargs": kwargs}
                                ).lr_scheduler_kwargs == kwargs


def test_keys_without_effect_say_so_once(capsys):
    config_from_dict({**BASE, "use_logits_to_keep": True, "tf32": True,
                      "remove_unused_columns": False, "run_name": "x"})
    err = capsys.readouterr().err
    for key in ("use_logits_to_keep", "tf32", "remove_unused_columns", "run_name"):
        assert err.count(f"preflab: note: {key}:") == 1
    config_from_dict({**BASE, "include_tokens_per_second": True})
    assert capsys.readouterr().err.count("preflab: note: include_tokens_per_second: tokens_per_second is always") == 1
    config_from_dict({**BASE, "use_logits_to_keep": False, "tf32": None, "lr_scheduler_kwargs": {},
                      "use_dora": False, "use_rslora": False, "lora_modules_to_save": None, "eval_delay": 0,
                      "eval_on_start": False, "tools": None})  # TRL defaults: silent
    assert capsys.readouterr().err == ""


def test_dataset_num_proc_tokenizes_in_processes_with_the_same_result():
    from preflab.data.examples import PairExample
    from preflab.data.tokenize import tokenize_indexed, tokenize_parallel
    from preflab.errors import DataError
    from preflab.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    ex = [PairExample(row_id=i, prompt=f"echo: w{i}\n", chosen=f"W{i} " * (i % 5 + 1), rejected=f"w{i}") for i in
          range(20)]
    ex[13] = PairExample(row_id=13, prompt="echo: same\n", chosen="same", rejected="same")  # a bad row, chunk 2
    settings = dict(max_length=12, on_bad_row="skip", source="d.jsonl")
    one = tokenize_indexed("pairs", ex, tok, **settings)
    three = tokenize_parallel("pairs", ex, tok, 3, **settings)
    assert three[0] == one[0] and three[2] == one[2] and three[1].to_dict() == one[1].to_dict()
    assert sum(one[1].skipped.values()) == 1 and len(one[0]) == 19
    settings["on_bad_row"] = "error"
    with pytest.raises(DataError) as first:
        tokenize_indexed("pairs", ex, tok, **settings)
    with pytest.raises(DataError) as second:
        tokenize_parallel("pairs", ex, tok, 3, **settings)
    assert str(second.value) == str(first.value) and second.value.row_id == 13
    assert config_from_dict({**BASE, "dataset_num_proc": 4}).dataset_num_proc == 4


def test_max_completion_length_truncates_responses_and_counts():
    from preflab.data.examples import PairExample
    from preflab.data.tokenize import tokenize_pairs
    from preflab.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    ex = [PairExample(row_id=0, prompt="echo: a b c\n", chosen="A B C D E F G H", rejected="a b c d e f g h",
                      extras={}),
          PairExample(row_id=1, prompt="echo: x\n", chosen="X", rejected="x", extras={})]
    full, _ = tokenize_pairs(ex, tok)
    cut, report = tokenize_pairs(ex, tok, max_completion_length=4)
    assert cut[0].chosen_ids == full[0].chosen_ids[:4] and cut[0].rejected_ids == full[0].rejected_ids[:4]
    assert cut[1].chosen_ids == full[1].chosen_ids and report.response_truncated == 1


# ---------------------------------------------------------------- TRL's documented configs, unchanged
TRL_CONFIGS = {
    # TRL docs, DPO trainer "full training" (examples/scripts/dpo.py) as a config file
    "full": """
dataset_name: trl-lib/ultrafeedback_binarized
model_name_or_path: Qwen/Qwen2-0.5B-Instruct
learning_rate: 5.0e-7
num_train_epochs: 1
per_device_train_batch_size: 2
max_steps: 1000
gradient_accumulation_steps: 8
gradient_checkpointing: true
eval_strategy: steps
eval_steps: 50
output_dir: Qwen2-0.5B-DPO
remove_unused_columns: false
""",
    # the same with LoRA
    "lora": """
dataset_name: trl-lib/ultrafeedback_binarized
model_name_or_path: Qwen/Qwen2-0.5B-Instruct
learning_rate: 5.0e-6
num_train_epochs: 1
per_device_train_batch_size: 2
max_steps: 1000
gradient_accumulation_steps: 8
gradient_checkpointing: true
eval_strategy: steps
eval_steps: 50
output_dir: Qwen2-0.5B-DPO
remove_unused_columns: false
use_peft: true
lora_r: 32
lora_alpha: 16
""",
    # TRL 1.x DPO docs: MPO, a weighted combination of losses
    "mpo": """
model_name_or_path: Qwen/Qwen2-0.5B-Instruct
dataset_name: trl-lib/ultrafeedback_binarized
loss_type: [sigmoid, bco_pair, sft]
loss_weights: [0.8, 0.2, 1.0]
per_device_train_batch_size: 4
logging_steps: 1
report_to: none
""",
    # a TRL 0.2x-era config: RPO, cDPO smoothing, legacy lengths, and keys preflab does already
    "legacy": """
model_name_or_path: Qwen/Qwen2-0.5B-Instruct
ref_model: Qwen/Qwen2-0.5B-Instruct
dataset_name: trl-lib/ultrafeedback_binarized
beta: 0.1
rpo_alpha: 1.0
max_prompt_length: 512
max_completion_length: 512
max_length: 1024
torch_dtype: float32
padding_free: true
use_logits_to_keep: true
dataset_num_proc: 4
generate_during_eval: false
per_device_train_batch_size: 4
lr_scheduler_type: cosine
warmup_ratio: 0.1
optim: adamw_torch
save_strategy: "no"
logging_first_step: true
seed: 42
""",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TRL_CONFIGS))
def test_trl_example_config_trains_two_steps(name, tmp_path, monkeypatch):
    from preflab.loops.cli import run as train
    from preflab.quiet import kept_as_found

    monkeypatch.setenv("PREFLAB_CACHE_DIR", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    text = (TRL_CONFIGS[name].replace("Qwen/Qwen2-0.5B-Instruct", "builtin:tiny-llama")
            .replace("trl-lib/ultrafeedback_binarized", DATA))
    if "eval_strategy: steps" in text:  # TRL's script evaluates on the dataset's test split; the file has none
        held_out = tmp_path / "test.jsonl"
        held_out.write_text("".join(Path(DATA).read_text().splitlines(keepends=True)[-16:]))
        text += f"eval_dataset_name: {held_out}\n"
    path = tmp_path / "trl.yaml"
    path.write_text(text)
    out = tmp_path / "out"
    args = type("Args", (), {"config": str(path), "overrides": ["max_steps=2", f"output_dir={out}",
                                                                  "disable_tqdm=true", "use_cpu=true"]})
    with kept_as_found():  # as preflab.cli.main runs it: transformers' bars and logs are put back after the run
        assert train(args) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) == 2
    saved = load_config(out / "config.yaml").to_dict()  # the run's config: preflab names only, reloads unchanged
    given = load_config(path, ["max_steps=2", f"output_dir={out}", "disable_tqdm=true", "use_cpu=true"]).to_dict()
    assert saved.pop("max_length") == 512 and given.pop("max_length") == 1024  # capped at tiny-llama's positions
    assert saved == given
    if name == "legacy":
        assert saved["rpo_alpha"] == 1.0 and saved["layout"] == "prefix_packed"
        assert any("loss/sft" in r for r in rows)


def test_eval_strategy_epoch_evaluates_once_per_epoch(tmp_path, capsys):
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "loops"))
    from tiny_run import run

    _, trainer = run(tmp_path, eval_strategy="epoch", eval_fraction=0.1, max_steps=1)  # 32 pairs / batch 4
    assert trainer.cfg.eval_steps == 8
    assert "eval_strategy: epoch -> eval_steps: 8 (one epoch)" in capsys.readouterr().out


def test_torch_dtype_loads_policy_and_reference_weights_in_that_dtype():
    from preflab.models.load import load_models
    from preflab.models.tiny import tiny_tokenizer

    cfg = config_from_dict({**BASE, "torch_dtype": "bfloat16"})
    policy, ref = load_models(cfg, tiny_tokenizer())
    assert {p.dtype for p in policy.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in ref.parameters()} == {torch.bfloat16}
    policy, _ = load_models(config_from_dict(BASE), tiny_tokenizer())
    assert {p.dtype for p in policy.parameters()} == {torch.float32}


def test_generate_during_eval_writes_a_sample_table(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "loops"))
    from tiny_run import synthetic_pairs

    from preflab.generate import generate_text
    from preflab.loops.offline import Trainer
    from preflab.models.load import frozen_copy
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    torch.set_num_threads(1)
    cfg = config_from_dict({**BASE, "dataset_name": "synthetic", "output_dir": str(tmp_path), "learning_rate": 1e-2,
                            "per_device_train_batch_size": 4, "max_steps": 4, "eval_steps": 2, "logging_steps": 2,
                            "eval_fraction": 0.1, "generate_during_eval": True, "max_completion_length": 8,
                            "disable_tqdm": True, "use_cpu": True})
    tok = tiny_tokenizer()
    policy = tiny_causal_lm(tok, seed=0)
    trainer = Trainer(cfg, policy=policy, ref=frozen_copy(policy), tokenizer=tok, train_data=synthetic_pairs(),
                      eval_data=synthetic_pairs(6, seed=1))
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "eval_samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2] * 4 + [4] * 4
    prompts = [p.prompt_ids for p in synthetic_pairs(6, seed=1)[:4]]
    assert [r["policy"] for r in rows[4:]] == generate_text(trainer.policy, tok, prompts, max_new_tokens=8)
    assert [r["reference"] for r in rows[4:]] == generate_text(trainer.ref, tok, prompts, max_new_tokens=8)


def test_refused_trl_values_and_unknown_keys_come_in_one_message():
    with pytest.raises(ConfigError) as err:
        config_from_dict({**BASE, "deepspeed": "zero3.json", "wandb_project": "p", "learning_rat": 1e-5})
    lines = str(err.value).splitlines()
    assert lines[0].startswith("deepspeed is not supported: give DeepSpeed settings to `accelerate launch")
    assert "deepspeed_config: {deepspeed_config_file: PATH}" in lines[0]  # where TRL's json goes instead
    assert "unknown config key 'wandb_project'." in lines and any("'learning_rat'. Did you mean" in x for x in lines)


@pytest.mark.parametrize("value,scale", [(True, "group"), (False, "none"), ("batch", "batch")])
def test_grpo_scale_rewards_true_or_false_are_trls_group_and_none(value, scale):
    """GRPOConfig's scale_rewards takes a bool (true = "group", false = "none"); preflab answered `scale_rewards must
    be str, got False (bool)`."""
    cfg = config_from_dict({**BASE, "task": "online", "trainer": "grpo", "reward_funcs": "demo_true_reward",
                            "max_steps": 2, "scale_rewards": value})
    assert cfg.scale_rewards == scale


def test_sft_and_reward_without_a_learning_rate_take_trls_defaults(capsys):
    """task: sft / reward without learning_rate trained at the DPO default 1e-6 (TRL: SFTConfig 2e-5, RewardConfig
    1e-4; a reward model learned nothing at 1e-6), without a word."""
    assert config_from_dict({**BASE, "task": "sft"}).learning_rate == 2e-5
    assert config_from_dict({**BASE, "task": "reward"}).learning_rate == 1e-4
    err = capsys.readouterr().err
    assert "task: sft without learning_rate -> learning_rate: 2e-05 (TRL's SFTConfig default)" in err
    assert "task: reward without learning_rate -> learning_rate: 0.0001 (TRL's RewardConfig default)" in err
    assert config_from_dict({**BASE, "task": "reward", "learning_rate": 1e-6}).learning_rate == 1e-6
    assert config_from_dict(BASE).learning_rate == 1e-6  # DPOConfig's
    assert "learning_rate" not in capsys.readouterr().err


def test_report_to_none_in_a_list_means_no_tracker():
    """report_to: [none] (transformers' spelling, written by TrainingArguments.to_dict) passed validation and then
    crashed in accelerate: `ValueError: Unsupported logging capability: none`."""
    assert config_from_dict({**BASE, "report_to": ["none"]}).report_to == "none"
    assert config_from_dict({**BASE, "report_to": []}).report_to == []


def test_rpo_alpha_beside_an_sft_part_names_the_double_term():
    """rpo_alpha (TRL 0.x) beside TRL 1.x's 'sft' part asks for the same NLL term twice. Before: the error spoke of
    a loss_type ['sigmoid', 'sft', 'sft'] the user never wrote."""
    with pytest.raises(ConfigError, match=r"rpo_alpha=0.5 is TRL 0.x's NLL term, which TRL 1.x writes as 'sft' in the "
                                          r"loss_type list; loss_type \['sigmoid', 'sft'\] has it already"):
        config_from_dict({**BASE, "loss_type": ["sigmoid", "sft"], "rpo_alpha": 0.5})


def test_ld_alpha_with_kto_names_the_loss_types_that_read_it():
    """ld_alpha with a loss TRL does not weight: the unknown-key line names TRL's DPO loss types (before: 'a
    parameter of the objective(s) dpo', though ipo, apo_zero, ... read it too)."""
    with pytest.raises(ConfigError, match=r"unknown config key 'ld_alpha'. It is TRL's LD-DPO option, read with TRL's "
                                          r"DPO loss types \(sigmoid, hinge, ipo,"):
        config_from_dict({**BASE, "loss_type": "kto", "ld_alpha": 0.5})


def test_objective_parameters_given_as_number_text_are_read_as_trls_parser_reads_them():
    """`ld_alpha: "0.5"` in a YAML: TRL's parser gives the text to argparse with the field's type (float), as
    `beta: "0.2"` already was here; an objective parameter's text was refused ('must be None or a number')."""
    for loss, key in (("ipo", "ld_alpha"), ("sigmoid", "ld_alpha"), ("discopop", "discopop_tau"),
                      ("robust", "label_smoothing")):
        as_text = config_from_dict({**BASE, "loss_type": loss, key: "0.25"})
        assert as_text.objective_params[key] == 0.25 and type(as_text.objective_params[key]) is float
        assert as_text.objective() == config_from_dict({**BASE, "loss_type": loss, key: 0.25}).objective()
    with pytest.raises(ConfigError, match="discopop_tau must be float, got 'abc'"):
        config_from_dict({**BASE, "loss_type": "discopop", "discopop_tau": "abc"})


def test_trl_yaml_env_block_sets_the_environment(tmp_path, monkeypatch, capsys):
    """TRL's YAML `env:` block (TrlParser sets each variable before parsing): before, 'unknown config key env'."""
    monkeypatch.setenv("PREFLAB_TRL_ENV_PROBE", "old")  # restored after the test
    path = tmp_path / "dpo.yaml"
    path.write_text("model_name_or_path: builtin:tiny-llama\ndataset_name: x.jsonl\nbeta: 0.2\n"
                    "env:\n  PREFLAB_TRL_ENV_PROBE: 7\n")
    cfg = load_config(str(path))
    import os

    assert (os.environ["PREFLAB_TRL_ENV_PROBE"], cfg.beta) == ("7", 0.2)
    assert "env: set PREFLAB_TRL_ENV_PROBE in the environment before the run" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="env \\(TRL's YAML block of environment variables\\) must be a mapping"):
        config_from_dict({**BASE, "env": ["A=1"]})


def test_an_untouched_trl_dpoconfig_says_nothing_of_restore_callback_states_and_a_written_false_is_said(tmp_path,
                                                                                                      capsys):
    """transformers' default restore_callback_states_from_checkpoint is false, which preflab does not follow (it always
    restores): every default DPOConfig's to_dict() printed the note, though nobody chose the value. A saved config's
    value is silent; written by the user, false is said and true (what preflab does) is not."""
    trl = pytest.importorskip("trl")
    saved = trl.DPOConfig(output_dir=str(tmp_path / "trl"), use_cpu=True).to_dict()
    assert saved["restore_callback_states_from_checkpoint"] is False
    capsys.readouterr()
    config_from_dict({**saved, **BASE})
    assert "restore_callback_states_from_checkpoint" not in capsys.readouterr().err
    config_from_dict({**BASE, "restore_callback_states_from_checkpoint": False})
    assert ("restore_callback_states_from_checkpoint: preflab always restores the state of the callbacks"
            in capsys.readouterr().err)
    config_from_dict({**BASE, "restore_callback_states_from_checkpoint": True})
    assert "restore_callback_states_from_checkpoint" not in capsys.readouterr().err


@pytest.mark.parametrize("optim", ["adamw_torch_4bit", "adamw_torch_8bit", "galore_adamw_8bit", "paged_adamw",
                                   "adamw_bnb"])
def test_8bit_and_paged_optimizers_are_refused_naming_what_saves_that_memory(optim):
    """bitsandbytes' 8-bit / paged optimizers are built (tests/loops/test_optim_bnb.py); torchao's 8-bit / 4-bit
    AdamW, GaLore's 8-bit one and a misspelt paged / bnb name are refused naming bitsandbytes' names and the other
    ways to cut optimizer memory."""
    with pytest.raises(ConfigError) as err:
        config_from_dict({**BASE, "optim": optim})
    said = str(err.value)
    assert f"optim={optim!r} is not supported" in said and said.count("not supported") == 1
    for alternative in ("adamw_8bit", "paged_adamw_8bit", 'pip install "preflab[bnb]"', "use_peft: true",
                        "load_in_4bit: true", "examples/accelerate/zero2.yaml", "offload_optimizer_device: cpu",
                        "adamw_torch_fused"):
        assert alternative in said


@pytest.mark.parametrize("loss_type", [["sigmoid", "ipo"], "ipo", ["apo_zero", "sft"]])
@pytest.mark.parametrize("ld_alpha", [1.5, -0.25])
def test_ld_alpha_outside_zero_one_is_refused_for_every_trl_loss_type(loss_type, ld_alpha):
    """ld_alpha weights the tokens past the pair's shared length: TRL's range is [0, 1]. A lone sigmoid (DPO) checks
    it itself; a list or another loss type is checked by the LD wrapper (preflab.objectives._ld)."""
    with pytest.raises(ConfigError, match=rf"ld_alpha must be a number in \[0, 1\], got {ld_alpha}"):
        config_from_dict({**BASE, "loss_type": loss_type, "ld_alpha": ld_alpha}).objective()


@pytest.mark.parametrize("over,said", [({}, True), ({"label_smoothing": 0.0}, True), ({"label_smoothing": 0.1}, False),
                                       ({"loss_type": ["robust"]}, True), ({"loss_type": "sigmoid"}, False),
                                       ({"objective_params": {"label_smoothing": 0.1}}, False)])
def test_robust_without_label_smoothing_says_it_trains_exactly_dpo(capsys, over, said):
    """rDPO at eps = 0 is DPO's loss exactly (asserted below on a batch): a note at config check says so, not a
    refusal (TRL trains it silently); with a flip rate, or another loss_type, no note."""
    from preflab.config_trl import ROBUST_WITHOUT_EPS

    cfg = config_from_dict({**BASE, "loss_type": "robust", **over})
    err = capsys.readouterr().err
    assert (f"preflab: note: {ROBUST_WITHOUT_EPS}" in err) is said
    assert ROBUST_WITHOUT_EPS.startswith("loss_type robust without label_smoothing (its label flip rate eps, "
                                         "default 0) trains exactly DPO (sigmoid)")
    if said:
        batch = _batch()
        dpo = config_from_dict(BASE).objective()
        assert torch.allclose(cfg.objective()(batch).losses, dpo(batch).losses, atol=1e-7)
