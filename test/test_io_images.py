"""Tests for semanom_ros.io.images: sensor_msgs <-> numpy without cv_bridge."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# Test the working tree, not a possibly stale non-editable install in site-packages.
if str(REPO) not in sys.path[:1]:
    sys.path.insert(0, str(REPO))

from semanom_ros.io.bagwrite import make_compressed_msg, make_image_msg  # noqa: E402
from semanom_ros.io.bags import ros2_typestore  # noqa: E402
from semanom_ros.io.images import (  # noqa: E402
    SUPPORTED_ENCODINGS,
    ImageDecodeError,
    decode_image,
    encode_compressed,
    encode_image,
)

H, W = 6, 8


def _rgb(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _smooth_rgb(h: int = 48, w: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], axis=-1).astype(np.uint8)


def _raw(data: bytes, encoding: str, h: int, w: int, step: int, bigendian: int = 0) -> SimpleNamespace:
    # Plain duck-typed object: decode_image must not need a real message class.
    return SimpleNamespace(
        height=h, width=w, encoding=encoding, step=step, is_bigendian=bigendian, data=data,
    )


def _pad_rows(data: bytes, h: int, row: int, pad: int, last_row_padded: bool = True) -> bytes:
    rows = np.frombuffer(data, np.uint8).reshape(h, row)
    junk = np.full((h, pad), 0xAB, np.uint8)
    out = np.concatenate([rows, junk], axis=1).tobytes()
    return out if last_row_padded else out[:-pad]


def _encode_for(encoding: str, rgb: np.ndarray) -> tuple[bytes, np.ndarray, int]:
    """(payload, expected RGB, bytes per row) for a raw encoding, built independently of decode_image."""
    h, w = rgb.shape[:2]
    gray = rgb[..., 1]
    gray3 = np.repeat(gray[..., None], 3, axis=2)
    alpha = np.full((h, w, 1), 77, np.uint8)
    e = encoding.lower()
    if e == "rgb8":
        return rgb.tobytes(), rgb, w * 3
    if e in ("bgr8", "8uc3"):
        return rgb[..., ::-1].tobytes(), rgb, w * 3
    if e == "rgba8":
        return np.concatenate([rgb, alpha], 2).tobytes(), rgb, w * 4
    if e in ("bgra8", "8uc4"):
        return np.concatenate([rgb[..., ::-1], alpha], 2).tobytes(), rgb, w * 4
    if e in ("mono8", "8uc1"):
        return gray.tobytes(), gray3, w
    if e in ("mono16", "16uc1"):
        v16 = gray.astype("<u2") * 256 + 13  # low byte is dropped by the default >> 8
        return v16.tobytes(), gray3, w * 2
    if e.startswith("bayer_"):
        return _bayer(rgb, e[6:10]).tobytes(), rgb, w
    if e in ("yuv422", "uyvy"):
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_UYVY).tobytes(), rgb, w * 2
    if e in ("yuv422_yuy2", "yuyv"):
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_YUY2).tobytes(), rgb, w * 2
    raise AssertionError(encoding)


def _bayer(rgb: np.ndarray, pattern: str) -> np.ndarray:
    out = np.empty(rgb.shape[:2], np.uint8)
    idx = {"r": 0, "g": 1, "b": 2}
    for k, ch in enumerate(pattern):
        dy, dx = divmod(k, 2)
        out[dy::2, dx::2] = rgb[dy::2, dx::2, idx[ch]]
    return out


def _tolerance(encoding: str) -> float:
    e = encoding.lower()
    if e.startswith("bayer_"):
        return 6.0  # interpolation at colour edges; checked on the interior of a flat image
    if e in ("yuv422", "uyvy", "yuv422_yuy2", "yuyv"):
        return 3.0
    return 0.0


def _test_image(encoding: str) -> np.ndarray:
    e = encoding.lower()
    if e.startswith("bayer_"):
        img = np.zeros((16, 16, 3), np.uint8)
        img[:] = (200, 90, 30)
        return img
    if e in ("yuv422", "uyvy", "yuv422_yuy2", "yuyv"):
        # Pixel pairs share chroma in 4:2:2, so make each horizontal pair identical.
        return np.repeat(_rgb(H, W // 2, seed=3), 2, axis=1)
    return _rgb()


def _check(out: np.ndarray, expected: np.ndarray, encoding: str) -> None:
    assert out.dtype == np.uint8 and out.shape == expected.shape
    assert out.flags.c_contiguous and out.flags.writeable
    if encoding.lower().startswith("bayer_"):
        out, expected = out[2:-2, 2:-2], expected[2:-2, 2:-2]
    diff = np.abs(out.astype(int) - expected.astype(int)).max()
    assert diff <= _tolerance(encoding), f"{encoding}: max abs diff {diff}"


# --------------------------------------------------------------------------- raw round trips


@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
def test_decode_every_raw_encoding(encoding: str) -> None:
    rgb = _test_image(encoding)
    h, w = rgb.shape[:2]
    data, expected, row = _encode_for(encoding, rgb)
    _check(decode_image(_raw(data, encoding, h, w, row)), expected, encoding)


@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
@pytest.mark.parametrize("last_row_padded", [True, False])
def test_decode_padded_step_matches_unpadded(encoding: str, last_row_padded: bool) -> None:
    rgb = _test_image(encoding)
    h, w = rgb.shape[:2]
    data, _, row = _encode_for(encoding, rgb)
    plain = decode_image(_raw(data, encoding, h, w, row))
    pad = 7  # odd on purpose: 16-bit rows start unaligned
    padded = _pad_rows(data, h, row, pad, last_row_padded)
    out = decode_image(_raw(padded, encoding, h, w, row + pad))
    np.testing.assert_array_equal(out, plain)


def test_decode_encoding_names_are_case_insensitive() -> None:
    rgb = _rgb()
    np.testing.assert_array_equal(
        decode_image(_raw(rgb[..., ::-1].tobytes(), "8uc3", H, W, W * 3)),
        decode_image(_raw(rgb[..., ::-1].tobytes(), "BGR8", H, W, W * 3)),
    )


def test_mono16_big_endian_and_scaling_modes() -> None:
    v = np.arange(H * W, dtype=np.uint16).reshape(H, W) * 1000
    little = decode_image(_raw(v.astype("<u2").tobytes(), "mono16", H, W, W * 2, bigendian=0))
    big = decode_image(_raw(v.astype(">u2").tobytes(), "mono16", H, W, W * 2, bigendian=1))
    np.testing.assert_array_equal(little, big)
    np.testing.assert_array_equal(little[..., 0], (v >> 8).astype(np.uint8))
    mm = decode_image(_raw(v.astype("<u2").tobytes(), "16UC1", H, W, W * 2), mono16="minmax")
    assert mm[..., 0].min() == 0 and mm[..., 0].max() == 255
    flat = decode_image(_raw(np.full((H, W), 7, "<u2").tobytes(), "mono16", H, W, W * 2), mono16="minmax")
    assert not flat.any()
    with pytest.raises(ValueError, match="mono16"):
        decode_image(_raw(v.tobytes(), "mono16", H, W, W * 2), mono16="gamma")


def test_bayer_patterns_give_the_right_colour() -> None:
    # Guards the OpenCV Bayer naming trap: a red scene must come out red for every pattern.
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 220
    for pattern in ("rggb", "bggr", "gbrg", "grbg"):
        out = decode_image(_raw(_bayer(red, pattern).tobytes(), f"bayer_{pattern}8", 16, 16, 16))
        assert tuple(out[8, 8]) == (220, 0, 0), pattern


def test_rgb8_decode_is_one_copy_not_a_view() -> None:
    rgb = _rgb()
    buf = bytearray(rgb.tobytes())
    out = decode_image(_raw(buf, "rgb8", H, W, W * 3))
    out[:] = 0  # writable and independent of the message buffer
    assert bytes(buf) == rgb.tobytes()


def test_decode_non_contiguous_ndarray_data() -> None:
    rgb = _rgb()
    spread = np.zeros(rgb.size * 2, np.uint8)
    spread[::2] = rgb.reshape(-1)
    out = decode_image(_raw(spread[::2], "rgb8", H, W, W * 3))
    np.testing.assert_array_equal(out, rgb)


def test_decode_accepts_data_longer_than_needed() -> None:
    rgb = _rgb()
    out = decode_image(_raw(rgb.tobytes() + b"\x00" * 10, "rgb8", H, W, W * 3))
    np.testing.assert_array_equal(out, rgb)


def test_decode_rgb8_960x540_is_fast() -> None:
    rgb = _rgb(540, 960)
    msg = _raw(rgb.tobytes(), "rgb8", 540, 960, 960 * 3)
    decode_image(msg)
    best = min(_timed(decode_image, msg) for _ in range(5))
    # A 1.5 MB memcpy takes ~0.1-0.5 ms; 20 ms would mean a per-pixel Python path.
    assert best < 0.02, best


def _timed(fn, *args) -> float:  # noqa: ANN001
    import time

    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


# --------------------------------------------------------------------------- raw errors


def test_error_unknown_encoding() -> None:
    msg = r"encoding 'yuv444' is not supported; publish one of rgb8, bgr8"
    with pytest.raises(ImageDecodeError, match=msg):
        decode_image(_raw(b"\x00" * 100, "yuv444", 2, 2, 6))


def test_error_step_too_small() -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(_raw(b"\x00" * 54000, "rgb8", 540, 960, 100))
    assert "Image step 100 < width*channels*bytes = 2880 for 960x540 rgb8" in str(info.value)


def test_error_data_truncated() -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(_raw(b"\x00" * 1000, "rgb8", 540, 960, 2880))
    assert "Image data truncated: 1000 bytes, expected step*height = 1555200" in str(info.value)


def test_error_truncated_16bit() -> None:
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(_raw(b"\x00" * (H * W * 2 - 1), "mono16", H, W, W * 2))


@pytest.mark.parametrize(("h", "w"), [(0, 0), (0, 5), (5, 0)])
def test_error_zero_size(h: int, w: int) -> None:
    with pytest.raises(ImageDecodeError, match=rf"Image has zero size \({w}x{h}\)"):
        decode_image(_raw(b"", "rgb8", h, w, w * 3))


def test_error_odd_width_yuv() -> None:
    with pytest.raises(ImageDecodeError, match="even width"):
        decode_image(_raw(b"\x00" * 100, "uyvy", 2, 3, 6))


def test_error_not_a_message() -> None:
    with pytest.raises(ImageDecodeError, match="not a sensor_msgs Image"):
        decode_image(SimpleNamespace(height=1, width=1))


def test_image_decode_error_is_value_error() -> None:
    assert issubclass(ImageDecodeError, ValueError)


# --------------------------------------------------------------------------- compressed


def _compressed(data: bytes, fmt: str = "jpeg") -> SimpleNamespace:
    return SimpleNamespace(format=fmt, data=data)


def test_compressed_png_is_exact_and_jpeg_close() -> None:
    rgb = _smooth_rgb()
    png = decode_image(encode_compressed(rgb, "png", msg_cls=SimpleNamespace))
    np.testing.assert_array_equal(png, rgb)
    jpg = decode_image(encode_compressed(rgb, "jpeg", msg_cls=SimpleNamespace, quality=95))
    assert jpg.shape == rgb.shape and jpg.flags.c_contiguous
    assert np.abs(jpg.astype(int) - rgb.astype(int)).mean() < 3


@pytest.mark.parametrize(
    "fmt", ["jpeg", "png", "rgb8; jpeg compressed bgr8", "bgr8; compressed bgr8", "", "JPEG"],
)
def test_compressed_format_strings_decode_to_rgb(fmt: str) -> None:
    rgb = _smooth_rgb()
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    np.testing.assert_array_equal(decode_image(_compressed(png.tobytes(), fmt)), rgb)


def test_compressed_rgb8_payload_is_not_swapped() -> None:
    rgb = _smooth_rgb()
    ok, png = cv2.imencode(".png", rgb)  # RGB bytes written as if BGR
    assert ok
    out = decode_image(_compressed(png.tobytes(), "rgb8; png compressed rgb8"))
    np.testing.assert_array_equal(out, rgb)


def test_compressed_grayscale_jpeg_becomes_three_channels() -> None:
    gray = _smooth_rgb()[..., 0]
    ok, jpg = cv2.imencode(".jpg", gray)
    assert ok
    out = decode_image(_compressed(jpg.tobytes()))
    assert out.shape == gray.shape + (3,)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_compressed_depth_png_with_config_header() -> None:
    depth = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 900)
    ok, png = cv2.imencode(".png", depth)
    assert ok
    payload = b"\x00" * 12 + png.tobytes()
    out = decode_image(_compressed(payload, "16UC1; compressedDepth png"))
    np.testing.assert_array_equal(out[..., 0], (depth >> 8).astype(np.uint8))
    with pytest.raises(ImageDecodeError, match="not supported"):
        decode_image(_compressed(payload, "32FC1; compressedDepth"))


def test_compressed_errors() -> None:
    with pytest.raises(ImageDecodeError, match="CompressedImage data is empty"):
        decode_image(_compressed(b""))
    with pytest.raises(ImageDecodeError, match=r"could not be decoded as 'jpeg' \(1234 bytes\)"):
        decode_image(_compressed(bytes(range(256)) * 4 + b"\x00" * 210))
    ok, jpg = cv2.imencode(".jpg", _smooth_rgb())
    for cut in (20, len(jpg) * 6 // 10):
        # A truncated JPEG must fail, not come back half grey (that would look like an anomaly).
        with pytest.raises(ImageDecodeError, match="could not be decoded"):
            decode_image(_compressed(jpg.tobytes()[:cut]))


# --------------------------------------------------------------------------- encode


@pytest.mark.parametrize(
    ("encoding", "array"),
    [
        ("rgb8", np.zeros((2, 3), np.uint8)),
        ("rgb8", np.zeros((2, 3, 3), np.float32)),
        ("mono8", np.zeros((2, 3, 3), np.uint8)),
        ("mono16", np.zeros((2, 3), np.uint8)),
        ("32FC1", np.zeros((2, 3), np.float64)),
        ("rgb8", np.zeros((0, 3, 3), np.uint8)),
        ("yuv422", np.zeros((2, 4, 2), np.uint8)),
    ],
)
def test_encode_image_validates(encoding: str, array: np.ndarray) -> None:
    with pytest.raises(ValueError, match="encode_image"):
        encode_image(array, encoding, msg_cls=SimpleNamespace)


def test_encode_compressed_validates() -> None:
    with pytest.raises(ValueError, match="'jpeg' or 'png'"):
        encode_compressed(_rgb(), "webp", msg_cls=SimpleNamespace)
    with pytest.raises(ValueError, match="uint8"):
        encode_compressed(_rgb().astype(np.float32), msg_cls=SimpleNamespace)


# --------------------------------------------------------------------------- rclpy messages


def test_tests_run_against_the_working_tree() -> None:
    import semanom_ros.io.images as mod

    # A non-editable `pip install .` in the venv would otherwise be tested instead of the sources.
    assert Path(mod.__file__).resolve().is_relative_to(REPO), mod.__file__


def test_io_import_does_not_import_rclpy() -> None:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import semanom_ros.io; "
        "bad = [m for m in ('rclpy', 'sensor_msgs', 'std_msgs') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code, str(REPO)], check=True, timeout=60)


def test_rclpy_round_trip_every_encodable_encoding() -> None:
    from sensor_msgs.msg import CompressedImage, Image
    from std_msgs.msg import Header

    header = Header(frame_id="cam")
    header.stamp.sec, header.stamp.nanosec = 12, 34
    rgb = _rgb()
    gray = rgb[..., 0]

    msg = encode_image(rgb, "rgb8", header=header)
    assert isinstance(msg, Image)
    assert (msg.height, msg.width, msg.step, msg.is_bigendian) == (H, W, W * 3, 0)
    assert msg.header.frame_id == "cam" and msg.header.stamp.nanosec == 34
    assert msg.header is not header
    np.testing.assert_array_equal(decode_image(msg), rgb)

    np.testing.assert_array_equal(decode_image(encode_image(rgb[..., ::-1].copy(), "bgr8")), rgb)
    np.testing.assert_array_equal(decode_image(encode_image(gray, "mono8"))[..., 1], gray)
    np.testing.assert_array_equal(decode_image(encode_image(gray[..., None], "mono8"))[..., 1], gray)
    v16 = gray.astype(np.uint16) << 8
    m16 = encode_image(v16.astype(">u2"), "mono16")  # big-endian input is written little-endian
    assert m16.step == W * 2 and m16.is_bigendian == 0
    np.testing.assert_array_equal(decode_image(m16)[..., 0], gray)
    depth = np.linspace(0, 5, H * W, dtype=np.float32).reshape(H, W)
    mf = encode_image(depth, "32FC1")
    assert mf.step == W * 4
    np.testing.assert_array_equal(np.frombuffer(bytes(mf.data), "<f4").reshape(H, W), depth)
    with pytest.raises(ImageDecodeError, match="'32FC1' is not supported"):
        decode_image(mf)

    cmsg = encode_compressed(_smooth_rgb(), "png", header=header)
    assert isinstance(cmsg, CompressedImage) and cmsg.format == "png"
    assert cmsg.header.stamp.sec == 12
    np.testing.assert_array_equal(decode_image(cmsg), _smooth_rgb())
    assert encode_compressed(_smooth_rgb()).format == "jpeg"


def test_rclpy_messages_filled_by_hand_decode() -> None:
    from sensor_msgs.msg import CompressedImage, Image

    rgb = _rgb()
    msg = Image(height=H, width=W, encoding="bgr8", step=W * 3 + 4)
    msg.data = _pad_rows(rgb[..., ::-1].tobytes(), H, W * 3, 4)
    np.testing.assert_array_equal(decode_image(msg), rgb)
    ok, jpg = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    cmsg = CompressedImage(format="png", data=jpg.tobytes())
    np.testing.assert_array_equal(decode_image(cmsg), rgb)


# --------------------------------------------------------------------------- rosbags messages


def test_rosbags_messages_decode_after_cdr_round_trip() -> None:
    ts = ros2_typestore()
    rgb = _rgb()
    raw = make_image_msg(rgb.tobytes(), height=H, width=W, encoding="rgb8", step=W * 3)
    back = ts.deserialize_cdr(ts.serialize_cdr(raw, "sensor_msgs/msg/Image"), "sensor_msgs/msg/Image")
    assert isinstance(back.data, np.ndarray)
    np.testing.assert_array_equal(decode_image(back), rgb)

    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    comp = make_compressed_msg(png.tobytes(), "png")
    typ = "sensor_msgs/msg/CompressedImage"
    back = ts.deserialize_cdr(ts.serialize_cdr(comp, typ), typ)
    np.testing.assert_array_equal(decode_image(back), rgb)


def test_encode_with_rosbags_message_class() -> None:
    ts = ros2_typestore()
    header = make_image_msg(b"\x00" * 3, height=1, width=1, encoding="rgb8", step=3, stamp_ns=5).header
    rgb = _rgb()
    msg = encode_image(rgb, "rgb8", header=header, msg_cls=ts.types["sensor_msgs/msg/Image"])
    assert msg.header.stamp.nanosec == 5
    data = ts.serialize_cdr(msg, "sensor_msgs/msg/Image")
    np.testing.assert_array_equal(decode_image(ts.deserialize_cdr(data, "sensor_msgs/msg/Image")), rgb)
    with pytest.raises(ValueError, match="header is required"):
        encode_image(rgb, "rgb8", msg_cls=ts.types["sensor_msgs/msg/Image"])
