"""CAT's clue aggregator: the question is the whole prompt and no more (prompt_lengths from the layout's pred_index,
by hand; preflab.models.clue_aggregator)."""
import torch

from preflab.models.clue_aggregator import clue_plan, prompt_lengths


def test_prompt_length_ends_at_the_position_that_predicts_the_first_response_token():
    """[3, 8] rows; pred_index holds each sequence's predicting positions as flat row * 8 + col. Row 0: one response
    predicted from col 4 on (prompt = cols 0..4, length 5); row 1 (prefix-shared): two responses after the prompt
    cols 0..2, predicted from col 2 and from col 6 (the second starts after the first): length 3, the shortest;
    row 2: no response, the whole row (8)."""
    pred_index = torch.tensor([[4, 5, 6], [10, 11, 12], [14, 15, 15]])
    assert prompt_lengths(pred_index, 3, 8).tolist() == [5, 3, 8]
    # the question of row 0 is then its non-image tokens before col 5: the prompt's last token (col 4) included
    ids = torch.tensor([[1, 9, 9, 2, 3, 4, 5, 6]] + [[1, 2, 3, 4, 5, 6, 7, 8]] * 2)
    plan = clue_plan(ids, None, prompt_lengths(pred_index, 3, 8), 9)
    assert plan.question.tolist() == [[0, 3, 4]] and plan.visual.tolist() == [[1, 2]]
