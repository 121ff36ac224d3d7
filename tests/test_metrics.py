"""R-matrix metrics on hand-computed cases."""
import math

import numpy as np
import pytest

from clmem import metrics

# T = 3. Rows: after training on experience i; columns: test experience j.
R = [
    [0.9, 0.1, 0.2],
    [0.6, 0.8, 0.3],
    [0.5, 0.7, 0.9],
]
B = [0.1, 0.2, 0.1]


def test_acc_is_mean_of_last_row():
    assert metrics.average_accuracy(R) == pytest.approx((0.5 + 0.7 + 0.9) / 3)


def test_bwt_hand_computed():
    # ((0.5 - 0.9) + (0.7 - 0.8)) / 2 = -0.25
    assert metrics.backward_transfer(R) == pytest.approx(-0.25)


def test_fwt_hand_computed():
    # ((R[0][1] - b1) + (R[1][2] - b2)) / 2 = ((0.1 - 0.2) + (0.3 - 0.1)) / 2 = 0.05
    assert metrics.forward_transfer(R, B) == pytest.approx(0.05)


def test_forgetting_takes_max_over_earlier_rows():
    # j=0: max(0.9, 0.6) - 0.5 = 0.4 ; j=1: max(0.1, 0.8) - 0.7 = 0.1 -> mean 0.25
    assert metrics.forgetting_per_experience(R) == pytest.approx([0.4, 0.1])
    assert metrics.average_forgetting(R) == pytest.approx(0.25)
    # after step 1 only experience 0 counts: 0.9 - 0.6
    assert metrics.average_forgetting(R, step=1) == pytest.approx(0.3)
    assert metrics.average_forgetting(R, step=0) == 0.0


def test_forgetting_differs_from_first_vs_last_when_accuracy_peaks_later():
    peaked = [[0.5, 0.0, 0.0], [0.9, 0.8, 0.0], [0.4, 0.7, 0.9]]
    # Chaudhry: max(0.5, 0.9) - 0.4 = 0.5; first-vs-last would give 0.5 - 0.4 = 0.1
    assert metrics.forgetting_per_experience(peaked)[0] == pytest.approx(0.5)


def test_forgetting_for_error_scores_measures_rise_above_best():
    errors = [[0.2, 0.9], [0.4, 0.1]]
    assert metrics.average_forgetting(errors, higher_is_better=False) == pytest.approx(0.2)


def test_average_incremental_accuracy():
    # A0 = 0.9, A1 = (0.6 + 0.8)/2 = 0.7, A2 = 0.7 -> mean 0.7667
    assert metrics.average_incremental_accuracy(R) == pytest.approx((0.9 + 0.7 + 0.7) / 3)


def test_summarize_and_single_experience():
    s = metrics.summarize(R, B)
    assert (s.acc, s.bwt, s.fwt, s.forgetting) == pytest.approx((0.7, -0.25, 0.05, 0.25))
    one = metrics.summarize([[0.8]], [0.1])
    assert one.bwt == 0.0 and one.fwt == 0.0 and one.forgetting == 0.0 and one.acc == 0.8


def test_step_metrics_on_partial_rows():
    out = metrics.step_metrics(R[:2])
    assert out["seen_acc"] == pytest.approx(0.7)
    assert out["stream_acc"] == pytest.approx((0.6 + 0.8 + 0.3) / 3)
    assert out["forgetting"] == pytest.approx(0.3)


@pytest.mark.parametrize("bad", [[], [[0.1, 0.2]], np.zeros((2, 3))])
def test_rejects_non_square(bad):
    with pytest.raises(ValueError, match="square"):
        metrics.average_accuracy(bad)


def test_fwt_needs_one_initial_score_per_experience():
    with pytest.raises(ValueError, match="b: expected 3"):
        metrics.forward_transfer(R, [0.1])
    assert not math.isnan(metrics.forward_transfer(R, B))
