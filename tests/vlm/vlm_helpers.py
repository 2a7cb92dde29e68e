import numpy as np
import torch
from PIL import Image

from preflab.models.tiny_vlm import tiny_vlm, tiny_vlm_processor

torch.set_num_threads(1)


def image(color, size=(24, 16), seed=0):
    """A solid-colour image with a little noise (different seeds give different pixels)."""
    rng = np.random.default_rng(seed)
    base = np.zeros((size[1], size[0], 3), dtype=np.int64) + np.array(color)
    return Image.fromarray(np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype("uint8"))


def pair_row(question="what colour is it?", chosen="red", rejected="blue", color=(200, 20, 20), seed=0, n=1):
    return {"images": [image(color, seed=seed + i) for i in range(n)],
            "prompt": [{"role": "user", "content": [{"type": "image"}] * n + [{"type": "text", "text": question}]}],
            "chosen": [{"role": "assistant", "content": [{"type": "text", "text": chosen}]}],
            "rejected": [{"role": "assistant", "content": [{"type": "text", "text": rejected}]}]}


_CACHE = {}


def tiny(arch):
    if arch not in _CACHE:
        processor = tiny_vlm_processor(arch)
        _CACHE[arch] = processor
    processor = _CACHE[arch]
    return tiny_vlm(processor, arch, seed=0), processor
