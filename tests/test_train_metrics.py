"""Metrics against hand-computed values."""
import numpy as np
import pytest

from meranet_fast.train.metrics import classification_metrics, confusion_matrix


def test_confusion_matrix_layout():
    cm = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    with pytest.raises(ValueError, match="outside 0..2"):
        confusion_matrix([0, 3], [0, 0], 3)


def test_metrics_hand_computed():
    cm = np.array([[3, 1, 0], [1, 2, 1], [0, 0, 2]])
    m = classification_metrics(cm)
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["precision"] == pytest.approx((3 / 4 + 2 / 3 + 2 / 3) / 3)
    assert m["recall"] == m["uar"] == pytest.approx((3 / 4 + 2 / 4 + 2 / 2) / 3)
    # per-class F1 = 2TP / (2TP + FP + FN): 6/8, 4/7, 4/5
    assert m["f1"] == m["uf1"] == pytest.approx((6 / 8 + 4 / 7 + 4 / 5) / 3)


def test_empty_classes_count_as_zero():
    m = classification_metrics(np.array([[2, 0], [0, 0]]))
    assert m["accuracy"] == 1.0
    assert m["uar"] == pytest.approx(0.5) and m["uf1"] == pytest.approx(0.5)
    assert classification_metrics(np.zeros((3, 3)))["accuracy"] == 0.0


def test_loso_uf1_uses_the_pooled_matrix():
    folds = [([0, 0, 1], [0, 1, 1]), ([2, 1, 0], [2, 0, 0]), ([2, 2], [2, 1])]
    pooled = sum(confusion_matrix(t, p, 3) for t, p in folds)
    np.testing.assert_array_equal(pooled, [[2, 1, 0], [1, 1, 0], [0, 1, 2]])
    m = classification_metrics(pooled)
    assert m["uf1"] == pytest.approx((4 / 6 + 2 / 5 + 4 / 5) / 3)
    assert m["uar"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    per_fold_mean = np.mean([classification_metrics(confusion_matrix(t, p, 3))["uf1"] for t, p in folds])
    assert per_fold_mean != pytest.approx(m["uf1"])
