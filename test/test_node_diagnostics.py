"""The monitor node's /diagnostics values that come from the bank (no DDS needed)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("diagnostic_msgs")
from semanom_ros.nodes.diagnostics import calibration_warning  # noqa: E402


def monitor_with(calibration: dict | None, threshold: float | None) -> SimpleNamespace:
    return SimpleNamespace(config=SimpleNamespace(threshold=threshold), bank=SimpleNamespace(calibration=calibration))


def test_a_within_drive_calibration_warning_is_shown_unless_a_fixed_threshold_replaces_it():
    warning = "calibrated within its own drive: the threshold is likely too tight for a new drive"
    assert calibration_warning(monitor_with({"warning": warning}, None)) == warning
    assert calibration_warning(monitor_with({"warning": warning}, 0.2)) == ""
    assert calibration_warning(monitor_with({"threshold": 0.1}, None)) == ""
    assert calibration_warning(None) == ""
