"""Image preference rows -> validated examples for a diffusion run (`task: diffusion`).

Two row forms are read (the first one whose columns are present):

    Pick-a-Pic   caption, jpg_0, jpg_1, label_0 in {0, 0.5, 1} (1: image 0 preferred); optional caption_0 /
                 caption_1 (DCPO's per-image captions), ps_score_0 / ps_score_1 (SmPO's PickScore cosines)
    preflab      prompt, chosen_image, rejected_image; optional caption_chosen / caption_rejected, chosen_score /
                 rejected_score, preference_prob
    image only   prompt (or caption), image (self_npo: one image per row, no preference)
    prompt only  prompt (or caption) (self_npo, data-free: x0 is the model's own DDIM sample of the prompt)

Images are a path (relative to the data file's folder), bytes, a datasets Image dict or a PIL image. As in
Diffusion-DPO's released trainer (Salesforce train.py), ties (label_0 = 0.5) are dropped -- counted in the report
as `ties_dropped`, not as bad rows -- and label_0 = 0 swaps the two images (and their captions), so the first image is
always the preferred one. With SmPO scores the order comes from the scores (ps_label_0 = 1[ps_score_0 > ps_score_1],
the reward model, not the human label; methods §5) and preference_prob = smoothed_preference(s_w, s_l).
A user id column (`user_column`, PPD) is read when the run asks for it.

Every bad row (unreadable image, unconvertible mode, wrong size with image_resize: false, missing or empty caption,
a label outside {0, 0.5, 1}) is a DataError naming file, row and field, or skipped and counted (on_bad_row: skip).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from preflab.data.report import RowProblem, RowReport, keep_read_from, refuse_empty, row_error
from preflab.errors import DataError
from preflab.option_types import is_number

PICKAPIC = ("caption", "jpg_0", "jpg_1", "label_0")
PREFLAB = ("prompt", "chosen_image", "rejected_image")


@dataclass(frozen=True)
class ImageRef:
    """Where an image of a row is (its path, bytes or PIL value), checked once when the row is read and decoded
    again whenever it is used, so rows do not hold decoded pixels (a 512 px RGB image is 786 kB)."""

    value: Any
    field: str
    resolution: int
    resize: bool
    base_dir: Path | None

    def load(self) -> torch.Tensor:
        from preflab.diffusion.images import load_image

        return load_image(self.value, self.field, self.resolution, self.resize, self.base_dir)


@dataclass
class ImagePairExample:
    """One row. chosen / rejected: uint8 [3, S, S] decoded from their ImageRef on access (rejected None for
    image-only rows, both None for prompt-only rows); captions default to the prompt; user: the row's user id (PPD)
    or None; preference_prob: SmPO's p or None."""

    row_id: int
    prompt: str
    chosen_ref: ImageRef | None
    rejected_ref: ImageRef | None = None
    caption_chosen: str | None = None
    caption_rejected: str | None = None
    user: str | None = None
    preference_prob: float | None = None
    source: str = ""
    pixel_digest: bytes | None = field(default=None, compare=False, repr=False)  # see pair_pixel_digest

    @property
    def chosen(self) -> torch.Tensor | None:
        return None if self.chosen_ref is None else self.chosen_ref.load()

    @property
    def rejected(self) -> torch.Tensor | None:
        return None if self.rejected_ref is None else self.rejected_ref.load()

    @property
    def cond_chosen(self) -> str:
        return self.caption_chosen if self.caption_chosen is not None else self.prompt

    @property
    def cond_rejected(self) -> str:
        return self.caption_rejected if self.caption_rejected is not None else self.prompt


@dataclass
class ImageDataReport(RowReport):
    ties_dropped: int = 0
    blank_lines: int = 0  # blank JSONL / CSV lines the reader skipped (not rows)
    forms: dict = field(default_factory=dict)
    # Pick-a-Pic rows with both PickScores, which order the pair (SmPO's rule): those where that order reverses the
    # human label_0, and label_0 ties (0.5) kept as a pair by the scores (score_order_against_label)
    label_reversed_by_scores: int = 0
    label_ties_ordered_by_scores: int = 0

    def to_dict(self) -> dict:
        scored = {k: getattr(self, k) for k in ("label_reversed_by_scores", "label_ties_ordered_by_scores")
                  if getattr(self, k)}
        return {"source": self.source, "total": self.total, "kept": self.kept, "skipped": dict(self.skipped),
                "skipped_examples": list(self.skipped_examples), "ties_dropped": self.ties_dropped,
                "forms": dict(self.forms), **scored}

    def scores_note(self) -> str | None:
        """The note when PickScores ordered some pairs against (or without) their human label_0; None if none."""
        if not (self.label_reversed_by_scores or self.label_ties_ordered_by_scores):
            return None
        parts = [f"{n} {what}" for n, what in (
            (self.label_reversed_by_scores, "pair(s) whose ps_score_0 / ps_score_1 order reverses label_0"),
            (self.label_ties_ordered_by_scores, "label_0 tie(s) (0.5) kept as pairs ordered by their scores")) if n]
        return (f"{self.source}: {' and '.join(parts)}: with both PickScores the scores order a Pick-a-Pic pair "
                "(SmPO's rule, the reward model over the human label), for every loss_type. To train on the human "
                "labels, drop the ps_score_0 / ps_score_1 columns.")


def score_order_against_label(row: dict) -> str | None:
    """For a kept Pick-a-Pic row with both PickScores: 'reversed' when the scores' order (build_example's
    first_wins) contradicts label_0 (0 or 1), 'tie' when label_0 is 0.5 (a human tie the scores order); else None."""
    if not all(k in row for k in PICKAPIC):
        return None
    s0, s1, label = _number(row, "ps_score_0"), _number(row, "ps_score_1"), _number(row, "label_0")
    if s0 is None or s1 is None or s0 == s1:
        return None
    if label == 0.5:
        return "tie"
    return "reversed" if (s0 > s1) != (label == 1.0) else None


def _text(row: dict, name: str, required: bool = True) -> str | None:
    value = row.get(name)
    if not required and (value is None or value == ""):  # an empty CSV cell of an optional column
        return None
    if not isinstance(value, str) or not value.strip():
        raise RowProblem("missing_caption", name, f"expected a non-empty string, got {value!r}",
                         "Give every row its caption.")
    return value


def _number(row: dict, name: str) -> float | None:
    value = row.get(name)
    if isinstance(value, str):  # CSV cells are text: '1', '0.5', '' (empty: the column is absent for this row)
        text = value.strip()
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            raise RowProblem("bad_value", name, f"expected a finite number, got {row.get(name)!r}", "") from None
    if value is None:
        return None
    if not is_number(value) or not math.isfinite(value):
        raise RowProblem("bad_value", name, f"expected a finite number, got {value!r}", "")
    return float(value)


def _form(row: dict, image_only: bool) -> str:
    if all(k in row for k in PICKAPIC):
        return "pickapic"
    if all(k in row for k in PREFLAB):
        return "preflab"
    if image_only and "image" in row:
        return "image"
    if image_only and ("prompt" in row or "caption" in row):
        return "prompt"
    # a row with some of one form's columns lacks the others: name them (the field of the error)
    forms = (("preflab's", PREFLAB), ("Pick-a-Pic's", PICKAPIC))
    name, columns = max(forms, key=lambda f: sum(k in row for k in f[1]))  # preflab's first on a tie
    if any(k in row for k in columns):
        missing = [k for k in columns if k not in row]
        raise RowProblem("missing_field", missing[0], f"the row has no {' or '.join(map(repr, missing))} ({name} "
                         f"form is {' + '.join(columns)}; the row has {sorted(row)})",
                         "Add the missing column to every row, or rename yours.")
    wanted = "prompt + image, or " if image_only else ""
    raise RowProblem("missing_field", None, f"the row has columns {sorted(row)}; expected {wanted}"
                     f"{' + '.join(PREFLAB)} (optional caption_chosen, caption_rejected, user_id, preference_prob), "
                     f"or Pick-a-Pic's {' + '.join(PICKAPIC)}", "Rename the columns.")


def build_example(row_id: int, row: dict, *, resolution: int, resize: bool, base_dir: Path | None,
                  image_only: bool = False, user_column: str | None = None,
                  score_range: tuple[float, float] | None = None) -> ImagePairExample | None:
    """One example, or None for a dropped tie. Raises RowProblem for a bad row."""
    from preflab.diffusion.images import load_image
    from preflab.diffusion.smoothing import PICKSCORE_MAX, PICKSCORE_MIN, smoothed_preference

    form = _form(row, image_only)
    pixels: dict[str, torch.Tensor] = {}

    def image(name: str) -> ImageRef:  # read once now, so that a bad image is a bad row here
        pixels[name] = load_image(row.get(name), name, resolution, resize, base_dir)
        value = row.get(name)
        if isinstance(value, (bytearray, memoryview)):
            value = bytes(value)
        return ImageRef(value, name, resolution, resize, base_dir)

    user = None
    if user_column is not None:
        value = row.get(user_column)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise RowProblem("missing_user", user_column, "the row has no user id", "Give every row its user.")
        user = str(value)
    s_min, s_max = score_range or (PICKSCORE_MIN, PICKSCORE_MAX)
    if form in ("image", "prompt"):
        prompt = _text(row, "prompt") if "prompt" in row else _text(row, "caption")
        return ImagePairExample(row_id, prompt, image("image") if form == "image" else None, user=user)
    if form == "pickapic":
        prompt = _text(row, "caption")
        label = _number(row, "label_0")
        if label not in (0.0, 0.5, 1.0):
            raise RowProblem("bad_label", "label_0", f"label_0 must be 0, 0.5 or 1, got {row.get('label_0')!r}", "")
        s0, s1 = _number(row, "ps_score_0"), _number(row, "ps_score_1")
        if (s0 is None) != (s1 is None):  # one score orders nothing (and gave a crash or an unlabelled tie pair)
            given, missing = ("ps_score_0", "ps_score_1") if s1 is None else ("ps_score_1", "ps_score_0")
            raise RowProblem("missing_field", missing, f"the row has {given} but no {missing}: the pair's order and "
                             "SmPO's smoothed preference come from both PickScores",
                             "Give both PickScores, or neither (label_0 then orders the pair).")
        first_wins = (s0 > s1) if (s0 is not None and s1 is not None) else label == 1.0
        if s0 is None and label == 0.5:
            return None
        if s0 is not None and s0 == s1:
            return None
        c0, c1 = _text(row, "caption_0", False), _text(row, "caption_1", False)
        img0, img1 = image("jpg_0"), image("jpg_1")
        _refuse_identical(pixels, ("jpg_0", "jpg_1"), (c0 or prompt, c1 or prompt))
        if not first_wins:
            img0, img1, c0, c1, s0, s1 = img1, img0, c1, c0, s1, s0
        prob = float(smoothed_preference(torch.tensor([s0]), torch.tensor([s1]), s_min, s_max)) \
            if s0 is not None else None
        return _with_digest(ImagePairExample(row_id, prompt, img0, img1, c0, c1, user, prob), pixels)
    prompt = _text(row, "prompt")
    prob = _number(row, "preference_prob")
    if prob is not None and not 0 <= prob <= 1:
        raise RowProblem("bad_value", "preference_prob", f"must lie in [0, 1], got {prob}", "")
    sw, sl = _number(row, "chosen_score"), _number(row, "rejected_score")
    if prob is None and sw is not None and sl is not None:
        prob = float(smoothed_preference(torch.tensor([sw]), torch.tensor([sl]), s_min, s_max))
    chosen, rejected = image("chosen_image"), image("rejected_image")
    c_chosen, c_rejected = _text(row, "caption_chosen", False), _text(row, "caption_rejected", False)
    _refuse_identical(pixels, ("chosen_image", "rejected_image"), (c_chosen or prompt, c_rejected or prompt))
    return _with_digest(ImagePairExample(row_id, prompt, chosen, rejected, c_chosen, c_rejected, user, prob), pixels)


def _with_digest(example: ImagePairExample, pixels: dict[str, torch.Tensor]) -> ImagePairExample:
    """`example` with the digest of its two images' pixels, preferred first, taken while they are decoded (a later
    count of repeated pairs then decodes nothing)."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    for ref in (example.chosen_ref, example.rejected_ref):
        image = pixels[ref.field]
        h.update(repr(tuple(image.shape)).encode())
        h.update(image.contiguous().numpy().tobytes())
    example.pixel_digest = h.digest()
    return example


def repeated_image_pairs(examples: list[ImagePairExample]) -> int:
    """How many pairs repeat an earlier one: the same caption(s) and the same two images by pixels, in the same
    order (a row copied, or its images saved again under other names), as the text rows' repeats
    (preflab.data.overlap) and the vision rows' (loops.vlm.repeated_vision_pairs). Rows without a pair (self_npo's
    image-only and prompt-only rows) are not counted."""
    from preflab.data.overlap import count_repeats

    return count_repeats(image_pair_key(x) for x in examples)


def image_pair_key(example: ImagePairExample) -> tuple | None:
    """What makes two image pairs the same pair: the prompt, the caption each image is conditioned on, and the two
    images by pixels in order (pixel_digest, decoded at the run's resolution), the rule of repeated_image_pairs and
    of `preflab eval --task diffusion`'s count of the eval pairs the run trained on; None for a row without a pair
    (self_npo's image-only and prompt-only rows)."""
    if getattr(example, "pixel_digest", None) is None:
        return None
    return example.prompt, example.cond_chosen, example.cond_rejected, example.pixel_digest


def _refuse_identical(pixels: dict[str, torch.Tensor], names: tuple[str, str], captions: tuple[str, str]) -> None:
    """A pair whose two images decode to the same pixels under the same caption (the same file named twice, a copy)
    prefers an image to itself: the Diffusion-DPO term is constant, so the row trains nothing (a text pair's chosen ==
    rejected). Different captions (DCPO's per-image captions) make it a real pair."""
    a, b = (pixels[n] for n in names)
    if captions[0] == captions[1] and a.shape == b.shape and torch.equal(a, b):
        raise RowProblem("identical", names[1], f"the same pixels as {names[0]!r} (under the same caption)",
                         "A pair needs two different images; drop or fix the row.")


def load_image_pairs(source, *, split: str = "train", resolution: int, resize: bool = True,
                     on_bad_row: str = "error", image_only: bool = False, user_column: str | None = None,
                     needs_preference_prob: bool = False,
                     score_range: tuple[float, float] | None = None, option: str | None = None,
                     name=None) -> tuple[list[ImagePairExample], ImageDataReport]:
    """(examples in source order, report). Raises DataError on the first bad row unless on_bad_row == "skip".
    source: any row source, or a RowReader already opened on one (read as it was opened:
    preflab.data.sources.open_reader). option, name: what the user called the source (dataset_name and its value,
    eval_dataset_name, or preflab eval's "--data"), named by the "is empty" error (refuse_empty); None: the source
    alone."""
    from preflab.data.sources import open_reader

    reader = open_reader(source, split=split)
    report = ImageDataReport(source=reader.name)
    out = []
    for raw in reader:
        report.total += 1
        base = Path(raw.file).parent if raw.file and Path(raw.file).exists() else None
        try:
            if raw.problem is not None:
                raise raw.problem
            example = build_example(raw.row_id, raw.data, resolution=resolution, resize=resize, base_dir=base,
                                    image_only=image_only, user_column=user_column, score_range=score_range)
            if example is not None and needs_preference_prob and example.preference_prob is None:
                raise RowProblem("missing_field", "preference_prob", "this objective reads a per-pair preference "
                                 "probability", "Give preference_prob, chosen_score + rejected_score, or "
                                 "Pick-a-Pic's ps_score_0 + ps_score_1.")
        except RowProblem as problem:
            if on_bad_row == "error":
                raise row_error(problem, raw.file or reader.name, raw.row_id, raw.line) from None
            report.record_skip(problem, raw.row_id, raw.line)
            continue
        report.kept += 1
        if example is None:
            report.ties_dropped += 1
            continue
        example.source = raw.file or reader.name
        against = score_order_against_label(raw.data)
        report.label_reversed_by_scores += against == "reversed"
        report.label_ties_ordered_by_scores += against == "tie"
        form = _form(raw.data, image_only)
        report.forms[form] = report.forms.get(form, 0) + 1
        out.append(example)
    report.check()
    report.blank_lines = getattr(reader, "blank_lines", 0)
    refuse_empty(keep_read_from(report, reader), option, name)  # nothing read at all (its split and file(s) named): not "no usable
    # rows ... Check the columns and images"
    if not out:
        first = report.skipped_examples[0] if report.skipped_examples else None
        example = (f" First skipped: row {first['row_id']}" + (f", field {first['field']!r}" if first["field"] else "")
                   + f": {first['detail']}." if first else "")
        raise DataError(f"{reader.name}: no usable rows ({report.total} read, {report._skip_text()}, "
                        f"{report.ties_dropped} ties dropped).{example} Check the columns and images.")
    return out, report
