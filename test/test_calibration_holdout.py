"""Calibration that expects a new drive, and per-frame ignore masks / stills in the bank builder.

- ``calibration_holdout``: with >= 2 sources each calibration frame is searched without any vector of its
  own source (the threshold then covers drive-to-drive variation); with one source the window holdout is
  used and the calibration carries a warning.
- ``semanom-bank calibrate BANK --on DRIVE``: the threshold from a separate nominal drive, with provenance,
  saved atomically.
- ``--masks DIR`` (per-frame ignore masks of image folders) and ``--stills`` (each image its own source).

Synthetic banks check the exclusion exactly against brute-force cosine scores; builds use the tiny
random-init DINOv2 (test/tiny_models.py).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import textured_frame
from semanom_ros.core.bank import NominalBank
from semanom_ros.core.bank.signature import ModelSignature
from semanom_ros.core.config import PipelineConfig
from semanom_ros.core.errors import ConfigError
from semanom_ros.core.features import FeatureExtractor, patch_mask_from_pixels
from semanom_ros.core.scoring import calibrate
from semanom_ros.tools.bank_cli import main
from semanom_ros.workflows.build_bank import build_bank
from semanom_ros.workflows.errors import BuildError
from semanom_ros.workflows.settings import BuildOptions

H = 28
FRAME_HW = (56, 84)  # -> a 2 x 3 patch grid at input height 28


# ------------------------------------------------------------------------------ synthetic banks
def _signature(dim: int) -> ModelSignature:
    return ModelSignature(model="synthetic", fingerprint="0" * 16, dim=dim, patch_size=14, input_height=H)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _two_source_bank(seed: int = 0, frames: int = 6, per_frame: int = 5, dim: int = 16):
    """Source A near direction a, source B near b (cos(a, b) about 0.3): within a source vectors are close."""
    rng = np.random.default_rng(seed)
    a = _unit(rng.standard_normal(dim))
    b = _unit(0.3 * a + 0.95 * _unit(rng.standard_normal(dim)))
    bank = NominalBank(_signature(dim))
    for name, centre in (("drive_a", a), ("drive_b", b)):
        for i in range(frames):
            vecs = _unit(centre + 0.08 * rng.standard_normal((per_frame, dim))).astype(np.float32)
            bank.add_frame(vecs, source=name, index=i, stamp_ns=i + 1)
    return bank


def _cross_source_patch_scores(bank: NominalBank) -> np.ndarray:
    """Brute force: each vector's 1 - max cosine similarity over every vector of the OTHER sources."""
    vecs = np.asarray(bank.vectors, np.float32)
    source_of_vector = bank.frames["source"][bank.vector_meta["frame"]]
    sims = vecs @ vecs.T
    sims[source_of_vector[:, None] == source_of_vector[None, :]] = -np.inf
    return 1.0 - sims.max(axis=1)


def test_source_holdout_excludes_the_whole_own_source_and_nothing_else():
    bank = _two_source_bank()
    expected = _cross_source_patch_scores(bank)
    cal = calibrate(bank, alpha=0.9, k=1, window=1, holdout="source")
    assert cal["holdout"] == "source" and cal["sources"] == 2 and "warning" not in cal
    # Every patch score is the cross-source score: a vector of its own source outside the window (wrong:
    # too low) or a missing vector of the other source (wrong: too high) changes it.
    assert cal["patches_scored"] == len(expected)
    assert cal["threshold"] == pytest.approx(float(np.quantile(expected, 0.9)), abs=2e-3)
    assert cal["patch_scores"]["min"] == pytest.approx(float(expected.min()), abs=2e-3)
    assert cal["patch_scores"]["max"] == pytest.approx(float(expected.max()), abs=2e-3)
    # The window holdout finds the own drive's other frames: far lower (how a drive resembles itself).
    window = calibrate(bank, alpha=0.9, k=1, window=1, holdout="window")
    assert window["holdout"] == "window" and "inside its own drive" in window["warning"]
    assert window["threshold"] < 0.5 * cal["threshold"]
    assert calibrate(bank, alpha=0.9, window=1, holdout="auto")["holdout"] == "source"


def test_identical_sources_score_zero_with_source_holdout():
    """The twin frame in the other source is NOT excluded (exclusion is by source, not by frame index)."""
    bank = _two_source_bank()
    copy = NominalBank(bank.signature)
    for name in ("drive_a", "drive_a_copy"):
        for fid in range(6):  # the six frames of drive_a, twice
            copy.add_frame(bank.frame_vectors(fid), source=name, index=fid, stamp_ns=fid + 1)
    cal = calibrate(copy, alpha=0.99, window=0, holdout="source")
    assert cal["threshold"] < 1e-3
    # Alone, the drive's window holdout (window 1) must look past its neighbours: clearly above zero.
    single = NominalBank(bank.signature)
    for fid in range(6):
        single.add_frame(bank.frame_vectors(fid), source="drive_a", index=fid, stamp_ns=fid + 1)
    assert calibrate(single, alpha=0.99, window=1, holdout="auto")["threshold"] > 0.01


def test_single_source_uses_the_window_and_warns_source_refused():
    rng = np.random.default_rng(3)
    bank = NominalBank(_signature(8))
    for i in range(5):
        bank.add_frame(_unit(rng.standard_normal((4, 8))).astype(np.float32), source="only", index=i)
    cal = calibrate(bank, alpha=0.9, window=1, holdout="auto")
    assert cal["holdout"] == "window" and cal["sources"] == 1
    assert "likely too tight for a new drive" in cal["warning"] and "--on DRIVE" in cal["warning"]
    with pytest.raises(ConfigError, match="calibration_holdout source.*1 source"):
        calibrate(bank, alpha=0.9, window=1, holdout="source")
    with pytest.raises(ConfigError, match="calibration_holdout"):
        PipelineConfig(calibration_holdout="drive").validate()


# ------------------------------------------------------------------------------ builds (tiny model)
@pytest.fixture(scope="module")
def extractor(tiny_model) -> FeatureExtractor:
    return FeatureExtractor(tiny_model, H, "cpu", "float32")


@pytest.fixture
def config(tiny_model) -> PipelineConfig:
    return PipelineConfig(model=tiny_model, input_height=H, device="cpu", batch_size=4, calibration_window=1,
                          alpha=0.9)


def _folder(path: Path, n: int, seed: int) -> Path:
    path.mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(path / f"{i:04d}.png"), cv2.cvtColor(textured_frame(seed + i, *FRAME_HW), cv2.COLOR_RGB2BGR))
    return path


def _build(sources, out, config, extractor, **options):
    return build_bank([str(s) for s in sources], out, config, BuildOptions(progress=False, **options),
                      extractor=extractor)


def test_build_from_two_drives_calibrates_with_source_holdout(tmp_path, config, extractor):
    a, b = _folder(tmp_path / "a", 5, 0), _folder(tmp_path / "b", 5, 100)
    s = _build([a, b], tmp_path / "bank", config, extractor)
    bank = NominalBank.load(tmp_path / "bank")
    cal = bank.calibration
    assert cal["holdout"] == "source" and cal["sources"] == 2 and "warning" not in cal
    assert bank.config["calibration_holdout"] == "auto"
    expected = _cross_source_patch_scores(bank)
    assert cal["threshold"] == pytest.approx(float(np.quantile(expected, 0.9)), abs=2e-3)
    assert "each frame's source held out, 2 sources" in s.format_text() and "WARNING" not in s.format_text()


def test_single_drive_build_warns_in_manifest_and_output(tmp_path, config, extractor, caplog):
    s = _build([_folder(tmp_path / "a", 6, 0)], tmp_path / "bank", config, extractor)
    manifest = NominalBank.read_manifest(tmp_path / "bank")
    warning = manifest["calibration"]["warning"]
    assert manifest["calibration"]["holdout"] == "window" and "too tight for a new drive" in warning
    assert f"WARNING  {warning}" in s.format_text() and s.warnings == 1
    assert warning in caplog.text


def test_per_frame_masks_leave_their_patches_out_of_the_bank(tmp_path, config, extractor):
    images = _folder(tmp_path / "images", 3, 0)
    masks = tmp_path / "masks"
    masks.mkdir()
    h, w = FRAME_HW
    mask = np.zeros((h // 2, w // 2), np.uint8)  # half resolution: resized to the frame
    mask[:, : w // 4] = 255  # left half of the frame
    cv2.imwrite(str(masks / "0000.png"), mask)
    (masks / "0002.png").write_bytes(b"not a png")  # unreadable: frame 2 is skipped, not added whole
    s = _build([images], tmp_path / "bank", config, extractor, masks=str(masks))
    bank = NominalBank.load(tmp_path / "bank")
    assert s.frames_used == 2 and s.sources[0].masked == 1 and s.skipped["decode_error"] == 1
    frames, meta = bank.frames, bank.vector_meta
    assert list(frames["index"]) == [0, 1]
    grid = (int(frames["grid_h"][0]), int(frames["grid_w"][0]))
    ignored = patch_mask_from_pixels(np.repeat(np.repeat(mask > 0, 2, 0), 2, 1), grid, config.ignore_patch_fraction)
    assert ignored.any() and not ignored.all()

    def cells(fid: int) -> set[tuple[int, int]]:
        rows = meta[meta["frame"] == fid]
        return set(zip(rows["row"].tolist(), rows["col"].tolist()))

    every = {(r, c) for r in range(grid[0]) for c in range(grid[1])}
    assert cells(0) == {cell for cell in every if not ignored[cell]}  # the masked patches are absent
    assert cells(1) == every  # no mask file: the whole frame
    assert s.patches_ignored == int(ignored.sum())
    assert bank.extra["masks"] == [{"path": str(masks.resolve()), "frames_masked": 1}]


def test_masks_on_a_bag_or_matching_nothing(tmp_path, config, extractor, caplog):
    from semanom_ros.io.bagwrite import write_image_bag

    bag = write_image_bag(tmp_path / "bag", [textured_frame(i, *FRAME_HW) for i in range(3)], "/cam")
    (tmp_path / "masks").mkdir()
    with pytest.raises(BuildError, match="--masks applies to image folders"):
        _build([bag], tmp_path / "bank", config, extractor, masks=str(tmp_path / "masks"))
    _build([_folder(tmp_path / "a", 3, 0)], tmp_path / "bank", config, extractor, masks=str(tmp_path / "masks"))
    assert "no <image stem>.png there matches" in caplog.text


def test_stills_are_each_their_own_source(tmp_path, config, extractor):
    stills = _folder(tmp_path / "stills", 4, 0)
    wide = config.replace(calibration_window=12)
    as_video = _build([stills], tmp_path / "video", wide, extractor)
    assert as_video.calibration is None and "leaves no other frame" in as_video.calibration_error
    s = _build([stills], tmp_path / "bank", wide, extractor, stills=True)
    bank = NominalBank.load(tmp_path / "bank")
    assert [src.name for src in bank.sources] == [str((stills / f"{i:04d}.png").resolve()) for i in range(4)]
    assert s.calibration["holdout"] == "source" and s.calibration["frames_scored"] == 4


# ------------------------------------------------------------------------------ calibrate --on
def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_calibrate_on_a_drive_writes_threshold_and_provenance(tmp_path, capsys, config, extractor):
    _build([_folder(tmp_path / "a", 5, 0)], tmp_path / "bank", config, extractor)
    drive = _folder(tmp_path / "drive2", 4, 50)
    rc, out, err = _run(capsys, "calibrate", tmp_path / "bank", "--on", drive, "--alpha", "0.95", "--json",
                        "--no-progress")
    assert rc == 0, err
    brief = json.loads(out)["calibration"]
    bank = NominalBank.load(tmp_path / "bank")
    cal = bank.calibration
    assert cal["holdout"] == "drive" and "warning" not in cal and brief["holdout"] == "drive"
    assert cal["drive"] == {"path": str(drive.resolve()), "frames": 4, "kind": "folder"}
    # Independently: each drive patch's 1 - max cosine over the whole bank, alpha-quantile over patches.
    feats = extractor.extract_batch([cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
                                     for p in sorted(drive.glob("*.png"))])
    queries = _unit(np.concatenate([f.patches.reshape(-1, f.patches.shape[-1]) for f in feats]).astype(np.float32))
    expected = 1.0 - (queries @ np.asarray(bank.vectors, np.float32).T).max(axis=1)
    assert cal["patches_scored"] == len(expected) and cal["frames_scored"] == 4
    assert cal["threshold"] == pytest.approx(float(np.quantile(expected, 0.95)), abs=2e-3)
    assert bank.config["alpha"] == 0.95
    rc, out, _ = _run(capsys, "info", tmp_path / "bank")
    assert rc == 0 and f"on drive {drive.resolve()}" in out and "WARNING" not in out
    rc, _, err = _run(capsys, "calibrate", tmp_path / "bank", "--stride", "2")
    assert rc == 1 and "--stride select frames of a drive; add --on DRIVE" in err


def test_calibrate_on_failures_leave_the_bank_as_it_was(tmp_path, capsys, config, extractor, monkeypatch):
    _build([_folder(tmp_path / "a", 5, 0)], tmp_path / "bank", config, extractor)
    bank_dir = tmp_path / "bank"
    before = {p.name: p.read_bytes() for p in bank_dir.iterdir()}
    rc, _, err = _run(capsys, "calibrate", bank_dir, "--on", tmp_path / "missing")
    assert rc == 1 and "does not exist" in err
    import semanom_ros.workflows.bank_ops as bank_ops

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bank_ops, "drive_scores", interrupted)
    rc, _, err = _run(capsys, "calibrate", bank_dir, "--on", _folder(tmp_path / "d", 2, 9), "--no-progress")
    assert rc == 130 and f"bank at {bank_dir} unchanged" in err
    assert {p.name: p.read_bytes() for p in bank_dir.iterdir()} == before
    assert not list(tmp_path.glob(".bank.tmp-*"))
    shutil.rmtree(tmp_path / "d")
