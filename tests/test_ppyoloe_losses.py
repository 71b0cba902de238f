"""DFL decoding and the three losses, checked against values computed by hand."""

import math

import numpy as np
import paddle

from sodd.training.ppyoloe.head import dfl_expectation, distance_to_box
from sodd.training.ppyoloe.losses import box_to_distance, dfl_loss, giou, varifocal_loss


def _t(x, dtype="float32"):
    return paddle.to_tensor(np.array(x, dtype=dtype))


def test_dfl_expectation_over_reg_range_bins():
    proj = _t(np.arange(-2, 8).reshape(-1, 1))  # reg_range [-2, 8): bins -2..7
    logits = np.full((1, 4, 10), -1e4, np.float32)
    logits[0, 0, 0] = 0  # all mass on -2
    logits[0, 1, 5] = 0  # on 3
    logits[0, 2, [3, 4]] = 0  # half on 1, half on 2 -> 1.5
    logits[0, 3, :] = 0  # uniform -> mean(-2..7) = 2.5
    np.testing.assert_allclose(dfl_expectation(_t(logits), proj).numpy()[0], [-2, 3, 1.5, 2.5], atol=1e-5)


def test_distance_box_round_trip():
    points = _t([[10.0, 20.0]])
    box = distance_to_box(points, _t([[1.0, 2.0, 3.0, 4.0]]))
    np.testing.assert_allclose(box.numpy(), [[9, 18, 13, 24]])
    np.testing.assert_allclose(box_to_distance(points, box, -2, 8).numpy(), [[1, 2, 3, 4]])
    # Clipped into [lo, hi - 1 - 0.01].
    far = box_to_distance(points, _t([[30.0, 20.0, 50.0, 40.0]]), -2, 8)
    np.testing.assert_allclose(far.numpy(), [[-2, 0, 6.99, 6.99]], atol=1e-6)


def test_dfl_loss_hand_values():
    logits = np.zeros((1, 4, 10), np.float32)  # uniform: -log p = log 10 for every bin
    target = _t([[0.0, 1.5, -2.0, 3.25]])
    np.testing.assert_allclose(dfl_loss(_t(logits), target, -2).numpy(), [math.log(10)], rtol=1e-5)
    peaked = np.full((1, 4, 10), -30.0, np.float32)
    peaked[0, :, 2] = 30.0  # bin value 0 (index 2)
    loss = dfl_loss(_t(peaked), _t([[0.0, 0.0, 0.0, 0.0]]), -2).numpy()
    assert loss[0] < 1e-6


def test_giou_hand_values():
    a = _t([[0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 1, 1]])
    b = _t([[0, 0, 2, 2], [1, 0, 3, 2], [2, 0, 3, 1]])
    # identical: 1; half overlap: iou 2/6, enclose 6 = union -> 1/3; disjoint: 0 - (3 - 2) / 3
    np.testing.assert_allclose(giou(a, b).numpy(), [1.0, 1 / 3, -1 / 3], atol=1e-6)


def test_varifocal_loss_hand_values():
    logits = _t([[0.0, 0.0]])
    target = _t([[0.8, 0.0]])
    onehot = _t([[1.0, 0.0]])
    # positive: BCE(0.5, 0.8) * 0.8 = ln 2 * 0.8; negative: 0.75 * 0.5^2 * BCE(0.5, 0) = 0.1875 ln 2
    expected = math.log(2) * 0.8 + 0.75 * 0.25 * math.log(2)
    np.testing.assert_allclose(float(varifocal_loss(logits, target, onehot)), expected, rtol=1e-5)
