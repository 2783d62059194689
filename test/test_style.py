"""Style as ROS packages check it (ament_flake8 / ament_pep257): flake8 with pydocstyle, setup.cfg's settings."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_flake8_and_docstrings_are_clean():
    pytest.importorskip("flake8")
    pytest.importorskip("flake8_docstrings")
    proc = subprocess.run(
        [sys.executable, "-m", "flake8", "semanom_ros", "test", "bench", "launch", "setup.py"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"flake8 found {len(proc.stdout.splitlines())} problems:\n{proc.stdout[-6000:]}"
