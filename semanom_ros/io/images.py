"""sensor_msgs Image / CompressedImage <-> numpy RGB, without cv_bridge.

cv_bridge from PyPI does not work with NumPy 2, and the engine only needs
RGB uint8 frames, so the conversions are done here with numpy and OpenCV.
Nothing here imports rclpy; ``sensor_msgs`` is imported lazily, only by the
functions that build messages without an explicit ``msg_cls``.
"""

from __future__ import annotations

import copy
from typing import Any

import cv2
import numpy as np

__all__ = [
    "ImageDecodeError",
    "SUPPORTED_ENCODINGS",
    "compressed_image_size",
    "downscale_to_pixels",
    "ENCODABLE_ENCODINGS",
    "decode_image",
    "encode_image",
    "encode_compressed",
]


class ImageDecodeError(ValueError):
    """A sensor_msgs image cannot be turned into an RGB array; the message says why and how to fix it."""


# encoding -> (channels, bytes per channel); keys are lower case because
# publishers disagree on the case of the OpenCV-style names ('8UC3' vs '8uc3').
_RAW_LAYOUT: dict[str, tuple[int, int]] = {
    "rgb8": (3, 1),
    "bgr8": (3, 1),
    "rgba8": (4, 1),
    "bgra8": (4, 1),
    "mono8": (1, 1),
    "8uc1": (1, 1),
    "8uc3": (3, 1),
    "8uc4": (4, 1),
    "mono16": (1, 2),
    "16uc1": (1, 2),
    "bayer_rggb8": (1, 1),
    "bayer_bggr8": (1, 1),
    "bayer_gbrg8": (1, 1),
    "bayer_grbg8": (1, 1),
    "yuv422": (2, 1),
    "uyvy": (2, 1),
    "yuv422_yuy2": (2, 1),
    "yuyv": (2, 1),
}

SUPPORTED_ENCODINGS: tuple[str, ...] = (
    "rgb8", "bgr8", "rgba8", "bgra8", "mono8", "8UC1", "8UC3", "8UC4", "mono16", "16UC1",
    "bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8",
    "yuv422", "uyvy", "yuv422_yuy2", "yuyv",
)

# OpenCV >= 4.6 names Bayer codes after the sensor pattern (RGGB...), which is
# also what ROS means; the older BG/GB/RG/GR names are shifted by one pixel.
_CVT: dict[str, int] = {
    "bgr8": cv2.COLOR_BGR2RGB,
    "8uc3": cv2.COLOR_BGR2RGB,
    "rgba8": cv2.COLOR_RGBA2RGB,
    "bgra8": cv2.COLOR_BGRA2RGB,
    "8uc4": cv2.COLOR_BGRA2RGB,
    "mono8": cv2.COLOR_GRAY2RGB,
    "8uc1": cv2.COLOR_GRAY2RGB,
    "bayer_rggb8": cv2.COLOR_BayerRGGB2RGB,
    "bayer_bggr8": cv2.COLOR_BayerBGGR2RGB,
    "bayer_gbrg8": cv2.COLOR_BayerGBRG2RGB,
    "bayer_grbg8": cv2.COLOR_BayerGRBG2RGB,
    "yuv422": cv2.COLOR_YUV2RGB_UYVY,
    "uyvy": cv2.COLOR_YUV2RGB_UYVY,
    "yuv422_yuy2": cv2.COLOR_YUV2RGB_YUY2,
    "yuyv": cv2.COLOR_YUV2RGB_YUY2,
}

# encoding -> (numpy dtype, channels) accepted by encode_image.
_ENCODE: dict[str, tuple[np.dtype[Any], int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "mono8": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
}
ENCODABLE_ENCODINGS: tuple[str, ...] = tuple(_ENCODE)

_MONO16_MODES = ("shift", "minmax")


def _as_bytes_array(data: Any) -> np.ndarray:
    """View message data as a flat uint8 array without copying when possible."""
    if isinstance(data, np.ndarray):
        # rosbags hands out uint8 ndarrays; only reinterpret, never convert values.
        if data.dtype == np.uint8:
            # Contiguous first: the strided row view below assumes 1-byte element spacing.
            return np.ascontiguousarray(data).reshape(-1)
        return np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    try:
        # bytes, bytearray, memoryview and rclpy's array.array('B') all expose a buffer.
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def _mono16_to_u8(img16: np.ndarray, mode: str) -> np.ndarray:
    if mode == "shift":
        return (img16 >> 8).astype(np.uint8)
    lo = int(img16.min())
    hi = int(img16.max())
    if hi <= lo:
        return np.zeros(img16.shape, np.uint8)
    scaled = (img16.astype(np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


def compressed_image_size(data: Any) -> tuple[int, int] | None:
    """(width, height) from a compressed image's header, without decoding it; None when unknown.

    PNG and JPEG (what image_transport publishes) are read here; other formats through Pillow's
    lazy ``Image.open``, which also only reads the header.
    """
    buf = _as_bytes_array(data)
    head = buf[:32].tobytes()
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and len(head) >= 24:
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if head[:2] == b"\xff\xd8":
        return _jpeg_size(buf)
    try:
        import io
        import warnings

        from PIL import Image as PilImage

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: the caller judges the size
            with PilImage.open(io.BytesIO(buf.tobytes())) as image:
                return int(image.width), int(image.height)
    except Exception:  # noqa: BLE001 - unknown or corrupt header: OpenCV has the last word
        return None


# JPEG start-of-frame markers (baseline, progressive, lossless, ...): C0-CF except DHT, JPG, DAC.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(buf: np.ndarray) -> tuple[int, int] | None:
    """Walk the JPEG marker segments up to the first start-of-frame; None when there is none."""
    data = buf[: 1 << 20].tobytes()  # the frame header comes before the image data
    pos = 2
    while pos + 9 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # segments without a length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker in _JPEG_SOF:
            height = int.from_bytes(data[pos + 5:pos + 7], "big")
            width = int.from_bytes(data[pos + 7:pos + 9], "big")
            return width, height
        if marker == 0xDA or length < 2:  # start of scan before any frame header: malformed
            return None
        pos += 2 + length
    return None


def _check_pixels(width: int, height: int, max_pixels: int | None, what: str) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageDecodeError(
            f"{what} is {width}x{height} = {width * height / 1e6:.1f} MP, more than the {max_pixels / 1e6:.1f} MP "
            f"allowed (max_input_pixels); it was not decoded. Publish smaller frames or raise max_input_pixels"
        )


def downscale_to_pixels(rgb: np.ndarray, max_pixels: int) -> tuple[np.ndarray, float]:
    """Shrink ``rgb`` (area interpolation, aspect kept) to at most ``max_pixels`` pixels.

    Returns the frame and the linear scale applied (1.0 and the same array when it is small enough).
    """
    height, width = rgb.shape[:2]
    if max_pixels <= 0 or height * width <= max_pixels:
        return rgb, 1.0
    scale = (max_pixels / float(height * width)) ** 0.5
    new_w, new_h = max(1, int(width * scale)), max(1, int(height * scale))
    small = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(small), new_w / width


def decode_image(msg: Any, *, mono16: str = "shift", max_pixels: int | None = None) -> np.ndarray:
    """Decode a sensor_msgs Image or CompressedImage into a C-contiguous RGB uint8 (H, W, 3) array.

    Works on rclpy messages and on rosbags typestore messages alike (duck typed).
    16-bit images (mono16, 16UC1, compressedDepth PNG) are mapped to 8 bit with
    ``mono16='shift'`` (default: keep the high byte, ``v >> 8``; the same mapping
    for every frame, so brightness is comparable across frames) or
    ``mono16='minmax'`` (stretch each frame's own min..max to 0..255).
    ``max_pixels`` bounds width * height, checked from the Image fields or the compressed image's
    header before anything is decoded or allocated.

    Raises:
        ImageDecodeError: unsupported encoding, inconsistent size/step/data, or undecodable payload.
    """
    if mono16 not in _MONO16_MODES:
        raise ValueError(f"mono16 must be one of {_MONO16_MODES}, got {mono16!r}")
    if hasattr(msg, "format") and not hasattr(msg, "encoding"):
        rgb = _decode_compressed(msg, mono16, max_pixels)
        # Formats whose header was not read are checked after decoding (then freed at once).
        _check_pixels(rgb.shape[1], rgb.shape[0], max_pixels, f"CompressedImage ({msg.format!r})")
        return rgb
    return _decode_raw(msg, mono16, max_pixels)


def _decode_raw(msg: Any, mono16: str, max_pixels: int | None = None) -> np.ndarray:
    try:
        height = int(msg.height)
        width = int(msg.width)
        step = int(msg.step)
        encoding = str(msg.encoding)
        data = msg.data
    except AttributeError as exc:
        raise ImageDecodeError(
            f"Object of type {type(msg).__name__} is not a sensor_msgs Image or CompressedImage "
            f"({exc}); pass an Image (height, width, step, encoding, data) or a CompressedImage "
            f"(format, data)"
        ) from None
    enc = encoding.strip().lower()
    layout = _RAW_LAYOUT.get(enc)
    if layout is None:
        raise ImageDecodeError(
            f"Image encoding {encoding!r} is not supported; publish one of "
            f"{', '.join(SUPPORTED_ENCODINGS)} (or a CompressedImage)"
        )
    if height <= 0 or width <= 0:
        raise ImageDecodeError(
            f"Image has zero size ({width}x{height}); the publisher must fill width and height"
        )
    _check_pixels(width, height, max_pixels, f"Image ({encoding})")
    channels, nbytes = layout
    row_bytes = width * channels * nbytes
    if step < row_bytes:
        raise ImageDecodeError(
            f"Image step {step} < width*channels*bytes = {row_bytes} for {width}x{height} "
            f"{encoding}; step must be the row length in bytes (>= {row_bytes})"
        )
    if enc in ("yuv422", "uyvy", "yuv422_yuy2", "yuyv") and width % 2:
        raise ImageDecodeError(
            f"Image encoding {encoding!r} needs an even width, got {width}; "
            f"YUV 4:2:2 packs two pixels per 4 bytes"
        )
    buf = _as_bytes_array(data)
    # The last row may legitimately omit its padding, so only that much is required.
    needed = step * (height - 1) + row_bytes
    if buf.size < needed:
        raise ImageDecodeError(
            f"Image data truncated: {buf.size} bytes, expected step*height = {step * height} "
            f"for {width}x{height} {encoding} with step {step}"
        )

    # Strided view over the message buffer: no copy even when rows are padded.
    rows = np.lib.stride_tricks.as_strided(
        buf, shape=(height, row_bytes), strides=(step, 1), writeable=False
    )

    if nbytes == 2:
        bigendian = bool(getattr(msg, "is_bigendian", 0))
        img16 = rows.view(">u2" if bigendian else "<u2")
        return np.ascontiguousarray(cv2.cvtColor(_mono16_to_u8(img16, mono16), cv2.COLOR_GRAY2RGB))

    if enc == "rgb8":
        # The one unavoidable copy: the result must own writable memory, not alias the message.
        return np.array(rows.reshape(height, width, 3), order="C", copy=True)
    if channels == 1:
        src = rows
    else:
        src = rows.reshape(height, width, channels)
    return np.ascontiguousarray(cv2.cvtColor(src, _CVT[enc]))


def _decode_compressed(msg: Any, mono16: str, max_pixels: int | None = None) -> np.ndarray:
    fmt = str(getattr(msg, "format", "") or "")
    buf = _as_bytes_array(msg.data)
    if buf.size == 0:
        raise ImageDecodeError(
            f"CompressedImage data is empty (format {fmt!r}); the publisher sent no image bytes"
        )
    fmt_l = fmt.lower()
    if "compresseddepth" in fmt_l:
        return _decode_compressed_depth(buf, fmt, mono16, max_pixels)
    size = compressed_image_size(buf)
    if size is not None:
        _check_pixels(*size, max_pixels, f"CompressedImage ({fmt!r})")
    try:
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error as exc:
        bgr = None
        reason = f": {str(exc).strip().splitlines()[-1]}"
    else:
        reason = ""
    if bgr is None:
        raise ImageDecodeError(
            f"CompressedImage could not be decoded as {fmt!r} ({buf.size} bytes){reason}; "
            f"the payload is corrupt or not a JPEG/PNG image"
        )
    # image_transport stores colour as BGR inside the JPEG ("... compressed bgr8");
    # only a publisher that explicitly says "compressed rgb8" put RGB there.
    target = fmt_l.rsplit("compressed", 1)[1].strip() if "compressed" in fmt_l else ""
    if target.startswith("rgb"):
        return np.ascontiguousarray(bgr)
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def _decode_compressed_depth(buf: np.ndarray, fmt: str, mono16: str, max_pixels: int | None) -> np.ndarray:
    if "32fc1" in fmt.lower():
        raise ImageDecodeError(
            f"CompressedImage format {fmt!r} (inverse-depth quantised 32FC1) is not supported; "
            f"publish 16UC1 compressedDepth, mono16 or an 8-bit image"
        )
    # compressed_depth_image_transport prepends a 12-byte config header to the PNG.
    png_magic = b"\x89PNG"
    if buf[:4].tobytes() != png_magic and buf[12:16].tobytes() == png_magic:
        buf = buf[12:]
    size = compressed_image_size(buf)
    if size is not None:
        _check_pixels(*size, max_pixels, f"CompressedImage ({fmt!r})")
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        img = None
    if img is None:
        raise ImageDecodeError(
            f"CompressedImage could not be decoded as {fmt!r} ({buf.size} bytes); "
            f"the payload is corrupt or not a PNG depth image"
        )
    if img.ndim == 3:
        img = img[..., 0]
    if img.dtype == np.uint16:
        img = _mono16_to_u8(img, mono16)
    return np.ascontiguousarray(cv2.cvtColor(img.astype(np.uint8, copy=False), cv2.COLOR_GRAY2RGB))


def _check_array(array: Any, encoding: str) -> np.ndarray:
    if encoding not in _ENCODE:
        raise ValueError(
            f"encode_image: encoding {encoding!r} is not supported; use one of "
            f"{', '.join(ENCODABLE_ENCODINGS)}"
        )
    dtype, channels = _ENCODE[encoding]
    arr = np.asarray(array)
    shape_ok = (arr.ndim == 3 and arr.shape[2] == channels) or (channels == 1 and arr.ndim == 2)
    # Byte order is not part of the check: big-endian input is written little-endian below.
    if arr.dtype.newbyteorder("=") != dtype or not shape_ok:
        want = "(H, W, 3)" if channels == 3 else "(H, W) or (H, W, 1)"
        raise ValueError(
            f"encode_image: encoding {encoding!r} needs a {dtype.name} array of shape {want}; "
            f"got {arr.dtype.name} {arr.shape}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"encode_image: array has zero size {arr.shape}")
    return arr


def _default_cls(name: str) -> Any:
    # Lazy: importing sensor_msgs pulls in rclpy's type support, which the engine must not need.
    import sensor_msgs.msg  # noqa: PLC0415

    return getattr(sensor_msgs.msg, name)


def _build(msg_cls: Any, header: Any, fields: dict[str, Any], data: bytes) -> Any:
    if hasattr(msg_cls, "__msgtype__"):
        # rosbags typestore classes are dataclasses that need every field and an ndarray payload.
        if header is None:
            raise ValueError("a header is required when msg_cls is a rosbags typestore class")
        return msg_cls(header=copy.deepcopy(header), data=np.frombuffer(data, np.uint8), **fields)
    msg = msg_cls(**fields)
    if header is not None:
        msg.header = copy.deepcopy(header)
    msg.data = data
    return msg


def encode_image(array: np.ndarray, encoding: str, header: Any = None, msg_cls: Any = None) -> Any:
    """Build a sensor_msgs/Image from an array ('rgb8', 'bgr8', 'mono8', 'mono16' or '32FC1').

    The array is taken as laid out for ``encoding`` (no colour conversion);
    data is written little-endian with ``step = width * channels * itemsize``.
    ``msg_cls`` defaults to ``sensor_msgs.msg.Image``; a rosbags typestore
    Image class also works (then ``header`` is required).
    """
    arr = _check_array(array, encoding)
    height, width = int(arr.shape[0]), int(arr.shape[1])
    channels = _ENCODE[encoding][1]
    little = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    fields = {
        "height": height,
        "width": width,
        "encoding": encoding,
        "is_bigendian": 0,
        "step": width * channels * arr.dtype.itemsize,
    }
    cls = msg_cls if msg_cls is not None else _default_cls("Image")
    return _build(cls, header, fields, little.tobytes())


def encode_compressed(
    rgb: np.ndarray,
    fmt: str = "jpeg",
    header: Any = None,
    msg_cls: Any = None,
    quality: int = 90,
) -> Any:
    """Build a sensor_msgs/CompressedImage (``format`` 'jpeg' or 'png') from an RGB (or gray) uint8 array."""
    fmt_l = fmt.lower()
    if fmt_l in ("jpg", "jpeg"):
        ext, params, fmt_name = ".jpg", [cv2.IMWRITE_JPEG_QUALITY, int(quality)], "jpeg"
    elif fmt_l == "png":
        ext, params, fmt_name = ".png", [], "png"
    else:
        raise ValueError(f"encode_compressed: fmt {fmt!r} is not supported; use 'jpeg' or 'png'")
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3))):
        raise ValueError(
            f"encode_compressed: needs a uint8 array of shape (H, W, 3) RGB or (H, W) gray; "
            f"got {arr.dtype.name} {arr.shape}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"encode_compressed: array has zero size {arr.shape}")
    src = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR) if arr.ndim == 3 and arr.shape[2] == 3 else arr
    ok, enc = cv2.imencode(ext, src, params)
    if not ok:
        raise ValueError(f"encode_compressed: OpenCV failed to encode a {arr.shape} image as {fmt_name}")
    cls = msg_cls if msg_cls is not None else _default_cls("CompressedImage")
    return _build(cls, header, {"format": fmt_name}, enc.tobytes())
