"""The VLM scorer's prompt-token log-probs (the "prompt_logps" need of orpo's default NLL scope) equal the model's
own full forward at the prompt positions: every prompt token after the first, image placeholders included."""
import torch

from preflab.data.vision import read_vision_pairs, tokenize_vision_pairs
from preflab.scoring.vlm import VisionLogProbScorer, collate_vision_pairs

from vlm_helpers import pair_row, tiny


def test_prompt_logps_equal_full_forward(arch):
    model, processor = tiny(arch)
    rows = [pair_row(seed=0), pair_row("and this one?", "green it is", "no", (20, 200, 20), seed=3)]
    examples, _ = read_vision_pairs(rows)
    pairs, _, _ = tokenize_vision_pairs(examples, processor)
    layout = collate_vision_pairs(pairs, processor.tokenizer.pad_token_id)
    with torch.no_grad():
        scores = VisionLogProbScorer(model, chunk_tokens=3)(layout, prompt_sequences=2)
        logits = model(**layout.model_inputs(model)).logits.float()
    logprobs = torch.log_softmax(logits, -1)
    for n, pair in enumerate(pairs):  # sequence n = chosen_n, in row n of the padded layout
        ids = pair.prompt_ids
        expected = logprobs[n, torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
        assert scores.prompt_mask[n].sum() == len(ids) - 1
        assert torch.allclose(scores.prompt_logps[n, :len(ids) - 1], expected, atol=1e-5)
