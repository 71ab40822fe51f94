"""Grounding accuracy (mmnas/metrics/grounding.py) on hand-made boxes: argmax pick, decode from
normalised deltas, clip to the image, +1-pixel IoU >= 0.5; the result file and the split table."""
import json

import numpy as np
import pytest

from mmnas.metrics.grounding import (decode_all_boxes, format_scores, format_split_table, pick_boxes,
                                     read_result_entries, result_entries, score)

NEG = -1e9
PROPOSALS = np.array([[[0, 0, 9, 9], [20, 20, 39, 39], [50, 50, 59, 59]]] * 3, dtype=np.float64)  # [3, 3, 4]
LOG_SCORES = np.array([[-2.0, -0.1, -3.0],  # picks region 1
                       [-0.2, -1.0, NEG],  # picks region 0 (region 2 is padding)
                       [-5.0, -4.0, -0.01]])  # picks region 2
DELTAS = np.zeros((3, 3, 4))
DELTAS[1, 0] = [10.0, 0, 0, 0]  # dx = 10 * 0.1 = 1 width: [0, 0, 9, 9] -> [10, 0, 20, 10]
DELTAS[2, 2] = [0, 0, 5 * np.log(2), 5 * np.log(2)]  # dw = dh = log 2: 20 wide around 55 -> [45, 45, 65, 65]
DELTAS[0, 0] = [50.0, 50.0, 0, 0]  # not picked: must not matter
SIZES = np.array([[480, 640], [480, 640], [60, 62]])  # (height, width)
GT = {"a": [20, 20, 39, 39], "b": [0, 0, 9, 9], "c": [45, 45, 61, 59]}


def test_pick_decode_clip_by_hand():
    regions, boxes = pick_boxes(LOG_SCORES, DELTAS, PROPOSALS, SIZES)
    np.testing.assert_array_equal(regions, [1, 0, 2])
    np.testing.assert_allclose(boxes, [[20, 20, 40, 40],  # zero deltas: x2 + 1 (reference decode)
                                       [10, 0, 20, 10],
                                       [45, 45, 61, 59]])  # clipped to W - 1 = 61, H - 1 = 59
    all_boxes = decode_all_boxes(DELTAS, PROPOSALS, SIZES)
    assert all_boxes.shape == (3, 3, 4)
    np.testing.assert_allclose(all_boxes[np.arange(3), regions], boxes)


def test_accuracy_and_mean_iou_by_hand():
    regions, boxes = pick_boxes(LOG_SCORES, DELTAS, PROPOSALS, SIZES)
    entries = result_entries(["a", "b", "c"], boxes, regions)
    assert entries[0] == {"expression_id": "a", "box": [20.0, 20.0, 40.0, 40.0], "region": 1}
    s = score(entries, GT)
    iou_a = 400 / 441  # 20 x 20 shared pixels; the pick is 21 x 21, the GT 20 x 20
    assert s["n_expressions"] == 3 and s["hits"] == 2
    assert s["overall"] == pytest.approx(200 / 3)
    assert s["mean_iou"] == pytest.approx((iou_a + 0.0 + 1.0) / 3)
    assert s["mean_iou_hits"] == pytest.approx((iou_a + 1.0) / 2)
    assert "accuracy@0.5 66.67 (2 of 3 expressions)" in format_scores(s)


def test_threshold_is_inclusive():
    # a 10-wide GT against a pick shifted so IoU is exactly 0.5: [0,0,9,9] vs [0,0,19,9] -> 100 / 200
    s = score([{"expression_id": 1, "box": [0, 0, 19, 9]}], {1: [0, 0, 9, 9]})
    assert s["mean_iou"] == pytest.approx(0.5) and s["hits"] == 1


def test_result_file_round_trip_and_errors(tmp_path):
    regions, boxes = pick_boxes(LOG_SCORES, DELTAS, PROPOSALS, SIZES)
    path = tmp_path / "result.json"
    path.write_text(json.dumps(result_entries(["a", "b", "c"], boxes, regions)))
    read = read_result_entries(str(path))
    assert list(read) == ["a", "b", "c"]
    np.testing.assert_allclose(read["c"], [45, 45, 61, 59])
    with pytest.raises(ValueError, match="without a box"):
        score([{"expression_id": "a", "box": [0, 0, 1, 1]}], GT)
    with pytest.raises(ValueError, match="unknown expression"):
        score([{"expression_id": k, "box": v} for k, v in {**GT, "z": [0, 0, 1, 1]}.items()], GT)
    with pytest.raises(ValueError, match="appears twice"):
        score([{"expression_id": "a", "box": [0, 0, 1, 1]}] * 2, GT)
    path.write_text("[{\"expression_id\": 1, \"box\": [1, 2]}]")
    with pytest.raises(ValueError, match="entry 0"):
        read_result_entries(str(path))
    path.write_text("{broken")
    with pytest.raises(ValueError, match="cannot be read"):
        read_result_entries(str(path))


def test_split_table():
    table = format_split_table({"val": {"n_expressions": 1000, "overall": 83.66, "mean_iou": 0.7123},
                                "testA": {"n_expressions": 20, "overall": 5.0, "mean_iou": 0.1}}, title="refcoco")
    lines = table.splitlines()
    assert lines[0] == "refcoco"
    assert lines[1].split() == ["split", "expressions", "acc@0.5", "mean", "IoU"]
    assert lines[2].split() == ["val", "1000", "83.66", "0.712"]
    assert lines[3].split() == ["testA", "20", "5.00", "0.100"]
    assert len({len(line) for line in lines[1:]}) == 1  # columns aligned
