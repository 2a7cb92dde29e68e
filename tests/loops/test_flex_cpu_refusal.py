"""A FlexAttention model cannot train on the CPU (torch 2.13 has no FlexAttention backward there): every run kind
refuses it as train() starts (preflab.loops.driver.TrainingRun._train), before resume, before_train and the first
step, naming the setting. Before the refusal moved into the shared loop, a reward run compiled for ~80 s and then
failed inside step 1's backward (NotImplementedError). The offline Trainer's and OnlineRun's own tests:
tests/perf/test_flex_attention.py, tests/online/test_online_run.py. Diffusion runs refuse model_init_kwargs (a
pipeline loads with diffusers), so they take no attn_implementation to refuse."""
import json

import numpy as np
import pytest
from PIL import Image

from preflab.config import config_from_dict
from preflab.errors import ConfigError

REFUSED = r"attn_implementation: flex_attention \(the {}'s\) cannot train on the CPU: torch .* has no FlexAttention " \
          r"backward on CPU.*use sdpa"


def test_a_flex_reward_model_is_refused_on_cpu_before_the_first_step(tmp_path):
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.heads import build_reward_model
    from preflab.reward_models.train import train_reward

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": " good", "rejected": " bad"}) + "\n"
                            for i in range(4)))
    tok = tiny_tokenizer()
    model = build_reward_model("builtin:tiny-llama", 1, tok, seed=0)
    model.set_attn_implementation("flex_attention")
    out = tmp_path / "run"
    cfg = config_from_dict(dict(task="reward", model_name_or_path="builtin:tiny-llama", dataset_name=str(data),
                                output_dir=str(out), per_device_train_batch_size=2, max_steps=1, max_length=32,
                                disable_tqdm=True, use_cpu=True))
    with pytest.raises(ConfigError, match=REFUSED.format("reward model")):
        train_reward(cfg, model=model, tokenizer=tok)
    assert not (out / "timeline.json").exists() and not (out / "metrics.jsonl").exists()  # no resume, no step


def _image(seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (16, 24, 3)).astype("uint8"))


def test_a_flex_vlm_policy_is_refused_on_cpu_when_training_starts_not_when_built(tmp_path):
    """Built (preflab eval --task vlm builds a VisionTrainer only to evaluate: no backward, FlexAttention's forward
    runs on the CPU), then refused by train() before any step."""
    from preflab.data.vision import read_vision_pairs, tokenize_vision_pairs
    from preflab.loops.vlm import VisionTrainer
    from preflab.models.load import frozen_copy
    from preflab.models.tiny_vlm import tiny_vlm, tiny_vlm_processor

    processor = tiny_vlm_processor("llava")
    policy = tiny_vlm(processor, "llava", seed=0)
    policy.set_attn_implementation("flex_attention")
    rows = [{"images": [_image(i)], "prompt": [{"role": "user", "content": [{"type": "image"},
                                                                            {"type": "text", "text": "colour?"}]}],
             "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "red"}]}],
             "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "blue"}]}]} for i in range(2)]
    pairs, _, _ = tokenize_vision_pairs(read_vision_pairs(rows)[0], processor)
    out = tmp_path / "run"
    cfg = config_from_dict(dict(task="vlm", model_name_or_path="builtin:tiny-llava", dataset_name="unused",
                                output_dir=str(out), per_device_train_batch_size=2, max_steps=1, disable_tqdm=True,
                                report_to="none", use_cpu=True))
    trainer = VisionTrainer(cfg, policy=policy, ref=frozen_copy(policy), processor=processor, train_data=pairs)
    with pytest.raises(ConfigError, match=REFUSED.format("policy")):
        trainer.train()
    assert trainer.step == 0 and not (out / "timeline.json").exists()
    assert all(p.grad is None for p in policy.parameters())  # no forward/backward ran
    # built without the layout's custom-mask probe; the evaluation path (preflab eval --task vlm) still gets it
    assert "layout" not in vars(trainer) and trainer.layout == "prefix_shared"

