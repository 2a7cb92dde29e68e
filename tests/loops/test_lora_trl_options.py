"""TRL ModelConfig's use_rslora, use_dora and lora_modules_to_save (refused before) reach preflab's LoRA: the
adapter scale is lora_alpha / sqrt(lora_r) (rsLoRA, Kalajdzievski 2023), DoRA's magnitude vectors start at the
weight's row norms and train (Liu et al. 2024), modules_to_save are whole trainable copies while the reference
(adapters off) keeps the original module; the saved adapters and a checkpoint load back to the same logits, and a
resumed run ends on the uninterrupted run's weights."""
import json
import math

import pytest
import torch

from preflab.errors import ConfigError

WORDS = ["cat", "dog", "owl", "bee", "ant", "oak", "jam", "log"]
LORA = {"use_peft": True, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "use_rslora": True, "use_dora": True,
        "lora_modules_to_save": ["lm_head"]}


def _config(tmp_path, name: str, **over):
    from preflab.config import config_from_dict

    rows = [{"prompt": f"echo: {WORDS[i % 8]} {WORDS[(i * 3) % 8]}\n", "chosen": WORDS[i % 8].upper(),
             "rejected": WORDS[(i * 5) % 8]} for i in range(8)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": str(tmp_path / "train.jsonl"),
                             "output_dir": str(tmp_path / name), "max_steps": 4, "per_device_train_batch_size": 4,
                             "max_length": 64, "learning_rate": 0.02, "logging_steps": 1, "disable_tqdm": True,
                             "save_steps": 2, **LORA, **over})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 4-step LoRA run with all three options (checkpoints at 2 and 4), and the run resumed from checkpoint-2."""
    from preflab.loops.offline import Trainer

    tmp = tmp_path_factory.mktemp("lora_trl")
    full = Trainer(_config(tmp, "full"))
    full_summary = full.train()
    resumed = Trainer(_config(tmp, "resumed", resume_from_checkpoint=str(tmp / "full/checkpoint-2")))
    resumed_summary = resumed.train()
    return tmp, full, full_summary, resumed, resumed_summary


def _probe(tokenizer):
    return torch.tensor([tokenizer.encode("echo: cat dog\nCAT")])


def _base(run):
    """The run's starting model (builtin:tiny-llama built with the run's seed, as the run built it)."""
    from preflab.eval.loading import load_for_eval

    return load_for_eval("builtin:tiny-llama", run.tokenizer, seed=run.cfg.seed)[0]


def _lora_layer(policy):
    return policy.get_base_model().model.layers[0].self_attn.q_proj


def test_rslora_scale_is_alpha_over_sqrt_r_and_the_adapter_adds_that_times_BAx(runs):
    _, full, *_ = runs
    layer = _lora_layer(full.policy)
    assert layer.scaling["default"] == pytest.approx(8 / math.sqrt(4))  # 4.0; plain LoRA: 8 / 4 = 2.0
    from preflab.models.load import add_lora
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    plain = add_lora(tiny_causal_lm(tiny_tokenizer(), seed=0), 4, 8, 0.0, "all-linear")
    assert _lora_layer(plain).scaling["default"] == pytest.approx(2.0)


def test_dora_magnitudes_start_at_the_row_norms_and_train(runs):
    _, full, *_ = runs
    from preflab.models.load import add_lora

    fresh = add_lora(_base(full), 4, 8, 0.0, "all-linear", use_dora=True)
    layer = _lora_layer(fresh)
    start = layer.lora_magnitude_vector["default"].weight
    assert torch.allclose(start, layer.base_layer.weight.norm(dim=1), atol=1e-6)  # DoRA: m0 = ||W|| per row
    trained = _lora_layer(full.policy).lora_magnitude_vector["default"].weight
    assert trained.requires_grad and (trained - start).abs().max() > 1e-4  # it trains


def test_modules_to_save_train_a_whole_copy_and_the_reference_keeps_the_original(runs):
    _, full, *_ = runs
    base = _base(full)
    wrapper = full.policy.get_base_model().lm_head
    original, copy = wrapper.original_module.weight, wrapper.modules_to_save["default"].weight
    assert copy.requires_grad and not original.requires_grad and copy.shape == original.shape
    assert torch.equal(original, base.lm_head.weight) and (copy - original).abs().max() > 1e-4
    ids = _probe(full.tokenizer)
    with torch.no_grad(), full.policy.disable_adapter():  # the LoRA reference: the base model, lm_head included
        reference = full.policy(input_ids=ids).logits
    assert torch.allclose(reference, base(input_ids=ids).logits, atol=1e-6)


def test_saved_adapters_and_checkpoint_load_to_the_trained_logits(runs):
    tmp, full, *_ = runs
    from preflab.eval.loading import load_for_eval

    adapter_cfg = json.loads((tmp / "full/adapter_config.json").read_text())
    assert (adapter_cfg["use_rslora"], adapter_cfg["use_dora"]) == (True, True)
    assert adapter_cfg["modules_to_save"] == ["lm_head"]
    ids = _probe(full.tokenizer)
    with torch.no_grad():
        trained = full.policy.eval()(input_ids=ids).logits
        for where in ("full", "full/checkpoint-4"):
            model, _ = load_for_eval(str(tmp / where))
            assert torch.allclose(model(input_ids=ids).logits, trained, atol=1e-5), where


def test_resume_ends_on_the_uninterrupted_runs_weights(runs):
    _, full, full_summary, resumed, resumed_summary = runs
    assert resumed_summary["resumed_from_step"] == 2
    assert resumed_summary["final_metrics"]["loss"] == full_summary["final_metrics"]["loss"]
    ours = {k: v for k, v in resumed.policy.named_parameters() if v.requires_grad}
    theirs = {k: v for k, v in full.policy.named_parameters() if v.requires_grad}
    assert ours.keys() == theirs.keys() and any("magnitude" in k for k in ours) and any("modules_to_save" in k
                                                                                      for k in ours)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_refused_combinations_and_names_that_match_nothing(tmp_path):
    with pytest.raises(ConfigError, match="use_dora, lora_modules_to_save with load_in_4bit \\(QLoRA\\)"):
        _config(tmp_path, "q", load_in_4bit=True, model_name_or_path="org/model")
    _config(tmp_path, "q2", load_in_4bit=True, model_name_or_path="org/model", use_dora=False,
            lora_modules_to_save=None)  # rsLoRA alone: fine
    with pytest.raises(ConfigError, match="use_rslora, use_dora, lora_modules_to_save only apply to use_peft"):
        _config(tmp_path, "n", use_peft=False, lora_r=16, lora_alpha=32, lora_dropout=0.05)
    from preflab.models.load import add_lora
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    with pytest.raises(ConfigError, match="lora_modules_to_save \\['score'\\] match no module"):
        add_lora(tiny_causal_lm(tiny_tokenizer(), seed=0), 4, 8, 0.0, "all-linear", modules_to_save=["score"])


def test_a_lora_reward_model_takes_the_three_options_beside_its_whole_score_head():
    """task: reward's LoRA (SEQ_CLS, the score head trained whole): rsLoRA's scale, DoRA's magnitudes and an extra
    module_to_save (embed_tokens) trained whole beside the score head."""
    from preflab.config import config_from_dict
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.reward_run import reward_model_for_run

    cfg = config_from_dict({"task": "reward", "model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl",
                            **LORA, "lora_modules_to_save": ["embed_tokens"]})
    model = reward_model_for_run(cfg, 1, tiny_tokenizer())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert _lora_layer(model).scaling["default"] == pytest.approx(8 / math.sqrt(4))
    assert any("lora_magnitude_vector" in n for n in trainable)
    assert any("embed_tokens.modules_to_save" in n for n in trainable) and any("score.modules_to_save" in n
                                                                              for n in trainable)


def test_a_vlm_policy_takes_the_options_on_its_language_model():
    """task: vlm's adapters (add_vlm_lora: the language model's layers, the tower frozen) get rsLoRA's scale and
    DoRA's magnitudes, and lm_head trains whole."""
    from preflab.config import config_from_dict
    from preflab.models.tiny_vlm import tiny_vlm, tiny_vlm_processor
    from preflab.models.vlm_parts import add_vlm_lora

    cfg = config_from_dict({"task": "vlm", "model_name_or_path": "builtin:tiny-llava", "dataset_name": "x.jsonl",
                            **LORA})
    policy = add_vlm_lora(tiny_vlm(tiny_vlm_processor("llava"), arch="llava"), cfg)
    layers = [m for n, m in policy.named_modules() if hasattr(m, "lora_magnitude_vector") and "default" in m.scaling]
    assert layers and all(m.scaling["default"] == pytest.approx(8 / math.sqrt(4)) for m in layers)
    assert all("vision" not in n for n, m in policy.named_modules() if hasattr(m, "lora_A") and m.lora_A)
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert any("lm_head.modules_to_save" in n for n in trainable)
