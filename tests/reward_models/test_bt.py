"""Bradley-Terry reward model: loss values by hand, recovery of planted rewards, `preflab train task=reward`
end to end with a reload by plain transformers."""
import json
import math

import pytest
import torch

from preflab.reward_models.bt import BTHead, bt_losses
from reward_synthetic import marker_rows


def test_loss_values_by_hand():
    r_w, r_l = torch.tensor([1.2]), torch.tensor([0.4])
    assert bt_losses(r_w, r_l).item() == pytest.approx(0.371101, abs=1e-6)            # softplus(-0.8)
    assert bt_losses(r_w, r_l, torch.tensor([0.5])).item() == pytest.approx(0.554355, abs=1e-6)  # softplus(-0.3)
    assert bt_losses(r_w, r_l, tau=0.5).item() == pytest.approx(math.log1p(math.exp(-1.6)), abs=1e-7)
    centered = bt_losses(r_w, r_l, center_rewards_coefficient=0.01).item()
    assert centered == pytest.approx(0.371101 + 0.01 * 1.6 ** 2, abs=1e-6)


def test_metrics_follow_trl_reward_trainer():
    out = BTHead().loss(torch.tensor([[1.0], [0.5], [2.0]]), torch.tensor([[0.0], [0.5], [3.0]]), {})
    assert out.metrics["accuracy"].item() == pytest.approx(1 / 3)  # the tie counts as wrong
    assert out.metrics["margin"].item() == pytest.approx((1.0 + 0.0 - 1.0) / 3)
    assert out.metrics["min_reward"].item() == 0.0 and out.metrics["max_reward"].item() == 3.0
    assert out.metrics["mean_reward"].item() == pytest.approx(7.0 / 6)


def test_shift_invariance_without_centering_only():
    r_w, r_l = torch.randn(5, generator=torch.Generator().manual_seed(0)), torch.randn(5)
    torch.testing.assert_close(bt_losses(r_w + 3.0, r_l + 3.0), bt_losses(r_w, r_l), rtol=0, atol=1e-6)
    assert not torch.allclose(bt_losses(r_w + 3.0, r_l + 3.0, center_rewards_coefficient=0.1),
                              bt_losses(r_w, r_l, center_rewards_coefficient=0.1))


def _fit(loss_of, params, steps=50):
    opt = torch.optim.LBFGS(params, lr=1, max_iter=steps, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_of()
        loss.backward()
        return loss

    opt.step(closure)


def test_soft_label_fit_recovers_rewards_up_to_a_constant():
    """B4 rewards (0, 1, 2, 3), all 6 pairs with soft labels sigma(r_i - r_j): centred estimate (-1.5 .. 1.5)."""
    true = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    i, j = torch.triu_indices(4, 4, 1)
    p = torch.sigmoid(true[i] - true[j])
    r = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    _fit(lambda: (p * bt_losses(r[i], r[j]) + (1 - p) * bt_losses(r[j], r[i])).sum(), [r])
    torch.testing.assert_close(r.detach() - r.detach().mean(), torch.tensor([-1.5, -0.5, 0.5, 1.5],
                                                                            dtype=torch.float64), atol=1e-6, rtol=0)


def test_hard_label_fit_recovers_rewards_within_sampling_error():
    """models-and-loops.md B0.1: 2000 hard labels per pair drawn from BT on the B4 rewards (0, 1, 2, 3); the fitted
    centred rewards are within 0.1 of (-1.5, -0.5, 0.5, 1.5) (the spec's Adam run: (-1.533, -0.530, 0.567, 1.496))."""
    true = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    i, j = torch.triu_indices(4, 4, 1)
    g = torch.Generator().manual_seed(0)
    wins = torch.bernoulli(torch.sigmoid(true[i] - true[j]).unsqueeze(-1).expand(-1, 2000), generator=g)
    k = wins.mean(-1)  # share of the 2000 labels where i beat j
    r = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    _fit(lambda: (k * bt_losses(r[i], r[j]) + (1 - k) * bt_losses(r[j], r[i])).sum(), [r])
    centred = r.detach() - r.detach().mean()
    assert (centred - (true - true.mean())).abs().max().item() < 0.1
    assert (centred[1:] > centred[:-1]).all()  # the planted order


@pytest.mark.parametrize("m, expected", [(0.0, math.log(4.0)), (1.0, 2.1540)])
def test_margin_moves_the_optimum(m, expected):
    """Soft label 0.8 in both orientations with margin m: the optimum d solves p s(m - d) = (1 - p) s(d + m)."""
    d = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    zero, margin = torch.zeros(1, dtype=torch.float64), torch.full((1,), m, dtype=torch.float64)
    _fit(lambda: (0.8 * bt_losses(d, zero, margin) + 0.2 * bt_losses(zero, d, margin)).sum(), [d])
    assert d.item() == pytest.approx(expected, abs=1e-4)


def test_last_token_head_equals_sequence_classification_head(tmp_path):
    """The fallback head (for architectures without a classification class) reads the same position and gives
    the same rewards as LlamaForSequenceClassification with the same weights, also after save/load."""
    from preflab.data.layout import padded
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.reward_models.heads import build_reward_model, reward_model_from_config, sequence_outputs

    tok = tiny_tokenizer()
    config = tiny_causal_lm(tok).config
    seq_cls = reward_model_from_config(config, 1, tok.pad_token_id, seed=0)
    fallback = reward_model_from_config(config, 1, tok.pad_token_id, seed=0, last_token_head=True)
    missing = fallback.backbone.load_state_dict({k.removeprefix("model."): v for k, v in seq_cls.state_dict().items()
                                                 if k.startswith("model.")})
    assert not missing.missing_keys
    fallback.score.weight.data.copy_(seq_cls.score.weight.data)
    batch = padded([([1, 40, 41], [50, 2]), ([1, 40], [60, 61, 62, 2]), ([1], [70, 2])], tok.pad_token_id)
    expected = sequence_outputs(seq_cls.eval(), batch.input_ids, batch.attention_mask)
    got = sequence_outputs(fallback.eval(), batch.input_ids, batch.attention_mask)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    fallback.save_pretrained(tmp_path)
    reloaded = build_reward_model(str(tmp_path), 1, tok).eval()
    torch.testing.assert_close(sequence_outputs(reloaded, batch.input_ids, batch.attention_mask), expected,
                               atol=1e-6, rtol=0)


def test_preflab_train_reward_learns_marker_and_reloads_in_transformers(tmp_path):
    """`preflab train task=reward` on pairs whose chosen side contains "good": held-out accuracy -> 1 (untrained:
    about chance); metrics.jsonl carries TRL's reward metrics; AutoModelForSequenceClassification reloads the
    output directory and gives the same rewards."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from preflab.cli import main
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.eval import evaluate_reward_model
    from preflab.reward_models.heads import build_reward_model
    from preflab.reward_models.interface import RewardModel

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in marker_rows(160, seed=0)))
    held_out = marker_rows(64, seed=1)
    out = tmp_path / "rm"
    rc = main(["train", "task=reward", "model_name_or_path=builtin:tiny-llama", f"dataset_name={data}",
               f"output_dir={out}", "learning_rate=3e-3", "per_device_train_batch_size=16", "max_steps=40",
               "logging_steps=10", "lr_scheduler_type=constant", "max_length=64", "disable_tqdm=true",
               "use_cpu=true", "center_rewards_coefficient=0.01"])
    assert rc == 0
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss", "accuracy", "margin", "min_reward", "mean_reward", "max_reward", "num_tokens"):
        assert key in logged[-1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_metrics"]["accuracy"] == 1.0 and summary["reward_model"]["head"] == "bt"
    assert list(out.glob("*.safetensors")) and not list(out.glob("*.bin"))

    untrained = build_reward_model("builtin:tiny-llama", 1, tiny_tokenizer(), seed=42)
    before = evaluate_reward_model(untrained, held_out, tokenizer=tiny_tokenizer())
    after = evaluate_reward_model(str(out), held_out)
    assert before["accuracy"] < 0.8
    assert after["accuracy"] >= 0.95 and after["num_pairs"] == 64
    assert set(after["per_subset"]) == {"s1", "s2"}
    assert all(v["accuracy"] >= 0.9 and v["num_pairs"] == 32 for v in after["per_subset"].values())

    judge = RewardModel.from_pretrained(str(out))
    prompts = [r["prompt"] for r in held_out[:8]]
    responses = [r["chosen"] for r in held_out[:8]]
    ours = judge.score(prompts, responses)
    hf = AutoModelForSequenceClassification.from_pretrained(out).eval()
    hf_tok = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        for prompt, response, reward in zip(prompts, responses, ours):
            ids = [hf_tok.bos_token_id] + hf_tok.encode(prompt + response, add_special_tokens=False) + \
                  [hf_tok.eos_token_id]
            assert hf(input_ids=torch.tensor([ids])).logits[0, 0].item() == pytest.approx(reward.item(), abs=1e-5)


def _small_run(tmp_path, name, model=None, **overrides):
    from preflab.config import config_from_dict
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.heads import build_reward_model
    from preflab.reward_models.train import train_reward

    data = tmp_path / "small.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in marker_rows(32, seed=0)))
    tok = tiny_tokenizer()
    model = model or build_reward_model("builtin:tiny-llama", 1, tok, seed=0)
    params = dict(task="reward", model_name_or_path="builtin:tiny-llama", dataset_name=str(data),
                  output_dir=str(tmp_path / name), learning_rate=1e-2, per_device_train_batch_size=8, max_steps=6,
                  logging_steps=1, max_length=64, disable_tqdm=True, use_cpu=True)
    summary = train_reward(config_from_dict({**params, **overrides}), model=model, tokenizer=tok)
    return model, tok, summary


def test_lora_adapters_are_merged_into_a_plain_transformers_model(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from preflab.reward_models.interface import RewardModel

    model, tok, _ = _small_run(tmp_path, "lora", use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                               max_steps=4)
    assert not list((tmp_path / "lora").glob("adapter_*"))
    prompts, responses = ["the cat"] * 3, [" good dog", " sat", " the park"]
    trained = RewardModel(model, tok).score(prompts, responses)  # the in-memory model, adapters active
    reloaded = RewardModel(AutoModelForSequenceClassification.from_pretrained(tmp_path / "lora"), tok)
    torch.testing.assert_close(reloaded.score(prompts, responses), trained, atol=1e-5, rtol=0)


def test_a_merged_lora_reward_model_is_saved_with_the_input_dropout_config(tmp_path):
    """disable_dropout zeroes attention_dropout for training; the saved (deep-copied, merged) model's config.json
    keeps the input's 0.5, so training it further elsewhere has the dropout it had."""
    from transformers import AutoConfig

    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.heads import build_reward_model

    model = build_reward_model("builtin:tiny-llama", 1, tiny_tokenizer(), seed=0)
    model.config.attention_dropout = 0.5
    model, _, _ = _small_run(tmp_path, "lora", model=model, use_peft=True, lora_r=4, lora_alpha=8,
                             lora_dropout=0.0, max_steps=1)
    assert model.config.attention_dropout == 0.0  # off while it trained
    assert AutoConfig.from_pretrained(tmp_path / "lora").attention_dropout == 0.5


def test_resume_from_a_checkpoint_gives_the_uninterrupted_weights(tmp_path):
    from safetensors.torch import load_file

    _small_run(tmp_path, "full", save_steps=3)
    _small_run(tmp_path, "full", resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"),
               output_dir=str(tmp_path / "resumed"))
    full, resumed = load_file(str(tmp_path / "full" / "model.safetensors")), \
        load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert full.keys() == resumed.keys()
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], atol=1e-6, rtol=0)
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4, 5, 6]


def test_margin_column_reaches_the_loss():
    """A `margin` column (absent or null in some rows -> 0) enters the training loss as -log sigma(r_w - r_l - m)."""
    from preflab.data.rows import load_rows
    from preflab.loops.batches import collate_pairs
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.data import tokenize_reward_pairs
    from preflab.reward_models.heads import build_reward_model, sequence_outputs
    from preflab.reward_models.interface import RewardModel

    rows = [{"prompt": "the cat", "chosen": " sat", "rejected": " ran", "margin": 2},
            {"prompt": "a dog", "chosen": " park", "rejected": " mat", "margin": None},
            {"prompt": "two", "chosen": " five", "rejected": " eight"}]
    tok = tiny_tokenizer()
    pairs, _ = tokenize_reward_pairs(load_rows(rows)[0], tok)
    assert [p.extras["margin"] for p in pairs] == [2.0, 0.0, 0.0]
    model = build_reward_model("builtin:tiny-llama", 1, tok, seed=5).eval()
    layout = collate_pairs(pairs, tok.pad_token_id, "padded")
    out = sequence_outputs(model, layout.input_ids, layout.attention_mask)
    got = BTHead().loss(out[:3], out[3:], layout.extras).losses
    judge = RewardModel(model, tok)
    prompts = [r["prompt"] for r in rows]
    r_w, r_l = judge.score(prompts, [r["chosen"] for r in rows]), judge.score(prompts, [r["rejected"] for r in rows])
    expected = torch.nn.functional.softplus(-(r_w - r_l - torch.tensor([2.0, 0.0, 0.0])))
    torch.testing.assert_close(got.detach(), expected, atol=1e-5, rtol=0)


def test_logit_is_the_trained_loss_log_odds_at_any_tau():
    """The eval's log-odds of P(a > b) are the loss's: loss = -log sigma(logit(chosen, rejected)) with tau = 0.5
    (logit = (r_a - r_b) / tau = 1.6 for rewards 1.2 and 0.4)."""
    head = BTHead(tau=0.5)
    a, b = torch.tensor([[1.2], [0.0]], dtype=torch.float64), torch.tensor([[0.4], [1.0]], dtype=torch.float64)
    torch.testing.assert_close(head.logit(a, b), torch.tensor([1.6, -2.0], dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(head.loss(a, b, {}).losses, -torch.nn.functional.logsigmoid(head.logit(a, b)),
                               rtol=0, atol=1e-12)
