"""Image preference rows: Pick-a-Pic (ties dropped, label_0 = 0 swaps images and captions, SmPO score order) and
preflab's form; bad rows are DataErrors naming file, row and field, or skipped and counted."""
import io
import json

import pytest
import torch

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from preflab.diffusion.captions import STRENGTHS, perturb_caption  # noqa: E402
from preflab.diffusion.data import load_image_pairs  # noqa: E402
from preflab.diffusion.smoothing import smoothed_preference  # noqa: E402
from preflab.errors import DataError  # noqa: E402


def png(colour, size=8, mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


RED, BLUE = png((255, 0, 0)), png((0, 0, 255))


def pixel(t):
    return tuple(t[:, 0, 0].tolist())


def test_pickapic_rows_drop_ties_and_swap_on_label_zero():
    rows = [{"caption": "a", "jpg_0": RED, "jpg_1": BLUE, "label_0": 1, "caption_0": "r", "caption_1": "b"},
            {"caption": "b", "jpg_0": RED, "jpg_1": BLUE, "label_0": 0, "caption_0": "r", "caption_1": "b"},
            {"caption": "c", "jpg_0": RED, "jpg_1": BLUE, "label_0": 0.5}]
    examples, report = load_image_pairs(rows, resolution=8)
    assert [x.prompt for x in examples] == ["a", "b"] and report.ties_dropped == 1 and report.kept == 3
    assert pixel(examples[0].chosen) == (255, 0, 0) and examples[0].caption_chosen == "r"
    # label_0 = 0: the blue image (and its caption) is the preferred one
    assert pixel(examples[1].chosen) == (0, 0, 255) and examples[1].caption_chosen == "b"
    assert examples[1].caption_rejected == "r" and pixel(examples[1].rejected) == (255, 0, 0)


def test_smpo_scores_order_the_pair_and_give_the_smoothed_preference():
    rows = [{"caption": "a", "jpg_0": RED, "jpg_1": BLUE, "label_0": 1, "ps_score_0": 0.20, "ps_score_1": 0.25}]
    [x], _ = load_image_pairs(rows, resolution=8, needs_preference_prob=True)
    assert pixel(x.chosen) == (0, 0, 255)  # the reward model's order, not the human label (methods §5)
    assert x.preference_prob == pytest.approx(0.574480, abs=1e-6)  # the §5 toy number
    assert x.preference_prob == pytest.approx(float(smoothed_preference(torch.tensor([0.25]), torch.tensor([0.2]))))


def test_preflab_rows_read_paths_relative_to_the_file_and_resize(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (20, 10), (0, 255, 0)).save(tmp_path / "img" / "g.png")
    Image.new("L", (16, 16), 128).save(tmp_path / "img" / "gray.png")
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen_image": "img/g.png", "rejected_image": "img/gray.png",
                                "user_id": 7}) + "\n")
    [x], _ = load_image_pairs(str(path), resolution=8, user_column="user_id")
    assert x.chosen.shape == (3, 8, 8) and pixel(x.chosen) == (0, 255, 0)
    assert pixel(x.rejected) == (128, 128, 128) and x.user == "7"


@pytest.mark.parametrize("field,value,reason", [
    ("chosen_image", b"not a png", "bad_image"),
    ("chosen_image", "missing.png", "missing_image"),
    ("prompt", "", "missing_caption"),
    ("rejected_image", png((1, 2, 3), size=12), "bad_image_size"),
    ("rejected_image", png(70000, mode="I;16"), "bad_image_mode"),
])
def test_bad_rows_name_file_row_and_field_or_are_skipped(tmp_path, field, value, reason):
    good = {"prompt": "p", "chosen_image": "ok.png", "rejected_image": "ok2.png"}
    Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / "ok.png")
    Image.new("RGB", (8, 8), (90, 9, 9)).save(tmp_path / "ok2.png")
    if isinstance(value, bytes) and value.startswith(b"\x89PNG") or value == b"not a png":
        (tmp_path / "bad.png").write_bytes(value)
        value = "bad.png"
    bad = {**good, field: value}
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (good, bad, good)) + "\n")
    with pytest.raises(DataError) as err:
        load_image_pairs(str(path), resolution=8, resize=False)
    assert err.value.row_id == 1 and err.value.field == field and err.value.reason == reason
    assert str(path) in str(err.value) and field in str(err.value)
    examples, report = load_image_pairs(str(path), resolution=8, resize=False, on_bad_row="skip")
    assert [x.row_id for x in examples] == [0, 2] and report.skipped == {reason: 1}


def test_a_pair_of_the_same_image_under_the_same_caption_is_refused(tmp_path):
    """chosen_image and rejected_image naming one file (or two copies) trained silently: the Diffusion-DPO term of
    such a pair is constant. Under different captions (DCPO's caption_chosen / caption_rejected) it is a pair."""
    Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / "a.png")
    (tmp_path / "copy.png").write_bytes((tmp_path / "a.png").read_bytes())
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen_image": "a.png", "rejected_image": "copy.png"}) + "\n")
    with pytest.raises(DataError) as err:
        load_image_pairs(str(path), resolution=8)
    assert str(err.value).startswith(f"{path} row 0 (line 1), field 'rejected_image': the same pixels as "
                                     "'chosen_image' (under the same caption). A pair needs two different images")
    assert err.value.reason == "identical"
    with pytest.raises(DataError, match="field 'jpg_1': the same pixels as 'jpg_0'"):
        load_image_pairs([{"caption": "a", "jpg_0": RED, "jpg_1": RED, "label_0": 1}], resolution=8)
    dcpo = {"prompt": "p", "chosen_image": RED, "rejected_image": RED, "caption_chosen": "a red square",
            "caption_rejected": "a blue square"}
    assert len(load_image_pairs([dcpo], resolution=8)[0]) == 1


def test_a_label_outside_zero_half_one_is_a_bad_row():
    with pytest.raises(DataError, match="label_0"):
        load_image_pairs([{"caption": "a", "jpg_0": RED, "jpg_1": BLUE, "label_0": 2}], resolution=8)


def test_caption_perturbation_replaces_the_stated_share_of_words_deterministically():
    caption = "a small red square on a dark grey canvas today"
    vocab = ["blue", "green", "disc", "large", "bright"]
    out = perturb_caption(caption, "medium", vocab, seed=3)
    assert out == perturb_caption(caption, "medium", vocab, seed=3)
    changed = sum(a != b for a, b in zip(caption.split(), out.split()))
    assert len(out.split()) == 10 and changed == round(STRENGTHS["medium"] * 10)


def test_repeated_image_pairs_are_counted_and_said_as_text_and_vision_rows_are(tmp_path, capsys):
    """Text and vision rows got a 'repeat an earlier one exactly' note, image pairs none: a copied row (or its images
    saved again under other names) trained twice per epoch without a word. Another caption, or the two images in the
    other order, is not a repeat."""
    from preflab.cli import main
    from preflab.diffusion.data import repeated_image_pairs

    for name, colour in (("a", (200, 0, 0)), ("b", (0, 0, 200)), ("c", (0, 200, 0))):
        Image.new("RGB", (16, 16), colour).save(tmp_path / f"{name}.png")
    (tmp_path / "a2.png").write_bytes((tmp_path / "a.png").read_bytes())
    pair = {"prompt": "a red square", "chosen_image": "a.png", "rejected_image": "b.png"}
    rows = [pair, dict(pair), {**pair, "chosen_image": "a2.png"},           # the same pair three times
            {**pair, "prompt": "a square"},                                   # another caption
            {**pair, "chosen_image": "b.png", "rejected_image": "a.png"},     # the other order
            {**pair, "rejected_image": "c.png"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples, _ = load_image_pairs(str(path), resolution=16)
    assert repeated_image_pairs(examples) == 2 and repeated_image_pairs(examples[2:]) == 0
    out = tmp_path / "run"
    assert main(["train", "task=diffusion", "loss_type=diffusion_dpo", "model_name_or_path=builtin:tiny-sd",
                 f"dataset_name={path}", "resolution=16", "max_steps=1", "per_device_train_batch_size=2",
                 "use_cpu=true", "disable_tqdm=true", "eval_fraction=0", f"output_dir={out}"]) == 0
    assert ("preflab: note: data: 2 train pair(s) repeat an earlier one exactly (same caption and image pixels): "
            "each copy is trained on.") in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["data"]["duplicate_train_pairs"] == 2


@pytest.mark.parametrize("row,field", [
    ({"prompt": "p", "chosen_image": RED}, "rejected_image"),
    ({"caption": "c", "jpg_0": RED, "jpg_1": BLUE}, "label_0"),
])
def test_a_row_missing_one_column_of_its_form_names_that_column(tmp_path, row, field):
    """A row with some of a form's columns names the one it lacks as the error's field (it said only 'the row has
    columns [...]; expected ...', field None)."""
    good = {"prompt": "p", "chosen_image": RED, "rejected_image": BLUE} if "prompt" in row else \
        {"caption": "c", "jpg_0": RED, "jpg_1": BLUE, "label_0": 1}
    with pytest.raises(DataError) as err:
        load_image_pairs([good, row], resolution=8)
    assert err.value.row_id == 1 and err.value.field == field and err.value.reason == "missing_field"
    assert f"field {field!r}: the row has no {field!r}" in str(err.value)
    examples, report = load_image_pairs([good, row, good], resolution=8, on_bad_row="skip")
    assert len(examples) == 2 and report.skipped == {"missing_field": 1}
    assert report.skipped_examples[0]["field"] == field


def test_equal_pickscores_are_a_tie_dropped_whatever_the_label():
    """SmPO orders a pair by its PickScores (ps_label_0 = 1[s_0 > s_1]): equal scores name no winner, so the row is
    a dropped tie even with label_0 = 1, and order_by_score(s, s) is False."""
    from preflab.diffusion.smoothing import order_by_score

    rows = [{"caption": "a", "jpg_0": RED, "jpg_1": BLUE, "label_0": 1, "ps_score_0": 0.2, "ps_score_1": 0.2},
            {"caption": "b", "jpg_0": RED, "jpg_1": BLUE, "label_0": 0, "ps_score_0": 0.25, "ps_score_1": 0.2}]
    examples, report = load_image_pairs(rows, resolution=8, needs_preference_prob=True)
    assert [x.prompt for x in examples] == ["b"] and report.ties_dropped == 1
    assert pixel(examples[0].chosen) == (255, 0, 0)  # the scores' order, not label_0
    order = order_by_score(torch.tensor([0.2, 0.25, 0.1]), torch.tensor([0.2, 0.2, 0.2]))
    assert order.tolist() == [False, True, False]


@pytest.mark.parametrize("label", [0.5, 1, 0])
def test_a_pickapic_row_with_one_pickscore_is_a_bad_row_naming_the_missing_score(tmp_path, label):
    """ps_score_0 without ps_score_1 (or the other way) orders nothing: it crashed with torch's "Could not infer
    dtype of NoneType" (label_0 = 1), or made a tie (label_0 = 0.5) a pair with the second image preferred and no
    smoothed preference. It is a bad row naming the missing column, skippable and counted."""
    good = {"caption": "a", "jpg_0": "r.png", "jpg_1": "b.png", "label_0": 1, "ps_score_0": 0.25, "ps_score_1": 0.2}
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "r.png")
    Image.new("RGB", (8, 8), (0, 0, 255)).save(tmp_path / "b.png")
    one = {k: v for k, v in good.items() if k != "ps_score_1"} | {"label_0": label}
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (good, one, good)) + "\n")
    with pytest.raises(DataError) as err:
        load_image_pairs(str(path), resolution=8, needs_preference_prob=True)
    assert (err.value.row_id, err.value.field, err.value.reason) == (1, "ps_score_1", "missing_field")
    assert str(path) in str(err.value) and "has ps_score_0 but no ps_score_1" in str(err.value)
    examples, report = load_image_pairs(str(path), resolution=8, on_bad_row="skip", needs_preference_prob=True)
    assert [x.row_id for x in examples] == [0, 2] and report.skipped == {"missing_field": 1}


def test_caption_perturbation_never_replaces_a_word_with_itself():
    """The substitution pool is the data's own words (caption_vocabulary), which holds the caption's words too: a
    replaced word takes another word, so 'strong' changes exactly round(0.8 * 5) = 4 of 5 words whatever the seed."""
    from preflab.diffusion.captions import caption_vocabulary

    vocab = caption_vocabulary(["red red red red red", "blue"])
    assert vocab == ["blue", "red"]
    for seed in range(10):
        assert perturb_caption("red red red red red", "strong", vocab, seed=seed).split().count("blue") == 4
