"""Pairwise objectives on a VLM through the offline trainer (task: vlm)."""
import json

import torch
import torch.nn.functional as F

from preflab.config import config_from_dict
from preflab.data.vision import read_vision_pairs, tokenize_vision_pairs
from preflab.loops.vlm import VisionTrainer
from preflab.models.load import frozen_copy
from preflab.scoring.vlm import naive_vision_token_logps

from vlm_helpers import image, pair_row, tiny


def _cfg(tmp_path, **kw):
    base = dict(task="vlm", model_name_or_path="builtin:tiny-qwen2-vl", dataset_name="unused",
                output_dir=str(tmp_path / "run"), per_device_train_batch_size=2, learning_rate=1e-3, max_steps=2,
                logging_steps=1, disable_tqdm=True, report_to="none", use_cpu=True)
    return config_from_dict({**base, **kw})


def _rows():
    colours = [((200, 20, 20), "red"), ((20, 200, 20), "green"), ((20, 20, 200), "blue"), ((200, 200, 20), "yellow")]
    return [pair_row("what colour is the image?", f"it is {c}", f"it is {colours[(i + 1) % 4][1]}", rgb, seed=i)
            for i, (rgb, c) in enumerate(colours)]


def test_dpo_loss_through_trainer_equals_objective_on_full_forward(tmp_path, arch):
    model, processor = tiny(arch)
    ref = frozen_copy(model)
    examples, _ = read_vision_pairs(_rows())
    pairs, _, _ = tokenize_vision_pairs(examples, processor)
    cfg = _cfg(tmp_path, model_name_or_path=f"builtin:tiny-{arch.replace('_', '-')}", beta=0.5)
    trainer = VisionTrainer(cfg, policy=model, ref=ref, processor=processor, train_data=pairs)
    mb = trainer.micro_batches(0)[0]
    out = trainer.forward(mb)
    with torch.no_grad():
        pol = naive_vision_token_logps(model, mb.layout).sum(-1)
        rf = naive_vision_token_logps(ref, mb.layout).sum(-1)
    b = len(mb.row_ids)
    z = (pol[:b] - rf[:b]) - (pol[b:] - rf[b:])
    expected = -F.logsigmoid(0.5 * z).mean()
    assert torch.allclose(out.loss.detach(), expected, atol=1e-5)
    # a few steps of DPO raise the chosen-vs-rejected margin on the training pairs
    before = float(z.mean())
    trainer.train()
    with torch.no_grad():
        pol2 = naive_vision_token_logps(model, mb.layout).sum(-1)
    after = float(((pol2[:b] - rf[:b]) - (pol2[b:] - rf[b:])).mean())
    assert after > before + 0.05


def test_rrpo_phrase_ids_are_token_aligned_and_reach_the_objective(tmp_path):
    model, processor = tiny("qwen2_vl")
    ref = frozen_copy(model)
    examples, _ = read_vision_pairs(_rows()[:2])
    pairs, _, _ = tokenize_vision_pairs(examples, processor, phrase_ids=True)
    tok = processor.tokenizer
    for p in pairs:  # one id per response token; the differing colour word carries phrase 1, the rest 0
        assert len(p.extras["chosen_phrase_ids"]) == len(p.chosen_ids)
        marked = [t for t, k in zip(p.chosen_ids, p.extras["chosen_phrase_ids"]) if k == 1]
        assert tok.decode(marked).strip() in ("red", "green")
        assert set(p.extras["rejected_phrase_ids"]) == {0, 1}
    cfg = _cfg(tmp_path, loss_type="rrpo", beta=0.5, alpha=0.1)
    trainer = VisionTrainer(cfg, policy=model, ref=ref, processor=processor, train_data=pairs)
    mb = trainer.micro_batches(0)[0]
    out = trainer.forward(mb)
    with torch.no_grad():
        pol = naive_vision_token_logps(model, mb.layout)
        rf = naive_vision_token_logps(ref, mb.layout)
    b = len(mb.row_ids)
    h = pol - rf
    ids = mb.layout.extras
    u = (h[:b] * (ids["chosen_phrase_ids"] > 0)).sum(-1) - (h[b:] * (ids["rejected_phrase_ids"] > 0)).sum(-1)
    # at policy == reference the token KL is 0, so the loss is -log sigmoid(beta * u) = log 2
    assert torch.allclose(u, torch.zeros_like(u), atol=1e-6)
    assert abs(float(out.loss) - float(torch.log(torch.tensor(2.0)))) < 1e-5
    trainer.train()
    out2 = trainer.forward(mb)
    with torch.no_grad():
        pol = naive_vision_token_logps(model, mb.layout)
        kl_free = -F.logsigmoid(0.5 * ((pol[:b] - rf[:b]) * (ids["chosen_phrase_ids"] > 0)).sum(-1)
                                + -0.5 * ((pol[b:] - rf[b:]) * (ids["rejected_phrase_ids"] > 0)).sum(-1))
    assert float(out2.loss) > float(kl_free.mean()) - 1e-6  # the chosen-side KL term (alpha * D >= 0) is added
    assert float(out2.loss) < float(torch.log(torch.tensor(2.0)))


def test_cli_train_and_reload_with_frozen_vision_tower(tmp_path):
    from transformers import AutoModelForImageTextToText

    from preflab.cli import main
    from preflab.models.tiny_vlm import tiny_vlm, tiny_vlm_processor
    from preflab.models.vlm import is_vision_tower

    data = tmp_path / "pairs.jsonl"
    with data.open("w") as f:
        for i, row in enumerate(_rows()):
            name = f"img{i}.png"
            row["images"][0].save(tmp_path / name)
            f.write(json.dumps({**row, "images": [name]}) + "\n")
    out = tmp_path / "run"
    rc = main(["train", "task=vlm", "model_name_or_path=builtin:tiny-llava", f"dataset_name={data}",
               f"output_dir={out}", "max_steps=2", "per_device_train_batch_size=2", "learning_rate=1e-2",
               "logging_steps=1", "disable_tqdm=true", "loss_type=ipo", "seed=0"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == 2 and summary["data"]["train_tokenize"]["pairs"] == 4
    trained = AutoModelForImageTextToText.from_pretrained(str(out))
    start = tiny_vlm(tiny_vlm_processor("llava"), "llava", seed=0)
    start_params = dict(start.named_parameters())
    moved = {n: not torch.equal(p, start_params[n]) for n, p in trained.named_parameters()}
    assert not any(m for n, m in moved.items() if is_vision_tower(n))  # the tower was frozen
    assert any(m for n, m in moved.items() if "language_model" in n)


def test_lora_goes_on_the_language_model_only(tmp_path):
    from preflab.models.vlm import is_vision_tower, load_vlm

    cfg = _cfg(tmp_path, use_peft=True, lora_r=4)
    policy, ref, _ = load_vlm(cfg)
    assert ref is None  # the reference is the policy with adapters off
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    assert not any("lora_" in n and is_vision_tower(n) for n, _ in policy.named_parameters())


def test_bad_rows_name_row_and_field(tmp_path):
    import pytest

    from preflab.errors import DataError

    rows = _rows()[:2]
    rows[1] = dict(rows[1], images=[image((1, 2, 3)), image((3, 2, 1))])
    with pytest.raises(DataError, match=r"row 1.*'images'.*2 image"):
        read_vision_pairs(rows)
    rows[1] = dict(_rows()[1], images=["does-not-exist.png"])
    with pytest.raises(DataError, match=r"row 1.*images\[0\].*does not exist"):
        read_vision_pairs(rows)
    rows[1] = dict(_rows()[1], images=[b"not an image"])
    with pytest.raises(DataError, match=r"row 1.*images\[0\].*not a readable image"):
        read_vision_pairs(rows)
    rows[1] = dict(_rows()[1], videos=[[image((1, 2, 3))]])  # a video without a {"type": "video"} part
    with pytest.raises(DataError, match=r"row 1.*videos.*1 video"):
        read_vision_pairs(rows)
    examples, report = read_vision_pairs(rows, on_bad_row="skip")
    assert len(examples) == 1 and report.skipped == {"video_count_mismatch": 1}
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")
    rows[1] = dict(_rows()[1], videos=[str(clip)])
    rows[1]["prompt"] = [{"role": "user", "content": [{"type": "image"}, {"type": "video"}, {"type": "text",
                                                                                           "text": "q"}]}]
    try:
        import av  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match=r"row 1.*videos\[0\].*pip install av"):
            read_vision_pairs(rows)


def test_resume_is_exact(tmp_path):
    _, processor = tiny("llava")
    examples, _ = read_vision_pairs(_rows())
    pairs, _, _ = tokenize_vision_pairs(examples, processor)

    def run(out, **kw):
        policy = tiny("llava")[0]
        cfg = _cfg(tmp_path, model_name_or_path="builtin:tiny-llava", output_dir=str(tmp_path / out), max_steps=4,
                   save_steps=2, **kw)
        VisionTrainer(cfg, policy=policy, ref=frozen_copy(policy), processor=processor, train_data=pairs).train()
        return policy

    straight = run("a")
    # a run stopped after its step-2 checkpoint, then resumed from it, ends with the uninterrupted run's weights
    import shutil

    shutil.copytree(tmp_path / "a" / "checkpoint-2", tmp_path / "b" / "checkpoint-2")
    resumed = run("b", resume_from_checkpoint=True)
    for (name, p), q in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name


def test_image_token_mismatch_is_a_data_error(arch):
    import pytest

    from preflab.errors import DataError

    _, processor = tiny(arch)
    token = processor.image_token
    # a literal placeholder in the prompt's text: refused when the row is read, naming it (the processor's count
    # error came later and pointed at the image parts)
    with pytest.raises(DataError, match=r"row 0, field 'prompt'.*image placeholder"):
        read_vision_pairs([pair_row(f"what is {token} this?")])
    examples, _ = read_vision_pairs([pair_row(n=2)])  # one image part too few for the processor
    examples[0].prompt[0]["content"] = [p for p in examples[0].prompt[0]["content"] if p["type"] != "image"][:1] + \
        [{"type": "image"}]
    with pytest.raises(DataError, match=r"row 0, field 'images'.*2 image\(s\) for 1 image tokens"):
        tokenize_vision_pairs(examples, processor)
    examples, _ = read_vision_pairs([pair_row(chosen=f"it is {token}")])
    with pytest.raises(DataError, match=r"row 0, field 'chosen'.*placeholder"):
        tokenize_vision_pairs(examples, processor)


def test_prompt_truncation_is_refused(tmp_path):
    import pytest

    from preflab.errors import ConfigError

    with pytest.raises(ConfigError, match="max_prompt_length"):
        VisionTrainer(_cfg(tmp_path, max_prompt_length=16))


def test_qwen2_vl_padded_fallback_is_one_preflab_note_not_a_user_warning(tmp_path, capsys):
    """Qwen2-VL's 3-D rotary positions rule out the prefix-shared layout (the default): the trainer says so once,
    as a preflab line on stdout, and raises no Python warning (it did, with a source line, on every run)."""
    import warnings

    model, processor = tiny("qwen2_vl")
    examples, _ = read_vision_pairs(_rows())
    pairs, _, _ = tokenize_vision_pairs(examples, processor)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = VisionTrainer(_cfg(tmp_path), policy=model, ref=frozen_copy(model), processor=processor,
                                train_data=pairs)
    assert trainer.layout == "padded"
    assert [str(w.message) for w in caught if "rotary" in str(w.message)] == []
    lines = [line for line in capsys.readouterr().out.splitlines() if "rotary" in line]
    assert lines == ["preflab: layout: prefix_shared needs 1-D positions, but qwen2_vl computes its own "
                     "multi-dimensional rotary positions; scoring with the padded layout (the prompt computed once "
                     "per side, same log-probs)."]


def test_vision_data_line_names_text_prompts_standard_and_message_prompts_conversational():
    """A string prompt is the standard form (its images go before the text), a message list the conversational one;
    the data line said vision_conversational for both."""
    rows = _rows()
    rows[0] = {**rows[0], "prompt": "what colour is the image?"}
    _, report = read_vision_pairs(rows)
    assert report.forms == {"vision_standard": 1, "vision_conversational": 3}
    assert "forms: vision_conversational 3, vision_standard 1" in report.summary()


def test_frozen_vision_tower_leaves_the_qwen2_vl_merger_trainable():
    """Qwen2-VL's projector lives inside the tower's module (visual.merger.*): freeze_vision_tower fixes visual.*
    but the merger, which freeze_multi_modal_projector fixes; the counts are the parameters fixed in each."""
    from preflab.models.vlm import freeze_vision, is_projector, is_vision_tower

    assert is_projector("model.visual.merger.mlp.0.weight") and not is_vision_tower("model.visual.merger.mlp.0.weight")
    assert is_vision_tower("model.visual.blocks.0.attn.qkv.weight")
    model, _ = tiny("qwen2_vl")
    merger = {n: p.numel() for n, p in model.named_parameters() if ".merger." in n}
    tower = {n: p.numel() for n, p in model.named_parameters() if ".visual." in f".{n}" and n not in merger}
    assert merger and tower
    counts = freeze_vision(model, tower=True, projector=False)
    assert counts == {"vision_tower": sum(tower.values()), "projector": 0}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(merger) <= trainable and not set(tower) & trainable
    assert freeze_vision(model, tower=False, projector=True)["projector"] == sum(merger.values())
