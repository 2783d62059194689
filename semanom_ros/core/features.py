"""DINOv2 feature extraction: an RGB frame in, an L2-normalised patch grid and CLS token out."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from .backbones import backbone_spec, load_backbone_model, split_tokens, supported_model_types
from .bank.signature import ModelSignature
from .config import PipelineConfig
from .errors import ConfigError, ImageError, ModelError
from .resize import resize_chw

# Backbone families (DINOv2, ViT, I-JEPA, ...): token layout and loading per family in backbones.py.
_SUPPORTED_MODEL_TYPES = supported_model_types()
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# Without a max_input_width, the resized width is capped at this many 16:9 frames side by side at
# the input height (1582 px = 113 patches at 224), so one odd frame cannot cost 100 normal ones.
DEFAULT_WIDTH_CAP_ASPECTS = 4
# A frame is refused (ImageError) when fitting it into the backbone input squeezes or stretches it
# horizontally by more than this factor: its patches would look nothing like the bank's.
MAX_ASPECT_DISTORTION = 2.0


def default_max_input_width(input_height: int, patch_size: int) -> int:
    """The width cap used when none is configured: 4 x the 16:9 width at ``input_height``, in patches."""
    width = DEFAULT_WIDTH_CAP_ASPECTS * input_height * 16 / 9
    return max(patch_size, int(width) // patch_size * patch_size)


@dataclass
class ViewFeatures:
    """The patch grid of one crop view of a frame (PipelineConfig.crop_views)."""

    box: tuple[int, int, int, int]  # (top, bottom, left, right) in pixels of the original frame
    patches: np.ndarray  # (h, w, D) unit rows, like Features.patches (a GPU tensor with on_device=True)

    @property
    def grid_shape(self) -> tuple[int, int]:
        return self.patches.shape[0], self.patches.shape[1]


def crop_box_pixels(box: Sequence[float], image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A [top, bottom, left, right] fraction box -> pixel bounds (top, bottom, left, right) in a frame."""
    height, width = image_size
    top, bottom = int(round(box[0] * height)), int(round(box[1] * height))
    left, right = int(round(box[2] * width)), int(round(box[3] * width))
    return top, max(bottom, top + 1), left, max(right, left + 1)


@dataclass
class Features:
    """Backbone output for one frame; rows are unit vectors (cosine similarity = dot product)."""

    # (h, w, D) float32. A torch tensor still on the GPU when extracted with on_device=True:
    # the GPU index searches it in place instead of a copy to the host and back every frame.
    patches: np.ndarray
    cls: np.ndarray  # (D,) float32 (a GPU tensor too with on_device=True)
    image_size: tuple[int, int]  # (H, W) of the original frame
    input_size: tuple[int, int]  # (H', W') fed to the backbone
    views: list[ViewFeatures] = field(default_factory=list)  # crop views, in config.crop_views order

    @property
    def grid_shape(self) -> tuple[int, int]:
        return self.patches.shape[0], self.patches.shape[1]

    @property
    def num_patches(self) -> int:
        """Patches of the full frame and of every crop view."""
        grids = [self.grid_shape] + [view.grid_shape for view in self.views]
        return sum(h * w for h, w in grids)


def validate_rgb(image: object, min_side: int = 1) -> np.ndarray:
    """Return ``image`` if it is an (H, W, 3) uint8 C-contiguous array, else raise ImageError."""
    if not isinstance(image, np.ndarray):
        raise ImageError(f"frame must be a numpy array (H, W, 3) uint8 RGB, got {type(image).__name__}")
    if image.size == 0:
        raise ImageError(f"frame is empty (shape {image.shape})")
    if image.ndim == 2:
        raise ImageError(
            f"frame is single-channel {image.shape} (grayscale); convert it to RGB first, "
            "e.g. cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)"
        )
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ImageError(f"frame must have shape (H, W, 3), got {image.shape}")
    if image.shape[2] == 4:
        raise ImageError(
            f"frame has 4 channels {image.shape} (RGBA); drop alpha first, e.g. cv2.cvtColor(img, cv2.COLOR_RGBA2RGB)"
        )
    if image.shape[2] == 1:
        raise ImageError(f"frame is single-channel {image.shape}; convert it to 3-channel RGB first")
    if image.dtype != np.uint8:
        raise ImageError(
            f"frame dtype is {image.dtype}, expected uint8 (16-bit or float images must be scaled to 0..255 first)"
        )
    if not image.flags.c_contiguous:
        raise ImageError(
            "frame is not C-contiguous (a slice, a transposed or flipped view such as img[..., ::-1]); "
            "pass np.ascontiguousarray(frame)"
        )
    if min(image.shape[0], image.shape[1]) < min_side:
        raise ImageError(
            f"frame {image.shape[1]}x{image.shape[0]} is smaller than one {min_side}-pixel patch; "
            "such a frame carries no usable content"
        )
    return image


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available; use device 'auto' or 'cpu'")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


def _load_backbone(model: str):
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    # A per-tensor progress bar on every load is noise in node logs and CI output.
    hf_logging.disable_progress_bar()

    path = Path(model).expanduser()
    looks_like_path = model.startswith((".", "/", "~")) or path.exists()
    if looks_like_path and not (path / "config.json").is_file():
        raise ModelError(
            f"model folder {path} has no config.json; point 'model' at a folder written by "
            "save_pretrained (e.g. ../shared/models/dinov2-small) or at a hub id such as facebook/dinov2-small"
        )
    source = str(path) if looks_like_path else model
    try:
        config = AutoConfig.from_pretrained(source)
    except Exception as exc:  # transformers raises OSError/ValueError/EnvironmentError variants
        raise ModelError(f"cannot load model config from {source!r}: {exc}") from None
    spec = backbone_spec(config.model_type)
    if spec is None:
        raise ModelError(
            f"model {source!r} is a {config.model_type!r} checkpoint, not DINOv2 or another supported backbone "
            f"(supported model types: {', '.join(_SUPPORTED_MODEL_TYPES)})"
        )
    try:
        backbone = load_backbone_model(source, spec)
    except Exception as exc:
        raise ModelError(f"cannot load model weights from {source!r}: {exc}") from None
    return source, config, backbone


def _normalisation(source: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std from the checkpoint's preprocessor config; ImageNet's when it has none."""
    try:
        from transformers import AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(source)
        return tuple(proc.image_mean), tuple(proc.image_std)
    except Exception:
        return _IMAGENET_MEAN, _IMAGENET_STD


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A short hash of every parameter, so a bank remembers exactly which weights made it."""
    digest = hashlib.blake2b(digest_size=12)
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


class FeatureExtractor:
    """DINOv2 patch and CLS embeddings through ``transformers`` ``from_pretrained``.

    Resizing and normalisation are done here with OpenCV rather than by the checkpoint's image
    processor, which centre-crops to a square and would cut off the sides of a camera frame.
    """

    def __init__(
        self,
        model: str,
        input_height: int = 224,
        device: str = "auto",
        dtype: str = "auto",
        max_input_width: int | None = None,
        feature_layer: int = 0,
        crop_views: Sequence[Sequence[float]] = (),
    ) -> None:
        self.model_id = model
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        source, config, backbone = _load_backbone(model)
        self.source = source
        self.model_type: str = config.model_type
        self.patch_size: int = int(config.patch_size)
        self.dim: int = int(config.hidden_size)
        self.backbone_spec = backbone_spec(config.model_type)
        self.num_prefix_tokens = self.backbone_spec.num_prefix_tokens(config)
        # Backbones without a CLS token (I-JEPA) report the mean of their patch tokens as Features.cls.
        self.has_cls: bool = self.backbone_spec.has_cls
        layers = int(getattr(config, "num_hidden_layers", 0) or 0)
        if feature_layer < 0 or (layers and feature_layer > layers):
            raise ModelError(
                f"feature_layer {feature_layer}: {source!r} has {layers} blocks; use 0 (the last hidden state) "
                f"or a block from 1 to {layers}"
            )
        self.feature_layer = int(feature_layer)
        self.crop_views = [tuple(float(v) for v in box) for box in crop_views]
        if input_height < self.patch_size:
            raise ModelError(f"input_height {input_height} is smaller than the model's patch size {self.patch_size}")
        self.input_height = int(input_height) // self.patch_size * self.patch_size
        self.max_input_width = max_input_width
        # The cap actually applied (the configured one, or the default when none is).
        self.width_cap = max(self.patch_size, (max_input_width or default_max_input_width(
            self.input_height, self.patch_size)) // self.patch_size * self.patch_size)
        self.fingerprint = weights_fingerprint(backbone)
        mean, std = _normalisation(source)
        self._mean = np.asarray(mean, np.float32) * 255.0
        self._inv_std = 1.0 / (np.asarray(std, np.float32) * 255.0)
        self.model = backbone.to(self.device, self.dtype).eval()
        # On a GPU the uint8 frame is uploaded and resized + normalised there (matrix products that
        # reproduce OpenCV's resize, see core/resize.py): a 960x540 frame crosses as 1.5 MB of
        # bytes instead of a host resize plus a float32 upload. Settable, so the CPU can test it.
        self.preprocess_on_device: bool = self.device.type == "cuda"
        self._mean_t = torch.as_tensor(self._mean, device=self.device).view(3, 1, 1)
        self._inv_std_t = torch.as_tensor(self._inv_std, device=self.device).view(3, 1, 1)

    @classmethod
    def from_config(cls, config: PipelineConfig) -> "FeatureExtractor":
        """The extractor a pipeline's settings describe (model, input size, device, dtype, width cap)."""
        return cls(
            config.model, config.input_height, config.device, config.dtype, config.max_input_width,
            feature_layer=config.feature_layer, crop_views=config.crop_views,
        )

    def check_views(self, config: PipelineConfig) -> None:
        """Raise ConfigError when this extractor's layer or crop views are not the ones ``config`` asks for."""
        wanted = [tuple(float(v) for v in box) for box in config.crop_views]
        if self.feature_layer != config.feature_layer or self.crop_views != wanted:
            raise ConfigError(
                f"the feature extractor was made with feature_layer {self.feature_layer} and crop_views "
                f"{[list(b) for b in self.crop_views]}, the pipeline asks for {config.feature_layer} and "
                f"{config.crop_views}; make it with FeatureExtractor.from_config(config)"
            )

    def signature(self) -> ModelSignature:
        """What a bank built with this extractor records, and what a bank scored with it must match."""
        return ModelSignature(
            model=self.model_id,
            fingerprint=self.fingerprint,
            input_height=self.input_height,
            dim=self.dim,
            patch_size=self.patch_size,
            feature_layer=self.feature_layer,
        )

    # -- geometry ---------------------------------------------------------------------------
    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """Backbone input (H', W') for a frame: height fixed, aspect kept, patch multiples.

        The width is capped at :attr:`width_cap`. ImageError for a frame whose aspect ratio the input
        cannot hold within a factor :data:`MAX_ASPECT_DISTORTION` (e.g. 4000x20 or 20x4000).
        """
        p = self.patch_size
        natural = width * self.input_height / height
        new_w = min(max(p, int(round(natural / p)) * p), self.width_cap)
        distortion = max(new_w / natural, natural / new_w)
        if distortion > MAX_ASPECT_DISTORTION:
            narrowest = p / self.input_height / MAX_ASPECT_DISTORTION
            widest = self.width_cap / self.input_height * MAX_ASPECT_DISTORTION
            raise ImageError(
                f"frame {width}x{height} (aspect ratio {width / height:.3g}) would be "
                f"{'squeezed' if natural > new_w else 'stretched'} {distortion:.1f}x to fit the backbone input "
                f"({self.input_height} px high, at most {self.width_cap} px wide); aspect ratios (width/height) "
                f"from {narrowest:.3g} to {widest:.3g} fit. Crop the frame, or raise max_input_width for wider ones"
            )
        return self.input_height, new_w

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        h, w = self.input_size(height, width)
        return h // self.patch_size, w // self.patch_size

    # -- preprocessing ----------------------------------------------------------------------
    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (3, H', W') float32 normalised."""
        validate_rgb(rgb, min_side=self.patch_size)
        in_h, in_w = self.input_size(rgb.shape[0], rgb.shape[1])
        shrinking = in_h < rgb.shape[0]
        resized = cv2.resize(rgb, (in_w, in_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        chw = (resized.astype(np.float32) - self._mean) * self._inv_std
        return np.ascontiguousarray(chw.transpose(2, 0, 1))

    def can_preprocess_on_device(self, height: int, width: int) -> bool:
        """Whether a frame of this size is resized on the device.

        Yes when both axes shrink (OpenCV's area rule, reproduced exactly) or both grow (bilinear);
        mixed cases stay on the host.
        """
        if not self.preprocess_on_device:
            return False
        in_h, in_w = self.input_size(height, width)
        return (in_h <= height and in_w <= width) or (in_h >= height and in_w >= width)

    @torch.inference_mode()
    def preprocess_tensor(self, rgb: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 RGB -> (3, H', W') float32 normalised, on the model's device."""
        validate_rgb(rgb, min_side=self.patch_size)
        frame = torch.from_numpy(rgb)
        if self.device.type == "cuda":
            frame = frame.pin_memory().to(self.device, non_blocking=True)
        chw = frame.permute(2, 0, 1).to(torch.float32)
        resized = resize_chw(chw, self.input_size(rgb.shape[0], rgb.shape[1]))
        # OpenCV resizes uint8 to uint8: round the same way, so host and device inputs agree.
        resized = torch.round(resized).clamp_(0.0, 255.0)
        return (resized - self._mean_t) * self._inv_std_t

    # -- inference --------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, batch: np.ndarray | torch.Tensor, on_device: bool = False) -> tuple[Any, Any]:
        """(B, 3, H', W') preprocessed frames -> (patch tokens (B, h*w, D), CLS (B, D)), unit rows.

        NumPy arrays, or torch tensors where the model runs with ``on_device``.
        """
        if isinstance(batch, np.ndarray):
            batch = torch.from_numpy(batch)
        pixels = batch.to(self.device, non_blocking=True).to(self.dtype)
        if self.feature_layer:
            # hidden_states[0] is the embedding output, [N] the output of block N (before the final norm).
            outputs = self.model(pixel_values=pixels, output_hidden_states=True, **self.backbone_spec.forward_kwargs)
            hidden = outputs.hidden_states[self.feature_layer]
        else:
            hidden = self.model(pixel_values=pixels, **self.backbone_spec.forward_kwargs).last_hidden_state
        hidden = torch.nn.functional.normalize(hidden.float(), dim=-1)
        cls, patches = split_tokens(hidden, self.backbone_spec, self.num_prefix_tokens)
        if on_device:
            return patches, cls
        return patches.cpu().numpy(), cls.cpu().numpy()

    def extract(self, rgb: np.ndarray, on_device: bool = False) -> Features:
        return self.extract_batch([rgb], on_device)[0]

    def extract_batch(self, frames: Sequence[np.ndarray], on_device: bool = False) -> list[Features]:
        """Embed frames (and their crop views); inputs of equal size share a forward pass.

        ``on_device`` leaves patches and CLS as torch tensors where the model runs (only useful on a
        GPU, for a GPU index).
        """
        frames = validated_frames(frames, self.patch_size)
        # One backbone input per frame, then one per crop view of each frame: (frame index, box or None, image).
        jobs: list[tuple[int, tuple[int, int, int, int] | None, np.ndarray]] = [
            (i, None, f) for i, f in enumerate(frames)
        ]
        for i, frame in enumerate(frames):
            for box in self.crop_views:
                top, bottom, left, right = crop_box_pixels(box, frame.shape[:2])
                crop = np.ascontiguousarray(frame[top:bottom, left:right])
                validate_rgb(crop, min_side=self.patch_size)
                jobs.append((i, (top, bottom, left, right), crop))
        inputs: list[Any] = [
            self.preprocess_tensor(img) if self.can_preprocess_on_device(*img.shape[:2]) else self.preprocess(img)
            for _, _, img in jobs
        ]
        grids: list[Any] = [None] * len(jobs)
        cls_tokens: list[Any] = [None] * len(jobs)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for j, x in enumerate(inputs):
            by_shape.setdefault(tuple(x.shape), []).append(j)
        for shape, idx in by_shape.items():
            h, w = shape[1] // self.patch_size, shape[2] // self.patch_size
            batch = [inputs[j] for j in idx]
            stacked = np.stack(batch) if all(isinstance(x, np.ndarray) for x in batch) else torch.stack(
                [torch.as_tensor(x, device=self.device) for x in batch]
            )
            patches, cls = self.forward(stacked, on_device)
            for n, j in enumerate(idx):
                grids[j], cls_tokens[j] = patches[n].reshape(h, w, self.dim), cls[n]
        out = [
            Features(
                patches=grids[i],
                cls=cls_tokens[i],
                image_size=(frame.shape[0], frame.shape[1]),
                input_size=(inputs[i].shape[1], inputs[i].shape[2]),
            )
            for i, frame in enumerate(frames)
        ]
        for j in range(len(frames), len(jobs)):
            frame_index, box, _ = jobs[j]
            out[frame_index].views.append(ViewFeatures(box=box, patches=grids[j]))  # type: ignore[arg-type]
        return out

    def release(self) -> None:
        """Drop the model and return GPU memory (lifecycle cleanup)."""
        self.model = None  # type: ignore[assignment]
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def validated_frames(frames: Sequence[np.ndarray], min_side: int) -> Sequence[np.ndarray]:
    """``frames`` after :func:`validate_rgb` on each (ImageError names the first bad one)."""
    for i, frame in enumerate(frames):
        try:
            validate_rgb(frame, min_side=min_side)
        except ImageError as exc:
            raise ImageError(f"frame {i} of {len(frames)}: {exc}") if len(frames) > 1 else exc from None
    return frames


def patch_mask_from_pixels(mask: np.ndarray, grid: tuple[int, int], fraction: float = 0.5) -> np.ndarray:
    """(H, W) boolean pixel mask -> (h, w) boolean patch mask: True where > ``fraction`` is set."""
    if mask.ndim != 2:
        raise ImageError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    cover = cv2.resize(mask.astype(np.float32), (grid[1], grid[0]), interpolation=cv2.INTER_AREA)
    return cover > fraction


__all__ = [
    "Features",
    "ViewFeatures",
    "crop_box_pixels",
    "FeatureExtractor",
    "validate_rgb",
    "patch_mask_from_pixels",
    "weights_fingerprint",
    "resolve_device",
    "resolve_dtype",
]
