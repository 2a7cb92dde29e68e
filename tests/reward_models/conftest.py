"""Fixtures shared by the reward-model tests."""
import pytest


@pytest.fixture(scope="module")
def tiny_rm_dir(tmp_path_factory):
    """An untrained tiny BT reward model saved as preflab saves one (weights, tokenizer, head config)."""
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.heads import build_reward_model, set_reward_config

    path = tmp_path_factory.mktemp("rm")
    tok = tiny_tokenizer()
    model = build_reward_model("builtin:tiny-llama", 1, tok, seed=0)
    set_reward_config(model, {"head": "bt", "tau": 1.0})
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path
