"""Vision-R1 format / precision / recall rewards on the §18 toy, plus the schedule and the column plumbing."""
import json
from types import SimpleNamespace

import numpy as np
import pytest

from preflab.errors import DataError, MissingExtraError
from preflab.verifiers import vision_r1_format, vision_r1_precision, vision_r1_recall, vision_r1_rewards
from preflab.verifiers.vision_r1 import schedule, threshold_map

# GT: cat [0,0,100,100], cat [200,200,300,300], dog [400,0,500,100]; predictions: cat, cat, dog at
# [0,0,100,100], [210,210,310,310], [0,300,50,350]. The code's matcher gives GIoU [1, -0.7775, -0.7222];
# GIoU-only matching gives [1, 0.6641, -0.9286].
SOLUTION = json.dumps([["cat", [0, 0, 100, 100]], ["cat", [200, 200, 300, 300]], ["dog", [400, 0, 500, 100]]])
IDS = json.dumps({"Cat": 1, "dog": 2})
PRED = json.dumps([{"bbox_2d": [0, 0, 100, 100], "label": "cat"}, {"bbox_2d": [210, 210, 310, 310], "label": "cat"},
                   {"bbox_2d": [0, 300, 50, 350], "label": "dog"}])
COLS = dict(solution=[SOLUTION], target_id_maps=[IDS], num_instances=[3])
THIRD, GIOU_1 = 1 / 3, 8100 / 11900 - 200 / 12100


def state(step):
    return SimpleNamespace(global_step=step)


def test_toy_non_adaptive():
    assert vision_r1_precision([None], [PRED], **COLS) == pytest.approx([THIRD])   # clip([1, -.78, -.72]) -> 1/3
    assert vision_r1_recall([None], [PRED], **COLS) == pytest.approx([THIRD])      # one GIoU > 0.5 of 3


@pytest.mark.parametrize("step", [0, 1499, 1500, 5000])
def test_toy_adaptive_both_stages(step):
    # stage 1 and 2: the only matched value above the thresholds is 1.0; recall 1/3 < 0.5 -> psi zeroes it
    assert vision_r1_precision([None], [PRED], adaptive=True, trainer_state=state(step), **COLS) == \
        pytest.approx([THIRD])
    assert vision_r1_recall([None], [PRED], adaptive=True, trainer_state=state(step), **COLS) == [0.0]


def test_toy_giou_matcher():
    assert vision_r1_precision([None], [PRED], matcher="giou", **COLS) == pytest.approx([(1 + GIOU_1) / 3])  # .5547
    assert vision_r1_recall([None], [PRED], matcher="giou", **COLS) == pytest.approx([2 / 3])


def test_schedule_switches_at_step_1500():
    assert schedule(True, 1499) == {"precision": (0.5, 0.75), "match": (0.5, 0.5), "recall": (0.5, 0.75)}
    assert schedule(True, 1500) == {"precision": (0.75, 0.9), "match": (0.75, 0.75), "recall": (0.5, 0.75)}
    assert schedule(False, None) == {"precision": (0.0, 1.0), "match": (0.5, 0.5), "recall": (0.0, 1.0)}
    # an IoU of 0.8 counts fully at stage 1 (> 0.75) but only as 0.8 at stage 2 (inside [0.75, 0.9])
    gt = json.dumps([["cat", [0, 0, 100, 100]]])
    pred = json.dumps([{"bbox_2d": [0, 0, 100, 80], "label": "cat"}])              # IoU = GIoU = 0.8
    cols = dict(solution=[gt], completions=[pred])
    assert vision_r1_precision([None], adaptive=True, step=1499, **cols) == [1.0]
    assert vision_r1_precision([None], adaptive=True, step=1500, **cols) == pytest.approx([0.8])


def test_threshold_map_keeps_boundary_values():
    np.testing.assert_array_equal(threshold_map(np.array([0.49, 0.5, 0.6, 0.75, 0.76]), 0.5, 0.75),
                                  [0.0, 0.5, 0.6, 0.75, 1.0])
    # recall's match map phi_{theta,theta}: a GIoU exactly at theta contributes theta
    assert threshold_map(np.array([0.5]), 0.5, 0.5).tolist() == [0.5]


def test_adaptive_without_a_step_is_a_clear_error():
    with pytest.raises(MissingExtraError, match="trainer_state"):
        vision_r1_precision([None], [PRED], adaptive=True, **COLS)


def test_format_reward():
    good = "```json\n" + PRED + "\n```"
    bad_box = json.dumps([{"bbox_2d": [1, 2, 3], "label": "cat"}])
    not_json = "[{'bbox_2d': [1, 2, 3, 4]"
    other_json = json.dumps({"answer": 3})                  # valid JSON, not a list: the code gives 1
    out = vision_r1_format([None] * 4, [good, bad_box, not_json, other_json], num_instances=[3] * 4)
    assert out == [1.0, 0.0, 0.0, 1.0]
    assert vision_r1_format([None], [other_json], num_instances=[3], strict_format=True) == [0.0]
    # no instances: the reward is inverted (an unparseable "nothing here" answer scores 1)
    assert vision_r1_format([None] * 2, [good, "There is nothing."], num_instances=[0, 0]) == [0.0, 1.0]


def test_no_prediction_and_no_instance_cases():
    empty = json.dumps([["cat", [0, 0, 10, 10]]])
    assert vision_r1_precision([None], ["none"], solution=[empty]) == [0.0]
    assert vision_r1_recall([None], ["none"], solution=[empty]) == [0.0]
    assert vision_r1_precision([None], ["none"], solution=["[]"]) == [1.0]
    assert vision_r1_recall([None], [PRED], solution=["[]"]) == [0.0]


def test_extra_boxes_are_free_unless_penalised():
    gt = json.dumps([["cat", [0, 0, 100, 100]]])
    pred = json.dumps([{"bbox_2d": [0, 0, 100, 100], "label": "cat"}] + [{"bbox_2d": [500, 500, 600, 600],
                                                                         "label": "cat"}] * 3)
    assert vision_r1_precision([None], [pred], solution=[gt]) == [1.0]
    assert vision_r1_precision([None], [pred], solution=[gt], penalize_extra_boxes=True) == [0.25]


def test_rescaling_from_the_model_input_frame_and_unknown_labels():
    gt = json.dumps([["cat", [0, 0, 200, 100]]])
    pred = json.dumps([{"bbox_2d": [0, 0, 100, 50], "label": "tiger"}])             # half-size input frame
    sizes = dict(width=[400], height=[200], input_widths=[200], input_heights=[100])
    assert vision_r1_precision([None], [pred], solution=[gt], **sizes) == [1.0]   # unknown label: class 0, still
    assert vision_r1_precision([None], [pred], solution=[gt]) == pytest.approx([0.25])  # matched on boxes


def test_trl_plumbing_conversational_completions_and_names():
    conv = [[{"role": "assistant", "content": PRED}]] * 2
    fns = vision_r1_rewards(matcher="giou")
    assert [f.__name__ for f in fns] == ["vision_r1_format", "vision_r1_precision", "vision_r1_recall"]
    cols = dict(solution=[SOLUTION] * 2, target_id_maps=[IDS] * 2, num_instances=[3, 3], completion_ids=None,
                trainer_state=state(3))
    totals = np.sum([f(prompts=["p", "p"], completions=conv, **cols) for f in fns], axis=0)
    np.testing.assert_allclose(totals, [1 + (1 + GIOU_1) / 3 + 2 / 3] * 2)


def test_column_errors():
    with pytest.raises(MissingExtraError, match="solution"):
        vision_r1_precision([None], [PRED])
    with pytest.raises(DataError, match="not in target_id_maps"):
        vision_r1_recall([None], [PRED], solution=[SOLUTION], target_id_maps=[json.dumps({"cat": 1})])
    with pytest.raises(DataError, match="2 entries for 1"):
        vision_r1_recall([None], [PRED], solution=[SOLUTION] * 2)
