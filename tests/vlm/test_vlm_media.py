"""Every accepted image form gives the same pixels; RRPO phrase alignment by hand."""
import io

import numpy as np

from preflab.data.media import load_image, load_video
from preflab.data.phrases import phrase_spans

from vlm_helpers import image


def test_image_forms_agree(tmp_path):
    img = image((30, 120, 200), seed=4)
    img.save(tmp_path / "a.png")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    forms = [img, str(tmp_path / "a.png"), "a.png", buf.getvalue(), {"bytes": buf.getvalue(), "path": None},
             {"bytes": None, "path": str(tmp_path / "a.png")}, np.asarray(img), np.asarray(img).tolist(),
             img.convert("RGBA")]
    want = np.asarray(img)
    for form in forms:
        got = load_image(form, "images[0]", base_dir=str(tmp_path))
        assert got.mode == "RGB" and np.array_equal(np.asarray(got), want)


def test_video_frames_are_evenly_subsampled():
    frames = [image((i, 0, 0), seed=i) for i in range(10)]
    kept = load_video(frames, "videos[0]", max_frames=4)
    assert [np.asarray(f)[0, 0, 0] for f in kept] == [np.asarray(frames[i])[0, 0, 0] for i in (0, 3, 6, 9)]


def test_phrase_spans_align_the_differing_words():
    c, r = phrase_spans("The cat is red and small.", "The dog is red and very small.")
    assert [("The cat is red and small."[s:e], k) for s, e, k in c] == [("cat", 1)]
    assert [("The dog is red and very small."[s:e], k) for s, e, k in r] == [("dog", 1), ("very", 2)]


def test_transparent_vision_images_are_composited_onto_white_as_transformers_does(tmp_path):
    """A transparent PNG reaches the model as transformers' image processors (do_convert_rgb, what TRL's DPOTrainer
    relies on) would see it: transparency composited onto white. Dropping the alpha band turned it black."""
    from PIL import Image
    from transformers.image_transforms import convert_to_rgb

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[2:6, 2:6] = (255, 0, 0, 255)
    rgba[0, 0] = (0, 0, 255, 128)  # half-transparent blue
    la = np.zeros((8, 8, 2), np.uint8)
    la[2:6, 2:6] = (90, 255)
    palette = Image.fromarray(rgba[..., :3]).convert("P")
    palette.info["transparency"] = palette.getpixel((7, 7))
    for form in (Image.fromarray(rgba, "RGBA"), Image.fromarray(la, "LA"), palette):
        form.save(tmp_path / "t.png")
        got = np.asarray(load_image("t.png", "images[0]", base_dir=str(tmp_path)))
        want = np.asarray(convert_to_rgb(Image.open(tmp_path / "t.png"), return_numpy=True))
        assert np.array_equal(got, want), form.mode
        assert tuple(got[7, 7]) == (255, 255, 255)


def test_sixteen_bit_and_float_vision_images_are_refused_not_clipped(tmp_path):
    """A 16-bit PNG (mode I;16) or a float image reached the model through PIL's convert("RGB"), which clips: the
    16-bit gradient below became 99.6% white, a float image in [0, 1] all black. Now a RowProblem names the mode."""
    import pytest
    from PIL import Image

    from preflab.data.report import RowProblem

    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(tmp_path / "g16.png")
    for value in (str(tmp_path / "g16.png"), Image.fromarray(np.full((4, 4), 0.5, np.float32))):
        with pytest.raises(RowProblem, match="clips its values") as err:
            load_image(value, "images[0]")
        assert err.value.reason == "bad_image_mode"
    assert load_image(Image.fromarray(np.full((4, 4), 77, np.uint8), "L"), "images[0]").getpixel((0, 0)) == (77,) * 3


def test_an_image_placeholder_in_a_vision_prompts_text_is_refused():
    """LLaVA-style rows ("<image>\\nWhat colour?" with `images`): preflab gives the images their own image parts, so
    the placeholder in the text was a second image token (LLaVA: a processor count error saying to check the image
    parts) or, on Qwen2-VL, literal text trained on silently. Now the row is refused naming the placeholder."""
    import pytest

    from preflab.data.report import RowProblem
    from preflab.data.vision import vision_example

    img = image((200, 20, 20))
    part = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "<image>\nWhat colour?"}]}
    for prompt in ("<image>\nWhat colour?", [part]):
        with pytest.raises(RowProblem, match="holds the image placeholder '<image>'") as err:
            vision_example({"images": [img], "prompt": prompt, "chosen": "Red.", "rejected": "Blue."}, 0)
        assert err.value.reason == "placeholder_in_text"
    ok = vision_example({"images": [img], "prompt": "What colour?", "chosen": "Red.", "rejected": "Blue."}, 0)
    assert [p["type"] for p in ok.prompt[0]["content"]] == ["image", "text"]
    text_only = vision_example({"prompt": "What does <image> mean in HTML?", "chosen": "a", "rejected": "b"}, 0)
    assert text_only.images == []  # no images: the text is just text


def _vision_refusal(tmp_path, bad_side: dict) -> str:
    import json

    import pytest

    from preflab.data.vision import read_vision_pairs
    from preflab.errors import DataError

    image((200, 20, 20)).save(tmp_path / "red.png")
    user = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]
    ok = {"images": ["red.png"], "prompt": user, "chosen": [{"role": "assistant", "content": [
        {"type": "text", "text": "Red."}]}], "rejected": [{"role": "assistant", "content": [
            {"type": "text", "text": "Blue."}]}]}
    (tmp_path / "pairs.jsonl").write_text(json.dumps(ok) + "\n" + json.dumps({**ok, **bad_side}) + "\n")
    with pytest.raises(DataError) as err:
        read_vision_pairs(str(tmp_path / "pairs.jsonl"))
    return str(err.value)


def test_an_empty_vision_response_is_refused_naming_row_and_message(tmp_path):
    """An assistant message whose only text part was "" (or blank) trained as an empty answer, silently."""
    for text in ("", "  "):
        err = _vision_refusal(tmp_path, {"chosen": [{"role": "assistant", "content": [{"type": "text", "text": text}]}]})
        assert "pairs.jsonl row 1 (line 2), field 'chosen[0].content': empty content (no image, video or non-blank " \
               "text part)" in err, err


def test_a_vision_response_turn_of_another_role_is_named(tmp_path):
    """chosen: [{"role": "user", ...}] was refused as 'the chat template of prompt + response does not start with
    the templated prompt'; a role outside system/user/assistant/tool passed."""
    err = _vision_refusal(tmp_path, {"chosen": [{"role": "user", "content": [{"type": "text", "text": "Red."}]}]})
    assert "pairs.jsonl row 1 (line 2), field 'chosen[0].role': a response turn has role 'user'" in err, err
    err = _vision_refusal(tmp_path, {"prompt": [{"role": "human", "content": [{"type": "image"},
                                                                               {"type": "text", "text": "Hue?"}]}]})
    assert "pairs.jsonl row 1 (line 2), field 'prompt[0].role': role 'human' is not one of system, user, assistant, " \
           "tool" in err, err


def test_an_image_dict_with_text_bytes_is_named_as_such():
    """{"bytes": "<base64>"} (a JSON export of a datasets Image column) was read as a file path: 'image file
    'iVBORw0KGgo...' does not exist'. Both image readers (vision rows, diffusion rows) now say what it is."""
    import base64

    import pytest

    from preflab.data.media import load_image as load_vlm_image
    from preflab.data.report import RowProblem
    from preflab.diffusion.images import load_image as load_diffusion_image

    buf = io.BytesIO()
    image((1, 2, 3)).save(buf, format="PNG")
    value = {"bytes": base64.b64encode(buf.getvalue()).decode(), "path": None}
    for load in (lambda: load_vlm_image(value, "images[0]"), lambda: load_diffusion_image(value, "images[0]", 8)):
        with pytest.raises(RowProblem, match=r"the image dict's 'bytes' holds text \('iVBORw0KGgo") as err:
            load()
        assert err.value.field == "images[0]" and "base64.b64decode" in err.value.fix


def test_a_pair_differing_only_in_spacing_has_no_phrase_and_is_a_bad_row_for_rrpo():
    """methods/objectives.md §C #17: RRPO's builder drops a pair with no differing phrase. Before, responses that
    differ only in spacing ("it is red" / "it is  red") tokenized differently, got phrase ids 0 everywhere and
    trained with u = 0 (only the KL term) without a word; now the row is a bad row (error, or skipped and counted),
    and only when phrase ids are asked for."""
    import pytest

    from preflab.errors import DataError
    from preflab.data.vision import read_vision_pairs, tokenize_vision_pairs
    from vlm_helpers import pair_row, tiny

    processor = tiny("llava")[1]
    rows = [pair_row(chosen="it is red.", rejected="it is blue."), pair_row(chosen="it is red", rejected="it is  red")]
    examples = read_vision_pairs(rows)[0]
    kept, _, dropped = tokenize_vision_pairs(examples, processor, phrase_ids=True, on_bad_row="skip")
    assert len(kept) == 1 and dropped.skipped == {"no_differing_phrase": 1}
    assert any(kept[0].extras["chosen_phrase_ids"]) and any(kept[0].extras["rejected_phrase_ids"])
    with pytest.raises(DataError, match="rejected.*differ in no word"):
        tokenize_vision_pairs(examples, processor, phrase_ids=True)
    assert len(tokenize_vision_pairs(examples, processor)[0]) == 2  # plain DPO still trains both


def test_vision_rows_put_a_text_prompts_images_first_and_count_rejected_images():
    """A text prompt gets one image part per image, before the text (TRL's vision rows); rejected_images of another
    count than the prompt's images is a bad row naming rejected_images."""
    import pytest

    from preflab.data.vision import read_vision_pairs, vision_prompt
    from preflab.errors import DataError

    prompt, images = vision_prompt({"prompt": "q?", "images": [image((1, 2, 3)), image((3, 2, 1), seed=1)]})
    assert prompt == [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                                   {"type": "text", "text": "q?"}]}]
    assert len(images) == 2
    row = {"prompt": "q?", "images": [image((1, 2, 3))], "chosen": "a", "rejected": "b",
           "rejected_images": [image((0, 0, 9)), image((9, 0, 0))]}
    with pytest.raises(DataError, match="rejected_images.*2 rejected image"):
        read_vision_pairs([row])


def test_vision_rows_room_and_image_tokens_count_the_rejected_sides_own_images():
    """Input-side negatives (rejected_images) may give the rejected prompt more image tokens than the chosen one
    (Qwen2-VL: 6 for 24x16, 16 for 56x56): max_length leaves room after the longer prompt (41 tokens here), a
    max_length it fills is refused, and the report counts both sides' image tokens."""
    import pytest

    from preflab.data.vision import VisionTokenizeReport, read_vision_pairs, tokenize_vision_pair
    from preflab.data.report import RowProblem
    from preflab.models.tiny_vlm import tiny_vlm_processor
    from vlm_helpers import pair_row

    processor = tiny_vlm_processor("qwen2_vl")
    row = pair_row(chosen="red red red red red red", rejected="blue")
    row["rejected_images"] = [image((0, 0, 200), size=(56, 56), seed=5)]
    (ex,), _ = read_vision_pairs([row])
    report = VisionTokenizeReport()
    full = tokenize_vision_pair(ex, processor, report=report)
    token = processor.image_token_id
    assert (full.prompt_ids.count(token), full.rejected_prompt_ids.count(token)) == (6, 16)
    assert (len(full.prompt_ids), len(full.rejected_prompt_ids), len(full.chosen_ids)) == (31, 41, 14)
    assert report.image_tokens == 22
    cut = tokenize_vision_pair(ex, processor, max_length=46)
    assert (len(cut.chosen_ids), len(cut.rejected_ids)) == (5, 5)  # 46 - 41
    with pytest.raises(RowProblem, match="41 tokens, max_length is 41"):
        tokenize_vision_pair(ex, processor, max_length=41)


def test_an_image_dict_reads_its_bytes_before_its_path_and_a_float_array_is_refused(tmp_path):
    """A datasets Image dict carries the image's bytes and the path it had where the dataset was built; the bytes are
    the image (the path, if it exists here at all, may hold another one). A float H x W x 3 array (values in 0..1)
    cast to uint8 would be a black image: refused, naming the form it must have."""
    import pytest

    from preflab.data.report import RowProblem

    mine, other = image((30, 120, 200), seed=4), image((200, 10, 10), seed=5)
    other.save(tmp_path / "a.png")
    buf = io.BytesIO()
    mine.save(buf, format="PNG")
    for path in (str(tmp_path / "a.png"), "/nonexistent/where/the/dataset/was/built/a.png"):
        got = load_image({"bytes": buf.getvalue(), "path": path}, "images[0]", base_dir=str(tmp_path))
        assert np.array_equal(np.asarray(got), np.asarray(mine))
    with pytest.raises(RowProblem, match=r"H x W x 3 integers in 0..255, got shape \(4, 4, 3\) of float32") as err:
        load_image(np.full((4, 4, 3), 0.5, np.float32), "images[0]")
    assert err.value.reason == "bad_image" and err.value.field == "images[0]"
