"""disable_dropout turns dropout off for training (modules, module rates, and config rates read at forward time),
but a saved config.json keeps the rates the input model had: whoever trains the saved model further gets them."""
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "loops"))
from tiny_run import synthetic_pairs  # noqa: E402

from preflab.models.dropout import original_dropout_config  # noqa: E402
from preflab.models.load import disable_dropout, frozen_copy  # noqa: E402


def _dropout_fields(path: Path) -> dict:
    """The dropout rates of the config saved in `path`, as transformers reads them (config.json leaves defaults
    out)."""
    from transformers import AutoConfig

    return {k: v for k, v in AutoConfig.from_pretrained(path).to_dict().items() if "dropout" in k or "pdrop" in k}


def _persimmon():
    """A tiny Persimmon: its attention reads `self.config.attention_dropout` at every forward (no module rate)."""
    import transformers as tf

    config = tf.PersimmonConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                num_attention_heads=2, max_position_embeddings=64, attention_dropout=0.5,
                                hidden_dropout=0.0)
    torch.manual_seed(0)
    return tf.PersimmonForCausalLM(config).train()


def test_a_config_rate_read_at_forward_time_is_off_in_training_and_back_in_the_saved_config(tmp_path):
    torch.set_num_threads(1)
    model, ids = _persimmon(), torch.tensor([[1, 5, 6, 7, 8, 9]])
    assert not torch.equal(model(ids).logits, model(ids).logits)  # the config rate is live before
    disable_dropout(model)
    disable_dropout(model)  # a second call (offline runs call it for loaded models and again for given ones)
    assert torch.equal(model(ids).logits, model(ids).logits)
    copy = frozen_copy(model).train()  # the record travels with a deepcopy (references, merge_and_unload)
    with original_dropout_config(copy):
        assert not torch.equal(copy(ids).logits, copy(ids).logits)  # the config is what the forward reads
        copy.save_pretrained(tmp_path, safe_serialization=True)
    assert _dropout_fields(tmp_path) == {"attention_dropout": 0.5, "hidden_dropout": 0.0}
    assert copy.config.attention_dropout == 0.0 and model.config.attention_dropout == 0.0
    assert torch.equal(copy(ids).logits, copy(ids).logits)


def test_a_model_never_given_to_disable_dropout_is_saved_as_it_is(tmp_path):
    model = _persimmon()
    model.config.attention_dropout = 0.25
    with original_dropout_config(model):
        model.save_pretrained(tmp_path, safe_serialization=True)
    assert _dropout_fields(tmp_path)["attention_dropout"] == 0.25


def test_a_dpo_run_trains_without_dropout_and_saves_the_input_dropout_config(tmp_path):
    """Tiny Llama with attention_dropout 0.5 (config and attention modules, as from_pretrained leaves them):
    policy == reference gives a first loss of exactly ln 2 only without dropout; the final config.json still says
    0.5, as the input model's did (it said 0.0 before)."""
    import math

    from preflab.config import config_from_dict
    from preflab.loops.offline import Trainer
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    policy = tiny_causal_lm(tok, arch="llama", seed=0)
    policy.config.attention_dropout = 0.5
    for module in policy.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.5
    cfg = config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name="synthetic", max_steps=1,
                                output_dir=str(tmp_path), per_device_train_batch_size=4, logging_steps=1,
                                disable_tqdm=True, use_cpu=True))
    Trainer(cfg, policy=policy, ref=frozen_copy(policy), tokenizer=tok, train_data=synthetic_pairs(8)).train()
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert _dropout_fields(tmp_path)["attention_dropout"] == 0.5


def test_a_module_rate_copied_from_the_config_is_off_in_training():
    """Llama attention copies config.attention_dropout to `self.attention_dropout` at init and reads that at forward
    time: disable_dropout zeroes the module's rate (two training-mode forwards agree), and a save gets the config's
    0.5 back."""
    import transformers as tf

    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=64, attention_dropout=0.5)
    model, ids = tf.LlamaForCausalLM(config).train(), torch.tensor([[1, 5, 6, 7, 8, 9]])
    assert not torch.equal(model(ids).logits, model(ids).logits)
    disable_dropout(model)
    assert model.model.layers[0].self_attn.attention_dropout == 0.0
    assert torch.equal(model(ids).logits, model(ids).logits)
    with original_dropout_config(model):
        assert model.config.attention_dropout == 0.5


def test_the_rates_of_a_vlm_text_and_vision_config_are_off_and_saved_as_they_were():
    """A VLM's rates live in its sub-configs (text_config, vision_config): zeroed for training, the input's values
    (0.3; 0.2 and 0.1) back in the config around a save, 0 again after."""
    import transformers as tf

    holder = torch.nn.Module()
    holder.config = tf.LlavaConfig(
        text_config=tf.LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                   num_attention_heads=2, attention_dropout=0.3),
        vision_config=tf.CLIPVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                          num_attention_heads=2, attention_dropout=0.2, dropout=0.1))
    text, vision = holder.config.text_config, holder.config.vision_config
    disable_dropout(holder)
    assert (text.attention_dropout, vision.attention_dropout, vision.dropout) == (0.0, 0.0, 0.0)
    with original_dropout_config(holder):
        assert (text.attention_dropout, vision.attention_dropout, vision.dropout) == (0.3, 0.2, 0.1)
    assert (text.attention_dropout, vision.attention_dropout, vision.dropout) == (0.0, 0.0, 0.0)
