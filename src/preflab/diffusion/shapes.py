"""A synthetic text-to-image family with a known true reward: coloured shapes on a dark background.

Caption "a red square" / "a blue disc" / ...; an image is a shape of one of COLOURS filling about a third of a dark
grey canvas. The true reward of an image for a caption is how much the caption's colour dominates inside the
image's brightest region:

    r(x, c) = mean over the 10% most saturated pixels of ( x[c] - max over the other channels ), in [-1, 1]

(x in [-1, 1], channels RGB). A preference pair for a caption is (the shape in the caption's colour, the same shape in
another colour), so the preferred image scores about +1.6 higher. Used by `preflab demo diffusion` and the tests.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

COLOURS = {"red": (230, 40, 40), "green": (40, 200, 40), "blue": (40, 60, 230)}
SHAPES = ("square", "disc")
BACKGROUND = 40


def draw(colour: str, shape: str, size: int, generator: torch.Generator) -> torch.Tensor:
    """uint8 [3, size, size]: the shape at a random centre and radius."""
    r = int(torch.randint(size // 5, size // 3 + 1, (1,), generator=generator))
    cy, cx = (int(v) for v in torch.randint(r, size - r + 1, (2,), generator=generator))
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    if shape == "square":
        mask = ((yy - cy).abs() < r) & ((xx - cx).abs() < r)
    else:
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    image = torch.full((3, size, size), BACKGROUND, dtype=torch.uint8)
    for ch, value in enumerate(COLOURS[colour]):
        image[ch][mask] = value
    return image


def caption_colour(caption: str, favourite: str | None = None) -> str:
    if favourite is not None:
        return favourite
    for name in COLOURS:
        if name in caption.split():
            return name
    raise ValueError(f"caption {caption!r} names none of the colours {list(COLOURS)}")


def true_reward(images: torch.Tensor, captions: list[str], favourite: str | None = None) -> torch.Tensor:
    """[N] float: r(x, c) of the module docstring for uint8 images [N, 3, S, S] (favourite: the rater's colour
    instead of the caption's)."""
    x = images.float() / 127.5 - 1.0
    out = []
    for img, caption in zip(x, captions):
        c = list(COLOURS).index(caption_colour(caption, favourite))
        others = torch.stack([img[k] for k in range(3) if k != c]).amax(0)
        saturation = img.amax(0) - img.amin(0)
        k = max(1, saturation.numel() // 10)
        top = saturation.flatten().topk(k).indices
        out.append((img[c].flatten()[top] - others.flatten()[top]).mean())
    return torch.stack(out)


def captions(n: int, generator: torch.Generator, favourite: str | None = None) -> list[str]:
    """"a <colour> <shape>"; with a favourite colour (a rater who prefers it whatever the caption says), "a <shape>"."""
    names = list(COLOURS)
    picks = torch.randint(0, len(names) * len(SHAPES), (n,), generator=generator).tolist()
    if favourite is not None:
        return [f"a {SHAPES[p // len(names)]}" for p in picks]
    return [f"a {names[p % len(names)]} {SHAPES[p // len(names)]}" for p in picks]


def pair_rows(n: int, size: int, seed: int, favourite: str | None = None) -> list[dict]:
    """n preference rows {prompt, chosen_image, rejected_image (uint8 tensors)}: same shape, the chosen one in the
    caption's colour (or the favourite colour), the rejected one in another colour."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for caption in captions(n, g, favourite):
        colour, shape = caption_colour(caption, favourite), caption.split()[-1]
        wrong = [c for c in COLOURS if c != colour]
        other = wrong[int(torch.randint(0, len(wrong), (1,), generator=g))]
        state = g.get_state()
        chosen = draw(colour, shape, size, g)
        g.set_state(state)  # the same position and size for the rejected image
        rows.append({"prompt": caption, "chosen_image": chosen, "rejected_image": draw(other, shape, size, g)})
    return rows


def save_png(image: torch.Tensor, path: Path) -> None:
    from PIL import Image

    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(path)


def write_pair_dataset(directory: str | Path, n: int, size: int = 16, seed: int = 0, name: str = "train",
                       favourite: str | None = None) -> Path:
    """Write n rows as PNG files plus `<name>.jsonl` (paths relative to the directory; with a user_id alternating
    user0 / user1, and the true rewards as chosen_score / rejected_score); returns the jsonl path."""
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, row in enumerate(pair_rows(n, size, seed, favourite)):
        images = torch.stack([row["chosen_image"], row["rejected_image"]])
        scores = true_reward(images, [row["prompt"]] * 2, favourite).tolist()
        out = {"prompt": row["prompt"], "user_id": f"user{i % 2}", "chosen_score": round(scores[0], 4),
               "rejected_score": round(scores[1], 4)}
        for side in ("chosen_image", "rejected_image"):
            rel = f"images/{name}-{i}-{side.split('_')[0]}.png"
            save_png(row[side], directory / rel)
            out[side] = rel
        lines.append(json.dumps(out))
    path = directory / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
