"""Box parsing, IoU/GIoU and the Vision-R1 matcher, against hand-computed values."""
import numpy as np
import pytest

from preflab.verifiers.boxes import Box, as_array, match_boxes, pairwise_giou, parse_boxes

GT = as_array([[0, 0, 100, 100], [200, 200, 300, 300], [400, 0, 500, 100]])
PRED = as_array([[0, 0, 100, 100], [210, 210, 310, 310], [0, 300, 50, 350]])


def test_iou_and_giou_by_hand():
    iou, giou = pairwise_giou(PRED, GT)
    # identical boxes
    assert iou[0, 0] == 1.0 and giou[0, 0] == 1.0
    # [210,210,310,310] vs [200,200,300,300]: inter 90*90 = 8100, union 20000 - 8100 = 11900, hull 110*110 = 12100
    assert iou[1, 1] == pytest.approx(8100 / 11900, abs=1e-12)
    assert giou[1, 1] == pytest.approx(8100 / 11900 - 200 / 12100, abs=1e-12)   # 0.6641
    # disjoint: [210,210,310,310] vs [400,0,500,100]: union 20000, hull 290*310 = 89900
    assert iou[1, 2] == 0.0 and giou[1, 2] == pytest.approx(-(89900 - 20000) / 89900, abs=1e-12)   # -0.7775
    # [0,300,50,350] (area 2500) vs [200,200,300,300]: union 12500, hull 300*150 = 45000
    assert giou[2, 1] == pytest.approx(-(45000 - 12500) / 45000, abs=1e-12)     # -0.7222
    # [0,300,50,350] vs [400,0,500,100]: union 12500, hull 500*350 = 175000
    assert giou[2, 2] == pytest.approx(-(175000 - 12500) / 175000, abs=1e-12)   # -0.9286


def test_code_matcher_prefers_small_pixel_l1_over_giou():
    # L1 of the pairing (1<->2, 2<->1) is 800 + 600 = 1400 < 40 + 1400 = 1440 for (1<->1, 2<->2)
    pairs, u = match_boxes(PRED, [1, 1, 2], GT, [1, 1, 2], matcher="code")
    assert pairs == [(0, 0), (1, 2), (2, 1)]
    np.testing.assert_allclose(u, [1.0, -69900 / 89900, -32500 / 45000], atol=1e-12)


def test_giou_matcher_pairs_by_overlap():
    pairs, u = match_boxes(PRED, [1, 1, 2], GT, [1, 1, 2], matcher="giou")
    assert pairs == [(0, 0), (1, 1), (2, 2)]
    np.testing.assert_allclose(u, [1.0, 0.66414, -0.92857], atol=1e-5)


def test_class_term_breaks_ties_between_equal_boxes():
    gt = as_array([[0, 0, 10, 10], [0, 0, 10, 10]])
    pairs, _ = match_boxes(as_array([[0, 0, 10, 10]]), [2], gt, [1, 2])
    assert pairs == [(0, 1)]


def test_more_predictions_than_gt_gives_min_pairs():
    pairs, u = match_boxes(PRED, [1, 1, 2], GT[:1], [1])
    assert pairs == [(0, 0)] and u.tolist() == [1.0]
    pairs, u = match_boxes(PRED[:0], [], GT, [1, 1, 2])
    assert pairs == [] and u.size == 0


def test_parse_json_in_a_fence_and_drop_bad_items():
    text = ('```json\n[{"bbox_2d": [1, 2, 30, 40], "label": "cat"}, {"bbox_2d": [5, 5, 5, 9], "label": "flat"},'
            ' {"bbox_2d": [1, 2, 3], "label": "short"}, {"bbox_2d": [1.9, 2.5, 8.2, 9], "label": "dog"}, 7]\n```')
    assert parse_boxes(text) == [Box((1, 2, 30, 40), "cat"), Box((1, 2, 8, 9), "dog")]


def test_parse_falls_back_to_the_regex():
    text = 'Sure! {"bbox_2d": [10, 20, 30, 40], "label": "car"} and {"bbox_2d": [1, 1, 1000, 2], "label": "bus"}'
    assert parse_boxes(text) == [Box((10, 20, 30, 40), "car"), Box((1, 1, 1000, 2), "bus")]
    assert parse_boxes("no boxes here") == []
    assert parse_boxes('{"bbox_2d": [1, 2, 3, 4], "label": "x"}') == [Box((1, 2, 3, 4), "x")]   # a dict, not a list
