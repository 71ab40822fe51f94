"""Grounding box arithmetic (mmnas/metrics/boxes.py) against hand computations: the +1-pixel
IoU, the reference's x + w GT corner, Faster R-CNN deltas and their normalisation, clipping."""
import numpy as np
import pytest

from mmnas.metrics.boxes import (DELTA_STDS, box_iou, clip_boxes, decode_deltas, denormalize_deltas,
                                 encode_deltas, normalize_deltas, xywh_to_xyxy)


def test_iou_plus_one_pixel_by_hand():
    a = [[0, 0, 9, 9]]  # 10 x 10 pixels
    b = [[5, 5, 14, 14],  # overlap 5 x 5 = 25, union 175
         [0, 0, 9, 9],  # itself
         [9, 9, 18, 18],  # one shared pixel: 1 / 199
         [10, 0, 19, 9],  # touching edge, no shared pixel
         [100, 100, 120, 130]]  # far away
    iou = box_iou(a, b)
    assert iou.shape == (1, 5)
    np.testing.assert_allclose(iou[0], [25 / 175, 1.0, 1 / 199, 0.0, 0.0], rtol=0, atol=1e-12)
    # symmetric, and [N, M] for several boxes
    np.testing.assert_allclose(box_iou(b, a)[:, 0], iou[0], atol=1e-12)
    assert box_iou(b, b).shape == (5, 5)
    np.testing.assert_allclose(np.diag(box_iou(b, b)), 1.0)


def test_xywh_to_xyxy_is_x_plus_w():
    np.testing.assert_array_equal(xywh_to_xyxy([10, 20, 30, 40]), [10, 20, 40, 60])
    np.testing.assert_array_equal(xywh_to_xyxy([[0, 0, 1.5, 2.5], [1, 1, 0, 0]]), [[0, 0, 1.5, 2.5], [1, 1, 1, 1]])


def test_encode_by_hand_and_normalisation():
    proposal = [0, 0, 9, 9]  # w = 10, centre 5
    gt = [10, 0, 29, 9]  # w = 20, centre 20
    deltas = encode_deltas([proposal], gt)
    np.testing.assert_allclose(deltas, [[1.5, 0.0, np.log(2.0), 0.0]], atol=1e-12)
    normalized = normalize_deltas(deltas)
    np.testing.assert_allclose(normalized, [[15.0, 0.0, np.log(2.0) / 0.2, 0.0]], atol=1e-12)
    np.testing.assert_allclose(denormalize_deltas(normalized), deltas, atol=1e-12)
    assert DELTA_STDS == (0.1, 0.1, 0.2, 0.2)


def test_decode_by_hand_puts_x2_without_minus_one():
    # centre 20, width 20 -> x from 10 to 30 (the reference's decode; the GT had x2 = 29)
    np.testing.assert_allclose(decode_deltas([[0, 0, 9, 9]], [[1.5, 0.0, np.log(2.0), 0.0]]),
                               [[10.0, 0.0, 30.0, 10.0]], atol=1e-9)


def test_decode_of_encode_round_trip():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 300, size=(50, 2))
    proposals = np.concatenate([xy, xy + rng.uniform(5, 200, size=(50, 2))], axis=1)
    gt_xy = rng.uniform(0, 300, size=(50, 2))
    gt = np.concatenate([gt_xy, gt_xy + rng.uniform(5, 200, size=(50, 2))], axis=1)
    deltas = denormalize_deltas(normalize_deltas(encode_deltas(proposals, gt)))
    decoded = decode_deltas(proposals, deltas)
    # x1, y1 come back exactly; x2, y2 one pixel larger (encode widths are +1, decode adds none)
    np.testing.assert_allclose(decoded, gt + np.array([0, 0, 1, 1]), atol=1e-9)
    # zero deltas give the proposal back, again with x2, y2 + 1
    np.testing.assert_allclose(decode_deltas(proposals, np.zeros((50, 4))), proposals + [0, 0, 1, 1], atol=1e-9)


def test_one_gt_box_broadcasts_over_proposals():
    proposals = np.array([[0, 0, 9, 9], [5, 5, 24, 14]], dtype=float)
    gt = np.array([2, 3, 11, 20], dtype=float)
    np.testing.assert_allclose(encode_deltas(proposals, gt), encode_deltas(proposals, np.stack([gt, gt])))


def test_clip_to_image():
    boxes = np.array([[-5, -3, 700, 500], [10, 20, 30, 40]], dtype=float)
    np.testing.assert_array_equal(clip_boxes(boxes, 480, 640), [[0, 0, 639, 479], [10, 20, 30, 40]])
    # one size per image, broadcast over each image's boxes [B, N, 4]
    batch = np.stack([boxes, boxes])
    out = clip_boxes(batch, np.array([[480], [30]]), np.array([[640], [25]]))
    np.testing.assert_array_equal(out[1], [[0, 0, 24, 29], [10, 20, 24, 29]])
    np.testing.assert_array_equal(out[0], [[0, 0, 639, 479], [10, 20, 30, 40]])
