"""KTO with precompute_ref_log_probs is refused before any work: its reference point scores mismatched
(prompt, completion) pairs formed inside each micro-batch, which a per-example cache cannot hold. Before, the run
died in the cache key with an AttributeError ('TokenizedUnpaired' object has no attribute 'chosen_ids')."""
import pytest

from preflab.config import config_from_dict
from preflab.data.tokenize import TokenizedUnpaired
from preflab.errors import ConfigError
from preflab.loops.offline import Trainer
from preflab.models.load import frozen_copy
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer


def test_kto_precompute_is_refused_with_the_reason(tmp_path):
    tok = tiny_tokenizer()
    policy = tiny_causal_lm(tok, seed=0)
    items = [TokenizedUnpaired(i, [1, 5 + i, 7], [9 + i, 2], i % 2 == 0) for i in range(8)]
    cfg = config_from_dict(dict(model_name_or_path="unused", dataset_name="unused", output_dir=str(tmp_path / "run"),
                                loss_type="kto", precompute_ref_log_probs=True,
                                per_device_train_batch_size=4, max_steps=1, use_cpu=True, disable_tqdm=True))
    with pytest.raises(ConfigError, match=r"precompute_ref_log_probs with 'kto': its reference point scores "
                                          r"mismatched .* set precompute_ref_log_probs: false"):
        Trainer(cfg, policy=policy, ref=frozen_copy(policy), tokenizer=tok, train_data=items)
    assert not (tmp_path / "run" / "checkpoint-1").exists()
