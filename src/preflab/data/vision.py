"""Vision preference rows -> validated examples -> token ids and processed pixels (the VLM data path).

Rows follow TRL's vision DPO format (ANCHORS.md): an `images` list plus a conversational `prompt` whose user
content has one {"type": "image"} part per image, and `chosen` / `rejected` assistant turns:

    {"images": ["cat.png"],
     "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}],
     "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "Red."}]}],
     "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "Blue."}]}]}

Also accepted: string prompts (the images are placed before the text), string responses, `videos` (a list of
videos, each a frame list or a file: a {"type": "video"} part becomes one image part per frame, so any image model
reads a video as its frames) and `rejected_images` (input-side negatives: the rejected response is scored on these
images instead, PaMi-VDPO's form). Other columns are kept in `extras`.

Tokenization goes through the model's processor: the prompt text is the chat template with the generation prompt;
the response text is what the template of prompt + response adds after it; the processor expands the image
placeholders into the model's image tokens and returns the pixel tensors. Images whose count does not match the
placeholders, unreadable images and processor refusals are RowProblems naming the row and the field (`images`,
`videos`, `rejected_images`). Responses are cut to `max_completion_length` and to `max_length` (counted); a prompt
(with its image tokens) that fills `max_length` is a bad row: image tokens are never cut.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from preflab.data.media import load_image, load_images, load_video
from preflab.data.report import BadRowPolicy, DataReport, RowProblem, keep_place, keep_read_from
from preflab.data.sources import open_reader
from preflab.data.validate import check_response_turns

VISION_FIELDS = ("prompt", "chosen", "rejected", "images", "image", "videos", "rejected_images")
# image placeholders of LLaVA-style text prompts and of the processors (a text prompt must not carry them)
IMAGE_PLACEHOLDERS = ("<image>", "<|image_pad|>", "<|vision_start|>", "<fake_token_around_image>")


@dataclass
class VisionPairExample:
    """prompt / chosen / rejected as chat messages (typed content parts); images: RGB PIL images in placeholder
    order (video frames included); rejected_images: the rejected side's images, or None (same as `images`)."""

    row_id: int
    prompt: list
    chosen: list
    rejected: list
    images: list
    rejected_images: list | None = None
    extras: dict = field(default_factory=dict)


@dataclass
class TokenizedVisionPair:
    """Token ids (prompt with its image tokens expanded), the processor's pixel tensors (`vision`: batched along
    dim 0, e.g. pixel_values and image_grid_thw) and per-token inputs of the prompt (`token_inputs`, e.g.
    mm_token_type_ids). The rejected_* fields are set only when the rejected side has its own images."""

    row_id: int
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    vision: dict
    token_inputs: dict = field(default_factory=dict)
    rejected_prompt_ids: list[int] | None = None
    rejected_vision: dict | None = None
    rejected_token_inputs: dict | None = None
    extras: dict = field(default_factory=dict)

    def side(self, rejected: bool) -> tuple[list[int], dict, dict]:
        """(prompt_ids, vision, token_inputs) of one side."""
        if rejected and self.rejected_prompt_ids is not None:
            return self.rejected_prompt_ids, self.rejected_vision, self.rejected_token_inputs
        return self.prompt_ids, self.vision, self.token_inputs


# a text row's roles (validate.ROLES) less "developer": a processor's template is not checked for rendering every
# message (text rows are: tokenize._check_messages_rendered), so a role it might drop is not read
VISION_ROLES = ("system", "user", "assistant", "tool")


def vision_pairs_fingerprint(pairs) -> str:
    """sha256 over what a vision pair's reference log-probs depend on besides the weights, in dataset order: the token
    ids, the processor's tensors by content (dtype, shape, bytes: pixel_values, image_grid_thw / video_grid_thw, ...)
    and per-token inputs (mm_token_type_ids, ...), and those of the rejected side's prompt when it has its own images
    (input-side negatives); the reference cache's key (preflab.scoring.ref_cache.cache_key). Two rows with the same
    text and other images, or the same image through other processor settings (size, normalisation), get other keys.
    Cost: one pass over the pixel tensors, measured 0.6 GB/s on one core (a 1024-patch Qwen2-VL image is 4.8 MB)."""
    from preflab.data.fingerprint import training_data_fingerprint

    return training_data_fingerprint([(p.side(False), p.chosen_ids, p.rejected_ids, p.rejected_prompt_ids,
                                       p.rejected_vision, p.rejected_token_inputs) for p in pairs])


def vision_prompt_key(example: VisionPairExample) -> tuple:
    """What makes two vision rows share a prompt, for `preflab eval --task vlm`'s count of the eval rows the run
    trained on (data.overlap.training_overlap_counts): the prompt messages as read (text and image placeholders)
    and the prompt's images by pixel content (data.overlap.image_digest, in placeholder order; video frames
    included), not by file name: the same image saved under another name is the same prompt, another image under
    the same text is not."""
    from preflab.data.overlap import image_digest

    return example.prompt, [image_digest(image) for image in example.images]


def vision_row_key(example: VisionPairExample) -> tuple:
    """What makes two vision rows the same row: vision_prompt_key, the chosen and rejected messages, and the
    rejected side's own images by pixels (input-side negatives; None when it has none). Rows are compared as read,
    before a pair builder (vision_pairs: pami_vdpo, cat_adpo) makes their rejected side."""
    from preflab.data.overlap import image_digest

    rejected_images = None if example.rejected_images is None else [image_digest(i) for i in example.rejected_images]
    return vision_prompt_key(example), example.chosen, example.rejected, rejected_images


# ---------------------------------------------------------------------------------------------------- rows
def _parts(content, field: str) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise RowProblem("invalid_message", field, f"content must be a string or a list of parts, got "
                         f"{type(content).__name__}")
    out = []
    for i, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in ("text", "image", "video"):
            raise RowProblem("invalid_message", f"{field}[{i}]", "a content part must be {'type': 'text', 'text': "
                             "...}, {'type': 'image'} or {'type': 'video'}")
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise RowProblem("invalid_message", f"{field}[{i}].text", "a text part needs a string 'text'")
        out.append({k: v for k, v in part.items() if v is not None})
    return out


def _messages(value, field: str, role: str) -> list[dict]:
    """Text (one message of `role`) or a list of {"role", "content"} messages, with roles among VISION_ROLES and
    some content in each (an image or video part, or text that is not blank), as the text rows' check_messages asks;
    a response (role "assistant") holds assistant/tool turns only (validate.check_response_turns)."""
    if isinstance(value, str):
        if not value.strip():
            raise RowProblem("empty_field", field, "empty string" if not value else "only whitespace")
        return [{"role": role, "content": [{"type": "text", "text": value}]}]
    if not isinstance(value, list) or not value:
        raise RowProblem("wrong_type", field, f"expected text or a non-empty list of messages, got {value!r:.60}")
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or msg.get("content") is None:
            raise RowProblem("invalid_message", f"{field}[{i}]", 'a message is {"role": ..., "content": ...}')
        if msg["role"] not in VISION_ROLES:
            raise RowProblem("invalid_message", f"{field}[{i}].role", f"role {msg['role']!r} is not one of "
                             f"{', '.join(VISION_ROLES)}", "Use system, user, assistant or tool.")
        parts = _parts(msg["content"], f"{field}[{i}].content")
        if not any(p["type"] != "text" or p["text"].strip() for p in parts):
            raise RowProblem("empty_field", f"{field}[{i}].content", "empty content (no image, video or non-blank "
                             "text part)", "Give the message its text, or drop the row.")
        out.append({"role": msg["role"], "content": parts})
    if role == "assistant":
        check_response_turns(out, field, why=MULTITURN_WHY)
    return out


MULTITURN_WHY = ("task: vlm reads a response as the assistant's own turn(s): multi-turn responses (user turns after "
                 "the first answer), which TRL 1.16's vision collator trains as it renders them, are not verified "
                 "against it here; text rows (task: dpo) take them.")


def _count(messages: list[dict], kind: str) -> int:
    return sum(1 for m in messages for p in m["content"] if p["type"] == kind)


def _expand_videos(messages: list[dict], frame_counts: list[int]) -> list[dict]:
    """Each {"type": "video"} part -> one {"type": "image"} part per frame of that video."""
    videos = iter(frame_counts)
    out = []
    for m in messages:
        parts = []
        for p in m["content"]:
            parts += [{"type": "image"}] * next(videos) if p["type"] == "video" else [p]
        out.append({**m, "content": parts})
    return out


def _refuse_text_placeholders(prompt: list[dict], text_prompt: bool) -> None:
    """A LLaVA-style "<image>\nQuestion" in the text of a row with images: the images go in by their image parts (a
    text prompt gets one per image, placed before the text), so the placeholder would be a second image token (LLaVA:
    the processor refuses the count) or literal text (Qwen2-VL trains on it silently)."""
    for m in prompt:
        for p in m["content"]:
            marks = [k for k in IMAGE_PLACEHOLDERS if p["type"] == "text" and k in p["text"]]
            if marks:
                where = ("a text prompt gets its images placed before the text" if text_prompt
                         else "the images go where the {'type': 'image'} parts are")
                raise RowProblem("placeholder_in_text", "prompt", f"the prompt's text holds the image placeholder "
                                 f"{marks[0]!r}; {where}, so it would be a second image token (LLaVA: the processor "
                                 "refuses the count) or literal text (Qwen2-VL)",
                                 "Remove the placeholder from the text; put one {'type': 'image'} part where each "
                                 "image goes (a conversational prompt).")


def listed_images(value) -> bool:
    """True for a list of images (paths, bytes, dicts, PIL images) given where one image goes; a nested list of
    numbers (an H x W x 3 array image written as JSON) is one image, not a list of them."""
    return isinstance(value, (list, tuple)) and bool(value) and not any(
        isinstance(item, (list, tuple, int, float)) for item in value)


def vision_prompt(row: dict, base_dir: str | None = None, max_frames: int = 8) -> tuple[list[dict], list]:
    """(prompt messages with one image part per image, RGB images in placeholder order) of a row; video parts become
    their frames' image parts. A RowProblem names the field at fault."""
    if row.get("prompt") is None:
        raise RowProblem("missing_field", "prompt", "missing", "Give each row a prompt.")
    if row.get("image") is not None and row.get("images") is not None:
        raise RowProblem("wrong_type", "image", "the row has both 'image' and 'images'",
                         "Keep one: 'images' (a list) or TRL's single-image 'image'.")
    if row.get("video") is not None and row.get("videos") is None:  # else read as a row without videos
        raise RowProblem("missing_field", "videos", "the row has a 'video' column but no 'videos': the video would "
                         "not reach the model", "Rename the column to 'videos' (a list, one entry per "
                         "{'type': 'video'} part of the prompt), as in TRL's vision rows.")
    if listed_images(row.get("image")):  # read as one array image it said "H x W x 3 ..., got shape (1,)"
        raise RowProblem("wrong_type", "image", f"'image' is TRL's single-image column (one image), but the row gives "
                         f"a list of {len(row['image'])}", "Name a list of images 'images' (one {'type': 'image'} "
                         "part per entry), or give 'image' one image.")
    if row.get("image") is not None:  # TRL's single-image column: one image
        images = [load_image(row["image"], "image", base_dir)]
    else:
        images = load_images(row.get("images"), "images", base_dir)
    videos = row.get("videos") or []
    if not isinstance(videos, list):
        videos = [videos]
    frames = [load_video(v, f"videos[{i}]", base_dir, max_frames) for i, v in enumerate(videos)]
    prompt = row["prompt"]
    if isinstance(prompt, str):  # standard text prompt: the images (then the videos) go before the text
        prompt = [{"role": "user", "content": [{"type": "image"}] * len(images) + [{"type": "video"}] * len(frames)
                   + [{"type": "text", "text": prompt}]}]
    prompt = _messages(prompt, "prompt", "user")
    if images or frames:
        _refuse_text_placeholders(prompt, isinstance(row["prompt"], str))
    if _count(prompt, "video") != len(frames):
        raise RowProblem("video_count_mismatch", "videos", f"the prompt has {_count(prompt, 'video')} video "
                         f"placeholder(s) but the row gives {len(frames)} video(s)",
                         "Give one {'type': 'video'} part per entry of `videos`.")
    if _count(prompt, "image") != len(images):
        raise RowProblem("image_count_mismatch", "images", f"the prompt has {_count(prompt, 'image')} image "
                         f"placeholder(s) but the row gives {len(images)} image(s)",
                         "Give one {'type': 'image'} part per entry of `images`.")
    prompt_images = images
    if frames:  # images and video frames in placeholder order; each video part becomes its frames' image parts
        it_images, it_frames, prompt_images = iter(images), iter(frames), []
        for m in prompt:
            for p in m["content"]:
                if p["type"] == "image":
                    prompt_images.append(next(it_images))
                elif p["type"] == "video":
                    prompt_images += next(it_frames)
        prompt = _expand_videos(prompt, [len(f) for f in frames])
    return prompt, prompt_images


def vision_example(row: dict, row_id: int, base_dir: str | None = None, max_frames: int = 8,
                   responses_only: bool = False) -> VisionPairExample:
    """One row -> a VisionPairExample, or a RowProblem naming the field. responses_only: rows of one answer
    (`response`, else `chosen`) for the pair builders; rejected is then set to the same answer."""
    if responses_only:
        answer = row.get("response", row.get("chosen"))
        if answer is None:
            raise RowProblem("missing_field", "response", "missing", "Give each row a `response` (or `chosen`).")
        row = {**{k: v for k, v in row.items() if k != "response"}, "chosen": answer, "rejected": answer}
    for name in ("prompt", "chosen", "rejected"):
        if row.get(name) is None:
            raise RowProblem("missing_field", name, "missing", "A vision pair needs prompt, chosen and rejected.")
    chosen, rejected = _messages(row["chosen"], "chosen", "assistant"), _messages(row["rejected"], "rejected",
                                                                                  "assistant")
    for name, msgs in (("chosen", chosen), ("rejected", rejected)):
        if _count(msgs, "image") or _count(msgs, "video"):
            raise RowProblem("image_in_response", name, "responses may not contain image or video parts")
    prompt, prompt_images = vision_prompt(row, base_dir, max_frames)
    rejected_images = None
    if row.get("rejected_images") is not None:
        rejected_images = load_images(row["rejected_images"], "rejected_images", base_dir)
        if len(rejected_images) != len(prompt_images):
            raise RowProblem("image_count_mismatch", "rejected_images", f"{len(rejected_images)} rejected image(s) "
                             f"for {len(prompt_images)} prompt image(s)", "Give one rejected image per prompt image.")
    extras = {k: v for k, v in row.items() if k not in VISION_FIELDS}
    return VisionPairExample(row_id, prompt, chosen, rejected, prompt_images, rejected_images, extras)


def row_dir(raw) -> str | None:
    """The folder of the file a row came from (relative image paths resolve there), or None."""
    return str(Path(raw.file).parent) if raw.file and Path(raw.file).exists() else None


def vision_row_form(row: dict) -> str:
    """The data line's form of an accepted vision row: 'vision_standard' for a text prompt (vision_prompt puts its
    images before the text in one user message), 'vision_conversational' for a message-list prompt (TRL's
    is_conversational looks at the prompt the same way)."""
    return "vision_standard" if isinstance(row.get("prompt"), str) else "vision_conversational"


def read_vision_pairs(source, split: str = "train", on_bad_row: str = "error", max_frames: int = 8,
                      limit: int | None = None, responses_only: bool = False
                      ) -> tuple[list[VisionPairExample], DataReport]:
    """Read and validate vision preference rows from any row source (file, directory, dataset, list of dicts), or a
    RowReader already opened on one (read as it was opened: preflab.data.sources.open_reader)."""
    reader = open_reader(source, split=split, limit=limit)
    report = DataReport(source=reader.name, kind="single-response" if responses_only else "pairwise")
    policy = BadRowPolicy(on_bad_row, report)
    out = []
    report.rejected_unused = 0  # responses_only: kept rows whose own `rejected` answer the pair builder replaces
    for raw, example in policy.accepted(reader, lambda raw: vision_example(raw.data, raw.row_id, row_dir(raw),
                                                                           max_frames, responses_only)):
        out.append(keep_place(example, raw))
        form = vision_row_form(raw.data)
        report.forms[form] = report.forms.get(form, 0) + 1
        report.rejected_unused += bool(responses_only and raw.data.get("rejected") is not None)
    report.examples = len(out)
    report.check()
    keep_read_from(report, reader)  # the split and files an "is empty" error names (refuse_empty)
    return out, report


# ---------------------------------------------------------------------------------------------------- tokens
def _encode_prompt(processor, text: str, images: list, field: str) -> tuple[list[int], dict, dict]:
    try:
        enc = processor(text=[text], images=images or None, return_tensors="pt")
    except (ValueError, IndexError, RuntimeError, StopIteration) as err:  # StopIteration: transformers < 5.25
        token = getattr(processor, "image_token", None)
        counts = f"{len(images)} image(s) for {text.count(token)} image tokens in the prompt; " \
            if isinstance(token, str) and token else ""
        raise RowProblem("image_token_mismatch", field, f"the processor refused the images ({counts}"
                         f"{type(err).__name__}: {err})",
                         "Check that every image matches one {'type': 'image'} part of the prompt.") from err
    ids = enc["input_ids"][0]
    vision, token_inputs = {}, {}
    for key, value in enc.items():
        if key in ("input_ids", "attention_mask") or not isinstance(value, torch.Tensor):
            continue
        if value.dim() == 2 and value.shape == enc["input_ids"].shape:
            token_inputs[key] = value[0].tolist()
        else:
            vision[key] = value
    image_token = getattr(processor, "image_token_id", None)
    if images and image_token is not None and not bool((ids == image_token).any()):
        raise RowProblem("image_token_mismatch", field, f"{len(images)} image(s) but no image token in the prompt")
    return ids.tolist(), vision, token_inputs


def _response(processor, prompt: list, prompt_text: str, response: list, field: str) -> str:
    full = processor.apply_chat_template(prompt + response, tokenize=False)
    if not full.startswith(prompt_text):
        raise RowProblem("template_not_prefix", field, "the chat template of prompt + response does not start with "
                         "the templated prompt", "Use a chat template that renders the prompt as a prefix.")
    text = full[len(prompt_text):]
    if not text:
        raise RowProblem("empty_field", field, "the response renders to empty text")
    return text


@dataclass
class VisionTokenizeReport:
    pairs: int = 0
    truncated_responses: int = 0
    image_tokens: int = 0  # total image tokens in the prompts (both sides when they differ)

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def summary(self) -> str:
        return f"{self.pairs} vision pairs, {self.image_tokens} image tokens, " \
               f"{self.truncated_responses} responses truncated"


def tokenize_vision_pair(ex: VisionPairExample, processor, max_length: int | None = None,
                         phrase_ids: bool = False, report: VisionTokenizeReport | None = None,
                         max_completion_length: int | None = None) -> TokenizedVisionPair:
    """One example -> TokenizedVisionPair; phrase_ids=True adds RRPO's per-token chosen/rejected_phrase_ids (a pair
    with no differing phrase in the tokens kept is a bad row, `no_differing_phrase`). Each
    response keeps its first max_completion_length tokens, then its first max_length - prompt tokens (each cut
    counted once in report.truncated_responses)."""
    from preflab.data.phrases import (check_differing_phrase, encode_with_offsets, phrase_spans,
                                      token_ids_for_spans)

    tok = getattr(processor, "tokenizer", processor)
    prompt_text = processor.apply_chat_template(ex.prompt, add_generation_prompt=True, tokenize=False)
    prompt_ids, vision, token_inputs = _encode_prompt(processor, prompt_text, ex.images, "images")
    texts = {s: _response(processor, ex.prompt, prompt_text, getattr(ex, s), s) for s in ("chosen", "rejected")}
    ids, offsets = {}, {}
    for side, text in texts.items():
        ids[side], offsets[side] = encode_with_offsets(text, tok)
    image_token = getattr(processor, "image_token_id", None)
    for side in ids:
        if image_token is not None and image_token in ids[side]:
            raise RowProblem("image_token_in_response", side, "the response text holds the image placeholder token "
                             f"{getattr(processor, 'image_token', image_token)!r}", "Remove it from the response.")
    extras = dict(ex.extras)
    if phrase_ids:
        spans = dict(zip(("chosen", "rejected"), phrase_spans(texts["chosen"], texts["rejected"])))
        for side in ids:
            extras[f"{side}_phrase_ids"] = token_ids_for_spans(offsets[side], spans[side])
    rejected = (None, None, None)
    if ex.rejected_images is not None:
        rejected = _encode_prompt(processor, prompt_text, ex.rejected_images, "rejected_images")
    longest_prompt = max(len(prompt_ids), len(rejected[0] or []))
    room = None
    if max_length is not None:
        room = max_length - longest_prompt
        if room < 1:
            raise RowProblem("prompt_fills_max_length", "prompt", f"the prompt with its image tokens is "
                             f"{longest_prompt} tokens, max_length is {max_length}",
                             "Raise max_length, or use smaller images (fewer image tokens).")
    if max_completion_length is not None:
        room = max_completion_length if room is None else min(room, max_completion_length)
    if room is not None:
        for side in ids:
            if len(ids[side]) > room:
                ids[side] = ids[side][:room]
                if phrase_ids:
                    extras[f"{side}_phrase_ids"] = extras[f"{side}_phrase_ids"][:room]
                if report is not None:
                    report.truncated_responses += 1
    if ids["chosen"] == ids["rejected"] and ex.rejected_images is None:
        raise RowProblem("identical_after_tokenization", "rejected", "chosen and rejected have the same tokens "
                         "and the same images")
    if phrase_ids:  # RRPO: a pair with no differing phrase kept trains only the KL term (data.phrases)
        check_differing_phrase(extras["chosen_phrase_ids"], extras["rejected_phrase_ids"],
                               "chosen and rejected differ in no word in the tokens kept (only in spacing, or the "
                               "differing words were cut by max_length), so RRPO's reward term is 0 for this pair",
                               "Make the responses differ in words, raise max_length / max_completion_length, or "
                               "drop the row.")
    if report is not None:
        report.pairs += 1
        image_token = getattr(processor, "image_token_id", None)
        if image_token is not None:
            report.image_tokens += prompt_ids.count(image_token) + (rejected[0] or []).count(image_token)
    return TokenizedVisionPair(ex.row_id, prompt_ids, ids["chosen"], ids["rejected"], vision, token_inputs,
                               rejected[0], rejected[1], rejected[2], extras)


def tokenize_vision_pairs(examples, processor, max_length: int | None = None, phrase_ids: bool = False,
                          on_bad_row: str = "error", source: str = "<rows>", max_completion_length: int | None = None):
    """(TokenizedVisionPair list, (VisionTokenizeReport, DataReport of rows dropped here))."""
    report, dropped = VisionTokenizeReport(), DataReport(source=source, kind="pairwise")
    policy = BadRowPolicy(on_bad_row, dropped)
    out = []
    for ex in examples:
        dropped.total += 1
        try:
            out.append(tokenize_vision_pair(ex, processor, max_length, phrase_ids, report, max_completion_length))
            dropped.kept += 1
        except RowProblem as problem:
            policy.handle_item(problem, ex)
    return out, report, dropped
