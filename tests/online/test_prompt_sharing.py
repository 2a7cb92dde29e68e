"""Online runs score each prompt once per example (`[prompt | completion_1 | ...]`, layout prefix_shared) instead of
once per completion: the same token log-probs, so the same training, to float rounding."""
import json

import pytest
import torch

from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from preflab.online.examples import Example, group_layout, pair_layout, shared_pair_layout, shared_prompt_layout
from preflab.scoring.lm import LogProbScorer

from test_online_run import tiny_cfg, tiny_run


def _train(tmp_path, layout, **over):
    run = tiny_run(tiny_cfg(tmp_path / layout, layout=layout, **over))
    run.train()
    losses = [r["loss"] for r in map(json.loads, (tmp_path / layout / "metrics.jsonl").read_text().splitlines())
              if "loss" in r]
    return run, losses, {k: v.detach().clone() for k, v in run.policy.state_dict().items()}


@pytest.mark.parametrize("over", [dict(trainer="dapo", beta=0.04, num_iterations=2, max_steps=8),  # ref + old logps
                                  dict(trainer="online_dpo", beta=0.1)])
def test_shared_prompt_rows_train_as_one_row_per_completion(tmp_path, over):
    shared, loss_shared, w_shared = _train(tmp_path, "prefix_shared", **over)
    padded, loss_padded, w_padded = _train(tmp_path, "padded", **over)
    assert shared.share_prompt and not padded.share_prompt
    assert shared.counts["completions"] == padded.counts["completions"] > 0
    assert len(loss_shared) == len(loss_padded) == over.get("max_steps", 6)
    # float32 rounding of another summation order in attention: losses to 1e-5; weights to 1e-4 = 1% of one AdamW
    # update at lr 1e-2 (AdamW's first updates are about lr x sign(g), so a gradient component near 0 carries
    # rounding into the weights at that scale; measured 1.5e-5 against a total movement of several lr)
    assert max(abs(a - b) for a, b in zip(loss_shared, loss_padded)) < 1e-5
    assert max(float((w_shared[k] - w_padded[k]).abs().max()) for k in w_shared) < 1e-4
    moved = max(float((w_padded[k] - tiny_run(tiny_cfg(tmp_path / "init")).policy.state_dict()[k]).abs().max())
                for k in ("model.layers.0.mlp.up_proj.weight",))
    assert moved > 1e-2  # the runs did train (the tolerance is small against the movement)


def test_shared_layouts_give_the_padded_layouts_log_probs():
    tok = tiny_tokenizer("char")
    model = tiny_causal_lm(tok, hidden_size=32, seed=1).eval()
    ids = lambda s: tok(s)["input_ids"]  # noqa: E731
    exs = [Example(0, ids("say abc\n"), [ids("abc"), ids("a"), ids("xyzw v")]),
           Example(1, ids("no\n"), [ids("q"), ids("rstu"), ids("")])]
    scorer = LogProbScorer(model)
    with torch.no_grad():
        grouped = [scorer(f(exs, tok.pad_token_id)) for f in (group_layout, shared_prompt_layout)]
        pairs = [Example(e.row_id, e.prompt_ids, e.completions[:2]) for e in exs]
        paired = [scorer(f(pairs, tok.pad_token_id)) for f in (pair_layout, shared_pair_layout)]
    for a, b in (grouped, paired):
        assert torch.equal(a.mask, b.mask)
        assert float((a.token_logps - b.token_logps).abs().max()) < 1e-5
        assert float(a.token_logps.abs().sum()) > 1.0
    assert shared_prompt_layout(exs, tok.pad_token_id).input_ids.numel() < group_layout(exs, 0).input_ids.numel()
