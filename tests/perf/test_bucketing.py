"""pad_to_multiple_of (TRL's name): rows rounded up to a multiple of the length, for every layout, give the same
log-probs as the unrounded layout (float32, 1e-6) and the same training run; the shapes are multiples."""
import sys
from pathlib import Path

import pytest
import torch

from preflab.data.layout import bucket, pair_sequences, padded
from preflab.data.packing import packed_pairs
from preflab.data.prefix import prefix_shared
from preflab.errors import ConfigError
from preflab.models.tiny import tiny_causal_lm
from preflab.scoring.lm import LogProbScorer, naive_token_logps

sys.path.insert(0, str(Path(__file__).parents[1] / "loops"))
from tiny_run import run, synthetic_pairs  # noqa: E402

PAIRS = synthetic_pairs(n=5, seed=3)
LAYOUTS = {
    "padded": lambda: padded(pair_sequences(PAIRS), pad_id=0),
    "prefix_shared": lambda: prefix_shared(PAIRS, pad_id=0),
    "packed": lambda: packed_pairs(PAIRS, pad_id=0, share_prefix=False),
    "prefix_packed_binned": lambda: packed_pairs(PAIRS, pad_id=0, share_prefix=True, max_row_tokens=20),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_bucketed_layout_scores_equal_the_unbucketed_ones(name):
    torch.manual_seed(0)
    model = tiny_causal_lm(vocab_size=256, seed=1).eval()
    layout = LAYOUTS[name]()
    wide = bucket(layout, 16, pad_id=0)
    assert wide.input_ids.shape[0] == layout.input_ids.shape[0]
    assert wide.input_ids.shape[1] % 16 == 0 and wide.input_ids.shape[1] > layout.input_ids.shape[1]
    if wide.attention_mask.dim() == 4:
        assert wide.attention_mask.shape[-2:] == (wide.input_ids.shape[1],) * 2
    with torch.no_grad():
        base = LogProbScorer(model)(layout).token_logps
        ours = LogProbScorer(model)(wide).token_logps
        full = naive_token_logps(model, wide)  # the model's own logits on the widened rows
    assert base.abs().sum() > 0
    torch.testing.assert_close(ours, base, atol=1e-6, rtol=0)
    torch.testing.assert_close(full, base, atol=1e-5, rtol=0)
    assert bucket(wide, 16, pad_id=0) is wide  # already a multiple: unchanged


def test_training_with_pad_to_multiple_of_equals_training_without(tmp_path):
    plain, _ = run(tmp_path / "plain", max_steps=3)
    rounded, trainer = run(tmp_path / "rounded", max_steps=3, pad_to_multiple_of=32)
    assert trainer.micro_batches(0)[0].layout.input_ids.shape[1] % 32 == 0
    for key in ("loss", "rewards/margins", "logps/chosen"):
        assert rounded["final_metrics"][key] == pytest.approx(plain["final_metrics"][key], abs=1e-6)


def test_pad_to_multiple_of_is_refused_for_vision_scoring(tmp_path):
    from preflab.config import config_from_dict
    from preflab.loops.offline import Trainer
    from preflab.models.tiny import tiny_tokenizer
    from preflab.scoring.vlm import VisionLogProbScorer

    class Vision(Trainer):
        scorer_class = VisionLogProbScorer

    cfg = config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name="synthetic",
                                output_dir=str(tmp_path), pad_to_multiple_of=8, use_cpu=True))
    tok = tiny_tokenizer()
    with pytest.raises(ConfigError, match="pad_to_multiple_of applies to text models"):
        Vision(cfg, policy=tiny_causal_lm(tok), ref=None, tokenizer=tok, train_data=PAIRS)
