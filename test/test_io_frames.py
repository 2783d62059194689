"""Tests for semanom_ros.io frame readers (frames, bags, folders, mcap_recovery) and bagwrite."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# Test the working tree, not a possibly stale non-editable install in site-packages.
if str(REPO) not in sys.path[:1]:
    sys.path.insert(0, str(REPO))

from semanom_ros.io.bagwrite import make_compressed_msg, make_image_msg, write_image_bag  # noqa: E402
from semanom_ros.io.bags import iter_bag_frames, list_image_topics, ros2_typestore  # noqa: E402
from semanom_ros.io.folders import iter_folder_frames  # noqa: E402
from semanom_ros.io.frames import Frame, SkipStats, iter_frames  # noqa: E402

HIGHWAY = REPO.parent / "shared" / "data" / "highway"
MCAP_DIR = HIGHWAY / "bag_mcap"
SQLITE_DIR = HIGHWAY / "bag_sqlite3"
NOMINAL = HIGHWAY / "nominal"
RAW = "/camera/image_raw"
COMP = "/camera/image_raw/compressed"
T0 = 1_700_000_000_000_000_000
DT = 40_000_000  # the highway bags are 25 fps

needs_highway = pytest.mark.skipif(
    not (MCAP_DIR.is_dir() and SQLITE_DIR.is_dir() and NOMINAL.is_dir()),
    reason=f"highway test data not found at {HIGHWAY} (expected ../shared next to the repo)",
)


def _frames(
    path: Path | str, topic: str | None = None, **kw: object
) -> tuple[list[Frame], SkipStats]:
    stats = SkipStats()
    return list(iter_bag_frames(path, topic, stats=stats, **kw)), stats


def _imgs(n: int, h: int = 24, w: int = 32) -> list[np.ndarray]:
    rng = np.random.default_rng(n)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def _copy_bag(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for f in dst.iterdir():
        f.chmod(0o644)  # the shared data is read-only
    return dst


# --------------------------------------------------------------------------- real bags


@needs_highway
def test_list_image_topics_both_storages() -> None:
    assert list_image_topics(MCAP_DIR) == [
        (RAW, "sensor_msgs/msg/Image", 20),
        (COMP, "sensor_msgs/msg/CompressedImage", 150),
    ]
    assert list_image_topics(SQLITE_DIR) == [
        (RAW, "sensor_msgs/msg/Image", 0),
        (COMP, "sensor_msgs/msg/CompressedImage", 150),
    ]


@needs_highway
@pytest.mark.parametrize(
    "path", [MCAP_DIR, SQLITE_DIR, MCAP_DIR / "bag_mcap.mcap", SQLITE_DIR / "bag_sqlite3.db3"],
    ids=["mcap-dir", "sqlite3-dir", "bare-mcap", "bare-db3"],
)
def test_auto_topic_reads_all_150_compressed_frames(path: Path) -> None:
    frames, stats = _frames(path)
    assert len(frames) == 150 and stats.yielded == 150 and stats.skipped == 0
    assert not stats.warnings
    assert [f.index for f in frames] == list(range(150))
    assert [f.stamp_ns for f in frames] == [T0 + i * DT for i in range(150)]
    first = frames[0]
    assert first.topic == COMP and first.source == str(path)
    assert first.name == f"{COMP}@{T0}"
    assert first.rgb.shape == (540, 960, 3) and first.rgb.dtype == np.uint8
    assert first.rgb.flags.c_contiguous


@needs_highway
def test_raw_topic_20_frames_and_matches_compressed_content() -> None:
    frames, stats = _frames(MCAP_DIR, RAW)
    assert len(frames) == 20 and stats.skipped == 0
    assert frames[0].rgb.shape == (270, 480, 3)
    comp = next(iter(iter_bag_frames(MCAP_DIR, COMP)))
    small = cv2.resize(comp.rgb, (480, 270), interpolation=cv2.INTER_AREA)
    # Same scene at half size: catches RGB/BGR swaps between the two decode paths.
    assert np.abs(small.astype(int) - frames[0].rgb.astype(int)).mean() < 12


@needs_highway
def test_empty_topic_in_sqlite_bag_gives_no_frames_and_a_warning() -> None:
    frames, stats = _frames(SQLITE_DIR, RAW)
    assert frames == [] and any("no messages" in w for w in stats.warnings)


@needs_highway
def test_storages_and_folder_give_identical_frames() -> None:
    a = next(iter(iter_bag_frames(MCAP_DIR, max_frames=1)))
    b = next(iter(iter_bag_frames(SQLITE_DIR, max_frames=1)))
    c = next(iter(iter_folder_frames(NOMINAL, max_frames=1)))
    # The bag carries the very JPEG bytes of nominal/0000.jpg.
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.rgb, c.rgb)


@needs_highway
def test_stride() -> None:
    frames, stats = _frames(MCAP_DIR, COMP, stride=10)
    assert [f.index for f in frames] == list(range(0, 150, 10))
    assert stats.stride == 135 and stats.yielded + stats.skipped == 150


@needs_highway
def test_time_range_counts_every_message_and_keeps_indices() -> None:
    start, end = T0 + 1_000_000_000, T0 + 2_000_000_000
    frames, stats = _frames(MCAP_DIR, COMP, start_ns=start, end_ns=end)
    assert [f.index for f in frames] == list(range(25, 50))
    assert all(start <= f.stamp_ns < end for f in frames)
    assert stats.time_range == 125 and stats.yielded + stats.skipped == 150


@needs_highway
def test_open_ended_time_ranges() -> None:
    frames, stats = _frames(SQLITE_DIR, start_ns=T0 + 5_000_000_000)
    assert [f.index for f in frames] == list(range(125, 150)) and stats.time_range == 125
    frames, stats = _frames(SQLITE_DIR, end_ns=T0 + 4 * DT)
    assert [f.index for f in frames] == [0, 1, 2, 3] and stats.time_range == 146


@needs_highway
def test_min_interval() -> None:
    frames, stats = _frames(MCAP_DIR, COMP, min_interval_s=0.1)
    # 40 ms spacing: 0, 120, 240 ms ... is every third message.
    assert [f.index for f in frames] == list(range(0, 150, 3))
    assert stats.min_interval == 100


@needs_highway
def test_max_frames_and_combined_filters() -> None:
    frames, stats = _frames(MCAP_DIR, COMP, max_frames=5)
    assert len(frames) == 5 and stats.max_count == 145
    frames, stats = _frames(MCAP_DIR, COMP, stride=2, start_ns=T0 + 10 * DT, max_frames=3)
    assert [f.index for f in frames] == [10, 12, 14]
    frames, stats = _frames(MCAP_DIR, COMP, max_frames=0)
    assert frames == [] and stats.max_count == 150


@needs_highway
def test_missing_topic_lists_available_topics() -> None:
    with pytest.raises(ValueError) as info:
        iter_bag_frames(MCAP_DIR, "/camera/nope")  # raised on the call, before iterating
    text = str(info.value)
    assert str(MCAP_DIR) in text and "/camera/nope" in text
    assert COMP in text and RAW in text and "150 msgs" in text


@needs_highway
def test_dir_without_metadata_and_broken_metadata(tmp_path: Path) -> None:
    bare = tmp_path / "nometa"
    bare.mkdir()
    shutil.copy(MCAP_DIR / "bag_mcap.mcap", bare / "bag_mcap.mcap")
    frames, stats = _frames(bare, RAW)
    assert len(frames) == 20 and not stats.warnings
    broken = _copy_bag(MCAP_DIR, tmp_path / "badmeta")
    (broken / "metadata.yaml").write_text("rosbag2_bagfile_information: [not, a, dict")
    frames, stats = _frames(broken, RAW)
    assert len(frames) == 20
    assert any("metadata.yaml could not be used" in w for w in stats.warnings)


@needs_highway
@pytest.mark.parametrize("bare_file", [False, True], ids=["dir", "bare-file"])
def test_truncated_mcap_reads_what_is_readable(tmp_path: Path, bare_file: bool) -> None:
    bag = _copy_bag(MCAP_DIR, tmp_path / "cut")
    mcap = bag / "bag_mcap.mcap"
    with mcap.open("r+b") as fh:
        fh.truncate(mcap.stat().st_size // 2)
    path = mcap if bare_file else bag
    topics = dict((t, n) for t, _, n in list_image_topics(path))
    assert 0 < topics[COMP] < 150
    frames, stats = _frames(path, COMP)
    assert 0 < len(frames) < 150 and len(frames) == topics[COMP]
    assert [f.index for f in frames] == list(range(len(frames)))
    intact = next(iter(iter_bag_frames(MCAP_DIR, COMP, start_ns=T0 + 3 * DT)))
    np.testing.assert_array_equal(frames[3].rgb, intact.rgb)
    assert stats.read_error == 1
    assert any("could not be opened normally" in w for w in stats.warnings)
    assert any("truncated" in w and str(path) in w for w in stats.warnings)


@needs_highway
def test_truncated_sqlite_cannot_be_opened(tmp_path: Path) -> None:
    bag = _copy_bag(SQLITE_DIR, tmp_path / "cut")
    db = bag / "bag_sqlite3.db3"
    with db.open("r+b") as fh:
        fh.truncate(db.stat().st_size // 2)
    # SQLite refuses a truncated database as a whole, so nothing is readable.
    with pytest.raises(ValueError, match=r"Cannot open bag .*cut.*malformed"):
        iter_bag_frames(bag)


@needs_highway
def test_early_break_and_reiteration() -> None:
    gen = iter_bag_frames(MCAP_DIR, COMP)
    assert next(gen).index == 0
    gen.close()  # closes the reader; a new call starts over
    assert next(iter(iter_bag_frames(MCAP_DIR, COMP))).index == 0


# --------------------------------------------------------------------------- written bags


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "png"])
def test_write_image_bag_round_trip(tmp_path: Path, storage: str, compressed: bool) -> None:
    imgs = _imgs(5)
    topic = "/cam/image_raw/compressed" if compressed else "/cam/image_raw"
    bag = write_image_bag(tmp_path / "bag", imgs, topic, compressed, storage=storage, fps=20, fmt="png")
    assert (bag / "metadata.yaml").is_file()
    msgtype = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
    assert list_image_topics(bag) == [(topic, msgtype, 5)]
    frames, stats = _frames(bag)
    assert stats.skipped == 0
    assert [f.stamp_ns for f in frames] == [T0 + i * 50_000_000 for i in range(5)]
    for f, img in zip(frames, imgs):
        np.testing.assert_array_equal(f.rgb, img)


def test_write_image_bag_refuses_existing_path(tmp_path: Path) -> None:
    with pytest.raises(FileExistsError):
        write_image_bag(tmp_path, _imgs(1), "/x", False)


def _bad_bag(tmp_path: Path, storage: str) -> Path:
    imgs = _imgs(10)
    items: list[object] = list(imgs)
    items[3] = make_image_msg(imgs[3].tobytes(), height=24, width=32, encoding="rgb8", step=50)
    items[5] = b"\x07\x07 this is not CDR"
    items[7] = make_image_msg(b"\x00" * 10, height=24, width=32, encoding="rgb8", step=96)
    items[8] = make_image_msg(imgs[8].tobytes(), height=24, width=32, encoding="yuv444", step=96)
    return write_image_bag(tmp_path / f"bad_{storage}", items, "/cam", False, storage=storage)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bad_messages_in_the_middle_are_skipped_and_counted(tmp_path: Path, storage: str) -> None:
    bag = _bad_bag(tmp_path, storage)
    frames, stats = _frames(bag)
    assert [f.index for f in frames] == [0, 1, 2, 4, 6, 9]
    assert (stats.decode_error, stats.deserialize_error, stats.yielded) == (3, 1, 6)
    assert stats.yielded + stats.skipped == 10
    warned = "\n".join(stats.warnings)
    t5 = T0 + 5 * 100_000_000
    assert f"#5 at {t5} ns could not be deserialized" in warned
    assert "step 50 < width*channels*bytes = 96" in warned
    assert "truncated" in warned and "'yuv444' is not supported" in warned
    assert str(bag) in warned and "'/cam'" in warned


def test_bad_compressed_messages_are_skipped(tmp_path: Path) -> None:
    items: list[object] = list(_imgs(4))
    items[1] = make_compressed_msg(b"", "jpeg")
    items[2] = make_compressed_msg(b"\xff\xd8 garbage" * 10, "jpeg")
    bag = write_image_bag(tmp_path / "b", items, "/c/compressed", True)
    frames, stats = _frames(bag)
    assert [f.index for f in frames] == [0, 3] and stats.decode_error == 2
    assert any("data is empty" in w for w in stats.warnings)
    assert any("could not be decoded as 'jpeg'" in w for w in stats.warnings)


def test_per_frame_warnings_are_capped(tmp_path: Path) -> None:
    bag = write_image_bag(tmp_path / "b", [b"\x00\x01bad"] * 30, "/c", False)
    frames, stats = _frames(bag)
    assert frames == [] and stats.deserialize_error == 30
    assert len(stats.warnings) == 21 and "only counted" in stats.warnings[-1]


@pytest.mark.parametrize("zstd", [False, True], ids=["plain", "zstd"])
@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.8, 0.97, 0.999])
def test_truncated_written_mcap_never_raises(tmp_path: Path, fraction: float, zstd: bool) -> None:
    imgs = _imgs(40, 128, 192)  # 74 KB each: three ~1 MB chunks (random pixels barely compress)
    bag = write_image_bag(tmp_path / "b", imgs, "/c", False, zstd_chunks=zstd)
    mcap = bag / "b.mcap"
    with mcap.open("r+b") as fh:
        fh.truncate(int(mcap.stat().st_size * fraction))
    if fraction < 0.3:
        # rosbags writes the channel definitions into the first chunk; without it nothing is usable.
        with pytest.raises(ValueError, match="Cannot open bag"):
            iter_bag_frames(bag)
        return
    frames, stats = _frames(bag)
    assert 0 < len(frames) <= 40 and stats.read_error == 1
    assert [f.index for f in frames] == list(range(len(frames)))
    for f in frames:
        np.testing.assert_array_equal(f.rgb, imgs[f.index])


def _mcap_records(path: Path) -> list[tuple[int, int, int]]:
    """(opcode, offset, length) of the top-level MCAP records, to corrupt a file on purpose."""
    data = path.read_bytes()
    out, pos = [], 8
    while pos + 9 <= len(data) - 8:
        op, length = data[pos], int.from_bytes(data[pos + 1:pos + 9], "little")
        out.append((op, pos, length))
        pos += 9 + length
    return out


def test_corrupt_chunk_in_indexed_mcap_stops_with_warning(tmp_path: Path) -> None:
    imgs = _imgs(40, 128, 192)
    bag = write_image_bag(tmp_path / "b", imgs, "/c", False)
    mcap = bag / "b.mcap"
    chunks = [(pos, n) for op, pos, n in _mcap_records(mcap) if op == 0x06]
    assert len(chunks) >= 3
    pos = chunks[1][0]
    with mcap.open("r+b") as fh:
        # First inner record of chunk 2 (after the 40-byte chunk header and its empty
        # compression name): give it an impossible length, index and footer stay intact.
        fh.seek(pos + 9 + 40 + 1)
        fh.write((2**40).to_bytes(8, "little"))
    frames, stats = _frames(bag)
    assert 0 < len(frames) < 40 and stats.read_error == 1
    assert [f.index for f in frames] == list(range(len(frames)))
    assert any("stopped after message" in w and "damaged or truncated" in w for w in stats.warnings)


def test_garbage_files_raise_value_error_naming_the_path(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mcap"
    junk.write_bytes(b"not an mcap at all" * 10)
    with pytest.raises(ValueError, match=r"Cannot open bag '.*junk\.mcap'.*magic"):
        iter_bag_frames(junk)
    db = tmp_path / "junk.db3"
    db.write_bytes(b"\x00" * 4096)
    with pytest.raises(ValueError, match=r"Cannot open bag '.*junk\.db3'"):
        list_image_topics(db)
    with pytest.raises(ValueError, match="does not exist"):
        iter_bag_frames(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no metadata.yaml"):
        iter_bag_frames(empty)


def test_non_image_topics(tmp_path: Path) -> None:
    from rosbags.rosbag2 import StoragePlugin, Writer

    ts = ros2_typestore()
    path = tmp_path / "strings"
    with Writer(path, version=8, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection("/chatter", "std_msgs/msg/String", typestore=ts)
        msg = ts.types["std_msgs/msg/String"](data="hi")
        writer.write(conn, T0, ts.serialize_cdr(msg, "std_msgs/msg/String"))
    with pytest.raises(ValueError, match=r"no sensor_msgs/msg/Image .*/chatter \[std_msgs/msg/String\]"):
        iter_bag_frames(path)
    with pytest.raises(ValueError, match="'/chatter' .* has type std_msgs/msg/String"):
        iter_bag_frames(path, "/chatter")
    assert list_image_topics(path) == []


def test_topic_preference(tmp_path: Path) -> None:
    # Tie between X and X/compressed: the raw Image wins.
    tie = write_image_bag(tmp_path / "tie_raw", _imgs(3), "/cam/image_raw", False)
    assert next(iter(iter_bag_frames(tie))).topic == "/cam/image_raw"
    # Several cameras: the one with most messages, plus a warning naming the choice.
    from rosbags.rosbag2 import StoragePlugin, Writer

    ts = ros2_typestore()
    path = tmp_path / "multi"
    img_t = "sensor_msgs/msg/Image"
    comp_t = "sensor_msgs/msg/CompressedImage"
    with Writer(path, version=8, storage_plugin=StoragePlugin.MCAP) as writer:
        front = writer.add_connection("/front/image", img_t, typestore=ts)
        front_c = writer.add_connection("/front/image/compressed", comp_t, typestore=ts)
        rear = writer.add_connection("/rear/image", img_t, typestore=ts)
        ok, jpg = cv2.imencode(".jpg", _imgs(1)[0])
        for i in range(6):
            t = T0 + i
            raw = make_image_msg(b"\x00" * 12, height=2, width=2, encoding="rgb8", step=6)
            writer.write(front, t, ts.serialize_cdr(raw, img_t))
            comp = ts.serialize_cdr(make_compressed_msg(jpg.tobytes()), comp_t)
            writer.write(front_c, t, comp)
            if i < 5:
                writer.write(front_c, t + 1, comp)
            if i < 4:
                writer.write(rear, t, ts.serialize_cdr(raw, img_t))
    stats = SkipStats()
    frames = list(iter_bag_frames(path, stats=stats, max_frames=1))
    assert frames[0].topic == "/front/image/compressed"
    assert any("using '/front/image/compressed'" in w for w in stats.warnings)


def test_header_stamp_zero_falls_back_to_receive_time(tmp_path: Path) -> None:
    items = [make_image_msg(b"\x01" * 12, height=2, width=2, encoding="rgb8", step=6, stamp_ns=0)]
    items.append(make_image_msg(b"\x01" * 12, height=2, width=2, encoding="rgb8", step=6, stamp_ns=42))
    bag = write_image_bag(tmp_path / "b", items, "/c", False, fps=1)
    frames, _ = _frames(bag)
    assert [f.stamp_ns for f in frames] == [T0, 42]
    assert frames[1].name == "/c@42"


def test_logger_receives_warnings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bag = write_image_bag(tmp_path / "b", [b"bad!"] + _imgs(1), "/c", False)

    class RclpyLikeLogger:
        def __init__(self) -> None:
            self.lines: list[str] = []

        def warning(self, text: str) -> None:
            self.lines.append(text)

    fake = RclpyLikeLogger()
    assert len(list(iter_bag_frames(bag, logger=fake))) == 1
    assert len(fake.lines) == 1 and "deserialized" in fake.lines[0]
    with caplog.at_level(logging.WARNING):
        list(iter_bag_frames(bag))
    assert any("deserialized" in r.getMessage() for r in caplog.records)


def test_argument_validation(tmp_path: Path) -> None:
    bag = write_image_bag(tmp_path / "b", _imgs(2), "/c", False)
    for kw in ({"stride": 0}, {"max_frames": -1}, {"min_interval_s": -1.0}, {"start_ns": 5, "end_ns": 5}):
        with pytest.raises(ValueError):
            iter_bag_frames(bag, **kw)


# --------------------------------------------------------------------------- folders


def _write_folder(folder: Path, names: list[str]) -> list[np.ndarray]:
    folder.mkdir()
    imgs = _imgs(len(names))
    for name, img in zip(names, imgs):
        ok, enc = cv2.imencode(Path(name).suffix, cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        assert ok
        (folder / name).write_bytes(enc.tobytes())
    return imgs


def test_folder_with_corrupt_and_foreign_files(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    imgs = _write_folder(folder, ["frame_2.png", "frame_10.png", "frame_1.PNG"])
    (folder / "frame_3.jpg").write_bytes(b"\xff\xd8\xff\xe0 corrupt")
    (folder / "frame_4.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"x")
    stats = SkipStats()
    frames = list(iter_folder_frames(folder, stats=stats, fps=5))
    assert [f.name for f in frames] == ["frame_1.PNG", "frame_2.png", "frame_10.png"]
    assert [f.index for f in frames] == [0, 1, 4]  # natural order: 1, 2, 3, 4, 10
    assert [f.stamp_ns for f in frames] == [0, 200_000_000, 800_000_000]
    assert frames[0].topic is None and frames[0].source == str(folder)
    np.testing.assert_array_equal(frames[0].rgb, imgs[2])
    np.testing.assert_array_equal(frames[2].rgb, imgs[1])
    assert stats.decode_error == 2 and stats.yielded == 3
    assert any("frame_3.jpg" in w for w in stats.warnings)
    assert any("frame_4.png" in w and "empty" in w for w in stats.warnings)


def test_folder_stride_max_frames_min_interval(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    _write_folder(folder, [f"{i:04d}.png" for i in range(10)])
    stats = SkipStats()
    assert [f.index for f in iter_folder_frames(folder, stride=3, stats=stats)] == [0, 3, 6, 9]
    assert stats.stride == 6
    stats = SkipStats()
    assert [f.index for f in iter_folder_frames(folder, max_frames=4, stats=stats)] == [0, 1, 2, 3]
    assert stats.max_count == 6
    assert [f.index for f in iter_folder_frames(folder, min_interval_s=0.25)] == [0, 3, 6, 9]


@needs_highway
def test_nominal_folder_has_150_frames() -> None:
    stats = SkipStats()
    frames = list(iter_folder_frames(NOMINAL, stats=stats, stride=15))
    assert [f.name for f in frames] == [f"{i:04d}.jpg" for i in range(0, 150, 15)]
    assert frames[0].rgb.shape == (540, 960, 3) and stats.stride == 140


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        iter_folder_frames(tmp_path / "missing")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match=r"has no \.jpg/\.jpeg/\.png/\.bmp files"):
        iter_folder_frames(tmp_path)


# --------------------------------------------------------------------------- dispatch


def test_iter_frames_dispatch(tmp_path: Path) -> None:
    bag = write_image_bag(tmp_path / "bag", _imgs(3), "/c", False)
    folder = tmp_path / "imgs"
    _write_folder(folder, ["a.png", "b.png"])
    assert [f.topic for f in iter_frames(bag)] == ["/c"] * 3
    assert len(list(iter_frames(bag / "bag.mcap", stride=2))) == 2
    assert [f.name for f in iter_frames(folder, topic=None, start_ns=None)] == ["a.png", "b.png"]
    assert len(list(iter_frames(bag, fps=None, extensions=None))) == 3
    with pytest.raises(ValueError, match="topic=.* does not apply to an image folder"):
        iter_frames(folder, topic="/c")
    with pytest.raises(ValueError, match="fps=.* does not apply to a bag"):
        iter_frames(bag, fps=5)
    with pytest.raises(ValueError, match="does not exist"):
        iter_frames(tmp_path / "nope")
    with pytest.raises(ValueError, match="neither a bag"):
        iter_frames(folder / "a.png")
