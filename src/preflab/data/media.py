"""Images and videos of a row -> PIL images, or a RowProblem naming the field.

Images (TRL's `images` column, one entry per {"type": "image"} part of the prompt): a PIL image, a file path
(absolute, or relative to the data file's folder), raw encoded bytes, a `datasets` Image dict
({"bytes": ..., "path": ...}) or an H x W x 3 uint8 array / nested list. Every image is converted to RGB, transparency
(RGBA, LA, a palette's transparent colour) composited onto white as transformers' `convert_to_rgb` does (the image
processors' `do_convert_rgb`, so the pixels equal those TRL's DPOTrainer hands the model; dropping the alpha channel
would turn a transparent background black). 16/32-bit and float images (modes I, I;16, F) are refused: PIL's
conversion clips them to 0..255 rather than rescaling.

Videos (`videos` column): a list of frames (each frame any image form above), or a video file decoded with PyAV
(`pip install av`) when it is installed; a video file without PyAV is a RowProblem that says what to install.
`max_frames` frames are kept, evenly spaced (first and last included).
"""
from __future__ import annotations

import io
import os
from pathlib import Path

from preflab.data.report import RowProblem

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")


def refuse_text_bytes(value, field: str) -> None:
    """A {"bytes": ...} image dict whose bytes are text (a JSON export of a datasets Image column holds them as a
    base64 or escaped string) would be read as a file path and reported missing under a name made of the image's
    bytes: said for what it is."""
    if isinstance(value, dict) and isinstance(value.get("bytes"), str) and value["bytes"]:
        raise RowProblem("bad_image", field, f"the image dict's 'bytes' holds text ({value['bytes'][:24]!r}...), not "
                         "bytes", "JSON cannot hold bytes: decode the text to bytes before training (base64."
                         "b64decode for base64), store the rows as Parquet / a datasets folder, or give image paths.")


def load_image(value, field: str, base_dir: str | None = None):
    """One image in any accepted form -> an RGB PIL image."""
    from PIL import Image, UnidentifiedImageError

    refuse_text_bytes(value, field)
    where = ""  # the file an unreadable image came from (user trial 22: the error named the row, not the file)
    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, dict) and (value.get("bytes") is not None or value.get("path")):
            return load_image(value["bytes"] if value.get("bytes") is not None else value["path"], field, base_dir)
        elif isinstance(value, (bytes, bytearray)):
            image = Image.open(io.BytesIO(bytes(value)))
            image.load()
        elif isinstance(value, (str, os.PathLike)):
            path = local_path(value, base_dir)
            if not path.exists():
                raise RowProblem("bad_image", field, f"image file {str(value)!r} does not exist"
                                 + (f" (looked for {str(path)!r})" if str(path) != str(value) else ""),
                                 "Give an absolute path, or one relative to the data file's folder.")
            where = f"image file {str(path)!r}: "
            image = Image.open(path)
            image.load()
        elif hasattr(value, "__array__") or isinstance(value, list):
            import numpy as np

            array = np.asarray(value)
            if array.ndim != 3 or array.shape[-1] != 3 or array.dtype.kind not in "ui" or array.size == 0:
                raise RowProblem("bad_image", field, f"an array image must be H x W x 3 integers in 0..255, got "
                                 f"shape {tuple(array.shape)} of {array.dtype}")
            image = Image.fromarray(array.astype("uint8"))
        else:
            raise RowProblem("bad_image", field, f"cannot read an image from a {type(value).__name__}",
                             "Give a PIL image, a file path, encoded bytes or {'bytes': ..., 'path': ...}.")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise RowProblem("bad_image", field, f"{where}not a readable image ({err})",
                         "Replace the file or drop the row." if where else "") from err
    if image.width < 1 or image.height < 1:
        raise RowProblem("bad_image", field, f"empty image ({image.width} x {image.height})")
    if image.mode.startswith(("I", "F")):  # 32-bit int, 16-bit (I;16*) and float images
        raise RowProblem("bad_image_mode", field, f"image mode {image.mode!r} (16/32-bit or float): PIL's conversion "
                         "to 8-bit RGB clips its values instead of rescaling them (a 16-bit PNG turns almost all "
                         "white, a float image in [0, 1] black)",
                         "Convert the image to 8-bit (e.g. scale its values to 0..255) before training.")
    return rgb_on_white(image)


def rgb_on_white(image):
    """A PIL image -> RGB; an image with transparency (an alpha band, or a palette / L / RGB image whose `transparency`
    names a colour) is composited onto white first, as transformers.image_transforms.convert_to_rgb."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        from PIL import Image

        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def local_path(value, base_dir: str | None) -> Path:
    """A relative path is read from the data file's folder (base_dir) first, then from the working directory: a file
    of the same name in the working directory must not replace the row's own image."""
    path = Path(value).expanduser()
    if path.is_absolute() or not base_dir:
        return path
    beside = Path(base_dir) / path
    return beside if beside.exists() or not path.exists() else path


def load_images(values, field: str, base_dir: str | None = None) -> list:
    if values is None:
        return []
    if not isinstance(values, (list, tuple)):
        values = [values]
    return [load_image(v, f"{field}[{i}]", base_dir) for i, v in enumerate(values)]


def load_video(value, field: str, base_dir: str | None = None, max_frames: int = 8) -> list:
    """A video (a list of frames, or a file decoded with PyAV) -> at most `max_frames` RGB frames."""
    if isinstance(value, (str, os.PathLike)) and str(value).lower().endswith(VIDEO_SUFFIXES):
        frames = _decode_video_file(value, field, base_dir)
    elif isinstance(value, (list, tuple)):
        frames = [load_image(f, f"{field}[{i}]", base_dir) for i, f in enumerate(value)]
    else:
        raise RowProblem("bad_video", field, f"a video must be a list of frames or a video file "
                         f"({', '.join(VIDEO_SUFFIXES)}), got {type(value).__name__}")
    if not frames:
        raise RowProblem("bad_video", field, "the video has no frames")
    if len(frames) > max_frames:
        step = (len(frames) - 1) / (max_frames - 1) if max_frames > 1 else 0
        frames = [frames[round(i * step)] for i in range(max_frames)]
    return frames


def _decode_video_file(value, field: str, base_dir: str | None) -> list:
    path = local_path(value, base_dir)
    if not path.exists():
        raise RowProblem("bad_video", field, f"video file {str(value)!r} does not exist"
                         + (f" (looked for {str(path)!r})" if str(path) != str(value) else ""))
    try:
        import av
    except ImportError as err:
        raise RowProblem("bad_video", field, f"decoding the video file {str(value)!r} needs PyAV, which is not "
                         "installed", "Run `pip install av`, or give the video as a list of frame images.") from err
    try:
        with av.open(str(path)) as container:
            return [frame.to_image().convert("RGB") for frame in container.decode(video=0)]
    except Exception as err:  # PyAV raises its own error types
        raise RowProblem("bad_video", field, f"cannot decode {str(value)!r} ({err})") from err
