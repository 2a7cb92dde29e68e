"""SFT chooses its own layout (padded, or packed with packing: true) and ignores cfg.layout: the offline Trainer's
check that a model can take the layout's custom 4-D mask runs on SFT's layout, so an SFT run on a sliding-window
model does not warn about `layout: prefix_shared` (the default it does not use), while a DPO run on the same model
does, and SFT with packing (which does need the mask) still does."""
import json
import sys
import warnings
from pathlib import Path

import torch

from preflab.config import config_from_dict
from preflab.loops.offline import Trainer
from preflab.loops.sft import SFTTrainer
from preflab.models import attention

sys.path.insert(0, str(Path(__file__).parents[1] / "families"))
from families import family_tokenizer, tiny_family_model

PAIRS = [("sky", "cat"), ("dog", "park"), ("mat", "hello"), ("world", "five"), ("cat", "dog"), ("park", "mat"),
         ("hello", "world")]


def _run(tmp_path, task: str, **options) -> tuple[list[str], object]:
    torch.set_num_threads(1)
    tok = family_tokenizer("llama3")
    data = tmp_path / f"{task}.jsonl"
    if task == "sft":
        rows = [{"prompt": f"say {w}", "completion": f" {w} {x}"} for w, x in PAIRS]
    else:
        rows = [{"prompt": f"say {w}", "chosen": f" {w} {x}", "rejected": f" {x}"} for w, x in PAIRS]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config_from_dict({"task": task, "model_name_or_path": "tiny-mistral", "dataset_name": str(data),
                            "output_dir": str(tmp_path / task), "max_steps": 1, "use_cpu": True,
                            "disable_tqdm": True, "max_length": 64, "per_device_train_batch_size": 2, **options})
    policy = tiny_family_model("mistral", vocab_size=len(tok))
    ref = tiny_family_model("mistral", vocab_size=len(tok)) if task == "dpo" else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = (SFTTrainer if task == "sft" else Trainer)(cfg, policy=policy, ref=ref, tokenizer=tok)
    return [str(w.message) for w in caught if "custom 4-D attention mask" in str(w.message)], trainer


def test_sft_on_a_sliding_window_model_does_not_warn_about_the_layout_it_does_not_use(tmp_path, monkeypatch):
    monkeypatch.setattr(attention, "_warned", set())  # said once per reason and process: start afresh
    said, trainer = _run(tmp_path, "sft")
    assert said == [] and trainer.layout == "padded"
    assert trainer.cfg.layout == "prefix_shared"  # the user's config is kept (config.yaml, resume checks)

    said, trainer = _run(tmp_path, "dpo")
    assert len(said) == 1 and "layout 'prefix_shared'" in said[0] and "sliding" in said[0]
    assert trainer.layout == "padded"


def test_sft_packing_on_a_sliding_window_model_still_warns_about_packed(tmp_path, monkeypatch):
    monkeypatch.setattr(attention, "_warned", set())
    said, trainer = _run(tmp_path, "sft", packing=True)
    assert len(said) == 1 and "layout 'packed'" in said[0]
    assert trainer.layout == "padded"
