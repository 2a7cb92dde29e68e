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
