"""The streaming bank build (semanom_ros.workflows.build_bank).

Counts, manifest contents, frame selection, append / merge behaviour, model mismatches, and data
faults that are skipped instead of crashing.

Real bags: ../shared/data/highway/bag_mcap and bag_sqlite3 (150 JPEG CompressedImage messages at
25 fps, plus 20 rgb8 Image messages in the mcap bag). Everything else is written by the tests with
rosbags. A tiny random-init DINOv2 keeps each build to a second or two.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import shared_dir, textured_frame
from semanom_ros.core.bank import NominalBank
from semanom_ros.core.config import PipelineConfig
from semanom_ros.core.errors import BankMismatchError, ConfigError
from semanom_ros.core.features import FeatureExtractor
from semanom_ros.core.selection import LiveFrameSelector, NearDuplicateFilter, resolve_time_range
from semanom_ros.io.bagwrite import make_image_msg, write_image_bag
from semanom_ros.workflows.bank_ops import merge_banks, remove_stale_temp_dirs
from semanom_ros.workflows.build_bank import BuildSummary, build_bank
from semanom_ros.workflows.errors import BuildError
from semanom_ros.workflows.settings import BuildOptions, read_settings_file, resolve_build_settings

HIGHWAY = shared_dir() / "data" / "highway"
MCAP = HIGHWAY / "bag_mcap"
SQLITE = HIGHWAY / "bag_sqlite3"
COMP = "/camera/image_raw/compressed"
RAW = "/camera/image_raw"
T0 = 1_700_000_000_000_000_000
H = 28  # input height of the tiny model: 2 x (aspect) patches

needs_highway = pytest.mark.skipif(not (MCAP.is_dir() and SQLITE.is_dir()),
                                   reason=f"highway bags not found under {HIGHWAY}")


@pytest.fixture(scope="module")
def extractor(tiny_model) -> FeatureExtractor:
    """One loaded tiny model for the module (build_bank accepts a ready extractor)."""
    return FeatureExtractor(tiny_model, H, "cpu", "float32")


@pytest.fixture
def config(tiny_model) -> PipelineConfig:
    return PipelineConfig(model=tiny_model, input_height=H, device="cpu", batch_size=4, calibration_window=2)


def _frames(n: int, seed: int = 0, h: int = 48, w: int = 80) -> list[np.ndarray]:
    return [textured_frame(seed + i, h, w) for i in range(n)]


def _build(sources, out, config, extractor, **options) -> BuildSummary:
    return build_bank([str(s) for s in sources], out, config, BuildOptions(progress=False, **options),
                      extractor=extractor)


def _log_text(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------ real bags
@needs_highway
def test_real_bags_both_storages_give_the_same_bank(tmp_path, config, extractor):
    banks = {}
    for bag in (MCAP, SQLITE):
        out = tmp_path / bag.name
        s = _build([bag], out, config, extractor, stride=3)
        assert (s.messages, s.decoded, s.frames_used) == (150, 50, 50)
        assert s.skipped["stride"] == 100 and sum(s.skipped.values()) == 100
        src = s.sources[0]
        assert (src.topic, src.msgtype, src.kind) == (COMP, "sensor_msgs/msg/CompressedImage", "bag")
        assert (src.first_stamp_ns, src.last_stamp_ns) == (T0, T0 + 147 * 40_000_000)
        assert s.vectors_added == s.vectors_total == 50 * 2 * 4  # 540x960 at height 28: 2 x 4 patches
        banks[bag.name] = NominalBank.load(out)
        m = NominalBank.read_manifest(out)
        assert m["num_frames"] == 50 and m["model"]["input_height"] == H
        assert m["model"]["fingerprint"] == extractor.fingerprint
        assert m["sources"] == [{"name": str(bag.resolve()), "topic": COMP, "first_stamp_ns": T0,
                                 "last_stamp_ns": T0 + 147 * 40_000_000, "frames": 50}]
        assert m["calibration"]["threshold"] > 0 and m["calibration"]["window"] == 2
        (record,) = m["extra"]["builds"]
        assert record["frames_used"] == 50 and record["options"]["stride"] == 3
        assert record["skipped"] == {"stride": 100}
        np.testing.assert_array_equal(banks[bag.name].frames["index"], np.arange(0, 150, 3))
    np.testing.assert_array_equal(banks["bag_mcap"].vectors, banks["bag_sqlite3"].vectors)


@needs_highway
def test_real_bag_topic_choice_and_time_range(tmp_path, config, extractor):
    # Relative seconds from the bag start: [1.0, 2.0) s holds 25 of the 25 fps messages.
    s = _build([MCAP], tmp_path / "a", config, extractor, start_s=1.0, end_s=2.0)
    assert (s.frames_used, s.skipped["time_range"]) == (25, 125)
    assert s.sources[0].first_stamp_ns == T0 + 1_000_000_000
    # Absolute Unix seconds select the same messages; the rgb8 topic has 20 messages in the first 0.8 s.
    s = _build([MCAP], tmp_path / "b", config, extractor, topic=RAW, start_s=T0 / 1e9 + 0.4, end_s=T0 / 1e9 + 10)
    assert (s.messages, s.frames_used, s.skipped["time_range"]) == (20, 10, 10)
    assert s.sources[0].msgtype == "sensor_msgs/msg/Image"
    # min interval 0.1 s at 25 fps keeps every 3rd message; max_frames stops the build.
    s = _build([MCAP], tmp_path / "c", config, extractor, min_interval_s=0.1, max_frames=7)
    assert s.frames_used == 7 and s.skipped["min_interval"] >= 12
    assert sum(s.skipped.values()) + s.frames_used == 150  # every message accounted for
    np.testing.assert_array_equal(NominalBank.load(tmp_path / "c").frames["index"], np.arange(0, 21, 3))


@needs_highway
def test_missing_topic_is_an_error_listing_the_topics(tmp_path, config, extractor):
    expected = r"'/nope' not found.*/camera/image_raw/compressed \[CompressedImage, 150 msgs\]"
    with pytest.raises(BuildError, match=expected):
        _build([MCAP], tmp_path / "x", config, extractor, topic="/nope")
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------ written bags
def test_faulty_sources_are_skipped_counted_and_named(tmp_path, config, extractor, caplog):
    """Bad messages, a truncated bag, a bag without the topic and an unreadable image: one build, no crash."""
    imgs = _frames(10)
    items: list[object] = list(imgs)
    items[2] = b"\x07\x07 not CDR"  # undeserializable
    items[4] = make_image_msg(imgs[4].tobytes(), height=48, width=80, encoding="yuv444", step=240)  # unsupported
    items[6] = make_image_msg(b"\x00" * 10, height=48, width=80, encoding="rgb8", step=240)  # truncated data
    bad = write_image_bag(tmp_path / "bad", items, "/cam", storage="sqlite3")
    jpeg = write_image_bag(tmp_path / "jpeg", _frames(4, 20), "/cam", compressed=True)
    other_topic = write_image_bag(tmp_path / "other", _frames(3), "/elsewhere")
    big = [textured_frame(30 + i, 128, 192) for i in range(40)]
    truncated = write_image_bag(tmp_path / "trunc", big, "/cam")
    mcap = truncated / "trunc.mcap"
    with mcap.open("r+b") as fh:
        fh.truncate(int(mcap.stat().st_size * 0.6))
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, rgb in enumerate(_frames(3, 40)):
        cv2.imwrite(str(folder / f"{i:04d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    (folder / "0003.png").write_bytes(b"\x89PNG garbage")
    tiny = write_image_bag(tmp_path / "tiny", [np.zeros((5, 5, 3), np.uint8)] * 2, "/cam")  # below one patch

    caplog.set_level(logging.WARNING)
    s = _build([bad, jpeg, other_topic, truncated, folder, tiny], tmp_path / "bank", config, extractor,
               topic="/cam")
    by_path = {Path(src.path).name: src for src in s.sources}
    assert by_path["bad"].used == 7 and by_path["bad"].skipped == {"deserialize_error": 1, "decode_error": 2}
    assert by_path["jpeg"].used == 4 and by_path["jpeg"].msgtype == "sensor_msgs/msg/CompressedImage"
    assert by_path["other"].error and "'/cam' not found" in by_path["other"].error and by_path["other"].used == 0
    trunc = by_path["trunc"]
    # A truncated MCAP is read up to the damage; its index is gone, so what follows is not even counted.
    assert 0 < trunc.used < 40 and trunc.read_errors == 1 and trunc.messages == trunc.used
    assert by_path["folder"].kind == "folder" and by_path["folder"].used == 3
    assert by_path["folder"].skipped == {"decode_error": 1}
    assert by_path["tiny"].skipped == {"unusable_frame": 2}
    assert s.frames_used == 7 + 4 + trunc.used + 3 == NominalBank.load(tmp_path / "bank").num_frames
    text = _log_text(caplog)
    t2 = T0 + 2 * 100_000_000
    assert f"'{bad}': topic '/cam' message #2 at {t2} ns could not be deserialized" in text
    assert "'yuv444' is not supported" in text and "skipping" in text and str(other_topic) in text
    assert "truncated" in text and "0003.png" in text and "smaller than one 14-pixel patch" in text
    assert s.warnings >= 6
    manifest = NominalBank.read_manifest(tmp_path / "bank")
    assert {src["name"] for src in manifest["sources"]} == {str(p) for p in (bad, jpeg, truncated, folder)}


def test_user_errors_raise_before_any_work(tmp_path, config, extractor):
    bag = write_image_bag(tmp_path / "bag", _frames(3), "/cam")
    with pytest.raises(BuildError, match="does not exist"):
        _build([tmp_path / "missing"], tmp_path / "out", config, extractor)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("precious")
    with pytest.raises(BuildError, match="not a bank"):
        _build([bag], junk, config, extractor)
    assert (junk / "notes.txt").read_text() == "precious"
    with pytest.raises(BuildError, match="no bank at"):
        _build([bag], tmp_path / "new", config, extractor, append=True)
    with pytest.raises(ConfigError, match="ignore_mask"):
        _build([bag], tmp_path / "out", config.replace(ignore_mask=str(tmp_path / "nope.png")), extractor)
    with pytest.raises(BuildError, match="image folder"):
        folder = tmp_path / "imgs"
        folder.mkdir()
        cv2.imwrite(str(folder / "a.png"), _frames(1)[0])
        _build([folder], tmp_path / "out", config, extractor, start_s=1.0)
    with pytest.raises(ConfigError, match="dedup_similarity"):
        _build([bag], tmp_path / "out", config, extractor, dedup_similarity=1.5)
    # Every message skipped: nothing written.
    with pytest.raises(BuildError, match="no frame was usable.*time_range 3"):
        _build([bag], tmp_path / "out", config, extractor, start_s=100.0)
    assert not (tmp_path / "out").exists()


def test_near_duplicates_are_skipped_by_cls_similarity(tmp_path, config, extractor):
    distinct = [textured_frame(s, 48, 80) for s in (0, 1, 2)]
    cls = [f.cls for f in extractor.extract_batch(distinct)]
    threshold = 0.999999
    assert max(float(a @ b) for a, b in [(cls[0], cls[1]), (cls[1], cls[2])]) < threshold  # precondition
    # A robot standing still: each view repeated 4 times, then the first view again.
    items = [distinct[i] for i in (0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 0)]
    bag = write_image_bag(tmp_path / "bag", items, "/cam")
    s = _build([bag], tmp_path / "bank", config, extractor, dedup_similarity=threshold)
    assert s.embedded == 13 and s.frames_used == 4 and s.skipped["near_duplicate"] == 9
    np.testing.assert_array_equal(NominalBank.load(tmp_path / "bank").frames["index"], [0, 4, 8, 12])
    assert _build([bag], tmp_path / "all", config, extractor).frames_used == 13


def test_near_duplicate_filter_and_live_selector_units():
    f = NearDuplicateFilter(0.9)
    a, b = np.array([1.0, 0.0]), np.array([0.95, 0.31])
    assert f.keep("s", a) and not f.keep("s", b) and f.keep("t", b)  # per source
    assert f.keep("s", np.array([0.0, 1.0])) and f.skipped == 1
    assert NearDuplicateFilter(0).enabled is False and NearDuplicateFilter(None).keep("s", a)
    with pytest.raises(ConfigError):
        NearDuplicateFilter(1.2)
    sel = LiveFrameSelector(stride=2, min_interval_s=0.15, max_frames=3)
    stamps = [0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]
    results = [sel.offer(t * 1_000_000) for t in stamps]
    assert results == [None, "stride", None, "stride", None] + ["max_count"] * 6
    sel = LiveFrameSelector(min_interval_s=0.25)
    assert [sel.offer(t * 1_000_000) for t in (0, 100, 200, 300)] == [None, "min_interval", "min_interval", None]
    with pytest.raises(ConfigError):
        LiveFrameSelector(stride=0)
    assert resolve_time_range(1.5, None, 10**18, "b") == (10**18 + 1_500_000_000, None)
    assert resolve_time_range(1.7e9, 1.7e9 + 2, None, "b") == (1_700_000_000_000_000_000, 1_700_000_002_000_000_000)
    with pytest.raises(ConfigError, match="start time cannot be read"):
        resolve_time_range(1.0, None, None, "b")
    with pytest.raises(ConfigError, match="must be after"):
        resolve_time_range(2.0, 1.0, 0, "b")


def test_append_merge_and_model_mismatch(tmp_path, config, extractor, other_tiny_model):
    bag1 = write_image_bag(tmp_path / "drive1", _frames(6, 0), "/cam")
    bag2 = write_image_bag(tmp_path / "drive2", _frames(5, 50), "/cam", compressed=True, storage="sqlite3")
    bank_dir = tmp_path / "bank"
    s1 = _build([bag1], bank_dir, config, extractor)
    before = NominalBank.load(bank_dir)
    threshold1 = before.calibration["threshold"]
    s2 = _build([bag2], bank_dir, config, extractor, append=True)
    assert s2.appended and s2.frames_used == 5 and (s2.frames_total, s2.vectors_total) == (11, 11 * 2 * 3)
    after = NominalBank.load(bank_dir)
    assert [src.name for src in after.sources] == [str(bag1), str(bag2)]
    np.testing.assert_array_equal(np.asarray(after.vectors[: len(before)]), np.asarray(before.vectors))
    assert len(after.extra["builds"]) == 2 and after.extra["builds"][1]["appended"] is True
    assert after.calibration["frames_scored"] == 11 and after.calibration["threshold"] != threshold1
    assert s1.vectors_total == len(before)

    # Another model (same architecture, other weights) or another input height: refused, bank untouched.
    manifest = (bank_dir / "manifest.json").read_bytes()
    other = config.replace(model=other_tiny_model)
    with pytest.raises(BankMismatchError, match="model: the existing bank was built with"):
        build_bank([str(bag1)], bank_dir, other, BuildOptions(append=True, progress=False))
    with pytest.raises(BankMismatchError, match="input_height 28"):
        build_bank([str(bag1)], bank_dir, config.replace(input_height=56), BuildOptions(append=True, progress=False))
    assert (bank_dir / "manifest.json").read_bytes() == manifest

    # Appending without naming the model takes the bank's (settings resolution).
    cfg, opts = resolve_build_settings(bank_dir, append=True, pipeline_overrides={"alpha": 0.99})
    assert (cfg.model, cfg.input_height, cfg.calibration_window, cfg.alpha) == (config.model, H, 2, 0.99)
    assert opts.append

    # Merge: one model joins, another model is refused with the bank's path in the message.
    other_dir = tmp_path / "other"
    build_bank([str(bag2)], other_dir, config.replace(model=other_tiny_model), BuildOptions(progress=False))
    merged, cal = merge_banks([bank_dir, tmp_path / "bank"], tmp_path / "merged", progress=False)
    assert merged.num_frames == 22 and cal["frames_scored"] == 22
    assert len(NominalBank.load(tmp_path / "merged").extra["builds"]) == 4
    with pytest.raises(BankMismatchError, match=str(other_dir)):
        merge_banks([bank_dir, other_dir], tmp_path / "bad_merge", progress=False)
    assert not (tmp_path / "bad_merge").exists()


def test_ignore_mask_leaves_out_patches_everywhere(tmp_path, config, extractor):
    mask = np.zeros((48, 80), np.uint8)
    mask[24:, :] = 255  # the bottom half: an ego bonnet
    mask_path = tmp_path / "bonnet.png"
    cv2.imwrite(str(mask_path), mask)
    bag = write_image_bag(tmp_path / "bag", _frames(4), "/cam")
    s = _build([bag], tmp_path / "bank", config.replace(ignore_mask=str(mask_path)), extractor)
    bank = NominalBank.load(tmp_path / "bank")
    # 2 x 3 patches per frame, the bottom row ignored.
    assert (s.vectors_added, s.patches_ignored) == (4 * 3, 4 * 3)
    assert set(bank.vector_meta["row"].tolist()) == {0}
    assert bank.extra["ignore_mask"]["ignored_fraction"] == pytest.approx(0.5)
    assert bank.config["ignore_mask"] == str(mask_path)


def test_coreset_during_build_and_uncalibratable_bank(tmp_path, config, extractor):
    bag = write_image_bag(tmp_path / "bag", _frames(12), "/cam")
    s = _build([bag], tmp_path / "core", config, extractor, coreset_fraction=0.5)
    assert s.vectors_added == 72 and s.vectors_total == 36 and s.frames_total == 12
    assert s.coreset["shrink_factor"] == pytest.approx(2.0) and "coreset" in s.format_text()
    bank = NominalBank.load(tmp_path / "core")
    assert bank.calibration["queries"].startswith("full bank") and bank.extra["coreset"]["to_vectors"] == 36
    # A window covering every frame leaves nothing to compare with: saved, uncalibrated, reported.
    s = _build([bag], tmp_path / "nocal", config.replace(calibration_window=50), extractor)
    assert s.calibration is None and "calibrate" in s.calibration_error
    assert NominalBank.load(tmp_path / "nocal").calibration is None
    s = _build([bag], tmp_path / "skip", config, extractor, calibrate=False)
    assert s.calibration is None and s.calibration_error is None


def test_summary_json_and_text(tmp_path, config, extractor):
    bag = write_image_bag(tmp_path / "bag", _frames(5), "/cam")
    s = _build([bag], tmp_path / "bank", config, extractor, stride=2)
    d = json.loads(json.dumps(s.to_dict(), default=str))
    assert d["frames_used"] == 3 and d["messages"] == 5 and d["skipped"]["stride"] == 2
    assert d["size_bytes"] == sum(f.stat().st_size for f in (tmp_path / "bank").iterdir())
    assert set(d["seconds"]) >= {"total", "embed", "read_and_embed", "calibrate", "save", "load_model"}
    text = s.format_text()
    for part in ("5 msgs, 3 decoded, 3 used", "skipped: stride 2", "18 added", "threshold", "on disk", "frames/s"):
        assert part in text, part


def test_settings_file_and_node_parameter_file(tmp_path):
    pipeline, options = read_settings_file(Path(__file__).resolve().parents[1] / "config" / "bank_builder.yaml")
    assert "model" not in pipeline and "input_height" not in pipeline  # "" / 0 = unset
    assert pipeline["alpha"] == 0.999 and options["stride"] == 1 and "coreset_fraction" not in options
    PipelineConfig.from_dict(pipeline)
    BuildOptions(**options).validate()
    flat = tmp_path / "s.yaml"
    flat.write_text("input_height: 112\nstride: 4\ndedup_similarity: 0.97\n")
    cfg, opts = resolve_build_settings(tmp_path / "b", settings_file=flat, build_overrides={"stride": 2})
    assert cfg.input_height == 112 and (opts.stride, opts.dedup_similarity) == (2, 0.97)
    flat.write_text("stide: 4\n")
    with pytest.raises(ConfigError, match="stide"):
        read_settings_file(flat)


def test_stale_temp_dirs_of_dead_saves_are_removed(tmp_path):
    out = tmp_path / "bank"
    dead = tmp_path / ".bank.tmp-999999999-1"  # no such pid
    alive = tmp_path / f".bank.tmp-{os.getppid()}-2"
    for d in (dead, alive):
        d.mkdir()
    assert remove_stale_temp_dirs(out) == 1
    assert not dead.exists() and alive.exists()
    shutil.rmtree(alive)


@pytest.mark.integration
def test_real_weights_bank_from_the_highway_bag_separates_anomalies(shared, tmp_path):
    """DINOv2-S/14 at input height 112 on every 2nd message of the real mcap bag.

    The bank then scores the labelled highway test frames: anomalous frames score higher than
    nominal ones.
    """
    import csv

    from conftest import read_rgb
    from semanom_ros.core.monitor import Monitor

    config = PipelineConfig(model=str(shared / "models" / "dinov2-small"), input_height=112, device="cpu")
    s = build_bank([str(MCAP)], tmp_path / "bank", config, BuildOptions(stride=2, progress=False))
    assert (s.frames_used, s.vectors_total) == (75, 75 * 8 * 14)
    assert s.calibration["threshold"] > 0 and s.embed_fps > 0
    monitor = Monitor(config, tmp_path / "bank")
    test = shared / "data" / "highway" / "test"
    rows = list(csv.DictReader((test / "labels.csv").open()))[:24]
    scores = {0: [], 1: []}
    for row in rows:
        scores[int(row["anomalous"])].append(monitor.process(read_rgb(test / "images" / f"{row['frame']}.jpg")).score)
    assert np.mean(scores[1]) > np.mean(scores[0]) + 0.02, scores


def test_instance_mode_build_and_append(tmp_path):
    """--mode instance goes through InstanceBankBuilder (tiny OWLv2 + SAM 2): an 'instance' bank."""
    from tiny_models import save_tiny_dinov2, save_tiny_owlv2, save_tiny_sam2

    root = tmp_path / "models"
    config = PipelineConfig(
        model=str(save_tiny_dinov2(root / "dino")), input_height=56, device="cpu", mode="instance",
        detector_model=str(save_tiny_owlv2(root / "owl")), segmenter_model=str(save_tiny_sam2(root / "sam")),
        detector_score_threshold=0.0, detector_top_k=3, instance_min_mask_area_px=20, calibration_window=1,
        batch_size=2,
    )
    bag = write_image_bag(tmp_path / "bag", [textured_frame(i, 84, 140) for i in range(5)], "/cam")
    s = build_bank([str(bag)], tmp_path / "bank", config, BuildOptions(progress=False, max_frames=4))
    bank = NominalBank.load(tmp_path / "bank")
    assert bank.kind == "instance" and s.mode == "instance" and s.frames_used == bank.num_frames == 4
    assert s.vectors_added == len(bank) > 0 and s.patches_ignored == 0 and s.skipped["max_frames"] == 1
    assert bank.calibration["unit"] == "instance" and "instance" in bank.extra
    s = build_bank([str(bag)], tmp_path / "bank", config, BuildOptions(progress=False, append=True))
    assert s.frames_total == 9
    with pytest.raises(BuildError, match="'instance' bank"):
        build_bank([str(bag)], tmp_path / "bank", config.replace(mode="patch"),
                   BuildOptions(progress=False, append=True))
    with pytest.raises(BuildError, match="dedup_similarity applies to patch banks"):
        build_bank([str(bag)], tmp_path / "x", config, BuildOptions(progress=False, dedup_similarity=0.9))


def test_streamed_save_writes_the_files_np_save_writes(tmp_path, monkeypatch):
    """Large banks still in parts are written part by part (no concatenated copy): same bytes."""
    from semanom_ros.core.bank import store as bank_module
    from semanom_ros.core.bank import ModelSignature

    def fresh() -> NominalBank:
        rng = np.random.default_rng(0)
        bank = NominalBank(ModelSignature(model="m", fingerprint="f", input_height=28, dim=8))
        for i in range(5):
            bank.add_patch_grid(rng.standard_normal((2, 3, 8)).astype(np.float32), source="s", index=i, stamp_ns=i + 1)
        return bank

    fresh().save(tmp_path / "concatenated")
    monkeypatch.setattr(bank_module.ChunkedArray, "STREAM_WRITE_BYTES", 0)
    streamed = fresh()
    streamed.save(tmp_path / "streamed")
    assert streamed.vector_chunks.num_parts == 5  # written without concatenating
    for name in ("embeddings.npy", "vector_meta.npy", "frames.npy"):
        assert (tmp_path / "streamed" / name).read_bytes() == (tmp_path / "concatenated" / name).read_bytes()
    assert NominalBank.load(tmp_path / "streamed").num_frames == 5
