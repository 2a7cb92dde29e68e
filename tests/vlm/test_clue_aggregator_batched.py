"""CAT's clue aggregator rewrites all rows at once by host-built index lists (CluePlan): the same values and
gradients as the per-row boolean-mask rewrite it replaced (kept here as the reference)."""
import torch

from preflab.data.vision import read_vision_pairs, tokenize_vision_pairs
from preflab.models.clue_aggregator import ClueAggregator, attach_clue_aggregator, clue_plan
from preflab.scoring.vlm import VisionLogProbScorer, collate_vision_pairs

from vlm_helpers import pair_row, tiny


def rowwise_rewrite(agg, embeds, input_ids, attention_mask):
    """The old rewrite: a loop over the rows with boolean-mask indexing (a host sync per row)."""
    image = input_ids == agg.image_token_id
    if not bool(image.any()):
        return embeds
    real = attention_mask.bool() if attention_mask is not None and attention_mask.dim() == 2 else \
        torch.ones_like(image)
    if agg.prompt_lengths is not None:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        real = real & (positions[None] < agg.prompt_lengths.to(input_ids.device)[:, None])
    rows = []
    for r in range(embeds.shape[0]):
        row = embeds[r]
        if bool(image[r].any()):
            new = agg.aggregate(row[image[r]].to(agg.out.weight.dtype), row[real[r] & ~image[r]]
                                .to(agg.out.weight.dtype)).to(row.dtype)
            row = row.masked_scatter(image[r].unsqueeze(-1), new)
        rows.append(row)
    return torch.stack(rows)


def _grads(agg, embeds, fn):
    agg.zero_grad()
    embeds = embeds.detach().clone().requires_grad_(True)
    out = fn(embeds)
    weight = torch.linspace(-1, 1, out.numel()).view_as(out)
    (out * weight).sum().backward()
    return out.detach(), embeds.grad, [p.grad.clone() for p in agg.parameters()]


def test_batched_rewrite_equals_the_rowwise_one_in_values_and_gradients():
    torch.manual_seed(0)
    agg = ClueAggregator(8, num_heads=2)
    with torch.no_grad():
        agg.out.weight.normal_(0, 0.5)
        agg.out.bias.normal_(0, 0.1)
    agg.image_token_id = 9
    # rows: images at various places and counts, right padding, one row without images, one without a question
    # (only image tokens before its prompt length): both stay unchanged
    ids = torch.tensor([[1, 9, 9, 9, 2, 3, 4, 0],
                        [9, 9, 5, 6, 7, 8, 0, 0],
                        [1, 2, 3, 4, 5, 6, 7, 8],
                        [9, 9, 1, 2, 3, 0, 0, 0],
                        [2, 3, 9, 4, 9, 5, 6, 7]])
    mask = (ids != 0).long()
    lengths = torch.tensor([5, 4, 6, 2, 6])
    embeds = torch.randn(5, 8, 8)
    for prompt_lengths in (lengths, None):
        agg.prompt_lengths = prompt_lengths
        old = _grads(agg, embeds, lambda e: rowwise_rewrite(agg, e, ids, mask))
        for plan in (None, clue_plan(ids, mask, prompt_lengths, 9)):  # built in rewrite / by the host beforehand
            agg.plan = plan
            new = _grads(agg, embeds, lambda e: agg.rewrite(e, ids, mask))
            assert torch.allclose(new[0], old[0], atol=1e-6)
            assert torch.allclose(new[1], old[1], atol=1e-6)
            assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(new[2], old[2]))
        agg.plan = None
    # the rows without images or without a question are unchanged; the others are not
    assert torch.equal(old[0][2], embeds[2]) and not torch.allclose(old[0][0], embeds[0])
    agg.prompt_lengths = lengths
    out = agg.rewrite(embeds, ids, mask)
    assert torch.equal(out[3], embeds[3])


def test_scorer_with_the_host_plan_equals_the_rowwise_rewrite_on_a_tiny_vlm(monkeypatch):
    model, processor = tiny("qwen2_vl")
    agg = attach_clue_aggregator(model, processor)
    with torch.no_grad():
        agg.out.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(3))
    rows = [pair_row("what colour is it?", seed=1), pair_row("which shape is this one?", "a square", "a circle",
                                                             seed=2, n=2)]
    pairs, _, _ = tokenize_vision_pairs(read_vision_pairs(rows)[0], processor)
    layout = collate_vision_pairs(pairs, processor.tokenizer.pad_token_id)
    from preflab.models.clue_aggregator import prompt_lengths

    planned = collate_vision_pairs(pairs, processor.tokenizer.pad_token_id)
    planned.clue_plan = clue_plan(planned.input_ids, planned.attention_mask,
                                  prompt_lengths(planned.pred_index, *planned.input_ids.shape), agg.image_token_id)

    def run(lay):
        model.zero_grad()
        lp = VisionLogProbScorer(model)(lay).token_logps
        (lp * torch.linspace(0.5, 1.5, lp.numel()).view_as(lp)).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return lp.detach(), grads

    new_lp, new_grads = run(planned)
    monkeypatch.setattr(ClueAggregator, "rewrite", rowwise_rewrite)
    old_lp, old_grads = run(layout)
    assert torch.allclose(new_lp, old_lp, atol=1e-6)
    assert new_grads.keys() == old_grads.keys() and any(n.startswith("clue_aggregator.") for n in new_grads)
    assert all(torch.allclose(new_grads[n], old_grads[n], atol=1e-6) for n in new_grads)
    assert float(new_grads["clue_aggregator.out.weight"].abs().max()) > 1e-4  # the aggregator is in the graph
