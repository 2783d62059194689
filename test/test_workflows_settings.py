"""workflows.settings: configuration files into a PipelineConfig."""
from __future__ import annotations

import pytest

from semanom_ros.core.errors import ConfigError
from semanom_ros.workflows.settings import config_from_yaml


def test_config_from_yaml_accepts_ros_parameter_files_and_rejects_typos(tmp_path):
    good = tmp_path / "params.yaml"
    good.write_text("monitor:\n  ros__parameters:\n    alpha: 0.95\n    k: 3\n")
    cfg = config_from_yaml(good)
    assert (cfg.alpha, cfg.k) == (0.95, 3)
    bad = tmp_path / "typo.yaml"
    bad.write_text("alpah: 0.9\n")
    with pytest.raises(ConfigError, match="alpah"):
        config_from_yaml(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        config_from_yaml(tmp_path / "missing.yaml")
