"""Task-aligned assignment with the centre prior, on cases small enough to work out by hand."""

import numpy as np
import paddle

from sodd.training.ppyoloe.assigner import candidate_mask, pairwise_iou, task_aligned_assign


def _t(x, dtype="float32"):
    return paddle.to_tensor(np.array(x, dtype=dtype))


def test_pairwise_iou_hand_values():
    a = _t([[[0, 0, 10, 10]]])
    b = _t([[[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]]])
    np.testing.assert_allclose(pairwise_iou(a, b).numpy()[0, 0], [1.0, 50 / 150, 0.0], atol=1e-6)


def test_centre_prior_admits_cells_around_a_box_smaller_than_a_stride():
    # Cell centres of a stride-8 grid at x = 4, 12, 20; a 2 px wide box centred at x = 9 contains none.
    points = _t([[4, 4], [12, 4], [20, 4]])
    stride = _t([[8], [8], [8]])
    gt = _t([[[8, 3, 10, 5]]])
    assert candidate_mask(points, stride, gt, center_radius=0.0).numpy().sum() == 0
    # Radius 1 stride: |4-9| = 5 < 8 and |12-9| = 3 < 8 qualify, |20-9| = 11 does not.
    np.testing.assert_array_equal(candidate_mask(points, stride, gt, 1.0).numpy()[0, 0], [1, 1, 0])


def test_assignment_picks_aligned_anchor_and_normalises_scores():
    points = _t([[4, 4], [12, 4], [20, 4], [28, 4]])
    stride = _t([[8]] * 4)
    gt_boxes = _t([[[0, 0, 16, 8]]])
    gt_labels = _t([[1]], "int64")
    mask = _t([[1]])
    # Anchor 0 predicts the box exactly with score 0.5, anchor 1 with IoU 0.5 and score 0.9.
    pred_boxes = _t([[[0, 0, 16, 8], [8, 0, 16, 8], [16, 0, 24, 8], [24, 0, 32, 8]]])
    pred_scores = _t([[[0.1, 0.5], [0.1, 0.9], [0.1, 0.9], [0.1, 0.9]]])
    a = task_aligned_assign(pred_scores, pred_boxes, points, stride, gt_labels, gt_boxes, mask,
                            num_classes=2, topk=2, alpha=1.0, beta=6.0, center_radius=1.0)
    # Candidates: cells 0 and 1 (inside); cell 2 is 12 px from the centre (x = 8), beyond one stride.
    np.testing.assert_array_equal(a.fg.numpy()[0], [True, True, False, False])
    np.testing.assert_array_equal(a.labels.numpy()[0], [1, 1, 2, 2])
    # metric = s * iou^6: 0.5 for anchor 0, 0.9 / 64 for anchor 1; normalised by the max metric and
    # scaled by the best IoU (1.0).
    expected = [0.0, 0.5 / 0.5, 0.0, (0.9 / 64) / 0.5]
    np.testing.assert_allclose(a.scores.numpy()[0, :2].ravel(), [0, 1.0, 0, expected[3]], atol=1e-6)
    np.testing.assert_allclose(a.boxes.numpy()[0, 0], [0, 0, 16, 8])


def test_padding_boxes_assign_nothing():
    points = _t([[4, 4], [12, 4]])
    stride = _t([[8], [8]])
    a = task_aligned_assign(_t([[[0.5], [0.5]]]), _t([[[0, 0, 8, 8], [8, 0, 16, 8]]]), points, stride,
                            _t([[0]], "int64"), _t([[[0, 0, 8, 8]]]), _t([[0]]), num_classes=1)
    assert not a.fg.numpy().any()
    assert (a.labels.numpy() == 1).all()
