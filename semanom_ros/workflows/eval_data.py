"""Labelled evaluation data: image folders with masks and a labels CSV, or a bag plus stamp ranges.

Both kinds stream :class:`LabelledFrame` objects (one decoded frame in memory at a time) and
collect warnings about the data itself (missing masks, labels that match nothing, ...) in
``warnings``; problems that would make the figures wrong (a mask of another size, an
unreadable mask, a label that is neither 0 nor 1) raise :class:`EvalDataError` naming the file.

Folder layout (auto-detected by :func:`find_folder_layout`)::

    DATA/images/NNNN.jpg     frames
    DATA/masks/NNNN.png      optional pixel masks, non-zero = anomalous, same size as the frame
    DATA/labels.csv          optional: frame,anomalous[,object|scenario|group]

Bag labels (CSV or YAML): stamp ranges of anomalous messages, each with an optional scenario
name; ``start_ns``/``end_ns`` are absolute header stamps in nanoseconds, ``start_s``/``end_s``
seconds after the first frame on the evaluated topic; both ends inclusive. Frames outside every
range are nominal.
"""
from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from semanom_ros.io.bags import iter_bag_frames, list_image_topics
from semanom_ros.io.folders import image_files, iter_folder_frames
from semanom_ros.io.frame_types import IMAGE_EXTENSIONS, SkipStats, natural_key

__all__ = [
    "BagDataset",
    "EvalDataError",
    "FolderDataset",
    "LabelRange",
    "LabelledFrame",
    "NOMINAL_GROUP",
    "UNNAMED_GROUP",
    "WarningSink",
    "find_folder_layout",
    "read_bag_labels",
]

_log = logging.getLogger("semanom_ros.eval")

NOMINAL_GROUP = "nominal"
# Anomalous frames whose group cell (or bag scenario) is empty.
UNNAMED_GROUP = "unnamed"
MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")
FRAME_COLUMNS = ("frame", "image", "file", "filename", "name", "path")
LABEL_COLUMNS = ("anomalous", "label", "is_anomalous", "anomaly")
GROUP_COLUMNS = ("scenario", "group", "object", "category")
_TRUE = {"1", "true", "yes", "y", "anomalous", "anomaly", "t"}
_FALSE = {"0", "false", "no", "n", "nominal", "normal", "f"}
_MAX_NAMES = 8


class EvalDataError(ValueError):
    """The evaluation data cannot give correct figures; the message names the file and the fix."""


class WarningSink:
    """Collects data warnings for the report and logs them as they happen.

    Has ``warning(text)`` so it can stand in for the logger of the frame readers.
    """

    def __init__(self, emit: Callable[[str], None] | None = None) -> None:
        self.messages: list[str] = []
        self._emit = emit or _log.warning

    def warning(self, text: str) -> None:
        self.messages.append(text)
        self._emit(text)

    warn = warning


def _names(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_MAX_NAMES])
    return shown + (f", ... ({len(items) - _MAX_NAMES} more)" if len(items) > _MAX_NAMES else "")


@dataclass
class LabelledFrame:
    """One frame with its ground truth."""

    name: str  # image file name, or "topic@stamp" for bags
    rgb: np.ndarray  # (H, W, 3) uint8 RGB
    label: int  # 1 = anomalous, 0 = nominal
    group: str | None  # scenario / object name; None when the data has no grouping
    mask: np.ndarray | None  # (H, W) bool ground-truth pixels, None where the frame has none
    index: int
    stamp_ns: int
    path: str | None = None


# --------------------------------------------------------------------------- folders


@dataclass
class FolderLayout:
    images: Path
    masks: Path | None
    labels: Path | None


def find_folder_layout(data: str | Path) -> FolderLayout:
    """``DATA/images`` + ``DATA/masks`` + ``DATA/labels.csv`` where present, else ``DATA`` holds the images."""
    root = Path(data)
    if not root.is_dir():
        raise EvalDataError(f"data folder {root} does not exist or is not a directory")
    images = root / "images" if (root / "images").is_dir() else root
    masks = next((root / n for n in ("masks", "mask", "ground_truth", "gt") if (root / n).is_dir()), None)
    labels = next((root / n for n in ("labels.csv", "labels.CSV") if (root / n).is_file()), None)
    if labels is None:
        csvs = sorted(root.glob("*.csv"))
        if len(csvs) == 1:
            labels = csvs[0]
    return FolderLayout(images, masks, labels)


def _parse_label(value: str, where: str) -> int:
    text = (value or "").strip().lower()
    if text in _TRUE:
        return 1
    if text in _FALSE:
        return 0
    raise EvalDataError(f"{where}: label {value!r} is not 0/1 (or true/false, anomalous/nominal)")


def _pick_column(columns: Sequence[str], wanted: str | None, candidates: Sequence[str], what: str,
                 csv_path: Path) -> str | None:
    if wanted is not None:
        if wanted not in columns:
            raise EvalDataError(
                f"labels file {csv_path} has no column {wanted!r} ({what}); its columns: {list(columns)}"
            )
        return wanted
    lower = {c.lower(): c for c in columns}
    return next((lower[c] for c in candidates if c in lower), None)


@dataclass
class _LabelRow:
    label: int
    group: str


class FolderDataset:
    """Frames of an image folder with optional masks and an optional labels CSV.

    A frame's label comes from the CSV row; without a row it is "the mask marks some pixel";
    with neither the frame is left out (warned). ``resize_masks`` resizes a mask of another
    size (nearest neighbour, warned) instead of refusing it.
    """

    kind = "folder"

    def __init__(
        self,
        images: str | Path,
        masks: str | Path | None = None,
        labels: str | Path | None = None,
        *,
        label_column: str | None = None,
        group_column: str | None = None,
        frame_column: str | None = None,
        resize_masks: bool = False,
        max_frames: int | None = None,
        sink: WarningSink | None = None,
    ) -> None:
        self.images = Path(images)
        self.masks = Path(masks) if masks is not None else None
        self.labels_path = Path(labels) if labels is not None else None
        self.resize_masks = resize_masks
        self.sink = sink or WarningSink()
        if not self.images.is_dir():
            raise EvalDataError(f"image folder {self.images} does not exist or is not a directory")
        if self.masks is not None and not self.masks.is_dir():
            raise EvalDataError(f"mask folder {self.masks} does not exist or is not a directory")
        files = image_files(self.images, IMAGE_EXTENSIONS)
        if not files:
            raise EvalDataError(f"image folder {self.images} holds no {'/'.join(IMAGE_EXTENSIONS)} files")
        by_stem: dict[str, Path] = {}
        for p in sorted(files):
            if p.stem in by_stem:
                raise EvalDataError(
                    f"image folder {self.images} holds both {by_stem[p.stem].name} and {p.name}; labels and masks are "
                    "matched by file stem, so keep one of them"
                )
            by_stem[p.stem] = p
        mask_files = {}
        if self.masks is not None:
            masks_by_extension = sorted(
                image_files(self.masks, MASK_EXTENSIONS), key=lambda q: MASK_EXTENSIONS.index(q.suffix.lower())
            )
            for p in masks_by_extension:
                mask_files.setdefault(p.stem, p)
            if not mask_files:
                self.sink.warning(
                    f"mask folder {self.masks} holds no {'/'.join(MASK_EXTENSIONS)} files; no pixel metrics"
                )
        self.mask_files: dict[str, Path] = mask_files

        rows: dict[str, _LabelRow] = {}
        self.label_column = self.group_column = None
        if self.labels_path is not None:
            rows = self._read_labels(by_stem, label_column, group_column, frame_column)
        elif not mask_files:
            raise EvalDataError(
                f"no labels for {self.images}: pass a labels CSV (--labels) or a mask folder (--masks)"
            )
        self.has_groups = self.group_column is not None

        self.items: list[tuple[Path, _LabelRow | None, Path | None]] = []
        unlabelled = []
        for stem in sorted(by_stem, key=natural_key):
            row, mask = rows.get(stem), mask_files.get(stem)
            if row is None and mask is None:
                unlabelled.append(by_stem[stem].name)
                continue
            self.items.append((by_stem[stem], row, mask))
        if unlabelled:
            self.sink.warning(
                f"{len(unlabelled)} image(s) in {self.images} have no row in "
                f"{self.labels_path or '(no labels file)'} and no mask: left out ({_names(unlabelled)})"
            )
        if max_frames is not None:
            self.items = self.items[: int(max_frames)]
        if not self.items:
            raise EvalDataError(f"no labelled frames in {self.images}")
        if self.masks is not None and mask_files:
            missing = [p.name for p, _, m in self.items if m is None]
            if missing:
                self.sink.warning(
                    f"{len(missing)} of {len(self.items)} frame(s) have no mask in {self.masks} "
                    f"({_names(missing)}); pixel metrics use the {len(self.items) - len(missing)} frames that have one"
                )
        self._label_mask_conflicts: dict[str, list[str]] = {"label1_empty": [], "label0_marked": []}

    def _read_labels(
        self, by_stem: dict[str, Path], label_column: str | None, group_column: str | None, frame_column: str | None
    ) -> dict[str, _LabelRow]:
        path = self.labels_path
        assert path is not None
        try:
            with open(path, newline="") as fh:
                reader = csv.DictReader(fh)
                columns = [c.strip() for c in (reader.fieldnames or [])]
                reader.fieldnames = columns
                raw_rows = list(reader)
        except FileNotFoundError:
            raise EvalDataError(f"labels file {path} does not exist") from None
        except (UnicodeDecodeError, csv.Error) as exc:
            raise EvalDataError(f"labels file {path} is not a readable CSV: {exc}") from None
        if not columns:
            raise EvalDataError(f"labels file {path} is empty; it needs a header row such as frame,anomalous")
        frame_col = _pick_column(columns, frame_column, FRAME_COLUMNS, "frame name", path)
        label_col = _pick_column(columns, label_column, LABEL_COLUMNS, "label", path)
        group_col = _pick_column(columns, group_column, GROUP_COLUMNS, "group", path)
        if frame_col is None:
            raise EvalDataError(
                f"labels file {path} has no frame column (one of {FRAME_COLUMNS}); its columns: {columns}"
            )
        if label_col is None:
            raise EvalDataError(
                f"labels file {path} has no label column (one of {LABEL_COLUMNS}); pass --label-column; "
                f"its columns: {columns}"
            )
        self.frame_column, self.label_column, self.group_column = frame_col, label_col, group_col
        rows: dict[str, _LabelRow] = {}
        no_image = []
        for line, raw in enumerate(raw_rows, start=2):
            name = (raw.get(frame_col) or "").strip()
            if not name:
                raise EvalDataError(f"{path}:{line}: empty {frame_col!r} cell")
            stem = Path(name).stem if Path(name).suffix.lower() in IMAGE_EXTENSIONS else Path(name).name
            label = _parse_label(raw.get(label_col, ""), f"{path}:{line}")
            group = (raw.get(group_col) or "").strip() if group_col else ""
            if not group:
                group = NOMINAL_GROUP if label == 0 else UNNAMED_GROUP
            if stem in rows:
                raise EvalDataError(f"{path}:{line}: frame {name!r} is listed twice")
            if stem not in by_stem:
                no_image.append(name)
                continue
            rows[stem] = _LabelRow(label, group)
        if no_image:
            self.sink.warning(
                f"{len(no_image)} row(s) of {path} name frames not in {self.images}: ignored ({_names(no_image)})"
            )
        if not rows:
            raise EvalDataError(f"no row of {path} names an image in {self.images} (column {frame_col!r})")
        return rows

    def __len__(self) -> int:
        return len(self.items)

    def describe(self) -> dict[str, Any]:
        with_masks = sum(m is not None for _, _, m in self.items)
        return {
            "mode": "folder",
            "images": str(self.images),
            "masks": str(self.masks) if self.masks else None,
            "labels": str(self.labels_path) if self.labels_path else None,
            "label_column": self.label_column,
            "group_column": self.group_column,
            "n_frames": len(self.items),
            "n_frames_with_mask": with_masks,
            "n_frames_without_mask": len(self.items) - with_masks,
        }

    def declared_groups(self) -> list[str]:
        if not self.has_groups:
            return []
        return sorted({row.group for _, row, _ in self.items if row is not None})

    def read_mask(self, path: Path, shape: tuple[int, int]) -> np.ndarray:
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if mask is None:
            raise EvalDataError(f"mask {path} cannot be read as an image")
        if mask.ndim == 3:
            mask = mask.max(axis=2)
        if mask.shape != shape:
            if not self.resize_masks:
                raise EvalDataError(
                    f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but its frame is {shape[1]}x{shape[0]}; "
                    "fix the mask or pass --resize-masks to resize it (nearest neighbour)"
                )
            self.sink.warning(
                f"mask {path} is {mask.shape[1]}x{mask.shape[0]}, its frame {shape[1]}x{shape[0]}: "
                "resized (nearest neighbour)"
            )
            mask = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
        return mask > 0

    def __iter__(self) -> Iterator[LabelledFrame]:
        wanted = {p.name: (row, m) for p, row, m in self.items}
        stats = SkipStats()
        count = 0
        for frame in iter_folder_frames(self.images, stats=stats, logger=self.sink):
            if frame.name not in wanted:
                continue
            row, mask_path = wanted[frame.name]
            mask = self.read_mask(mask_path, frame.rgb.shape[:2]) if mask_path is not None else None
            if row is None:
                assert mask is not None
                label = int(mask.any())
                group = (NOMINAL_GROUP if label == 0 else UNNAMED_GROUP) if self.has_groups else None
            else:
                label, group = row.label, (row.group if self.has_groups else None)
                if mask is not None:
                    if label == 1 and not mask.any():
                        self._label_mask_conflicts["label1_empty"].append(frame.name)
                    elif label == 0 and mask.any():
                        self._label_mask_conflicts["label0_marked"].append(frame.name)
            count += 1
            done = count == len(wanted)
            yield LabelledFrame(
                name=frame.name, rgb=frame.rgb, label=label, group=group, mask=mask,
                index=frame.index, stamp_ns=frame.stamp_ns, path=str(self.images / frame.name),
            )
            if done:
                break  # the remaining files are not evaluated (--max-frames or unlabelled); do not decode them
        self._finish()

    def _finish(self) -> None:
        empty, marked = self._label_mask_conflicts["label1_empty"], self._label_mask_conflicts["label0_marked"]
        if empty:
            self.sink.warning(
                f"{len(empty)} frame(s) labelled anomalous in {self.labels_path} have an empty mask in {self.masks} "
                f"({_names(empty)}): their pixels all count as nominal"
            )
        if marked:
            self.sink.warning(
                f"{len(marked)} frame(s) labelled nominal in {self.labels_path} have anomalous pixels in their mask in "
                f"{self.masks} ({_names(marked)}): image metrics follow the label, pixel metrics the mask"
            )


# --------------------------------------------------------------------------- bags


@dataclass
class LabelRange:
    """Messages whose stamp lies in [start, end] (inclusive) are anomalous."""

    start: float
    end: float
    scenario: str
    relative: bool  # seconds after the first frame on the topic, else absolute ns
    line: str  # where in the labels file (for messages)
    matched: int = 0

    def bounds_ns(self, origin_ns: int) -> tuple[int, int]:
        if self.relative:
            return origin_ns + round(self.start * 1e9), origin_ns + round(self.end * 1e9)
        return int(self.start), int(self.end)

    def describe(self) -> str:
        unit = "s after the first frame" if self.relative else "ns"
        return f"[{self.start:g}, {self.end:g}] {unit} (scenario {self.scenario!r}, {self.line})"


def _range_from_mapping(entry: dict[str, Any], where: str) -> LabelRange:
    keys = {str(k).strip().lower(): v for k, v in entry.items()}
    if "start_ns" in keys or "end_ns" in keys:
        start, end, relative = keys.get("start_ns"), keys.get("end_ns"), False
    elif "start_s" in keys or "end_s" in keys:
        start, end, relative = keys.get("start_s"), keys.get("end_s"), True
    else:
        raise EvalDataError(
            f"{where}: needs start_ns,end_ns (absolute stamps) or start_s,end_s (seconds after the bag's first frame)"
        )
    try:
        if relative:
            start_v, end_v = float(start), float(end)
        else:
            # Integers: nanosecond stamps are beyond float precision.
            start_v, end_v = int(str(start).strip()), int(str(end).strip())
    except (TypeError, ValueError):
        raise EvalDataError(f"{where}: start {start!r} / end {end!r} are not numbers") from None
    if not (math.isfinite(start_v) and math.isfinite(end_v)) or end_v < start_v:
        raise EvalDataError(f"{where}: end {end!r} is before start {start!r}")
    scenario = str(keys.get("scenario") or "").strip() or UNNAMED_GROUP
    return LabelRange(start_v, end_v, scenario, relative, where)


def read_bag_labels(path: str | Path) -> list[LabelRange]:
    """Stamp ranges from a CSV or a YAML file.

    CSV header start_ns,end_ns[,scenario] or start_s,end_s[,scenario]; YAML: a list of such mappings
    (optionally under a ``ranges:`` key).
    """
    path = Path(path)
    if not path.is_file():
        raise EvalDataError(f"labels file {path} does not exist")
    ranges: list[LabelRange] = []
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise EvalDataError(f"labels file {path} is not valid YAML: {exc}") from None
        if isinstance(data, dict):
            data = data.get("ranges")
        if not isinstance(data, list):
            raise EvalDataError(f"labels file {path} must hold a list of ranges (or a mapping with 'ranges:')")
        for i, entry in enumerate(data):
            if not isinstance(entry, dict):
                raise EvalDataError(f"{path}: range #{i} is not a mapping with start/end keys")
            ranges.append(_range_from_mapping(entry, f"{path} range #{i}"))
    else:
        with open(path, newline="") as fh:
            lines = [
                (number, row) for number, row in enumerate(csv.reader(fh), start=1)
                if row and any(c.strip() for c in row) and not row[0].lstrip().startswith("#")
            ]
        if not lines:
            raise EvalDataError(f"labels file {path} is empty")
        if lines[0][1][0].strip().lstrip("-").isdigit():
            # No header: start_ns,end_ns[,scenario] (absolute stamps).
            header, body = ["start_ns", "end_ns", "scenario"], lines
        else:
            header, body = [c.strip() for c in lines[0][1]], lines[1:]
        for number, row in body:
            ranges.append(_range_from_mapping(dict(zip(header, row)), f"{path}:{number}"))
    if not ranges:
        raise EvalDataError(f"labels file {path} holds no ranges; a bag with only nominal frames needs no labels file")
    return ranges


class BagDataset:
    """Frames of one image topic of a bag, labelled by the stamp ranges of a labels file."""

    kind = "bag"

    def __init__(
        self,
        bag: str | Path,
        labels: str | Path,
        topic: str | None = None,
        *,
        max_frames: int | None = None,
        sink: WarningSink | None = None,
    ) -> None:
        self.bag = Path(bag)
        self.labels_path = Path(labels)
        self.sink = sink or WarningSink()
        self.ranges = read_bag_labels(labels)
        self.max_frames = max_frames
        try:
            topics = list_image_topics(self.bag, logger=self.sink)
        except ValueError as exc:
            raise EvalDataError(str(exc)) from None
        counts = {t: n for t, _, n in topics}
        self.topic = topic
        if topic is not None and topic not in counts:
            raise EvalDataError(
                f"topic {topic!r} is not an image topic of bag {self.bag}; image topics: {sorted(counts)}"
            )
        self._expected = counts.get(topic) if topic else (max(counts.values()) if counts else 0)
        if max_frames is not None:
            self._expected = min(self._expected, int(max_frames))
        self.first_stamp_ns: int | None = None
        self.last_stamp_ns: int | None = None
        self.n_frames = 0
        self.stats = SkipStats()
        self.has_groups = True

    def __len__(self) -> int:
        return int(self._expected)

    def describe(self) -> dict[str, Any]:
        return {
            "mode": "bag",
            "bag": str(self.bag),
            "topic": self.topic,
            "labels": str(self.labels_path),
            "n_frames": self.n_frames,
            "n_frames_with_mask": 0,
            "n_frames_without_mask": self.n_frames,
            "first_stamp_ns": self.first_stamp_ns,
            "last_stamp_ns": self.last_stamp_ns,
            "skipped": self.stats.summary(),
        }

    def declared_groups(self) -> list[str]:
        return sorted({r.scenario for r in self.ranges})

    def __iter__(self) -> Iterator[LabelledFrame]:
        try:
            frames = iter_bag_frames(self.bag, self.topic, max_frames=self.max_frames, stats=self.stats,
                                     logger=self.sink)
        except ValueError as exc:
            raise EvalDataError(str(exc)) from None
        overlaps = []
        for frame in frames:
            self.topic = frame.topic
            if self.first_stamp_ns is None:
                self.first_stamp_ns = frame.stamp_ns
            self.last_stamp_ns = frame.stamp_ns
            hits = [r for r in self.ranges if _inside(frame.stamp_ns, r.bounds_ns(self.first_stamp_ns))]
            for r in hits:
                r.matched += 1
            if len({r.scenario for r in hits}) > 1:
                overlaps.append(frame.name)
            self.n_frames += 1
            yield LabelledFrame(
                name=frame.name, rgb=frame.rgb, label=int(bool(hits)),
                group=hits[0].scenario if hits else NOMINAL_GROUP, mask=None,
                index=frame.index, stamp_ns=frame.stamp_ns,
            )
        self._finish(overlaps)

    def _finish(self, overlaps: list[str]) -> None:
        if self.n_frames == 0:
            raise EvalDataError(f"bag {self.bag} gave no frames on topic {self.topic!r} ({self.stats.summary()})")
        first, last = self.first_stamp_ns, self.last_stamp_ns
        assert first is not None and last is not None
        for r in self.ranges:
            lo, hi = r.bounds_ns(first)
            if hi < first or lo > last:
                self.sink.warning(
                    f"labels file {self.labels_path}: range {r.describe()} = [{lo}, {hi}] ns lies outside the bag's "
                    f"frames [{first}, {last}] ns on {self.topic}; it marks no frame"
                )
            elif lo < first or hi > last:
                self.sink.warning(
                    f"labels file {self.labels_path}: range {r.describe()} = [{lo}, {hi}] ns reaches outside the bag's "
                    f"frames [{first}, {last}] ns on {self.topic}; only {r.matched} frame(s) inside it"
                )
            elif r.matched == 0:
                self.sink.warning(
                    f"labels file {self.labels_path}: range {r.describe()} falls between frames; it marks no frame"
                )
        if overlaps:
            self.sink.warning(
                f"labels file {self.labels_path}: {len(overlaps)} frame(s) lie in ranges of several scenarios "
                f"({_names(overlaps)}); each counts for the first range listed"
            )


def _inside(stamp: int, bounds: tuple[int, int]) -> bool:
    return bounds[0] <= stamp <= bounds[1]
