"""Reading one image of a data row: a path (relative to the data file's folder, else to the working directory, as
for VLM rows: preflab.data.media), raw bytes, a datasets Image
dict ({"bytes": ..., "path": ...}) or a PIL image -> uint8 tensor [3, S, S] at the run's square resolution.

Resizing (when allowed) is Diffusion-DPO's preprocessing: shorter side to S (bicubic), then a centre crop
(the released trainers crop at random and flip; preflab keeps every image fixed so that its latent can be cached).
Modes RGB, RGBA (alpha dropped onto white), L, LA and P are converted to RGB; other modes (16-bit, float, CMYK) are
refused: their conversion would change the picture silently.
"""
from __future__ import annotations

import io
from pathlib import Path

import torch

from preflab.data.media import local_path, rgb_on_white
from preflab.data.report import RowProblem

CONVERTIBLE_MODES = ("RGB", "RGBA", "L", "LA", "P")


def _open(value, field: str, base_dir: Path | None):
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        from preflab.data.media import refuse_text_bytes

        refuse_text_bytes(value, field)
        if value.get("bytes"):
            value = value["bytes"]
        elif value.get("path"):
            value = value["path"]
        else:
            raise RowProblem("bad_image", field, "the image dict has neither 'bytes' nor 'path'",
                             "Give an image file path, bytes, or a datasets Image value.")
    where = ""  # the file an unreadable image came from (user trial 22: the error named the row, not the file)
    try:
        if isinstance(value, (bytes, bytearray, memoryview)):
            image = Image.open(io.BytesIO(bytes(value)))
        elif isinstance(value, str) and value:
            path = local_path(value, None if base_dir is None else str(base_dir))
            if not path.is_file():
                raise RowProblem("missing_image", field, f"image file {str(path)!r} does not exist",
                                 "Check the path (relative paths are read from the data file's folder, else from "
                                 "the working directory).")
            where = f"image file {str(path)!r} "
            image = Image.open(path)
        else:
            raise RowProblem("bad_image", field, f"expected an image path, bytes or a PIL image, got "
                                                 f"{type(value).__name__}", "")
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise RowProblem("bad_image", field, f"{where or 'the image '}cannot be read ({type(err).__name__}: {err})",
                         "Replace the file or drop the row.") from err
    return image


def _to_rgb(image, field: str):
    if image.mode not in CONVERTIBLE_MODES:
        raise RowProblem("bad_image_mode", field, f"image mode {image.mode!r} is not one of {CONVERTIBLE_MODES}",
                         "Convert the image to 8-bit RGB.")
    return rgb_on_white(image)


def load_image(value, field: str, resolution: int, resize: bool = True, base_dir: Path | None = None) -> torch.Tensor:
    """uint8 [3, resolution, resolution]; RowProblem(reason, field, ...) for an unreadable image, a mode that cannot
    be converted, or (resize=False) a size other than resolution x resolution."""
    from PIL import Image

    image = _to_rgb(_open(value, field, base_dir), field)
    w, h = image.size
    if (w, h) != (resolution, resolution):
        if not resize:
            raise RowProblem("bad_image_size", field, f"the image is {w}x{h}, not {resolution}x{resolution}",
                             "Resize the images or set image_resize: true.")
        scale = resolution / min(w, h)
        image = image.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))),
                             Image.BICUBIC)
        w, h = image.size
        left, top = (w - resolution) // 2, (h - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return data.reshape(resolution, resolution, 3).permute(2, 0, 1).contiguous()


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float32 in [-1, 1] (the VAE's input range)."""
    return images.float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] [B, 3, H, W] -> uint8 (clamped)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
