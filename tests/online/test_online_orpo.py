"""orpo in an online pair loop scores the chosen prompts' tokens for its default NLL scope (TRL's ORPOTrainer's),
as the offline trainer does: the same pairs and weights at step 1 give the same odds-ratio metrics under both
scopes and a different NLL."""
import json

import pytest

from test_online_run import tiny_cfg, tiny_run


def _first_row(out):
    return next(r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r.get("step") == 1)


def test_online_orpo_nll_counts_the_prompt_tokens(tmp_path):
    runs = {}
    for scope in ("prompt_and_response", "response"):
        run = tiny_run(tiny_cfg(tmp_path / scope, loss_type="orpo", nll_scope=scope, max_steps=2))
        assert run.objective.nll_scope == scope
        run.train()
        runs[scope] = _first_row(tmp_path / scope)
    full, response = runs["prompt_and_response"], runs["response"]
    for key in ("log_odds_chosen", "log_odds_ratio", "logps/chosen", "logps/rejected"):
        assert full[key] == pytest.approx(response[key], abs=1e-6), key
    assert abs(full["nll_loss"] - response["nll_loss"]) > 1e-3
    assert full["loss"] - full["nll_loss"] == pytest.approx(response["loss"] - response["nll_loss"], abs=1e-5)
