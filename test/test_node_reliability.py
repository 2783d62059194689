"""No frame, parameter or output path can stall, crash or fool the monitor node (issue #15).

Header-only size checks, the backbone width cap and aspect refusal, shrinking of large frames, the
stall / rate watchdog, an abandoned worker on deactivate, one-line start-up parameter errors (the
real executables in subprocesses), memory that returns after a 12000x12000 frame (a subprocess
measuring its own VmRSS), and a seeded fuzz of Image / CompressedImage messages through the node's
frame path. Tiny random-init DINOv2 throughout.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

from conftest import isolated_ros_context, textured_frame  # noqa: E402
from semanom_ros.core.errors import ImageError  # noqa: E402
from semanom_ros.core.features import FeatureExtractor, default_max_input_width  # noqa: E402
from semanom_ros.io.images import (  # noqa: E402
    SUPPORTED_ENCODINGS, ImageDecodeError, compressed_image_size, decode_image, downscale_to_pixels, encode_compressed,
)
from semanom_ros.nodes.diagnostics import MonitorDiagnostics, MonitorStats  # noqa: E402
from semanom_ros.nodes.worker import LatestFrameWorker  # noqa: E402
from test_monitor_node import FAILURE, SUCCESS, _build_bank, harness_maker, image_msg, wait_until  # noqa: E402

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ros_context():
    with isolated_ros_context(231, 232) as context:
        yield context


@pytest.fixture
def harness(ros_context):
    yield from harness_maker(ros_context)


@pytest.fixture(scope="module")
def tiny_bank(tiny_model, tmp_path_factory) -> Path:
    frames = [textured_frame(seed) for seed in range(6)]
    return _build_bank(tiny_model, frames, tmp_path_factory.mktemp("banks") / "tiny", 56, calibration_window=0)


def subprocess_env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'test'}")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` followed by a little (not enough) image data."""
    small = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes()
    return small[:16] + width.to_bytes(4, "big") + height.to_bytes(4, "big") + small[24:]


def streamed_png(width: int, height: int) -> bytes:
    """A valid all-grey RGB PNG of any size, compressed row by row (never the whole image in memory)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    row = b"\x00" + bytes([128]) * (3 * width)  # filter byte "none", then the pixels
    compressor = zlib.compressobj(1)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# -- decode: sizes from headers, before decoding ----------------------------------------------------------
def test_compressed_image_size_reads_headers_without_decoding():
    rgb = textured_frame(1, 37, 53)
    for fmt in ("jpeg", "png"):
        assert compressed_image_size(encode_compressed(rgb, fmt).data) == (53, 37), fmt
    progressive = cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1]
    assert compressed_image_size(progressive) == (53, 37)
    webp = cv2.imencode(".webp", rgb)[1]
    assert compressed_image_size(webp) == (53, 37)  # through Pillow's lazy open
    assert compressed_image_size(png_header_only(12000, 12000)) == (12000, 12000)
    for garbage in (b"", b"\xff\xd8\xff\xe0 not a jpeg", b"\xff\xd8", bytes(range(256)) * 4):
        assert compressed_image_size(garbage) is None


def test_oversized_messages_are_refused_from_their_header(monkeypatch):
    def no_decoding(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an oversized image was decoded")

    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    png = CompressedImage(format="png")
    png.data = png_header_only(12000, 12000)
    with pytest.raises(ImageDecodeError, match=r"12000x12000 = 144.0 MP, more than the 50.0 MP.*max_input_pixels"):
        decode_image(png, max_pixels=50_000_000)
    depth = CompressedImage(format="16UC1; compressedDepth png")
    depth.data = bytes(12) + png_header_only(20000, 5000)
    with pytest.raises(ImageDecodeError, match="100.0 MP"):
        decode_image(depth, max_pixels=50_000_000)
    # A raw Image with a 12000x12000 header and almost no data: the size is refused, not the truncation.
    raw = Image(encoding="rgb8", height=12000, width=12000, step=36000)
    raw.data = bytes(100)
    with pytest.raises(ImageDecodeError, match="Image \\(rgb8\\) is 12000x12000"):
        decode_image(raw, max_pixels=50_000_000)
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(raw)  # without a limit the old checks still apply


def test_downscale_to_pixels_keeps_aspect_and_small_frames():
    rgb = textured_frame(2, 300, 400)
    same, scale = downscale_to_pixels(rgb, 120_000)
    assert same is rgb and scale == 1.0
    small, scale = downscale_to_pixels(rgb, 30_000)
    assert small.shape[0] * small.shape[1] <= 30_000 and small.shape == (150, 200, 3) and scale == 0.5
    assert small.flags.c_contiguous and small.dtype == np.uint8


# -- the backbone input: bounded width, extreme aspect ratios refused ----------------------------------------
def test_backbone_input_width_is_capped_and_extreme_aspect_ratios_are_refused(tiny_model):
    extractor = FeatureExtractor(tiny_model, 224, "cpu")
    cap = default_max_input_width(224, 14)
    assert cap == 1582 == extractor.width_cap  # 4 x the 16:9 width at 224, in whole patches
    assert extractor.input_size(540, 960) == (224, 392)  # normal frames untouched
    assert extractor.input_size(100, 1400) == (224, 1582)  # 14:1 is squeezed a little, within 2x
    for height, width, what in ((20, 4000, "squeezed"), (50, 2000, "squeezed"), (4000, 20, "stretched"),
                                (14, 100000, "squeezed")):
        with pytest.raises(ImageError, match=f"frame {width}x{height}.*{what}.*max_input_width"):
            extractor.input_size(height, width)
    with pytest.raises(ImageError, match="smaller than one 14-pixel patch"):
        extractor.preprocess(np.zeros((1, 100000, 3), np.uint8))
    wide = FeatureExtractor(tiny_model, 56, "cpu", max_input_width=4000)
    assert wide.width_cap == 3990 and wide.input_size(20, 1000) == (56, 2800)  # a configured cap wins


# -- the node's frame path ------------------------------------------------------------------------------------
def test_wide_and_huge_frames_are_answered_without_holding_up_the_node(harness, tiny_bank):
    h = harness({"bank_path": str(tiny_bank), "max_input_pixels": 1_000_000, "max_output_pixels": 20_000})
    h.activate()
    node = h.node
    rejected = {
        "20x4000": image_msg(np.zeros((20, 4000, 3), np.uint8), 1),
        "1x100000": image_msg(np.zeros((1, 100000, 3), np.uint8), 2),
        "2000x2000 png": CompressedImage(format="png"),
    }
    rejected["2000x2000 png"].data = png_header_only(2000, 2000)
    for i, (name, msg) in enumerate(rejected.items(), start=1):
        assert node.process_message(msg) is None, name
        assert node.stats.bad_messages == i, name
    assert "max_input_pixels" in node.stats.last_error
    # Larger than max_output_pixels: scored shrunk, the maps are bounded and keep the aspect ratio.
    big = textured_frame(7, 300, 450)
    out = node.process_message(image_msg(big, 3))
    assert out is not None and out["score_map"].width * out["score_map"].height <= 20_000
    assert abs(out["score_map"].width / out["score_map"].height - 1.5) < 0.02
    assert out["overlay"].width == out["score_map"].width and out["score"].data == out["score"].data
    assert h.send(image_msg(textured_frame(8), 4))["score_map"].header.stamp.sec == 4  # still answering


def test_watchdog_reports_a_stall_and_deactivate_abandons_the_stuck_frame(harness, tiny_bank):
    h = harness({"bank_path": str(tiny_bank), "stall_timeout_s": 0.5, "diagnostics_period_s": 0.2})
    h.activate()
    node = h.node
    release = threading.Event()
    real_process = node.monitor.process

    def stuck_process(rgb):
        release.wait(60)
        return real_process(rgb)

    node.monitor.process = stuck_process
    h.pub.publish(image_msg(textured_frame(9), 1))
    wait_until(lambda: node.diagnostic_status().level == DiagnosticStatus.ERROR, 10, "the stall on /diagnostics")
    status = node.diagnostic_status()
    assert "stalled" in status.message and "stall_timeout_s" in status.message
    wait_until(lambda: any(s.level == DiagnosticStatus.ERROR and "stalled" in s.message for s in list(h.diagnostics)),
               5, "the stall published on /diagnostics")
    # Live parameter changes are refused with a reason instead of blocking the parameter service.
    result = node.set_parameters([Parameter("threshold", value=0.5)])[0]
    assert not result.successful and "try again" in result.reason

    done: list[Any] = []
    transitions = threading.Thread(target=lambda: done.extend([node.trigger_deactivate(), node.trigger_cleanup()]))
    transitions.start()
    transitions.join(30)  # a bound against a hang (the old node waited 60 s, then forever), not a timing target
    assert done == [SUCCESS, SUCCESS] and node.lifecycle_state == "unconfigured"
    before = h.count("score")
    release.set()  # the abandoned frame ends now: nothing is published, no error is reported
    time.sleep(0.5)
    assert h.count("score") == before and node.stats.errors == 0
    assert node.trigger_configure() == SUCCESS and node.trigger_activate() == SUCCESS  # a fresh worker and engine
    h.wait_matched()
    assert h.send(image_msg(textured_frame(10), 2))["score_map"].header.stamp.sec == 2


def test_a_burst_faster_than_the_node_is_fully_accounted_on_diagnostics(harness, tiny_bank):
    """Every message of a burst from a separate publisher is received, and processed, dropped or bad.

    The frames are published back to back while each takes the (slowed) engine 300 ms; one in five is
    malformed. With the reader history as deep as the burst (input_queue_depth) no message can be
    replaced before the callback, so /diagnostics must show received = sent = processed + dropped
    + bad and nothing missed, and the newest frame answered last.
    """
    sent = 20  # the probe's publisher keeps 20 (reliable): it never drops one of its own either
    h = harness({"bank_path": str(tiny_bank), "input_queue_depth": sent, "diagnostics_period_s": 0.2,
                 "publish_overlay": False})
    h.activate()
    node = h.node
    engine_process = node.monitor.process
    node.monitor.process = lambda rgb: (time.sleep(0.3), engine_process(rgb))[1]  # slower than the burst
    truncated = Image(encoding="rgb8", height=84, width=140, step=420)
    truncated.data = bytes(1000)
    for sec in range(1, sent + 1):
        msg = truncated if sec % 5 == 3 else image_msg(textured_frame(sec), sec)
        msg.header.stamp.sec = sec
        h.pub.publish(msg)  # back to back: faster than the subscription callback runs
    bad_sent = sum(1 for sec in range(1, sent + 1) if sec % 5 == 3)

    def published(key: str) -> int:
        with h.lock:
            values = [dict((kv.key, kv.value) for kv in s.values) for s in h.diagnostics if s.values]
        return int(values[-1][key]) if values else -1

    keys = ("frames_received", "frames_processed", "frames_dropped", "bad_messages", "frames_missed", "errors")

    def accounted() -> bool:
        received, processed, dropped, bad = (published(k) for k in keys[:4])
        return received == sent and processed + dropped + bad == sent  # so the last frame is done too

    deadline = time.monotonic() + 20  # a bound against a hang, not a timing target
    while not accounted() and time.monotonic() < deadline:
        time.sleep(0.05)
    counts = {k: published(k) for k in keys}
    assert accounted() and counts["frames_missed"] == 0 and counts["errors"] == 0, f"{sent} sent: {counts}"
    stats = node.stats
    assert 0 < stats.processed < sent - bad_sent and stats.dropped > 0  # the newest-frame policy did drop
    assert stats.bad_messages <= bad_sent  # a malformed message may be replaced while waiting, like any other
    with h.lock:
        stamps = [m.header.stamp.sec for m in h.received["score_map"]]
    assert stamps[-1] == sent and len(stamps) == stats.processed  # the newest frame was answered


def test_missed_messages_are_counted_from_publisher_sequence_numbers():
    stats = MonitorStats()
    for seq in (1, 2, 5):  # 3 and 4 never arrived
        stats.record_received(b"camera", seq)
    assert stats.missed == 2 and stats.received == 3
    stats.record_received(b"other", 40)  # a publisher's first message: no gap to count
    stats.record_received(b"camera", 4)  # late (best effort may reorder): neither a gap nor a new high
    stats.record_received(b"camera", 6)
    stats.record_received(None, None)  # an RMW without sequence numbers: received, nothing else
    assert stats.missed == 2 and stats.received == 7
    stats.forget_publishers()  # a new subscription: what was sent while inactive is not missed
    stats.record_received(b"camera", 100)
    assert stats.missed == 2
    stats.record_received(b"camera", 103)
    assert stats.missed == 4
    status = MonitorDiagnostics(stats).status(name="n", state="active", transition_error="", input_topic="/cam",
                                              device="cpu", drop_warn_fraction=1.0, monitor=None)
    assert dict((kv.key, kv.value) for kv in status.values)["frames_missed"] == "4"


def test_rate_watchdog_warns_when_processing_falls_behind_the_input():
    stats = MonitorStats()
    diagnostics = MonitorDiagnostics(stats)
    now = time.monotonic()
    stats.received_times.extend(now - 4 + i * 0.04 for i in range(100))  # 25 Hz in
    stats.received, stats.last_received_time = 100, now
    stats.done_times.extend([now - 3, now - 0.5])  # 0.4 Hz out
    common = dict(name="n", state="active", transition_error="", input_topic="/cam", device="cpu",
                  drop_warn_fraction=1.0, monitor=None)
    status = diagnostics.status(**common, min_rate_fraction=0.05)
    assert status.level == DiagnosticStatus.WARN and "below min_rate_fraction" in status.message
    assert diagnostics.status(**common, min_rate_fraction=0.0).level == DiagnosticStatus.OK
    stuck = diagnostics.status(**common, busy_since=now - 30, stall_timeout_s=10.0)
    assert stuck.level == DiagnosticStatus.ERROR and "30 s" in stuck.message


def test_worker_stop_abandons_a_busy_thread_and_restarts_fresh():
    gate = threading.Event()
    handled, errors = [], []

    def handle(item):
        if item == "stuck":
            gate.wait(30)
            raise RuntimeError("raised after abandonment: must not be reported")
        handled.append((item, LatestFrameWorker.cancelled()))

    worker = LatestFrameWorker("test_abandon", handle, errors.append)
    worker.start()
    worker.offer("stuck")
    wait_until(lambda: worker.busy_since is not None, 5, "the worker to take the item")
    assert worker.stop(timeout=0.2) is False and worker.abandoned == 1 and worker.busy_since is None
    worker.start()
    worker.offer("next")
    wait_until(lambda: handled, 5, "the fresh thread to handle the next item")
    gate.set()
    time.sleep(0.2)
    assert handled == [("next", False)] and errors == []
    assert worker.stop(timeout=2)


def test_a_failed_configure_leaves_no_stale_error_after_a_good_one(harness, tiny_bank):
    h = harness({})
    node = h.node
    assert node.trigger_configure() == FAILURE and "bank_path" in node.stats.last_error
    node.set_parameters([Parameter("bank_path", value=str(tiny_bank))])
    assert node.trigger_configure() == SUCCESS and node.trigger_activate() == SUCCESS
    h.wait_matched()
    h.send(image_msg(textured_frame(11), 1))
    status = node.diagnostic_status()
    assert status.level == DiagnosticStatus.OK, status.message
    assert dict((kv.key, kv.value) for kv in status.values)["last_error"] == ""


def test_refused_start_up_values_leave_the_node_unconfigured_until_fixed(harness, tiny_bank):
    h = harness({"bank_path": str(tiny_bank)},
                cli_args=["--ros-args", "-p", "threshold:=5.0", "-p", "k:=0", "-p", "alpha:=oops"])
    node = h.node
    assert node.get_parameter("threshold").value == -1.0  # the default stands in, nothing crashed
    assert node.trigger_configure() == FAILURE and node.lifecycle_state == "unconfigured"
    assert "threshold: start-up value 5.0" in node.stats.last_error and "[-1.0, 2.0]" in node.stats.last_error
    assert "k: start-up value 0" in node.stats.last_error and "'oops'" in node.stats.last_error
    node.set_parameters([Parameter("threshold", value=0.5), Parameter("k", value=1), Parameter("alpha", value=0.99)])
    assert node.trigger_configure() == SUCCESS and node.monitor.threshold == 0.5


# -- the real executables -----------------------------------------------------------------------------------
def _run_until(args: list[str], module: str, wanted: int, timeout: float = 120.0) -> tuple[int, str]:
    """Start ``module``'s main with ``args``; once ``wanted`` ERROR lines are out, Ctrl-C it."""
    proc = subprocess.Popen(
        # SIGINT reset first: a runner started in the background (``cmd &``) passes it down as ignored.
        [sys.executable, "-c", "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
         f"from {module} import main; sys.exit(main(sys.argv[1:]))", *args],
        env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if sum("[ERROR]" in line for line in lines) >= wanted:
                time.sleep(0.5)
                proc.send_signal(signal.SIGINT)
                break
            time.sleep(0.05)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(5)
    return proc.returncode, "".join(lines)


def test_monitor_executable_bad_start_up_parameters_give_one_line_each(tiny_bank):
    name = f"bad_params_{os.getpid()}"
    rc, output = _run_until(["--ros-args", "-r", f"__node:={name}", "-p", "threshold:=5.0", "-p", "alpha:=1.5",
                             "-p", "k:=0", "-p", f"bank_path:={tiny_bank}", "-p", "autostart:=true"],
                            "semanom_ros.nodes.monitor_node", wanted=3)
    assert "Traceback" not in output and rc == 0, output
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert len(errors) == 3, output
    for param, given, allowed in (("threshold", "5.0", "[-1.0, 2.0]"), ("alpha", "1.5", "[0.0, 1.0]"),
                                  ("k", "0", "[1, 1024]")):
        line = next(e for e in errors if f"parameter {param}:" in e)
        assert f"start-up value {given} " in line and allowed in line, line
    assert "configure refused" in output  # autostart: the node stays unconfigured, it does not exit


def test_bank_builder_executable_bad_stride_gives_one_line(tmp_path, tiny_model):
    rc, output = _run_until(["--ros-args", "-r", f"__node:=bad_stride_{os.getpid()}", "-p", "stride:=0",
                             "-p", f"output_bank:={tmp_path / 'bank'}", "-p", f"model:={tiny_model}"],
                            "semanom_ros.nodes.bank_builder_node", wanted=99)
    assert rc == 1 and "Traceback" not in output, output
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and "stride: start-up value 0" in errors[0] and "[1, 1000000]" in errors[0], output


def test_evaluate_refuses_an_existing_output_file(tmp_path, tiny_bank, capsys):
    from semanom_ros.tools.evaluate import main

    existing = tmp_path / "report.txt"
    existing.write_text("keep me")
    rc = main(["--bank", str(tiny_bank), "--images", str(tmp_path), "-o", str(existing), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "exists and is not a folder" in err and str(existing) in err
    assert existing.read_text() == "keep me"


# -- memory that returns --------------------------------------------------------------------------------------
_RSS_SCRIPT = r'''
import sys, time, threading
import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage
from conftest import textured_frame
from test_monitor_node import image_msg
from test_node_reliability import streamed_png
from semanom_ros.nodes.memory import release_memory, resident_mb
from semanom_ros.nodes.monitor_node import MonitorNode

context = Context()
rclpy.init(context=context, domain_id=int(sys.argv[2]))
node = MonitorNode("rss_probe", context=context, parameter_overrides=[Parameter("bank_path", value=sys.argv[1])])
executor = SingleThreadedExecutor(context=context)
executor.add_node(node)
threading.Thread(target=executor.spin, daemon=True).start()
ok = TransitionCallbackReturn.SUCCESS
assert node.trigger_configure() == ok and node.trigger_activate() == ok, node.stats.last_error
png = CompressedImage(format="png")
png.data = streamed_png(12000, 12000)

def run(msg, what):
    before = node.stats.processed + node.stats.bad_messages
    node._on_image(msg, None)  # what the subscription callback does
    while node.stats.processed + node.stats.bad_messages == before:
        time.sleep(0.01)
    time.sleep(0.3)  # the worker returns memory after letting go of the frame
    print(what, node.stats.processed, node.stats.bad_messages, round(resident_mb(), 1), flush=True)

for i in range(10):
    run(image_msg(textured_frame(i, 540, 960), i), "normal")
release_memory()
print("steady", round(resident_mb(), 1), flush=True)
run(png, "refused")
node.set_parameters([Parameter("max_input_pixels", value=200_000_000)])
run(png, "shrunk")
for i in range(5):
    run(image_msg(textured_frame(i, 540, 960), i), "normal")
print("done", node.stats.last_error, flush=True)
node.trigger_deactivate()
executor.shutdown()
node.destroy_node()
rclpy.shutdown(context=context)
'''


def test_memory_returns_after_a_12000x12000_frame(tiny_bank, tmp_path):
    """The resident size (VmRSS) ends within 100 MB of the steady state after a 12000x12000 frame.

    Refused by default (max_input_pixels 50 MP); accepted with 200 MP: decoded (432 MB), shrunk to
    max_output_pixels and scored.
    """
    import random

    domain = random.SystemRandom().randint(231, 232)
    env = dict(subprocess_env(), ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    proc = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(tiny_bank), str(domain)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()]
    steady = float(next(r for r in rows if r[0] == "steady")[1])
    refused = next(r for r in rows if r[0] == "refused")
    shrunk = next(r for r in rows if r[0] == "shrunk")
    assert refused[2] == "1" and shrunk[1] == "11", proc.stdout  # refused, then processed
    last = float([r for r in rows if r[0] == "normal"][-1][3])
    for row in (refused, shrunk):
        assert float(row[3]) - steady <= 100, proc.stdout
    assert last - steady <= 100, proc.stdout


# -- fuzz -------------------------------------------------------------------------------------------------------
_FUZZ_CASES = 1000
_CASE_BOUND_S = 30.0  # a hang detector (a normal case takes milliseconds), not a timing target
_BOGUS_ENCODINGS = ("", "hsv", "32FC1", "RGB8", "bgr16", "rgb8 ", "16SC1", "mono 8")
_FORMATS = ("jpeg", "png", "rgb8; jpeg compressed bgr8", "bgr8; compressed rgb8", "16UC1; compressedDepth png",
            "32FC1; compressedDepth", "", "tiff", "garbage")


def _fuzz_raw(rng: np.random.Generator) -> Image:
    encoding = str(rng.choice(SUPPORTED_ENCODINGS + _BOGUS_ENCODINGS))
    dims = [0, 1, 2, 13, 14, 15, int(rng.integers(1, 300)), int(rng.integers(1, 300)), 100000, 2**31]
    height, width = int(rng.choice(dims)), int(rng.choice(dims))
    channels = {"mono16": 2, "16uc1": 2, "rgb8": 3, "bgr8": 3, "8uc3": 3, "rgba8": 4, "bgra8": 4, "8uc4": 4,
                "yuv422": 2, "uyvy": 2, "yuv422_yuy2": 2, "yuyv": 2}.get(encoding.lower(), 1)
    natural = width * channels
    step = int(max(0, min(2**32 - 1, natural + int(rng.choice([0, 0, 0, -1, 1, 7, -natural])))))
    size = step * height if step * height <= 2_000_000 else int(rng.integers(0, 1000))
    size = max(0, size + int(rng.choice([0, 0, 0, -1, -step, 5])))
    msg = Image(encoding=encoding, height=height % 2**32, width=width % 2**32, step=step,
                is_bigendian=int(rng.integers(0, 2)))
    data = bytearray(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    msg.data = bytes(data)
    return msg


def _fuzz_compressed(rng: np.random.Generator) -> CompressedImage:
    fmt = str(rng.choice(_FORMATS))
    kind = int(rng.integers(0, 6))
    if kind == 0:
        data = rng.integers(0, 256, int(rng.integers(0, 2000)), dtype=np.uint8).tobytes()
    elif kind == 1:
        data = png_header_only(int(rng.choice([1, 300, 9000, 60000])), int(rng.choice([1, 300, 9000, 60000])))
    else:
        height, width = int(rng.integers(1, 200)), int(rng.integers(1, 300))
        frame = textured_frame(int(rng.integers(0, 1000)), height, width)
        ext = ".png" if "png" in fmt or rng.random() < 0.3 else ".jpg"
        if rng.random() < 0.2:  # a 16-bit depth PNG, with compressed_depth_image_transport's 12-byte header
            depth = (frame[..., 0].astype(np.uint16) * 257)
            data = (bytes(12) if rng.random() < 0.5 else b"") + cv2.imencode(".png", depth)[1].tobytes()
        else:
            data = cv2.imencode(ext, frame)[1].tobytes()
        data = bytearray(data)
        if kind >= 3:  # byte flips
            for _ in range(int(rng.integers(1, 20))):
                data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        if kind >= 4:  # truncation
            data = data[: int(rng.integers(0, len(data) + 1))]
        data = bytes(data)
    msg = CompressedImage(format=fmt)
    msg.data = data
    return msg


def test_fuzzed_messages_end_in_a_result_or_a_clear_error(harness, tiny_bank):
    """Random encodings, sizes, steps, truncations and byte flips straight into the node's frame path.

    Each case is a result with finite scores or a counted bad message; nothing else.
    """
    h = harness({"bank_path": str(tiny_bank), "max_input_pixels": 5_000_000, "max_output_pixels": 40_000})
    h.activate()
    node = h.node
    rng = np.random.default_rng(20240615)
    outcomes = {"result": 0, "bad": 0}
    for case in range(_FUZZ_CASES):
        msg = _fuzz_raw(rng) if rng.random() < 0.5 else _fuzz_compressed(rng)
        what = (f"case {case}: {type(msg).__name__} "
                + (f"{msg.encoding!r} {msg.width}x{msg.height} step {msg.step}" if isinstance(msg, Image)
                   else f"{msg.format!r}") + f", {len(msg.data)} bytes")
        bad_before = node.stats.bad_messages
        started = time.monotonic()
        try:
            out = node.process_message(msg)
        except Exception as exc:  # noqa: BLE001 - any exception escaping the frame path is the failure
            pytest.fail(f"{what}: {type(exc).__name__}: {exc}")
        assert time.monotonic() - started < _CASE_BOUND_S, what
        if out is None:
            assert node.stats.bad_messages == bad_before + 1, what
            outcomes["bad"] += 1
            continue
        scores = np.frombuffer(bytes(out["score_map"].data), "<f4")
        assert np.isfinite(out["score"].data) and np.isfinite(scores).all(), what
        assert out["score_map"].width * out["score_map"].height <= 40_000, what
        outcomes["result"] += 1
    assert outcomes["result"] >= 50 and outcomes["bad"] >= 300, outcomes  # both paths were exercised
    assert node.stats.errors == 0
