"""OWLv2 box proposals: an RGB frame in, boxes in frame pixels with a confidence and a label out.

Two ways to ask OWLv2 for objects:

* text queries (``queries=["a car", "a traffic sign"]``): each box is scored by its best
  query (sigmoid of OWLv2's class logit) and labelled with that query's text;
* class-agnostic (``queries=None`` or empty): each box is scored by OWLv2's objectness head
  and labelled ``"object"``. This asks "is there a thing here" without naming the things an
  anomaly could be, which is what an anomaly monitor wants by default.

The frame is resized and padded to OWLv2's square input with OpenCV here (the checkpoint's
image processor would do the same through a slow PIL/scipy path when torchvision is absent);
boxes come back in the original frame's pixel coordinates. Near-duplicate boxes are removed by
non-maximum suppression and then overlapping or nested boxes of one object (OWLv2 proposes the
whole and its parts: over-segmentation) are merged into one box by
:func:`merge_overlapping_boxes`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from ..errors import ConfigError, ModelError
from ..features import resolve_device, resolve_dtype, validate_rgb, weights_fingerprint

DEFAULT_DETECTOR = "google/owlv2-base-patch16-ensemble"
# transformers' Owlv2ImageProcessor defaults (OpenAI CLIP statistics).
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
AGNOSTIC_LABEL = "object"
# OWLv2's text encoder was trained with queries padded to 16 tokens.
_QUERY_TOKENS = 16


# -- checkpoints -----------------------------------------------------------------------------------
def resolve_checkpoint(model: str, setting: str, example: str) -> str:
    """A hub id stays as it is; a path must be a folder holding a config.json."""
    if not isinstance(model, str) or not model.strip():
        raise ModelError(f"{setting}: empty model id; use a hub id such as {example!r} or a local folder")
    path = Path(model).expanduser()
    looks_like_path = model.startswith((".", "/", "~")) or path.exists()
    if looks_like_path:
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{setting}: folder {path} has no config.json; download the checkpoint with "
                f"'huggingface-cli download {example} --local-dir {path}' or point {setting} at a hub id"
            )
        return str(path)
    return model


def load_checkpoint_config(source: str, setting: str, model_types: tuple[str, ...], kind: str, example: str) -> Any:
    """The transformers config of ``source``, checked to be one of ``model_types`` (ModelError naming ``setting``)."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        config = AutoConfig.from_pretrained(source)
    except Exception as exc:
        raise ModelError(f"{setting}: cannot load a config from {source!r}: {exc}") from None
    if config.model_type not in model_types:
        raise ModelError(f"{setting}: {source!r} is a {config.model_type!r} checkpoint, not {kind} (e.g. {example})")
    return config


def read_preprocessor_config(source: str) -> dict:
    """The checkpoint's preprocessor_config.json as a dict ({} when it has none or it is unreachable).

    Read as JSON rather than through AutoImageProcessor, whose SAM 2 class needs torchvision.
    """
    try:
        from transformers.utils import cached_file

        found = cached_file(
            source,
            "preprocessor_config.json",
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    except Exception:
        return {}
    if not found:
        return {}
    try:
        data = json.loads(Path(found).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _mean_std(pre: dict, mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    m = pre.get("image_mean", mean)
    s = pre.get("image_std", std)
    if not (isinstance(m, (list, tuple)) and len(m) == 3 and isinstance(s, (list, tuple)) and len(s) == 3):
        m, s = mean, std
    return np.asarray(m, np.float32), np.asarray(s, np.float32)


# -- pure box geometry (unit-tested without a model) ------------------------------------------------
def box_areas(boxes: np.ndarray) -> np.ndarray:
    """(n, 4) x1, y1, x2, y2 -> (n,) areas (0 for inverted boxes)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def box_intersections(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, 4), (m, 4) x1, y1, x2, y2 -> (n, m) intersection areas."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    return w * h


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, 4), (m, 4) -> (n, m) intersection over union (0 where both boxes are empty)."""
    inter = box_intersections(a, b)
    union = box_areas(a)[:, None] + box_areas(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _should_merge(a: np.ndarray, b: np.ndarray, iou: float, containment: float, min_area_ratio: float) -> bool:
    inter = float(box_intersections(a, b)[0, 0])
    if inter <= 0:
        return False
    area_a, area_b = float(box_areas(a)[0]), float(box_areas(b)[0])
    small, large = min(area_a, area_b), max(area_a, area_b)
    if inter / (area_a + area_b - inter) >= iou:
        return True
    # Nested boxes: merge parts of one object (a truck's cab in the truck), but keep a small
    # object on a large one separate (a traffic light on a truck, a sign on a billboard): being
    # judged as its own object is the point of instance mode.
    return small > 0 and inter / small >= containment and small / large >= min_area_ratio


def merge_overlapping_boxes(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: Sequence[str],
    iou: float = 0.7,
    containment: float = 0.9,
    *,
    min_area_ratio: float = 0.25,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Merge boxes that cover the same object into their union box.

    Two boxes are merged when their IoU is at least ``iou``, or when the smaller lies at least
    ``containment`` inside the larger *and* covers at least ``min_area_ratio`` of the larger's
    area (nested parts of one object; small objects on large ones stay separate). A merged box
    keeps the highest score and joins the distinct labels with ``"|"`` in order of score.
    Merging repeats until no pair qualifies (a union can grow into a third box).

    Returns (boxes (m, 4) float32 x1, y1, x2, y2, scores (m,) float32, labels), ordered by
    decreasing score.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(scores, np.float32).reshape(-1)
    if len(boxes) != len(scores) or len(boxes) != len(labels):
        raise ValueError(f"boxes ({len(boxes)}), scores ({len(scores)}) and labels ({len(labels)}) differ in length")
    if not 0.0 < iou <= 1.0:
        raise ConfigError(f"detector_merge_iou: {iou} must be in (0, 1]")
    if not 0.0 < containment <= 1.0:
        raise ConfigError(f"detector_merge_containment: {containment} must be in (0, 1]")
    order = np.argsort(-scores, kind="stable")
    groups: list[tuple[np.ndarray, float, list[str]]] = []
    for i in order:
        groups.append((boxes[i].copy(), float(scores[i]), [str(labels[i])]))
    merged = True
    while merged:
        merged = False
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                box_a, score_a, labels_a = groups[a]
                box_b, score_b, labels_b = groups[b]
                if _should_merge(box_a[None], box_b[None], iou, containment, min_area_ratio):
                    union = np.concatenate([np.minimum(box_a[:2], box_b[:2]), np.maximum(box_a[2:], box_b[2:])])
                    joined = labels_a + [lab for lab in labels_b if lab not in labels_a]
                    groups[a] = (union, max(score_a, score_b), joined)
                    del groups[b]
                    merged = True
                    break
            if merged:
                break
    groups.sort(key=lambda g: -g[1])
    out_boxes = np.asarray([g[0] for g in groups], np.float32).reshape(-1, 4)
    out_scores = np.asarray([g[1] for g in groups], np.float32)
    out_labels = ["|".join(dict.fromkeys(part for lab in g[2] for part in lab.split("|"))) for g in groups]
    return out_boxes, out_scores, out_labels


def non_max_suppression(boxes: np.ndarray, scores: np.ndarray, iou: float, top_k: int = 0) -> np.ndarray:
    """Indices kept by greedy NMS (OpenCV's ``cv2.dnn.NMSBoxes``), by decreasing score."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    xywh = np.column_stack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]]).tolist()
    # NMSBoxes keeps only scores strictly above its (non-negative) threshold; shifting every score
    # by 1 keeps their order and lets boxes with score 0 through (thresholding is the caller's job).
    shifted = (np.asarray(scores, np.float64) + 1.0).tolist()
    keep = cv2.dnn.NMSBoxes(xywh, shifted, 0.0, float(iou), top_k=int(top_k))
    return np.asarray(keep, np.int64).reshape(-1)


# -- proposals ------------------------------------------------------------------------------------
@dataclass
class Proposals:
    """Boxes OWLv2 proposed for one frame, by decreasing score."""

    boxes: np.ndarray  # (n, 4) float32 x1, y1, x2, y2 in frame pixels
    scores: np.ndarray  # (n,) float32 detector confidence in [0, 1]
    labels: list[str] = field(default_factory=list)  # query text(s), or "object" without queries
    image_size: tuple[int, int] = (0, 0)  # (H, W) of the frame

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def empty(cls, image_size: tuple[int, int]) -> "Proposals":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), [], image_size)


class BoxProposer:
    """OWLv2 (``transformers`` ``Owlv2ForObjectDetection``) as a box proposer.

    ``input_size`` 0 uses the checkpoint's square input (960 for owlv2-base-patch16); a smaller
    multiple of the patch size (e.g. 768 or 480) interpolates the position embeddings and cuts
    the cost roughly with the square of the side, at some loss for small objects.
    """

    def __init__(
        self,
        model: str = DEFAULT_DETECTOR,
        queries: Sequence[str] | None = None,
        score_threshold: float = 0.1,
        top_k: int = 20,
        nms_iou: float = 0.5,
        merge_iou: float = 0.7,
        merge_containment: float = 0.9,
        input_size: int = 0,
        device: str = "auto",
        dtype: str = "auto",
        merge_min_area_ratio: float = 0.25,
    ) -> None:
        for name, value in (("score_threshold", score_threshold), ("nms_iou", nms_iou),
                            ("merge_iou", merge_iou), ("merge_containment", merge_containment)):
            if not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"detector_{name}: {value} must be in [0, 1]")
        if int(top_k) < 1:
            raise ConfigError(f"detector_top_k: {top_k} must be at least 1")
        self.queries = [q.strip() for q in (queries or []) if q and q.strip()]
        self.score_threshold = float(score_threshold)
        self.top_k = int(top_k)
        self.nms_iou = float(nms_iou)
        self.merge_iou = float(merge_iou)
        self.merge_containment = float(merge_containment)
        self.merge_min_area_ratio = float(merge_min_area_ratio)
        self.model_id = model
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.source = resolve_checkpoint(model, "detector_model", DEFAULT_DETECTOR)

        from transformers import Owlv2ForObjectDetection

        config = load_checkpoint_config(self.source, "detector_model", ("owlv2",), "OWLv2", DEFAULT_DETECTOR)
        try:
            detector = Owlv2ForObjectDetection.from_pretrained(self.source)
        except Exception as exc:
            raise ModelError(f"detector_model: cannot load OWLv2 weights from {self.source!r}: {exc}") from None
        self.patch_size = int(config.vision_config.patch_size)
        self.native_size = int(config.vision_config.image_size)
        size = int(input_size) or self.native_size
        if size < self.patch_size or size % self.patch_size:
            raise ConfigError(
                f"detector_input_size: {input_size} must be 0 (the checkpoint's {self.native_size}) or a positive "
                f"multiple of OWLv2's patch size {self.patch_size}"
            )
        self.input_size = size
        self._interpolate = size != self.native_size
        pre = read_preprocessor_config(self.source)
        mean, std = _mean_std(pre, _CLIP_MEAN, _CLIP_STD)
        self._mean, self._std = mean * 255.0, std * 255.0
        # Normalised value of a padded (black) pixel, as transformers' processor pads with 0.
        self._pad_value = (0.0 - self._mean) / self._std
        self.fingerprint = weights_fingerprint(detector)
        self.model = detector.to(self.device, self.dtype).eval()
        self._query_embeds = self._embed_queries() if self.queries else None

    # -- text ------------------------------------------------------------------------------------
    def _embed_queries(self) -> torch.Tensor:
        """Text embeddings of the queries, computed once (they do not change per frame)."""
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(self.source)
        except Exception as exc:
            raise ModelError(
                f"detector_queries: the OWLv2 checkpoint {self.source!r} has no usable tokenizer ({exc}); "
                "download the full checkpoint (tokenizer files included) or leave detector_queries empty "
                "for class-agnostic proposals"
            ) from None
        # A folder without tokenizer files still yields a tokenizer, with an empty vocabulary that
        # maps every word to "unknown": refuse it instead of matching every query to the same text.
        vocab_size = len(tokenizer)
        text_vocab = int(self.model.config.text_config.vocab_size)
        if vocab_size <= 8 or vocab_size > text_vocab:
            raise ModelError(
                f"detector_queries: the tokenizer in {self.source!r} has {vocab_size} tokens, OWLv2's text model "
                f"{text_vocab}; the checkpoint's tokenizer files are missing or from another model. Download the "
                "full checkpoint or leave detector_queries empty for class-agnostic proposals"
            )
        tokens = tokenizer(
            self.queries, padding="max_length", truncation=True, max_length=_QUERY_TOKENS, return_tensors="pt"
        )
        unk = tokenizer.unk_token_id
        for query, ids, used in zip(self.queries, tokens["input_ids"], tokens["attention_mask"]):
            words = ids[used.bool()][1:-1]  # without start and end tokens
            if unk is not None and len(words) and bool((words == unk).all()):
                raise ModelError(f"detector_queries: the tokenizer knows no word of {query!r}")
        with torch.inference_mode():
            text = self.model.owlv2.get_text_features(
                input_ids=tokens["input_ids"].to(self.device), attention_mask=tokens["attention_mask"].to(self.device)
            )
        embeds = text.pooler_output if hasattr(text, "pooler_output") else text
        return embeds[None].to(self.dtype)  # (1, Q, D)

    # -- geometry --------------------------------------------------------------------------------
    def preprocess(self, rgb: np.ndarray) -> tuple[np.ndarray, float]:
        """(H, W, 3) uint8 -> ((3, S, S) float32 normalised, frame pixels per input pixel).

        The frame is scaled so its longer side is S and padded at the bottom or right, as
        OWLv2 expects; boxes predicted relative to the square map back with one scale.
        """
        validate_rgb(rgb)
        height, width = rgb.shape[:2]
        side = self.input_size
        scale = side / max(height, width)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(rgb, (new_w, new_h), interpolation=interp).astype(np.float32)
        canvas = np.empty((side, side, 3), np.float32)
        canvas[:] = self._pad_value
        canvas[:new_h, :new_w] = (resized - self._mean) / self._std
        return np.ascontiguousarray(canvas.transpose(2, 0, 1)), max(height, width) / side

    # -- inference -------------------------------------------------------------------------------
    @torch.inference_mode()
    def raw(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every patch's box (frame pixels, x1 y1 x2 y2), score and best query index (-1 without queries)."""
        pixels, _ = self.preprocess(rgb)
        height, width = rgb.shape[:2]
        x = torch.from_numpy(pixels)[None].to(self.device, self.dtype)
        feature_map, _ = self.model.image_embedder(pixel_values=x, interpolate_pos_encoding=self._interpolate)
        b, gh, gw, d = feature_map.shape
        feats = feature_map.reshape(b, gh * gw, d)
        if self._query_embeds is not None:
            logits, _ = self.model.class_predictor(feats, self._query_embeds)
            best, query = logits[0].float().max(dim=-1)
            scores = torch.sigmoid(best)
            query_idx = query.cpu().numpy().astype(np.int64)
        else:
            scores = torch.sigmoid(self.model.objectness_predictor(feats)[0].float())
            query_idx = np.full(gh * gw, -1, np.int64)
        cxcywh = self.model.box_predictor(feats, feature_map, self._interpolate)[0].float().cpu().numpy()
        # Boxes are relative to the padded square, whose side is the frame's longer side.
        side = float(max(height, width))
        xyxy = np.column_stack(
            [cxcywh[:, 0] - cxcywh[:, 2] / 2, cxcywh[:, 1] - cxcywh[:, 3] / 2,
             cxcywh[:, 0] + cxcywh[:, 2] / 2, cxcywh[:, 1] + cxcywh[:, 3] / 2]
        ) * side
        xyxy[:, [0, 2]] = np.clip(xyxy[:, [0, 2]], 0, width)
        xyxy[:, [1, 3]] = np.clip(xyxy[:, [1, 3]], 0, height)
        return xyxy.astype(np.float32), scores.cpu().numpy().astype(np.float32), query_idx

    def propose(self, rgb: np.ndarray) -> Proposals:
        """Boxes above the score threshold, after NMS and merging, at most ``top_k``."""
        boxes, scores, query_idx = self.raw(rgb)
        image_size = (rgb.shape[0], rgb.shape[1])
        # Boxes clipped to nothing (predicted inside the padding) or under 2 px are not objects.
        sizes = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        keep = np.flatnonzero((scores >= self.score_threshold) & (sizes >= 2.0))
        if len(keep) == 0:
            return Proposals.empty(image_size)
        # Bound the NMS work: the best few hundred candidates are plenty for top_k survivors.
        keep = keep[np.argsort(-scores[keep], kind="stable")][: max(10 * self.top_k, 100)]
        nms = keep[non_max_suppression(boxes[keep], scores[keep], self.nms_iou)]
        labels = [self.queries[q] if q >= 0 else AGNOSTIC_LABEL for q in query_idx[nms]]
        merged_boxes, merged_scores, merged_labels = merge_overlapping_boxes(
            boxes[nms], scores[nms], labels, self.merge_iou, self.merge_containment,
            min_area_ratio=self.merge_min_area_ratio,
        )
        n = min(self.top_k, len(merged_boxes))
        return Proposals(merged_boxes[:n], merged_scores[:n], merged_labels[:n], image_size)

    def describe(self) -> dict:
        """What a bank records about the proposer (checked when the bank is used)."""
        return {
            "model": self.model_id,
            "fingerprint": self.fingerprint,
            "queries": list(self.queries),
            "score_threshold": self.score_threshold,
            "top_k": self.top_k,
            "nms_iou": self.nms_iou,
            "merge_iou": self.merge_iou,
            "merge_containment": self.merge_containment,
            "input_size": self.input_size,
        }

    def release(self) -> None:
        self.model = None  # type: ignore[assignment]
        self._query_embeds = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


__all__ = [
    "AGNOSTIC_LABEL",
    "BoxProposer",
    "DEFAULT_DETECTOR",
    "Proposals",
    "box_iou",
    "merge_overlapping_boxes",
    "non_max_suppression",
    "read_preprocessor_config",
    "resolve_checkpoint",
]
