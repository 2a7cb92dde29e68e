"""`preflab demo vlm`: SFT then DPO a tiny image-text model on a synthetic visual task with a known answer.

Task "shape colour": a generated image shows one shape (square, circle or triangle; random place and size; a little
pixel noise) in one of four colours; the question is "What colour is the shape?"; the true reward of an answer is
1 when its first word is the shape's colour, else 0. The SFT data answers correctly only `correct_fraction` of the
time and otherwise says "red" (a biased annotator), so the SFT model is mostly right on red shapes only; the
preference pairs prefer the true colour over "red" (or, for red shapes, over another colour). DPO (with the chosen
answer's NLL added, as in RPO) should raise the greedy answer's accuracy on held-out images it never saw.

Everything is built in code (a tiny random Qwen2-VL from a config with a PIL image processor, the images, the rows)
and goes through the real path: jsonl + PNG files -> vision rows -> processor -> VisionTrainer (TrainingRun +
step.py). Writes summary.json (true_reward_before / true_reward_after on held-out images, greedy), the DPO run in
dpo/ (model_dir: reloads with AutoModelForImageTextToText) and report.html with example images and answers.
"""
from __future__ import annotations

import base64
import html
import io
import json
import random
import time
from pathlib import Path
from statistics import mean

import torch

# summary.json's `about` (as the text demo's), which `preflab report` on the demo folder shows above the numbers: it
# showed true_reward_before / _after with nothing saying that they are a colour accuracy
ABOUT = ("What this demo shows: preference optimization moves an image-text model toward what its preference pairs "
         "reward. A tiny Qwen2-VL is supervised-tuned on answers to \"What colour is the shape?\" from an annotator "
         "biased to \"red\", then trained with DPO (plus the chosen answer's NLL) on pairs that prefer the true "
         "colour. True reward: 1 when the greedy answer's first word is the shape's colour, else 0, averaged over "
         "held-out images (the colour accuracy), after SFT (before) and after DPO (after).")

COLOURS = {"red": (215, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 215), "yellow": (225, 205, 40)}
SHAPES = ("square", "circle", "triangle")
QUESTION = "What colour is the shape?"
SFT = dict(loss_type="sft", learning_rate=3e-3, per_device_train_batch_size=16, max_steps=160, warmup_steps=5,
           lr_scheduler_type="cosine")
# DPO plus the chosen answer's NLL (RPO's recipe, weight 1): pure sigmoid DPO on this tiny model lowers "red" but
# lets the freed probability drift to junk tokens (measured: accuracy 0.23 -> 0.42 with garbled answers)
DPO = dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 1.0], beta=0.5, learning_rate=3e-4,
           per_device_train_batch_size=16, max_steps=60, warmup_steps=5, lr_scheduler_type="cosine")


def draw(colour: str, shape: str, rng: random.Random, size: int = 24):
    """An RGB image: one filled shape of `colour` on a light background, random box, mild noise."""
    import numpy as np
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (240, 240, 240))
    d = ImageDraw.Draw(img)
    w = rng.randint(size // 3, size - 4)
    x0, y0 = rng.randint(0, size - w), rng.randint(0, size - w)
    box = (x0, y0, x0 + w - 1, y0 + w - 1)
    fill = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in COLOURS[colour])
    if shape == "square":
        d.rectangle(box, fill=fill)
    elif shape == "circle":
        d.ellipse(box, fill=fill)
    else:
        d.polygon([(x0 + w // 2, y0), (x0, y0 + w - 1), (x0 + w - 1, y0 + w - 1)], fill=fill)
    arr = np.asarray(img).astype(np.int64) + np.array(
        [[[rng.randint(-6, 6) for _ in range(3)] for _ in range(size)] for _ in range(size)])
    return Image.fromarray(arr.clip(0, 255).astype("uint8"))


def true_reward(colour: str, answer: str) -> float:
    words = answer.strip().lower().replace(".", " ").split()
    return 1.0 if words and words[0] == colour else 0.0


def _prompt():
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]


def _say(text: str) -> list[dict]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def make_data(out: Path, seed: int, n_train: int, n_heldout: int, correct_fraction: float = 0.4):
    """Writes images and sft.jsonl / pairs.jsonl under out/data; returns (sft file, pairs file, held-out items)."""
    rng = random.Random(seed)
    data = out / "data"
    (data / "images").mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    sft, pairs, heldout = [], [], []
    for i in range(n_train + n_heldout):
        colour, shape = rng.choice(names), rng.choice(SHAPES)
        image = draw(colour, shape, rng)
        if i >= n_train:
            heldout.append({"colour": colour, "shape": shape, "image": image})
            continue
        name = f"images/{i:04d}.png"
        image.save(data / name)
        said = colour if rng.random() < correct_fraction else "red"
        sft.append({"images": [name], "prompt": _prompt(), "chosen": _say(said), "rejected": _say("none")})
        wrong = "red" if colour != "red" else rng.choice([c for c in names if c != "red"])
        pairs.append({"images": [name], "prompt": _prompt(), "chosen": _say(colour), "rejected": _say(wrong)})
    for name, rows in (("sft", sft), ("pairs", pairs)):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data / "sft.jsonl", data / "pairs.jsonl", heldout


@torch.no_grad()
def greedy_answers(model, processor, images, max_new_tokens: int = 4) -> list[str]:
    """Greedy answers to QUESTION for each image (one batch, left padding)."""
    model.eval()
    tok = processor.tokenizer
    text = processor.apply_chat_template(_prompt(), add_generation_prompt=True, tokenize=False)
    tok.padding_side = "left"
    try:
        enc = processor(text=[text] * len(images), images=list(images), return_tensors="pt", padding=True)
    finally:
        tok.padding_side = "right"
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id)
    return [tok.decode(row[enc["input_ids"].shape[1]:], skip_special_tokens=True).strip() for row in out]


def evaluate(model, processor, heldout) -> tuple[float, list[str]]:
    answers = []
    for i in range(0, len(heldout), 32):
        answers += greedy_answers(model, processor, [h["image"] for h in heldout[i:i + 32]])
    return mean(true_reward(h["colour"], a) for h, a in zip(heldout, answers)), answers


def run_vlm_demo(output_dir: str = "outputs/demo-vlm", seed: int = 0, quiet: bool = False, n_train: int = 320,
                 n_heldout: int = 64, sft_steps: int | None = None, dpo_steps: int | None = None) -> dict:
    from preflab.config import config_from_dict
    from preflab.loops.vlm import VisionTrainer
    from preflab.models.load import frozen_copy
    from preflab.models.tiny_vlm import tiny_vlm, tiny_vlm_processor
    from preflab.runlog import write_summary

    torch.set_num_threads(1)
    started = time.perf_counter()
    out = Path(output_dir)
    say = (lambda *a: None) if quiet else print
    sft_file, pair_file, heldout = make_data(out, seed, n_train, n_heldout)
    processor = tiny_vlm_processor("qwen2_vl")
    model = tiny_vlm(processor, "qwen2_vl", hidden_size=64, num_layers=2, seed=seed)
    common = dict(task="vlm", model_name_or_path="builtin:tiny-qwen2-vl", seed=seed, logging_steps=10,
                  disable_tqdm=quiet, use_cpu=True, max_length=128, freeze_vision_tower=False)
    say("preflab demo vlm: stage 1/3, supervised tuning (the annotator says 'red' 60% of the time)")
    sft_cfg = config_from_dict({**common, **SFT, "dataset_name": str(sft_file), "output_dir": str(out / "sft"),
                                **({"max_steps": sft_steps} if sft_steps else {})})
    VisionTrainer(sft_cfg, policy=model, ref=None, processor=processor).train()
    before, answers_before = evaluate(model, processor, heldout)
    say(f"preflab demo vlm: colour accuracy of greedy answers on {len(heldout)} held-out images after SFT: "
        f"{before:.3f}")
    say("preflab demo vlm: stage 2/3, DPO on pairs that prefer the true colour")
    # the reference is the SFT model (saved in sft/): recorded, so that `preflab eval dpo/ --task vlm` compares with it
    dpo_cfg = config_from_dict({**common, **DPO, "dataset_name": str(pair_file), "output_dir": str(out / "dpo"),
                                "ref_model_name_or_path": str((out / "sft").resolve()),
                                **({"max_steps": dpo_steps} if dpo_steps else {})})
    VisionTrainer(dpo_cfg, policy=model, ref=frozen_copy(model), processor=processor).train()
    after, answers_after = evaluate(model, processor, heldout)
    say(f"preflab demo vlm: stage 3/3, accuracy after DPO: {after:.3f} (before {before:.3f})")
    examples = [{"colour": h["colour"], "shape": h["shape"], "before": b, "after": a}
                for h, b, a in zip(heldout, answers_before, answers_after)]
    summary = {"about": ABOUT, "task": "shape-colour", "true_reward_before": before, "true_reward_after": after,
               "improvement": after - before, "heldout_images": len(heldout), "seed": seed,
               "model_dir": str(out / "dpo"), "sft_dir": str(out / "sft"),
               "runtime_s": time.perf_counter() - started, "examples": examples[:12]}
    summary["report"] = str(write_report(out, summary, heldout[:12]))
    write_summary(out, summary)
    return summary


def _png_data_uri(image, scale: int = 4) -> str:
    buf = io.BytesIO()
    image.resize((image.width * scale, image.height * scale), resample=0).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def write_report(out: Path, summary: dict, shown) -> Path:
    """report.html: the scores and a table of held-out images with the answers before and after DPO."""
    rows = []
    for h, ex in zip(shown, summary["examples"]):
        mark = lambda a: "&#10003;" if true_reward(h["colour"], a) else "&#10007;"  # noqa: E731
        rows.append(f"<tr><td><img src='{_png_data_uri(h['image'])}'></td><td>{h['colour']} {h['shape']}</td>"
                    f"<td>{html.escape(ex['before'])} {mark(ex['before'])}</td>"
                    f"<td>{html.escape(ex['after'])} {mark(ex['after'])}</td></tr>")
    page = (f"<html><head><meta charset='utf-8'><title>preflab demo vlm</title></head><body>"
            f"<h1>preflab demo vlm: shape colour</h1><p>Greedy colour accuracy on {summary['heldout_images']} "
            f"held-out images: <b>{summary['true_reward_before']:.3f}</b> after SFT, "
            f"<b>{summary['true_reward_after']:.3f}</b> after DPO ({summary['runtime_s']:.0f} s).</p>"
            f"<table border=1 cellpadding=4><tr><th>image</th><th>truth</th><th>after SFT</th><th>after DPO</th></tr>"
            + "".join(rows) + "</table></body></html>")
    path = out / "report.html"
    path.write_text(page)
    return path
