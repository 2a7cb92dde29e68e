"""Vision-R1 GRPO on an image-text model with its box rewards (format + precision + recall), offline on a tiny
random Qwen2-VL by default:

    python examples/vlm/vision_r1_grpo.py                       # tiny model, synthetic boxes, 4 steps, CPU
    python examples/vlm/vision_r1_grpo.py --model Qwen/Qwen2.5-VL-3B-Instruct --steps 500   # on a GPU

Each row: one image with a coloured square, the question, and Vision-R1's `solution` column (JSON
[[label, [x1, y1, x2, y2]]] in image pixels). Recipe (methods §18): loss_type grpo, beta 0.04, G = 8 on a GPU.
"""
from __future__ import annotations

import argparse
import json
import random

from PIL import Image, ImageDraw


def make_rows(n: int, seed: int = 0, size: int = 32) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        w = rng.randint(8, 16)
        x, y = rng.randint(0, size - w), rng.randint(0, size - w)
        img = Image.new("RGB", (size, size), (240, 240, 240))
        ImageDraw.Draw(img).rectangle((x, y, x + w - 1, y + w - 1), fill=(210, 40, 40))
        rows.append({"images": [img], "prompt": 'Locate the red square. Answer as JSON [{"bbox_2d": [x1, y1, x2, y2], '
                     '"label": "square"}].', "solution": json.dumps([["square", [x, y, x + w - 1, y + w - 1]]])})
    return rows


def main() -> None:
    from preflab.loops.vlm_grpo import vision_grpo_train
    from preflab.verifiers.vision_r1 import vision_r1_rewards

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin:tiny-qwen2-vl")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--output-dir", default="outputs/vision-r1-grpo")
    args = ap.parse_args()
    if args.model.startswith("builtin:"):
        from preflab.models.tiny_vlm import BUILTIN_VLM, tiny_vlm, tiny_vlm_processor

        processor = tiny_vlm_processor(BUILTIN_VLM[args.model])
        policy = tiny_vlm(processor, BUILTIN_VLM[args.model]).train()
        options = dict(num_generations=4, prompts_per_step=2, max_completion_length=16, learning_rate=1e-4)
    else:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        processor = AutoProcessor.from_pretrained(args.model)
        policy = AutoModelForImageTextToText.from_pretrained(args.model, dtype=torch.bfloat16).cuda()
        options = dict(num_generations=8, prompts_per_step=4, max_completion_length=256, learning_rate=1e-6)
    summary = vision_grpo_train(policy, processor, make_rows(64), vision_r1_rewards(), max_steps=args.steps,
                                beta=0.04, loss_type="grpo", output_dir=args.output_dir, **options)
    print(json.dumps({k: v for k, v in summary["final_metrics"].items() if k.startswith(("reward", "loss", "kl"))},
                     indent=1))


if __name__ == "__main__":
    main()
