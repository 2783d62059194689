"""Fleet builds on a local Ray cluster give the single-process bank, resume without redoing shards, skip bad bags.

Sources: three copies of ../shared/data/highway/bag_mcap (a new folder each, its .mcap a symlink), read
with a stride and a frame limit; model: the tiny random-init DINOv2 of tiny_models.py.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_dir
from semanom_ros.core.bank import NominalBank
from semanom_ros.core.config import PipelineConfig
from semanom_ros.workflows.build_bank import build_bank
from semanom_ros.workflows.settings import BuildOptions

ray = pytest.importorskip("ray", reason="ray is not installed (pinned in requirements.txt: run 'make setup')")

from semanom_ros.workflows.fleet_build import (  # noqa: E402
    DONE_SUFFIX, FleetOptions, build_shard, complete_shard, fleet_build, shard_key,
)

MCAP = shared_dir() / "data" / "highway" / "bag_mcap"
H = 28
pytestmark = pytest.mark.skipif(not MCAP.is_dir(), reason=f"highway bag not found at {MCAP} (set SEMANOM_SHARED)")
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1"}
os.environ.update(RAY_ENV)


def _copy_bag(folder: Path) -> Path:
    """A bag of its own path: metadata copied, the 20 MB .mcap linked."""
    folder.mkdir(parents=True)
    (folder / "metadata.yaml").write_bytes((MCAP / "metadata.yaml").read_bytes())
    (folder / "bag_mcap.mcap").symlink_to(MCAP / "bag_mcap.mcap")
    return folder


@pytest.fixture(scope="module")
def bags(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("fleet_bags")
    return [_copy_bag(root / f"drive_{i}") for i in range(3)]


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()


def _config(model: str) -> PipelineConfig:
    return PipelineConfig(model=model, input_height=H, device="cpu", batch_size=4, calibration_window=2)


def _options(**kw) -> BuildOptions:
    # 13 frames a bag (every 12th of 150) and 30 in all: the limit ends inside the third bag.
    return BuildOptions(**{"stride": 12, "max_frames": 30, "progress": False, **kw})


def _assert_same_bank(a: Path, b: Path) -> None:
    x, y = NominalBank.load(a), NominalBank.load(b)
    assert [(s.name, s.topic, s.frames) for s in x.sources] == [(s.name, s.topic, s.frames) for s in y.sources]
    for col in ("source", "index", "stamp_ns", "vec_start", "vec_count", "grid_h", "grid_w"):
        np.testing.assert_array_equal(x.frames[col], y.frames[col], err_msg=col)
    np.testing.assert_array_equal(x.vector_meta, y.vector_meta)
    np.testing.assert_allclose(np.asarray(x.vectors, np.float32), np.asarray(y.vectors, np.float32), atol=2e-3)
    assert x.calibration["threshold"] == pytest.approx(y.calibration["threshold"], rel=1e-3)
    for key in ("alpha", "k", "window", "holdout", "level", "frames"):
        assert x.calibration.get(key) == y.calibration.get(key), key


def test_shard_key_follows_what_goes_into_a_shard(tmp_path, tiny_model):
    bag = _copy_bag(tmp_path / "drive")
    config, options = _config(tiny_model), _options()
    key = shard_key(str(bag), config, options)
    assert shard_key(str(bag), config, _options()) == key
    changed = {
        "stride": shard_key(str(bag), config, _options(stride=6)),
        "max_frames": shard_key(str(bag), config, _options(max_frames=31)),
        "topic": shard_key(str(bag), config, _options(topic="/camera/image_raw")),
        "input_height": shard_key(str(bag), PipelineConfig(**{**config.to_dict(), "input_height": 42}), options),
        "model": shard_key(str(bag), PipelineConfig(**{**config.to_dict(), "model": str(tmp_path)}), options),
    }
    assert all(k != key for k in changed.values()), changed
    # Calibration, search and speed settings act after the merge: the shards stay.
    after_merge = PipelineConfig(**{**config.to_dict(), "alpha": 0.99, "calibration_window": 5, "batch_size": 1})
    assert shard_key(str(bag), after_merge, options) == key
    (bag / "metadata.yaml").write_text((bag / "metadata.yaml").read_text() + "\n")  # the bag changed
    assert shard_key(str(bag), config, options) != key


def test_complete_shard_needs_the_same_key_and_intact_files(tmp_path, tiny_model):
    shard = tmp_path / "shard"
    record = build_shard(str(MCAP), shard, "key-a", _config(tiny_model), _options(stride=30, calibrate=False))
    assert record["ok"] and record["source"]["used"] == 5
    assert complete_shard(shard, "key-a")["manifest_digest"] == record["manifest_digest"]
    assert complete_shard(shard, "key-b") is None  # built with other arguments
    vectors = shard / "embeddings.npy"
    data = bytearray(vectors.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte: the checksum no longer matches
    vectors.write_bytes(bytes(data))
    assert complete_shard(shard, "key-a") is None
    failed = build_shard(str(tmp_path / "missing"), tmp_path / "shard2", "k", _config(tiny_model), _options())
    assert not failed["ok"] and "does not exist" in failed["error"]
    assert not (tmp_path / ("shard2" + DONE_SUFFIX)).exists()


def test_ray_build_equals_single_process_build(tmp_path, bags, tiny_model, ray_cluster):
    single = build_bank([str(b) for b in bags], tmp_path / "single", _config(tiny_model), _options())
    fleet = fleet_build([str(b) for b in bags], tmp_path / "fleet", _config(tiny_model), _options(),
                        FleetOptions(workers=2))
    assert single.frames_used == fleet.frames_used == 30
    assert [s.used for s in fleet.sources] == [s.used for s in single.sources] == [13, 13, 4]
    assert len(fleet.shards_built) == 3 and not fleet.shards_kept and not fleet.failed
    assert fleet.calibration["threshold"] == pytest.approx(single.calibration["threshold"], rel=1e-3)
    _assert_same_bank(tmp_path / "single", tmp_path / "fleet")
    # Same bags in another order: another bank (order is the sources', not the cluster's).
    other = build_bank([str(b) for b in bags[::-1]], tmp_path / "reversed", _config(tiny_model), _options())
    assert other.sources[0].path == str(bags[2]) and other.sources[2].used == 4


def test_corrupt_bag_is_reported_and_skipped(tmp_path, bags, tiny_model, ray_cluster):
    bad = tmp_path / "corrupt_drive"
    bad.mkdir()
    (bad / "metadata.yaml").write_bytes((MCAP / "metadata.yaml").read_bytes())
    (bad / "bag_mcap.mcap").write_bytes(b"\x89MCAP0\r\n" + os.urandom(4096))
    sources = [str(bags[0]), str(bad), str(bags[1])]
    summary = fleet_build(sources, tmp_path / "bank", _config(tiny_model), _options(max_frames=None),
                          FleetOptions(workers=1))
    assert [f["path"] for f in summary.failed] == [str(bad)]
    assert len(summary.shards_built) == 2
    assert [s.used for s in summary.sources] == [13, 0, 13] and summary.sources[1].error
    assert "FAILED" in summary.format_text() and str(bad) in summary.format_text()
    bank = NominalBank.load(tmp_path / "bank")
    assert [s.name for s in bank.sources] == [str(bags[0]), str(bags[1])]
    reference = build_bank([str(bags[0]), str(bags[1])], tmp_path / "reference", _config(tiny_model),
                           _options(max_frames=None))
    assert reference.frames_used == bank.num_frames == 26
    _assert_same_bank(tmp_path / "reference", tmp_path / "bank")


def _cli(bags: list[Path], out: Path, shard_dir: Path, model: str) -> list[str]:
    return [sys.executable, "-m", "semanom_ros.tools.bank_cli", "build", *map(str, bags), "-o", str(out),
            "--model", model, "--input-height", str(H), "--device", "cpu", "--batch-size", "1", "--window", "2",
            "--stride", "6", "--no-progress", "--ray", "--ray-workers", "1", "--shard-dir", str(shard_dir)]


def _settled_done_shards(shard_dir: Path, quiet_s: float = 5.0, timeout_s: float = 60.0) -> set[str]:
    """The complete shards once none has completed for ``quiet_s``.

    An embedding actor of the killed driver can outlive it by a moment (Ray notices the owner's death
    asynchronously) and finish the shard it was writing; that shard is then complete, not redone.
    """
    deadline = time.monotonic() + timeout_s
    seen = None
    while True:
        current = {p.name.removesuffix(DONE_SUFFIX) for p in shard_dir.glob(f"*{DONE_SUFFIX}")}
        if current == seen or time.monotonic() > deadline:
            return current
        seen = current
        time.sleep(quiet_s)


def test_killed_fleet_build_resumes_without_redoing_complete_shards(tmp_path, tiny_model):
    root = tmp_path / "bags"
    bags = [_copy_bag(root / f"drive_{i}") for i in range(4)]
    env = dict(os.environ, **RAY_ENV)
    shard_dir = tmp_path / "shards"
    proc = subprocess.Popen(_cli(bags, tmp_path / "bank", shard_dir, tiny_model), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    try:
        while not list(shard_dir.glob(f"*{DONE_SUFFIX}")):
            assert proc.poll() is None, "the fleet build ended before its first shard was complete"
            assert time.monotonic() < deadline, "no shard was complete after 120 s"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local cluster it started
        proc.wait()
    done = _settled_done_shards(shard_dir)
    assert 1 <= len(done) < len(bags), "kill came too late to leave shards to redo"
    assert not (tmp_path / "bank").exists()
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for name in done for p in (shard_dir / name).iterdir()}

    rerun = subprocess.run(_cli(bags, tmp_path / "bank", shard_dir, tiny_model), env=env, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for name in done:
        assert f"shard {name} (" in rerun.stderr and "complete from an earlier run, skipped" in rerun.stderr
    assert f"{len(bags) - len(done)} built, {len(done)} skipped" in rerun.stdout
    after = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in before}
    assert after == before  # complete shards were not rebuilt

    single = tmp_path / "single"
    build_bank([str(b) for b in bags], single, PipelineConfig(model=tiny_model, input_height=H, device="cpu",
                                                              batch_size=1, calibration_window=2),
               BuildOptions(stride=6, progress=False))
    _assert_same_bank(single, tmp_path / "bank")
