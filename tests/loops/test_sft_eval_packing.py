"""TRL SFTConfig's eval_packing (pack the eval set or not; None: as packing): accepted with a note, because
task: sft's eval metrics do not depend on packing: each packed sequence attends to itself only with its own
positions, and eval_loss / eval_mean_token_accuracy / eval_entropy are token means over the whole eval set."""
import copy

import pytest
import torch

from preflab.config import config_from_dict
from preflab.data.report import TokenizeReport
from preflab.loops.sft import SFTTrainer, tokenize_sft_row
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

ROWS = [{"text": "the cat sat on the mat"}, {"prompt": "what is two plus three ?", "completion": " five"},
        {"text": "a quick brown fox jumps over the lazy dog"}, {"prompt": "hello world", "completion": " hello !"},
        {"text": "chosen responses are better than rejected responses"}]


def _eval(tmp_path, tok, model, packing: bool, **extra):
    cfg = config_from_dict({"task": "sft", "model_name_or_path": "unused", "dataset_name": "synthetic",
                            "output_dir": str(tmp_path / f"p{packing}"), "max_length": 64, "packing": packing,
                            "per_device_eval_batch_size": 5, "per_device_train_batch_size": 2, "use_cpu": True, "save_steps": 0, **extra})
    items = [tokenize_sft_row(i, row, tok, cfg, TokenizeReport())[0] for i, row in enumerate(ROWS)]
    return SFTTrainer(cfg, policy=copy.deepcopy(model), tokenizer=tok, train_data=items, eval_data=items).evaluate()


def test_eval_metrics_are_the_same_packed_or_not(tmp_path, capsys):
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=0)
    packed = _eval(tmp_path, tok, model, True, eval_packing=False)
    assert "eval_packing: task: sft evaluates with the training layout" in "".join(capsys.readouterr())
    padded = _eval(tmp_path, tok, model, False)
    assert set(packed) == set(padded) == {"eval_loss", "eval_mean_token_accuracy", "eval_entropy"}
    for key in packed:
        assert packed[key] == pytest.approx(padded[key], abs=1e-5), key
    assert padded["eval_loss"] > 1.0  # a random model: the loss is not trivially 0
