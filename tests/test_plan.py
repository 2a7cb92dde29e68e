"""`preflab plan`: the memory arithmetic on a config whose parameter count is computed by hand."""
import json
from pathlib import Path

import pytest

from preflab.config import config_from_dict
from preflab.plan import Sharding, count_parameters, memory_plan, model_config_of, sharding_from_accelerate

ROOT = Path(__file__).resolve().parents[1]
H, I, L, V = 64, 128, 2, 100
# embedding + per layer (q, k, v, o: 4 h^2; gate, up, down: 3 h i; two RMSNorms: 2 h) + final norm + LM head
P = V * H + L * (4 * H * H + 3 * H * I + 2 * H) + H + V * H
# LoRA r=8 on every Linear but the head: r * (in + out) for q, k, v, o (h -> h), gate, up (h -> i), down (i -> h)
LORA = L * 8 * (4 * (H + H) + 2 * (H + I) + (I + H))


@pytest.fixture()
def model_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H, "intermediate_size": I,
        "num_hidden_layers": L, "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": V,
        "tie_word_embeddings": False}))
    return str(tmp_path)


def _cfg(model_dir, **kw):
    return config_from_dict({"model_name_or_path": model_dir, "dataset_name": "x.jsonl", "max_length": 16,
                             "per_device_train_batch_size": 2, **kw})


def test_parameter_counts_match_the_hand_count_and_peft(model_dir):
    from transformers import AutoModelForCausalLM

    from preflab.models.load import add_lora

    assert count_parameters(model_config_of(model_dir)) == (P, P)
    assert count_parameters(model_config_of(model_dir), lora_r=8) == (P, LORA)
    model = add_lora(AutoModelForCausalLM.from_config(model_config_of(model_dir)), 8, 16, 0.0, "all-linear")
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == LORA  # the formula is peft's count


def test_zero3_divides_every_state_and_ddp_none(model_dir):
    cfg = _cfg(model_dir, load_dtype="bfloat16", bf16=True)
    z3 = memory_plan(cfg, model_config_of(model_dir), Sharding("zero3", 4))
    # the reference is a full frozen copy on every rank (not sharded by preflab)
    assert (z3["weights"], z3["reference"], z3["gradients"], z3["optimizer"]) == (P * 2 / 4, P * 2, P * 2 / 4, P)
    ddp = memory_plan(cfg, model_config_of(model_dir), Sharding("ddp", 4))
    assert (ddp["weights"], ddp["gradients"], ddp["optimizer"]) == (P * 2, P * 2, P * 4)
    z2 = memory_plan(cfg, model_config_of(model_dir), Sharding("zero2", 4))
    assert (z2["weights"], z2["gradients"], z2["optimizer"]) == (P * 2, P * 2 / 4, P * 4 / 4)
    tokens = 16 * 2 * 2  # max_length x batch x (chosen, rejected)
    assert z3["activations"] == L * tokens * H * 34  # 34 s b h bytes per layer at 2 bytes per value
    ckpt = memory_plan(_cfg(model_dir, load_dtype="bfloat16", bf16=True, gradient_checkpointing=True),
                       model_config_of(model_dir), Sharding("zero3", 4))
    assert ckpt["activations"] == L * tokens * H * 2 + tokens * H * 34
    assert z3["total"] == sum(z3[k] for k in ("weights", "reference", "gradients", "optimizer", "activations"))


def test_lora_sft_and_precompute_drop_the_reference_and_shrink_the_optimizer(model_dir):
    lora = memory_plan(_cfg(model_dir, use_peft=True, lora_r=8), model_config_of(model_dir), Sharding())
    assert lora["reference"] == 0 and lora["weights"] == P * 4 and lora["optimizer"] == LORA * 2 * 4
    sft = memory_plan(_cfg(model_dir, task="sft"), model_config_of(model_dir), Sharding())
    assert sft["reference"] == 0 and sft["activations"] == L * 16 * 2 * H * 34 * 4 / 2  # fp32 compute, 1 sequence
    pre = memory_plan(_cfg(model_dir, precompute_ref_log_probs=True), model_config_of(model_dir), Sharding())
    assert pre["reference"] == 0


def test_the_optimizer_term_counts_the_state_the_optim_keeps(model_dir):
    """Hand counts on the model above (float32, 4 bytes; Adafactor's state is float32 for bfloat16 weights too): SGD without momentum keeps nothing, with it one buffer per
    value; RMSprop centered with momentum three; Adafactor per matrix [rows, cols] rows + cols means (embedding and
    head [V, H], q/k/v/o [H, H], gate/up [I, H], down [H, I]) and the norm vectors whole; with LoRA its A [r, in] and
    B [out, r]."""
    def plan(**kw):
        return memory_plan(_cfg(model_dir, **kw), model_config_of(model_dir), Sharding())["optimizer"]

    assert plan(optim="sgd") == 0 and plan(optim="sgd", optim_args="momentum=0.9") == P * 4
    assert plan(optim="adagrad") == P * 4 and plan(optim="adamw_torch") == P * 2 * 4
    assert plan(optim="rmsprop", optim_args="momentum=0.5,centered=true") == P * 3 * 4
    matrices = 2 * (V + H) + L * (4 * (H + H) + 2 * (I + H) + (H + I))
    assert plan(optim="adafactor") == (matrices + L * 2 * H + H) * 4
    assert plan(optim="adafactor", load_dtype="bfloat16", bf16=True) == (matrices + L * 2 * H + H) * 4  # float32
    assert plan(optim="sgd", optim_args="momentum=0.9", load_dtype="bfloat16", bf16=True) == P * 2
    assert plan(optim="adafactor", use_peft=True, lora_r=8) == L * (4 * 2 * (8 + H) + 2 * (8 + H + I + 8) +
                                                                    (8 + I + H + 8)) * 4


def test_sharding_is_read_from_the_shipped_accelerate_configs():
    read = lambda n, **kw: sharding_from_accelerate(str(ROOT / f"examples/accelerate/{n}.yaml"), **kw)  # noqa: E731
    assert (read("zero3").engine, read("zero3").world) == ("zero3", 8)
    assert read("zero2").engine == "zero2" and read("fsdp2").engine == "fsdp" and read("ddp").engine == "ddp"
    assert read("fsdp2", world=16).world == 16


def test_plan_command_prints_every_term(model_dir, capsys):
    from preflab.cli import main

    assert main(["plan", f"model_name_or_path={model_dir}", "dataset_name=x.jsonl", "--sharding", "zero3",
                 "--world-size", "2"]) == 0
    out = capsys.readouterr().out
    for term in ("weights", "reference", "gradients", "optimizer", "activations", "total"):
        assert term in out
    assert "zero3 over 2 rank(s)" in out


def test_overrides_after_the_options_are_read_in_order(capsys):
    """README walk: `preflab plan CONFIG ... --sharding zero3 --world-size 8 use_peft=true` (the README's "and
    use_peft=true for LoRA") stopped with `unrecognized arguments: use_peft=true`; overrides may follow the options."""
    from preflab.cli import main

    llama7b = Path(__file__).resolve().parents[1] / "examples" / "model_configs" / "llama-2-7b"
    head = ["plan", f"model_name_or_path={llama7b}", "dataset_name=x.jsonl"]
    assert main(head + ["use_peft=true", "lora_r=4", "--sharding", "zero3", "--world-size", "2"]) == 0
    contiguous = capsys.readouterr().out
    assert main(head + ["use_peft=false", "--sharding", "zero3", "use_peft=true", "--world-size", "2", "lora_r=4"]) == 0
    assert capsys.readouterr().out == ("preflab: note: overrides 'use_peft=false' and 'use_peft=true' set use_peft "
                                       "twice; the last one wins.\n" + contiguous)  # the later one wins, said
    assert main(head + ["--sharding", "zero3", "--world-size", "2"]) == 0
    assert capsys.readouterr().out != contiguous  # use_peft changes the plan, so the equality above means something
    with pytest.raises(SystemExit):
        main(head + ["--sharding", "zero3", "--no-such-flag"])


def test_plan_uses_the_max_length_training_will_use(tmp_path, capsys):
    """max_length above the model's positions is capped at them by `preflab train` (with a note); the plan counted
    activations for the uncapped length (1024 tokens for a 256-position model: 4x the activations)."""
    from preflab.cli import main

    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H, "intermediate_size": I,
        "num_hidden_layers": L, "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": V,
        "tie_word_embeddings": False, "max_position_embeddings": 256}))
    head = ["plan", f"model_name_or_path={tmp_path}", "dataset_name=x.jsonl"]
    assert main(head + ["max_length=1024"]) == 0
    capped = capsys.readouterr()
    assert "max_length=1024 is above the 256 positions" in capped.out + capped.err
    assert main(head + ["max_length=256"]) == 0
    assert capsys.readouterr().out.split("per rank")[1] == capped.out.split("per rank")[1]
    assert main(head + ["max_length=128"]) == 0
    assert capsys.readouterr().out.split("per rank")[1] != capped.out.split("per rank")[1]


def test_unpaired_activations_count_the_sequences_each_loss_scores(model_dir):
    """KTO scores a completion and a mismatched completion per example, apo_zero_unpaired the completion only."""
    kto = memory_plan(_cfg(model_dir, loss_type="kto"), model_config_of(model_dir), Sharding())
    apo = memory_plan(_cfg(model_dir, loss_type="apo_zero_unpaired"), model_config_of(model_dir), Sharding())
    assert kto["activations"] == L * 16 * 2 * 2 * H * 34 * 4 / 2  # fp32 compute, 2 sequences per example
    assert apo["activations"] == kto["activations"] / 2


@pytest.mark.parametrize("task", ["online", "otc"])
def test_online_runs_and_recipes_are_refused_not_planned_as_an_offline_batch(model_dir, tmp_path, task, capsys):
    """user-trial-4: `preflab plan` of a GRPO run (8 prompts x 4 completions of 32 + 8 tokens) printed the
    activations of 8 x 2 sequences of max_length 1024 (136 GiB on a 7B config), and of a recipe 'model_name_or_path
    is empty'."""
    from preflab.cli import main

    keys = ({"task": "online", "online_task": "dataset", "trainer": "grpo", "model_name_or_path": model_dir,
             "dataset_name": "p.jsonl", "reward_funcs": "demo_echo_reward", "num_generations": 4,
             "max_completion_length": 8, "max_steps": 2} if task == "online" else {"task": "otc"})
    config = tmp_path / "c.yaml"
    config.write_text("".join(f"{k}: {v}\n" for k, v in keys.items()))
    assert main(["plan", str(config)]) == 2
    out = capsys.readouterr()
    assert "per rank" not in out.out
    if task == "online":
        assert ("scores per micro-batch per_device_train_batch_size=8 prompt groups of num_generations=4 completions "
                "(32 sequences), each an uncut prompt (max_prompt_length: null) + at most max_completion_length=8 new "
                "tokens") in out.err
    else:
        assert "task: otc is a recipe that builds its own models" in out.err


def test_a_plan_under_one_gib_is_printed_in_mib(capsys):
    """user-trial-9: `preflab plan examples/quickstart.yaml` printed 0.00 GiB on every line. builtin:tiny-llama has
    P = 37,792 float32 parameters: weights, reference and gradients P * 4 B = 0.144 MiB each, AdamW's two moments
    0.288 MiB; a 7B plan keeps GiB."""
    from preflab.cli import main

    assert main(["plan", str(ROOT / "examples" / "quickstart.yaml")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "37,792 parameters" in lines[0]
    assert lines[2:6] == ["  weights         0.14 MiB", "  reference       0.14 MiB", "  gradients       0.14 MiB",
                          "  optimizer       0.29 MiB"]
    assert lines[7].startswith("  total") and lines[7].endswith(" MiB")
    assert main(["plan", str(ROOT / "examples" / "dpo.yaml"),
                 f"model_name_or_path={ROOT / 'examples' / 'model_configs' / 'llama-2-7b'}"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith(" GiB")
