"""One entry point for frames from any source.

:func:`iter_frames` reads a rosbag2 bag (:mod:`semanom_ros.io.bags`) or an image folder
(:mod:`semanom_ros.io.folders`) and yields :class:`Frame` records (:mod:`semanom_ros.io.frame_types`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .bags import iter_bag_frames, is_bag_path
from .folders import iter_folder_frames
from .frame_types import BAG_SUFFIXES, Frame, SkipStats

__all__ = ["Frame", "SkipStats", "iter_frames"]

_BAG_ONLY = ("topic", "start_ns", "end_ns")
_FOLDER_ONLY = ("extensions", "fps")


def iter_frames(path: str | os.PathLike[str], **kw: Any) -> Iterator[Frame]:
    """Frames from a bag (a directory with metadata.yaml or .mcap/.db3 files, or such a file) or a folder.

    Keyword arguments are those of :func:`iter_bag_frames` / :func:`iter_folder_frames`;
    options of the other kind are accepted when None (so one call site can serve both).
    """
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{str(p)!r} does not exist; pass a rosbag2 bag or a folder of images")
    if p.is_file():
        if p.suffix.lower() in BAG_SUFFIXES:
            return iter_bag_frames(p, **_only(kw, _FOLDER_ONLY, "a bag"))
        raise ValueError(
            f'{str(p)!r} is neither a bag ({" / ".join(BAG_SUFFIXES)} file or bag directory) nor '
            f"a folder of images"
        )
    if is_bag_path(p):
        return iter_bag_frames(p, **_only(kw, _FOLDER_ONLY, "a bag"))
    return iter_folder_frames(p, **_only(kw, _BAG_ONLY, "an image folder"))


def _only(kw: dict[str, Any], foreign: Sequence[str], kind: str) -> dict[str, Any]:
    out = dict(kw)
    for key in foreign:
        if key in out:
            if out[key] is not None:
                raise ValueError(f"Option {key}={out[key]!r} does not apply to {kind}")
            del out[key]
    return out
