"""Mixture-of-experts policies: the router's load-balancing loss never enters preflab's loss (the scores are the
model's own log-probs even when its config asks for router logits), and the difference from TRL 1.16, which adds
router_aux_loss_coef x that loss by default, is said once at load."""
import sys
from pathlib import Path

import pytest
import torch

from preflab.config import config_from_dict
from preflab.data.layout import padded, pair_sequences
from preflab.models.load import load_models, moe_aux_loss_note
from preflab.objectives import get_objective
from preflab.scoring.lm import LogProbScorer, split_pairs

sys.path.insert(0, str(Path(__file__).parent))
from families import save_family, tiny_family_model  # noqa: E402
from test_family_scoring import PAIRS, own_forward_sums  # noqa: E402


@pytest.mark.parametrize("family", ["qwen2_moe", "mixtral"])
def test_moe_dpo_loss_is_the_objectives_alone_even_with_router_logits_on(family):
    model = tiny_family_model(family)
    model.config.output_router_logits = True  # the forward now also returns aux_loss (0.02 x load balancing)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([PAIRS[0].prompt_ids + PAIRS[0].chosen_ids]))
        assert out.aux_loss is not None and float(out.aux_loss) > 0
        sums = own_forward_sums(model)  # [c1, c2, r1, r2]
        batch = split_pairs(LogProbScorer(model)(padded(pair_sequences(PAIRS), pad_id=0)), None)
    torch.testing.assert_close(batch.policy_chosen.sum, sums[:2], atol=5e-5, rtol=1e-5)
    torch.testing.assert_close(batch.policy_rejected.sum, sums[2:], atol=5e-5, rtol=1e-5)
    # policy = reference: DPO's loss is exactly log 2 (an added 0.02 x aux_loss would show)
    same = batch.__class__(batch.policy_chosen, batch.policy_rejected, batch.policy_chosen, batch.policy_rejected)
    assert float(get_objective("dpo", beta=0.1)(same).loss) == pytest.approx(float(torch.log(torch.tensor(2.0))),
                                                                             abs=1e-6)


def test_moe_policy_load_says_trl_would_add_the_router_loss(tmp_path, capsys):
    assert moe_aux_loss_note(tiny_family_model("llama")) is None
    moe = tiny_family_model("qwen2_moe")
    assert "router_aux_loss_coef=0.02" in moe_aux_loss_note(moe)
    moe.config.router_aux_loss_coef = 0.0  # TRL adds nothing either
    assert moe_aux_loss_note(moe) is None
    path = save_family(tmp_path, "qwen2_moe")
    from preflab.models.load import load_tokenizer

    cfg = config_from_dict({"model_name_or_path": str(path), "dataset_name": "unused.jsonl",
                            "output_dir": str(tmp_path / "run")})
    load_models(cfg, load_tokenizer(str(path)))
    assert "qwen2_moe is a mixture-of-experts model; TRL 1.16 adds router_aux_loss_coef=0.02" in capsys.readouterr().out
