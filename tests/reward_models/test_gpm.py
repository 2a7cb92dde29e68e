"""GPM: skew-symmetric score by hand, BT as a special case, and a cyclic triple that GPM fits and BT cannot."""
import math

import pytest
import torch

from preflab.reward_models.bt import BTHead
from preflab.reward_models.gpm import GPMHead, score_matrix, skew_score


def test_score_fixture_by_hand():
    """v_w = (1, 0), v_l at 120 degrees: s = sin 120 = 0.866025, P = sigma(s / 0.1) = 0.999827."""
    v_w = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    v_l = torch.tensor([[math.cos(2 * math.pi / 3), math.sin(2 * math.pi / 3)]], dtype=torch.float64)
    head = GPMHead(dim=2, tau=0.1)
    assert head.score(v_w, v_l).item() == pytest.approx(0.866025, abs=1e-6)
    assert torch.sigmoid(head.logit(v_w, v_l)).item() == pytest.approx(0.999827, abs=1e-6)
    assert head.loss(v_w, v_l, {}).loss.item() == pytest.approx(1.7333e-4, rel=1e-3)
    # a margin m shifts the logit: -log sigma((s - m) / tau)
    m = torch.tensor([0.5], dtype=torch.float64)
    expected = -torch.nn.functional.logsigmoid(torch.tensor((0.866025 - 0.5) / 0.1)).item()
    assert head.loss(v_w, v_l, {"margin": m}).loss.item() == pytest.approx(expected, rel=1e-5)


def test_skew_symmetry_and_lambda():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 6, generator=g, dtype=torch.float64), torch.randn(7, 6, generator=g, dtype=torch.float64)
    lam = torch.rand(7, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(skew_score(a, b, lam), -skew_score(b, a, lam), atol=1e-12, rtol=0)
    assert torch.equal(skew_score(a, a), torch.zeros(7, dtype=torch.float64))
    # sum_j lambda_j (a_2j b_2j+1 - a_2j+1 b_2j), written out
    by_hand = sum(lam[:, j] * (a[:, 2 * j] * b[:, 2 * j + 1] - a[:, 2 * j + 1] * b[:, 2 * j]) for j in range(3))
    torch.testing.assert_close(skew_score(a, b, lam), by_hand, atol=1e-12, rtol=0)
    s = score_matrix(a)
    assert torch.equal(s, -s.T) and torch.equal(torch.diagonal(s), torch.zeros(7, dtype=torch.float64))


def test_bt_is_the_special_case_v_equals_r_and_one():
    r = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    v = torch.stack([r, torch.ones_like(r)], -1)
    i, j = torch.triu_indices(4, 4, 1)
    gpm = GPMHead(dim=2, tau=1.0, normalize=False)
    torch.testing.assert_close(torch.sigmoid(gpm.logit(v[i], v[j])),
                               torch.sigmoid(BTHead().logit(r[i, None], r[j, None])), atol=1e-12, rtol=0)


def _cyclic_triple_run(tmp_path, head, name, steps):
    from preflab.config import config_from_dict
    from preflab.data.rows import load_rows
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.reward_models.data import tokenize_reward_pairs
    from preflab.reward_models.heads import reward_model_from_config
    from preflab.reward_models.train import train_reward

    tok = tiny_tokenizer()
    rows = [{"prompt": "?", "chosen": " A", "rejected": " B"}, {"prompt": "?", "chosen": " B", "rejected": " C"},
            {"prompt": "?", "chosen": " C", "rejected": " A"}]
    pairs, _ = tokenize_reward_pairs(load_rows(rows)[0], tok, max_length=16)
    config = tiny_causal_lm(tok).config
    config.initializer_range = 0.2  # a random backbone whose last-token states tell A, B and C apart
    model = reward_model_from_config(config, head.num_outputs, tok.pad_token_id, seed=0)
    cfg = config_from_dict(dict(task="reward", model_name_or_path="builtin:tiny-llama", dataset_name="cyclic",
                                output_dir=str(tmp_path / name), learning_rate=3e-3, per_device_train_batch_size=3,
                                max_steps=steps, logging_steps=steps, lr_scheduler_type="constant", disable_tqdm=True,
                                use_cpu=True))
    summary = train_reward(cfg, model=model, tokenizer=tok, train_data=pairs, eval_data=pairs, head=head)
    return summary["final_metrics"], tmp_path / name


def test_gpm_fits_a_cyclic_triple_that_bt_cannot(tmp_path):
    """A > B, B > C, C > A. GPM (k = 3, tau = 0.1) reaches accuracy 1 with P(w > l) near the unit-norm optimum
    sigma(sin 120 deg / 0.1) = 0.99983; BT cannot exceed 2/3 and its loss cannot go below ln 2 (Jensen: the three
    reward differences sum to 0), so the trained BT model is a coin flip. Both saved models reload as judges."""
    from preflab.reward_models.interface import BTPreference, GPMPreference, load_judge

    gpm_metrics, gpm_dir = _cyclic_triple_run(tmp_path, GPMHead(dim=6, tau=0.1), "gpm", 300)
    judge = load_judge(str(gpm_dir))
    assert isinstance(judge, GPMPreference)
    p = judge.win_rate_matrix("?", [" A", " B", " C"])
    torch.testing.assert_close(p + p.T, torch.ones(3, 3), atol=1e-6, rtol=0)
    wins = torch.stack([p[0, 1], p[1, 2], p[2, 0]])
    ideal = 1 / (1 + math.exp(-math.sin(2 * math.pi / 3) / 0.1))  # 0.9998267: embeddings 120 degrees apart
    torch.testing.assert_close(wins, torch.full((3,), ideal), atol=1e-4, rtol=0)
    assert gpm_metrics["eval_accuracy"] == 1.0
    assert judge.prefer(["?"], [" C"], [" A"]).item() == pytest.approx(p[2, 0].item(), abs=1e-6)

    bt_metrics, bt_dir = _cyclic_triple_run(tmp_path, BTHead(), "bt", 100)
    assert bt_metrics["eval_accuracy"] <= 2 / 3 + 1e-6
    assert bt_metrics["eval_loss"] >= math.log(2) - 1e-6
    p_bt = BTPreference(load_judge(str(bt_dir))).win_rate_matrix("?", [" A", " B", " C"])
    torch.testing.assert_close(p_bt, torch.full((3, 3), 0.5), atol=0.02, rtol=0)


def test_score_matrix_entries_and_logged_probability_by_hand():
    """S[i, j] = s(y_i > y_j) (row i beats column j), and the loss's `prob` metric is sigma(s / tau): for unit
    vectors at 0 and 120 degrees, S[0, 1] = sin 120 = 0.866025 and prob = sigma(8.66025) = 0.999827 at tau 0.1."""
    e = torch.tensor([[1.0, 0.0], [math.cos(2 * math.pi / 3), math.sin(2 * math.pi / 3)]], dtype=torch.float64)
    s = score_matrix(e)
    assert s[0, 1].item() == pytest.approx(math.sin(2 * math.pi / 3), abs=1e-12)
    torch.testing.assert_close(s[0, 1], skew_score(e[0], e[1]), rtol=0, atol=1e-15)
    out = GPMHead(dim=2, tau=0.1).loss(e[:1], e[1:], {})
    assert out.metrics["prob"].item() == pytest.approx(0.999827, abs=1e-6)
    assert out.metrics["margin"].item() == pytest.approx(0.866025, abs=1e-6)
