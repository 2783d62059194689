"""SAM 2 masks for boxes: an RGB frame and its boxes in, one boolean mask per box out.

Two backends:

* ``"transformers"`` (default): ``transformers`` ``Sam2Model`` with our own preprocessing, so
  torchvision is not needed (``Sam2ImageProcessor`` imports it). The frame is resized to the
  model's square input (1024 for the released checkpoints) exactly as SAM 2's own transforms
  do (a plain resize, not letterboxed), normalised with the checkpoint's mean/std (ImageNet's
  when it records none); the image embedding is computed once per frame and every box is
  decoded in one batch; low-resolution mask logits are upsampled to the frame and thresholded
  at 0.
* ``"sam2"``: Meta's ``sam2`` package (``SAM2ImagePredictor``), where it is installed with
  torchvision (GPU installs). Imported only when selected.

Masks SAM 2 marks as "no object" (object score logit <= 0, as SAM 2 itself does) come back
empty. Mask pixels further than ``box_margin`` (a fraction of the box's size) outside their
prompt box are removed: a box prompt asks for the object in that box, and SAM 2 occasionally
leaks into similar-looking background far away.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from .detector import load_checkpoint_config, read_preprocessor_config, resolve_checkpoint
from ..errors import ConfigError, ImageError, ModelError
from ..features import resolve_device, resolve_dtype, validate_rgb, weights_fingerprint

DEFAULT_SEGMENTER = "facebook/sam2.1-hiera-tiny"
SEGMENTER_BACKENDS = ("transformers", "sam2")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# Boxes decoded per mask-decoder call (bounds memory when a frame has very many boxes).
_BOX_CHUNK = 64


@dataclass
class Segmentation:
    """Masks for one frame's boxes, in the order of the boxes."""

    masks: np.ndarray  # (n, H, W) bool
    quality: np.ndarray  # (n,) float32: SAM 2's predicted IoU of each mask
    object_present: np.ndarray  # (n,) bool: False where SAM 2 saw no object in the box

    def __len__(self) -> int:
        return len(self.masks)


def check_boxes(boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """(n, 4) x1, y1, x2, y2 finite boxes clipped to the frame; raises ImageError otherwise."""
    arr = np.asarray(boxes, np.float32)
    if arr.size == 0:
        return np.zeros((0, 4), np.float32)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ImageError(f"boxes must have shape (n, 4) as x1, y1, x2, y2 pixels, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ImageError("boxes contain NaN or inf")
    height, width = image_size
    arr = arr.copy()
    arr[:, [0, 2]] = np.clip(arr[:, [0, 2]], 0, width)
    arr[:, [1, 3]] = np.clip(arr[:, [1, 3]], 0, height)
    return arr


def clip_masks_to_boxes(masks: np.ndarray, boxes: np.ndarray, margin: float) -> np.ndarray:
    """Zero mask pixels more than ``margin`` x the box's size outside the box (in place)."""
    height, width = masks.shape[1:]
    for mask, (x1, y1, x2, y2) in zip(masks, boxes):
        mx, my = margin * (x2 - x1), margin * (y2 - y1)
        a, b = int(max(0, np.floor(x1 - mx))), int(min(width, np.ceil(x2 + mx)))
        c, d = int(max(0, np.floor(y1 - my))), int(min(height, np.ceil(y2 + my)))
        mask[:c] = False
        mask[d:] = False
        mask[:, :a] = False
        mask[:, b:] = False
    return masks


class Sam2Segmenter:
    """Box-prompted SAM 2 masks, one image embedding per frame, all boxes in one batch."""

    def __init__(
        self,
        model: str = DEFAULT_SEGMENTER,
        device: str = "auto",
        dtype: str = "auto",
        backend: str = "transformers",
        box_margin: float | None = 0.1,
    ) -> None:
        if backend not in SEGMENTER_BACKENDS:
            raise ConfigError(f"segmenter_backend: {backend!r} is not one of {', '.join(SEGMENTER_BACKENDS)}")
        self.backend = backend
        self.model_id = model
        self.box_margin = box_margin
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        if backend == "sam2":
            self._predictor = _load_sam2_predictor(model, self.device)
            self.model = self._predictor.model
            self.fingerprint = weights_fingerprint(self.model)
            self.image_size = int(getattr(self.model, "image_size", 1024))
            return
        self._predictor = None
        self.source = resolve_checkpoint(model, "segmenter_model", DEFAULT_SEGMENTER)
        from transformers import Sam2Model
        from transformers.utils import logging as hf_logging

        # Hub checkpoints of SAM 2.1 may be saved as the video model; its image part is Sam2Model.
        load_checkpoint_config(
            self.source, "segmenter_model", ("sam2", "sam2_video"), "SAM 2", DEFAULT_SEGMENTER
        )
        hf_verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the video->image type warning is expected here
        try:
            sam, info = Sam2Model.from_pretrained(self.source, output_loading_info=True)
        except Exception as exc:
            raise ModelError(f"segmenter_model: cannot load SAM 2 weights from {self.source!r}: {exc}") from None
        finally:
            hf_logging.set_verbosity(hf_verbosity)
        if info.get("missing_keys"):
            missing = sorted(info["missing_keys"])
            raise ModelError(
                f"segmenter_model: {self.source!r} lacks {len(missing)} SAM 2 weights (e.g. {missing[:3]}); "
                "it is not a complete SAM 2 checkpoint"
            )
        self.image_size = int(sam.config.prompt_encoder_config.image_size)
        backbone_size = sam.config.vision_config.backbone_config.image_size
        if list(np.atleast_1d(backbone_size)) not in ([self.image_size], [self.image_size, self.image_size]):
            raise ModelError(
                f"segmenter_model: {self.source!r} has prompt image size {self.image_size} but backbone image "
                f"size {backbone_size}; the checkpoint is inconsistent"
            )
        mean, std = _mean_std(read_preprocessor_config(self.source))
        self._mean, self._std = mean * 255.0, std * 255.0
        self.fingerprint = weights_fingerprint(sam)
        self.model = sam.to(self.device, self.dtype).eval()

    # -- preprocessing ---------------------------------------------------------------------------
    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (3, S, S) float32 normalised (plain resize, as SAM 2's transforms)."""
        validate_rgb(rgb)
        side = self.image_size
        shrinking = max(rgb.shape[:2]) > side
        resized = cv2.resize(rgb, (side, side), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        chw = ((resized.astype(np.float32) - self._mean) / self._std).transpose(2, 0, 1)
        return np.ascontiguousarray(chw)

    # -- inference -------------------------------------------------------------------------------
    def segment(self, rgb: np.ndarray, boxes: np.ndarray) -> Segmentation:
        """One mask per box (x1, y1, x2, y2 frame pixels); no boxes costs nothing."""
        validate_rgb(rgb)
        height, width = rgb.shape[:2]
        boxes = check_boxes(boxes, (height, width))
        n = len(boxes)
        if n == 0:
            return Segmentation(np.zeros((0, height, width), bool), np.zeros(0, np.float32), np.zeros(0, bool))
        if self.backend == "sam2":
            seg = self._segment_sam2(rgb, boxes)
        else:
            seg = self._segment_transformers(rgb, boxes)
        seg.masks[~seg.object_present] = False
        if self.box_margin is not None:
            clip_masks_to_boxes(seg.masks, boxes, float(self.box_margin))
        return seg

    def _segment_transformers(self, rgb: np.ndarray, boxes: np.ndarray) -> Segmentation:
        return self.decode(self.encode(rgb), boxes, (rgb.shape[0], rgb.shape[1]))

    @torch.inference_mode()
    def encode(self, rgb: np.ndarray) -> list[torch.Tensor]:
        """SAM 2's image embedding of a frame (transformers backend): the expensive part, once per frame."""
        if self.backend != "transformers":
            raise ConfigError(
                "encode/decode are the transformers backend's steps; call segment() with the sam2 backend"
            )
        pixels = torch.from_numpy(self.preprocess(rgb))[None].to(self.device, self.dtype)
        return self.model.get_image_embeddings(pixels)

    @torch.inference_mode()
    def decode(self, embeddings: list[torch.Tensor], boxes: np.ndarray, image_size: tuple[int, int]) -> Segmentation:
        """Masks for (n, 4) frame-pixel boxes from a frame's embedding, all boxes in one batch."""
        height, width = image_size
        side = self.image_size
        scaled = boxes * np.array([side / width, side / height, side / width, side / height], np.float32)
        masks, quality, present = [], [], []
        for start in range(0, len(scaled), _BOX_CHUNK):
            chunk = torch.from_numpy(scaled[start : start + _BOX_CHUNK])[None].to(self.device, self.dtype)
            out = self.model(image_embeddings=embeddings, input_boxes=chunk, multimask_output=False)
            logits = out.pred_masks[0, :, 0].float()  # (n, h, w) low resolution
            full = torch.nn.functional.interpolate(
                logits[:, None], size=(height, width), mode="bilinear", align_corners=False
            )[:, 0]
            masks.append((full > 0).cpu().numpy())
            quality.append(out.iou_scores[0, :, 0].float().cpu().numpy())
            present.append((out.object_score_logits[0, :, 0].float() > 0).cpu().numpy())
        return Segmentation(np.concatenate(masks), np.concatenate(quality).astype(np.float32), np.concatenate(present))

    def _segment_sam2(self, rgb: np.ndarray, boxes: np.ndarray) -> Segmentation:
        height, width = rgb.shape[:2]
        with torch.inference_mode():
            self._predictor.set_image(rgb)
            masks, quality, _ = self._predictor.predict(box=boxes, multimask_output=False)
        masks = np.asarray(masks).reshape(len(boxes), -1, height, width)[:, 0] > 0
        quality = np.asarray(quality, np.float32).reshape(len(boxes), -1)[:, 0]
        # The package already blanks masks it judges empty of an object.
        return Segmentation(np.ascontiguousarray(masks), quality, masks.reshape(len(boxes), -1).any(axis=1))

    def describe(self) -> dict:
        """What a bank records about the segmenter (checked when the bank is used)."""
        return {"model": self.model_id, "fingerprint": self.fingerprint, "backend": self.backend}

    def release(self) -> None:
        self.model = None  # type: ignore[assignment]
        self._predictor = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _mean_std(pre: dict) -> tuple[np.ndarray, np.ndarray]:
    m, s = pre.get("image_mean", _IMAGENET_MEAN), pre.get("image_std", _IMAGENET_STD)
    if not (isinstance(m, (list, tuple)) and len(m) == 3 and isinstance(s, (list, tuple)) and len(s) == 3):
        m, s = _IMAGENET_MEAN, _IMAGENET_STD
    return np.asarray(m, np.float32), np.asarray(s, np.float32)


def _load_sam2_predictor(model: str, device: torch.device):
    """Meta's SAM2ImagePredictor from a hub id or a folder holding the original .pt checkpoint."""
    try:
        from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES, build_sam2
        from sam2.sam2_image_predictor import SAM2ImagePredictor
    except ImportError as exc:
        raise ModelError(
            f"segmenter_backend 'sam2' needs Meta's sam2 package with torchvision ({exc}); install both "
            "(GPU installs: pip install torchvision sam2) or use segmenter_backend 'transformers'"
        ) from None
    path = Path(model).expanduser()
    if model.startswith((".", "/", "~")) or path.exists():
        if path.is_file() and path.suffix == ".pt":
            folder, names = path.parent, [path.name]
        else:
            folder, names = path, [p.name for p in path.glob("*.pt")]
        for config_name, ckpt_name in HF_MODEL_ID_TO_FILENAMES.values():
            if ckpt_name in names:
                try:
                    return SAM2ImagePredictor(build_sam2(config_name, str(folder / ckpt_name), device=str(device)))
                except Exception as exc:
                    raise ModelError(f"segmenter_model: sam2 cannot build {folder / ckpt_name}: {exc}") from None
        known = sorted(f for _, f in HF_MODEL_ID_TO_FILENAMES.values())
        raise ModelError(
            f"segmenter_model: {path} holds no SAM 2 checkpoint the sam2 package knows ({', '.join(known)}); "
            "download one with 'huggingface-cli download facebook/sam2.1-hiera-tiny --local-dir <folder>'"
        )
    try:
        return SAM2ImagePredictor.from_pretrained(model, device=str(device))
    except Exception as exc:
        raise ModelError(f"segmenter_model: sam2 cannot load {model!r}: {exc}") from None


__all__ = [
    "DEFAULT_SEGMENTER",
    "SEGMENTER_BACKENDS",
    "Sam2Segmenter",
    "Segmentation",
    "check_boxes",
    "clip_masks_to_boxes",
]
