"""Fixtures shared by the core tests.

A tiny random-init DINOv2 saved and reloaded through the same from_pretrained path users take, and
the location of ../shared (real weights and data).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pytest

from tiny_models import save_tiny_dinov2

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def shared_dir() -> Path:
    return Path(os.environ.get("SEMANOM_SHARED", Path(__file__).resolve().parents[2] / "shared"))


@pytest.fixture(scope="session")
def shared() -> Path:
    path = shared_dir()
    if not (path / "models" / "dinov2-small" / "model.safetensors").is_file():
        pytest.skip(f"real weights and data not found under {path} (set SEMANOM_SHARED)")
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return str(save_tiny_dinov2(tmp_path_factory.mktemp("tiny_dinov2")))


@pytest.fixture(scope="session")
def other_tiny_model(tmp_path_factory) -> str:
    return str(save_tiny_dinov2(tmp_path_factory.mktemp("tiny_dinov2_b"), seed=1))


def textured_frame(seed: int, height: int = 84, width: int = 140) -> np.ndarray:
    """A smooth random 'scene': low-frequency noise, so neighbouring frames look alike."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (6, 10, 3), dtype=np.uint8)
    return np.ascontiguousarray(cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC))


def read_rgb(path: Path) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(path)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="session")
def highway_bank(shared, tmp_path_factory):
    """Real DINOv2-S/14 bank of every 2nd nominal highway frame at input height 224; (config, bank directory).

    Calibrated and saved once per test session (about 40 s on 2 cores).
    """
    from types import SimpleNamespace

    from semanom_ros.core import PatchBankBuilder, PipelineConfig

    cfg = PipelineConfig(model=str(shared / "models" / "dinov2-small"), input_height=224)
    builder = PatchBankBuilder(cfg)
    files = sorted((shared / "data" / "highway" / "nominal").glob("*.jpg"))
    builder.add_all(
        SimpleNamespace(rgb=read_rgb(f), source="highway/nominal", index=i, stamp_ns=i * 40_000_000)
        for i, f in enumerate(files)
        if i % 2 == 0
    )
    builder.calibrate()
    path = builder.bank.save(tmp_path_factory.mktemp("banks") / "highway")
    return cfg, path


@contextlib.contextmanager
def isolated_ros_context(domain_low: int, domain_high: int):
    """An rclpy context of its own on a random domain id in [domain_low, domain_high].

    Test modules use disjoint ranges so parallel runs do not see each other; discovery is limited to
    this machine.
    """
    import random

    import rclpy
    from rclpy.context import Context

    domain = random.SystemRandom().randint(domain_low, domain_high)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROS_DOMAIN_ID", str(domain))
        mp.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        context = Context()
        rclpy.init(context=context, domain_id=domain)
        try:
            yield context
        finally:
            rclpy.shutdown(context=context)
