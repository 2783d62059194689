"""semanom_ros.workflows.eval_metrics against scikit-learn on the same arrays, plus hand-made cases."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from semanom_ros.workflows.eval_metrics import (
    IoUAccumulator,
    best_f1,
    fpr_at_tpr,
    image_metrics,
    pixel_metrics,
    threshold_metrics,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_metrics_agree_with_sklearn_on_random_arrays(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    score = rng.normal(size=200) + 0.8 * y
    pred = score > 0.4
    m = image_metrics(y, score, pred)
    assert m["n_frames"] == 200 and m["n_anomalous"] == int(y.sum()) and m["n_nominal"] == int((y == 0).sum())
    assert m["precision"] == pytest.approx(precision_score(y, pred))
    assert m["recall"] == pytest.approx(recall_score(y, pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["auroc"] == pytest.approx(roc_auc_score(y, score))
    assert m["auprc"] == pytest.approx(average_precision_score(y, score))
    fp, tn = int((pred & (y == 0)).sum()), int((~pred & (y == 0)).sum())
    assert (m["fp"], m["tn"]) == (fp, tn)
    assert m["fpr"] == pytest.approx(fp / (fp + tn)) and m["specificity"] == pytest.approx(tn / (fp + tn))
    assert m["tp"] + m["fn"] == y.sum()
    assert m["undefined"] == {}
    # Best F1: no threshold on the score does better, and its own threshold reproduces it.
    best = m["best_f1"]
    brute = max(f1_score(y, score >= t) for t in np.unique(score))
    assert best["f1"] == pytest.approx(brute)
    assert f1_score(y, score >= best["threshold"]) == pytest.approx(best["f1"])


def test_pixel_metrics_agree_with_sklearn_and_fpr_at_95_interpolates_the_roc():
    rng = np.random.default_rng(3)
    y = (rng.random(5000) < 0.05).astype(int)
    score = rng.random(5000) + 0.5 * y
    m = pixel_metrics(y, score)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, score))
    assert m["ap"] == pytest.approx(average_precision_score(y, score))
    fpr, tpr, _ = roc_curve(y, score, drop_intermediate=False)
    assert m["fpr_at_95_tpr"] == pytest.approx(np.interp(0.95, tpr, fpr))
    assert m["n_pixels"] == 5000 and m["n_anomalous_pixels"] == int(y.sum())


def test_hand_made_cases():
    # Perfect separation.
    m = image_metrics([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    assert (m["auroc"], m["auprc"], m["f1"], m["fpr"], m["balanced_accuracy"]) == (1.0, 1.0, 1.0, 0.0, 1.0)
    assert m["best_f1"] == {"f1": 1.0, "threshold": 0.8, "precision": 1.0, "recall": 1.0}
    # Reversed ranking.
    assert image_metrics([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0])["auroc"] == 0.0
    # ROC (0,0) (0,.5) (.5,.5) (.5,1) (1,1): TPR 0.95 is first reached at FPR 0.5.
    assert fpr_at_tpr([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(0.5)
    assert fpr_at_tpr([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1]) == 0.0
    # Ties: best F1 reports the score a frame must reach.
    assert best_f1([0, 1, 1, 0], [0.3, 0.5, 0.5, 0.1]) == {"f1": 1.0, "threshold": 0.5, "precision": 1.0, "recall": 1.0}
    # Counts.
    t = threshold_metrics([1, 1, 1, 0, 0], [1, 0, 0, 1, 0])
    assert (t["tp"], t["fn"], t["fp"], t["tn"]) == (1, 2, 1, 1)
    assert t["precision"] == 0.5 and t["recall"] == pytest.approx(1 / 3) and t["fpr"] == 0.5


def test_undefined_figures_are_none_with_a_reason_never_a_number():
    only_anomalous = image_metrics([1, 1, 1], [0.5, 0.6, 0.7], [1, 1, 0])
    assert only_anomalous["auroc"] is None and only_anomalous["auprc"] is None
    assert "only anomalous" in only_anomalous["undefined"]["auroc"]
    assert only_anomalous["fpr"] is None and "no nominal" in only_anomalous["undefined"]["fpr"]
    assert only_anomalous["recall"] == pytest.approx(2 / 3)
    assert only_anomalous["best_f1"]["f1"] is None and "reason" in only_anomalous["best_f1"]

    only_nominal = image_metrics([0, 0, 0], [0.1, 0.2, 0.9], [0, 0, 1])
    assert only_nominal["recall"] is None and only_nominal["f1"] is None
    assert only_nominal["undefined"]["recall"] == "no anomalous frames"
    assert only_nominal["fpr"] == pytest.approx(1 / 3)

    nothing_flagged = threshold_metrics([0, 1, 1], [0, 0, 0])
    assert nothing_flagged["precision"] is None and "no frame was flagged" in nothing_flagged["undefined"]["precision"]
    assert nothing_flagged["recall"] == 0.0

    px = pixel_metrics(np.zeros(100, int), np.random.default_rng(0).random(100))
    assert px["auroc"] is None and px["fpr_at_95_tpr"] is None and "only nominal pixels" in px["undefined"]["ap"]

    empty = image_metrics([], [], [])
    assert empty["n_frames"] == 0 and empty["auroc"] is None and empty["precision"] is None

    with pytest.raises(ValueError, match="0 .nominal. or 1"):
        image_metrics([0, 2], [0.1, 0.2], [0, 1])
    with pytest.raises(ValueError, match="entries"):
        image_metrics([0, 1], [0.1], [0, 1])


def test_iou_accumulator_pools_and_averages():
    acc = IoUAccumulator()
    gt = np.zeros((4, 4), bool)
    gt[:2, :2] = True  # 4 px
    pred = np.zeros((4, 4), bool)
    pred[:2, :3] = True  # 6 px, 4 overlap
    assert acc.add(pred, gt) == pytest.approx(4 / 6)
    # A nominal frame with a false alarm: counts in the pooled IoU, not in the per-frame mean.
    false_alarm = np.zeros((4, 4), bool)
    false_alarm[3, 3] = True
    assert acc.add(false_alarm, np.zeros((4, 4), bool)) is None
    res = acc.result()
    assert res["iou"] == pytest.approx(4 / 7) and res["mean_iou"] == pytest.approx(4 / 6) and res["iou_frames"] == 1
    assert IoUAccumulator().result()["iou"] is None
    with pytest.raises(ValueError, match="differ in shape"):
        acc.add(np.zeros((2, 2), bool), gt)
