"""Frames from image folders: every image file of one folder, in natural file-name order."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .frame_types import IMAGE_EXTENSIONS, Frame, SkipStats, SkipWarner, check_selection_args, natural_key

__all__ = ["image_files", "iter_folder_frames", "read_image_file"]


def read_image_file(file: Path) -> tuple[np.ndarray | None, str]:
    """(RGB uint8 frame, "") of an image file, or (None, why it could not be read)."""
    try:
        # np.fromfile + imdecode instead of imread: handles non-ASCII paths and reports OSErrors.
        data = np.fromfile(file, dtype=np.uint8)
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
        reason = "empty file" if not data.size else "not a decodable image"
    except (OSError, cv2.error) as exc:
        bgr, reason = None, str(exc).strip()
    if bgr is None:
        return None, reason
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)), ""


def image_files(folder: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """The image files of ``folder`` (not recursive) in natural file-name order."""
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    files = [
        p for p in folder.iterdir()
        # Dot files are editor/OS droppings (e.g. macOS "._0001.jpg"), not frames.
        if p.suffix.lower() in exts and not p.name.startswith(".") and p.is_file()
    ]
    return sorted(files, key=lambda p: natural_key(p.name))


def iter_folder_frames(
    folder: str | os.PathLike[str],
    *,
    stride: int = 1,
    min_interval_s: float = 0.0,
    max_frames: int | None = None,
    stats: SkipStats | None = None,
    logger: Any = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    fps: float = 10.0,
) -> Iterator[Frame]:
    """Stream RGB frames from the image files of a folder (not recursive), in natural file-name order.

    ``stamp_ns`` is ``round(index * 1e9 / fps)``: deterministic, unlike file
    mtimes which copying changes. Unreadable files are skipped, counted as
    ``decode_error`` and warned about.

    Raises (on the call):
        ValueError: not a folder, no matching image files, bad arguments.
    """
    check_selection_args(stride, max_frames, min_interval_s)
    if not float(fps) > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    path = Path(folder)
    if not path.is_dir():
        raise ValueError(f"Image folder {str(path)!r} does not exist or is not a directory")
    files = image_files(path, extensions)
    if not files:
        raise ValueError(
            f'Image folder {str(path)!r} has no {"/".join(extensions)} files; pass a folder of '
            f"images or a rosbag2 bag"
        )
    stats = stats if stats is not None else SkipStats()
    return _folder_frames(
        files, str(folder), int(stride), round(float(min_interval_s) * 1e9), max_frames,
        float(fps), stats, SkipWarner(stats, logger),
    )


def _folder_frames(
    files: list[Path],
    src: str,
    stride: int,
    min_interval_ns: int,
    max_frames: int | None,
    fps: float,
    stats: SkipStats,
    warner: SkipWarner,
) -> Iterator[Frame]:
    yielded = 0
    last_emit: int | None = None
    for index, file in enumerate(files):
        if max_frames is not None and yielded >= max_frames:
            stats.max_count += len(files) - index
            return
        if index % stride:
            stats.stride += 1
            continue
        stamp = round(index * 1e9 / fps)
        if last_emit is not None and stamp - last_emit < min_interval_ns:
            stats.min_interval += 1
            continue
        rgb, reason = read_image_file(file)
        if rgb is None:
            stats.decode_error += 1
            warner.item(f"Image file {str(file)!r} could not be read ({reason}); skipped")
            continue
        last_emit = stamp
        yielded += 1
        stats.yielded += 1
        yield Frame(rgb=rgb, source=src, index=index, stamp_ns=stamp, topic=None, name=file.name)
